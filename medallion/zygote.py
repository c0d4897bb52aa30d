"""Notebook kernels forked from one process that has already imported what they import.

A kernel started as usual is a new Python that imports ipykernel, pandas, pyarrow, SQLAlchemy,
matplotlib and this package: about a second of CPU, on every notebook of a run, on a machine
whose two cores a run keeps busy. Here one process, the zygote (``python -m medallion.zygote``),
imports all that once; each kernel is then a ``fork`` of it that runs ipykernel, so it starts
with the modules in memory, shared until written. It is still a kernel of its own per
notebook, in a process of its own, never used before.

The zygote reads one request per line (the kernel's command, environment and working
directory, as JSON) and answers with the kernel's pid. It has no thread when it forks, ignores
SIGCHLD so that its kernels are reaped as they end, and ends when the process that started it
closes its pipe (or dies); each kernel ends when the zygote is gone (ipykernel's parent watch).
Only kernels of this Python, started with the environment the zygote was started with, are
forked; any other is started as jupyter_client starts it.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

# What the notebooks import, imported by the zygote once. matplotlib reads its backend when it
# is imported: the inline one, as ipykernel would set it (its module is left to the kernel,
# which registers it with its own shell).
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
PRELOADED = (
    "ipykernel.kernelapp",
    "pandas",
    "pyarrow.parquet",
    "sqlalchemy",
    "minio",
    "psycopg2",
    "matplotlib.pyplot",
    "medallion.bronze",
    "medallion.silver",
    "medallion.gold",
    "medallion.transit",
    "medallion.results",
)
LAUNCHER = ["-m", "ipykernel_launcher"]  # how a kernel spec of this Python starts a kernel


# -- the zygote's side ---------------------------------------------------------------------------


def serve() -> None:
    """Import once, then fork a kernel for each request read on stdin; answer its pid on stdout."""
    requests = os.fdopen(os.dup(0), "r")
    replies = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the kernels read nothing from a terminal
    os.dup2(2, 1)  # what they print goes where the run's output goes, never into the replies
    os.close(devnull)
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]  # as ipykernel_launcher: the kernel adds its working directory itself
    os.environ.setdefault("MPLBACKEND", INLINE_BACKEND)
    for module in PRELOADED:
        importlib.import_module(module)
    import gc

    gc.freeze()  # the imported objects stay shared with the kernels (no copy by the collector)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # kernels that end are reaped by the system
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            requests.close()
            replies.close()
            _run_kernel(request["argv"], request["env"], request["cwd"])
        replies.write(f"{pid}\n")
        replies.flush()


def _run_kernel(argv: list[str], env: dict[str, str], cwd: str) -> None:
    """In the forked child: become the kernel ``argv`` describes; never returns."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the kernel waits for its own children
        os.setsid()  # a process group of its own, as jupyter_client starts kernels
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        from ipykernel.kernelapp import IPKernelApp

        # ipykernel's parent watch: the kernel ends when the zygote is gone (the default comes
        # from JPY_PARENT_PID as it was when the zygote imported ipykernel: none)
        IPKernelApp.launch_instance(argv=[*argv, f"--IPKernelApp.parent_handle={os.getppid()}"])
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 0
    except BaseException:  # noqa: BLE001 - said on stderr, then the kernel process ends
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 - ending anyway
                pass
        os._exit(code)  # never back into the zygote's loop


# -- the side of the process that starts kernels ---------------------------------------------------


class Zygote:
    """A started zygote: ``fork`` asks it for a kernel and returns the future of its pid."""

    def __init__(self, environment: dict[str, str]) -> None:
        self.environment = environment
        self._process = subprocess.Popen(  # noqa: S603 - this Python, this package
            [sys.executable, "-m", "medallion.zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=environment,
            text=True,
        )
        self._pending: deque[Future[int]] = deque()
        self._lock = threading.Lock()
        threading.Thread(target=self._read_replies, name="zygote-replies", daemon=True).start()

    def forks(self, cmd: list[str], environment: dict[str, str]) -> bool:
        """Whether a kernel started with ``cmd`` in ``environment`` can be forked from here."""
        return (
            self._process.poll() is None
            and len(cmd) > 3
            and os.path.realpath(cmd[0]) == os.path.realpath(sys.executable)
            and cmd[1:3] == LAUNCHER
            and environment == self.environment
        )

    def fork(self, cmd: list[str], env: dict[str, str], cwd: str) -> Future[int]:
        request = {"argv": cmd[3:], "env": env, "cwd": cwd}
        pid: Future[int] = Future()
        with self._lock:
            self._pending.append(pid)
            try:
                self._process.stdin.write(json.dumps(request) + "\n")
                self._process.stdin.flush()
            except OSError as error:
                self._pending.pop()
                pid.set_exception(RuntimeError(f"the kernel zygote is gone: {error}"))
        return pid

    def _read_replies(self) -> None:
        for line in self._process.stdout:
            with self._lock:
                self._pending.popleft().set_result(int(line))
        with self._lock:  # the zygote ended: no pid will come
            while self._pending:
                self._pending.popleft().set_exception(RuntimeError("the kernel zygote ended"))

    def close(self) -> None:
        """End the zygote (its kernels still running end with it)."""
        try:
            self._process.stdin.close()
        except OSError:
            pass
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class ForkedProcess:
    """A forked kernel as jupyter_client's local provisioner uses a ``Popen``: it is the
    zygote's child, not ours, so it is watched and signalled by pid."""

    stdin = stdout = stderr = None

    def __init__(self, pid: Future[int]) -> None:
        self._pid = pid
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return self._pid.result(timeout=60)

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                self.returncode = -signal.SIGKILL  # reaped by the zygote: its status is gone
            except Exception:  # noqa: BLE001 - never forked (the zygote ended)
                self.returncode = 1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("kernel", timeout)
            time.sleep(0.01)
        return code

    def send_signal(self, signum: int) -> None:
        if self.poll() is not None:
            return
        try:
            os.killpg(self.pid, signum)  # its group (once it has made it)
        except ProcessLookupError:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


_zygote: Zygote | None = None
_zygote_lock = threading.Lock()


def zygote(environment: Callable[[], dict[str, str]]) -> Zygote:
    """This process's zygote, started on first use with ``environment()``."""
    global _zygote  # noqa: PLW0603 - one per process
    with _zygote_lock:
        if _zygote is None:
            _zygote = Zygote(environment())
        return _zygote


def close() -> None:
    global _zygote  # noqa: PLW0603
    with _zygote_lock:
        started, _zygote = _zygote, None
    if started is not None:
        started.close()


if __name__ == "__main__":
    serve()
