"""Notebook kernels forked from one process that has already imported what they import.

A kernel started as usual is a new Python that imports ipykernel, pandas, pyarrow, SQLAlchemy,
matplotlib and this package: about a second of CPU, on every notebook of a run, on a machine
whose two cores a run keeps busy. Here one process, the zygote (``python -m medallion.zygote``),
imports all that once; each kernel is then a ``fork`` of it that runs ipykernel, so it starts
with the modules in memory, shared until written. It is still a kernel of its own per
notebook, in a process of its own, never used before.

The zygote reads one request per line (the kernel's command, environment and working
directory, as JSON) and answers with the kernel's pid, or with ``-errno`` when the fork failed
(that kernel only: the zygote keeps serving). It starts no thread of its own (the libraries'
own, OpenBLAS's, pyarrow's allocator's, handle a fork themselves), ignores SIGCHLD so that its
kernels are reaped as they end, runs in a session of its own (a Ctrl-C of the run reaches the
run, whose end closes the zygote's pipe) and ends when that pipe closes; each kernel ends when
the zygote is gone (ipykernel's parent watch). The process that asked for a kernel watches and
signals it through a pidfd, never a pid that could have been reused. Only kernels of this
Python, started with the environment the zygote was started with, are forked; any other is
started as jupyter_client starts it.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
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
NOTEBOOK_MODULES = (
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
PRELOADED = ("ipykernel.kernelapp", *NOTEBOOK_MODULES)
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
    gc.disable()  # imports make objects by the million and free few: no collection meanwhile
    for module in PRELOADED:
        importlib.import_module(module)
    gc.freeze()  # the imported objects stay shared with the kernels (no copy by the collector)
    gc.enable()  # before any fork: a kernel collects as usual
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # kernels that end are reaped by the system
    zygote_pid = os.getpid()
    for line in requests:
        request = json.loads(line)
        try:
            pid = os.fork()
        except OSError as error:  # no memory, too many processes: this kernel fails, not all
            pid = -(error.errno or 1)
        if pid == 0:
            requests.close()
            replies.close()
            _run_kernel(request["argv"], request["env"], request["cwd"], zygote_pid)
        replies.write(f"{pid}\n")
        replies.flush()


def _run_kernel(argv: list[str], env: dict[str, str], cwd: str, zygote_pid: int) -> None:
    """In the forked child: become the kernel ``argv`` describes; never returns."""
    code = 1
    try:
        if os.getppid() != zygote_pid:  # the zygote is already gone: nothing would watch us
            return
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the kernel waits for its own children
        os.setsid()  # a process group of its own, as jupyter_client starts kernels
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        from ipykernel.kernelapp import IPKernelApp

        # ipykernel's parent watch: the kernel ends when the zygote is gone (the default comes
        # from JPY_PARENT_PID as it was when the zygote imported ipykernel: none)
        IPKernelApp.launch_instance(argv=[*argv, f"--IPKernelApp.parent_handle={zygote_pid}"])
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
            start_new_session=True,
        )
        self._pending: deque[Future[int]] = deque()
        self._lock = threading.Lock()
        threading.Thread(target=self._read_replies, name="zygote-replies", daemon=True).start()

    def forks(self, cmd: list[str], environment: dict[str, str]) -> bool:
        """Whether a kernel started with ``cmd`` in ``environment`` can be forked from here."""
        return (
            self._process.poll() is None
            and len(cmd) > 3
            and os.path.abspath(cmd[0]) == os.path.abspath(sys.executable)
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
            pid = int(line)
            with self._lock:
                forked = self._pending.popleft()
            if pid > 0:
                forked.set_result(pid)
            else:
                reason = os.strerror(-pid)
                forked.set_exception(OSError(-pid, f"the kernel zygote could not fork: {reason}"))
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
    """A forked kernel as jupyter_client's local provisioner uses a ``Popen``. It is the
    zygote's child, not ours: it is watched through a pidfd (readable once the process has
    ended, even if nobody reaps it; a pid alone could have been reused by then)."""

    stdin = stdout = stderr = None

    def __init__(self, pid: Future[int]) -> None:
        self._pid = pid
        self._pidfd: int | None = None
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return self._pid.result(timeout=60)

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                if self._pidfd is None:
                    self._pidfd = os.pidfd_open(self.pid)
                ended = bool(select.select([self._pidfd], [], [], 0)[0])
            except ProcessLookupError:  # ended and reaped before it was first looked at
                ended = True
            except Exception:  # noqa: BLE001 - never forked (the zygote failed or ended)
                self.returncode = 1
                return self.returncode
            if ended:
                self.returncode = -signal.SIGKILL  # reaped by the zygote: its status is gone
                self._close()
        return self.returncode

    def _close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("kernel", timeout)
            time.sleep(0.01)
        return code

    def send_signal(self, signum: int) -> None:
        if self.poll() is not None:  # ended: its pid and group may be someone else's now
            return
        try:
            os.killpg(self.pid, signum)  # its group, its own children included (once made)
        except ProcessLookupError:
            signal.pidfd_send_signal(self._pidfd, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def available() -> bool:
    """Kernels are forked on Linux (fork, pidfd); elsewhere they start as usual (macOS, for
    one, does not support forking a process that has loaded its system frameworks)."""
    return sys.platform == "linux" and hasattr(os, "pidfd_open")


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
