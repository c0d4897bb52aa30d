"""Warm kernels for the in-process run (`make run`): each notebook still gets a kernel of its
own, never used before, but started while the notebook before it runs.

Starting a kernel and importing pandas, pyarrow, SQLAlchemy, the MinIO client and this package
takes about a second of CPU, on every notebook of a run. In `make run` the DAG's tasks run one
after the other in one process: there, papermill's engine is replaced by ``WarmKernelEngine``,
which hands each notebook the kernel started for it and starts the next one; the first
notebook's is started by ``medallion.runs`` before Airflow parses the DAG and starts its
execution API. The kernels are forked from a process that has imported all that
once (``medallion.zygote``), so each starts in a fraction of a second and with little CPU.
A warm kernel is used only if it was started with the same kernel name, working directory
and environment (the task's connections included) as the notebook's would be; otherwise, or
if it died, the notebook starts its own as usual. A notebook's client is ready as soon as its
kernel has answered on both channels (jupyter_client then waits for 0.2 s of silence), and its
kernel is stopped in the background once its last cell has returned (a kill and its wait,
0.1 s); kernels left over or still stopping when the process ends are stopped or waited for,
and the zygote ends. A real Airflow (one process per task) keeps papermill's engine, with the
kernels on sockets as below (``SocketEngine``).

Every kernel of ours, warm or not, talks to its notebook over Unix sockets (zmq's ``ipc``
transport) named after it, not over TCP ports of 127.0.0.1: jupyter_client picks ports that are
free at that moment and the kernel binds them later, so two tasks that start kernels at once
can pick the same port (seen in a real Airflow running two files' tasks side by side: the
kernel died with "Address already in use", and the task needed its retry).
"""

from __future__ import annotations

import atexit
import logging
import os
import tempfile
import threading
import time
import uuid
from contextlib import suppress
from queue import Empty
from typing import Any

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager, KernelManager
from jupyter_client.provisioning import LocalProvisioner
from nbclient.util import run_sync
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines
from papermill.log import logger as papermill_log
from papermill.utils import merge_kwargs, remove_args

from medallion import zygote

log = logging.getLogger(__name__)
READY_CLIENT = "medallion.kernels.ReadyKernelClient"

# What the notebooks import (the zygote's list), loaded while the kernel waits (a forked one
# has them already): no name is left in the notebook's namespace (exec with its own globals),
# only modules in sys.modules.
PRELOAD = f"exec('import {', '.join(zygote.NOTEBOOK_MODULES)}', {{}})"


# Variables Airflow sets for each task (its context) or once the DAG is parsed
TASK_PREFIXES = ("AIRFLOW_CTX_", "_AIRFLOW_PARSING_CONTEXT_")


def _task_variable(name: str) -> bool:
    """Variables Airflow sets for each task (its context, its supervisor's socket) or once the
    DAG is parsed: a warm kernel gets the notebook's task's values when it is handed over."""
    return name.startswith(TASK_PREFIXES) or name == "__AIRFLOW_SUPERVISOR_FD"


def _environment() -> dict[str, str]:
    """The environment a kernel is started with, but the task's own variables."""
    return {k: v for k, v in os.environ.items() if not _task_variable(k)}


class _UnixSockets:
    """A kernel manager's kernels on Unix sockets: ``<tmp>/kernel-<id>-1`` to ``-5``, one
    name per kernel, removed with the kernel (short: a socket's path holds 107 bytes)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("transport", "ipc")
        kwargs.setdefault("ip", os.path.join(tempfile.gettempdir(), f"kernel-{uuid.uuid4()}"))
        super().__init__(**kwargs)


class SocketKernelManager(_UnixSockets, AsyncKernelManager):
    """nbclient's kernel manager (asynchronous), with the kernel on Unix sockets."""


class SocketEngine(NBClientEngine):
    """papermill's nbclient engine, with each kernel on Unix sockets (``SocketKernelManager``)."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name: str, **kwargs: Any):
        kwargs.setdefault("kernel_manager_class", SocketKernelManager)
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)


def use_unix_sockets() -> None:
    """Make ``SocketEngine`` papermill's default engine in this process, unless an engine of
    ours (``WarmKernelEngine``) is the default already."""
    if not issubclass(papermill_engines.get_engine(None), SocketEngine):
        papermill_engines.register(None, SocketEngine)
        papermill_engines.register("nbclient", SocketEngine)


class ReadyKernelClient(AsyncKernelClient):
    """jupyter_client's asynchronous client, ready as jupyter_client checks it (the kernel has
    answered ``kernel_info`` and IOPub has delivered a message, so no output of the first cell
    can be missed) without then waiting for 0.2 s of silence on IOPub: what is left there
    answers none of the notebook's requests, and nbclient keeps only the answers to its own."""

    async def _async_wait_for_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        while True:
            self.kernel_info()
            with suppress(Empty):
                reply = await self.shell_channel.get_msg(timeout=1)
                if reply["msg_type"] == "kernel_info_reply":
                    with suppress(Empty):
                        await self.iopub_channel.get_msg(timeout=0.2)
                        self._handle_kernel_info_reply(reply)
                        return
            if not await self._async_is_alive():
                raise RuntimeError("Kernel died before replying to kernel_info")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout} seconds")

    wait_for_ready = _async_wait_for_ready


class ForkingProvisioner(LocalProvisioner):
    """jupyter_client's local provisioner, with the kernel forked from this process's zygote
    (``medallion.zygote``) when it can be: a kernel of this Python, started with the
    environment the zygote was started with."""

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> dict:
        if not zygote.available():
            return await super().launch_kernel(cmd, **kwargs)
        forker = zygote.zygote(_environment)
        if not forker.forks(cmd, _environment()):
            return await super().launch_kernel(cmd, **kwargs)
        env = kwargs.get("env") or dict(os.environ)
        cwd = str(kwargs.get("cwd") or os.getcwd())
        self.process = zygote.ForkedProcess(forker.fork(cmd, env, cwd))
        self.pid = self.pgid = None  # the pid comes from the zygote; signals go by it
        self.cwd = cwd
        return self.connection_info


class ForkedKernelManager(_UnixSockets, KernelManager):
    """A kernel manager whose kernels are forked by ``ForkingProvisioner``, on Unix sockets."""

    async def _async_pre_start_kernel(self, **kw: Any) -> tuple[list[str], dict[str, Any]]:
        if self.provisioner is None:
            self.kernel_id = self.kernel_id or str(uuid.uuid4())
            self.provisioner = ForkingProvisioner(
                kernel_id=self.kernel_id, kernel_spec=self.kernel_spec, parent=self
            )
        return await super()._async_pre_start_kernel(**kw)


class KernelPool:
    """At most one started, unused kernel per kernel name, ready for the next notebook."""

    def __init__(self) -> None:
        self._ready: dict[str, tuple[KernelManager, tuple]] = {}
        self._stopping: list[threading.Thread] = []
        self._lock = threading.Lock()
        atexit.register(self.close)

    @staticmethod
    def _fingerprint(kernel_name: str) -> tuple:
        return (kernel_name, os.getcwd(), tuple(sorted(_environment().items())))

    def take(self, kernel_name: str) -> KernelManager | None:
        """The kernel started for this notebook, if it is alive and was started as the
        notebook's own would be."""
        with self._lock:
            ready = self._ready.pop(kernel_name, None)
        if ready is None:
            return None
        km, fingerprint = ready
        if fingerprint == self._fingerprint(kernel_name) and km.is_alive():
            log.info("Notebook kernel: started ahead (warm)")
            return km
        log.info("Notebook kernel: a new one (the warm one was started for another environment)")
        _shutdown(km)
        return None

    def start_next(self, kernel_name: str) -> None:
        """Start a kernel for the next notebook (it boots in its own process)."""
        # nbclient's own kernels have asynchronous clients: while it waits for a cell's output
        # it also checks that the kernel is alive (a blocking client would wait forever for
        # the output of a kernel that was killed)
        km = ForkedKernelManager(kernel_name=kernel_name, client_class=READY_CLIENT)
        try:
            km.start_kernel(extra_arguments=[f"--IPKernelApp.exec_lines={PRELOAD}"])
        except Exception:  # noqa: BLE001 - a warm kernel is an optimisation, never a failure
            log.warning("Could not start a warm kernel; notebooks start their own", exc_info=True)
            return
        with self._lock:
            previous = self._ready.pop(kernel_name, None)
            self._ready[kernel_name] = (km, self._fingerprint(kernel_name))
        if previous is not None:
            _shutdown(previous[0])

    def stop(self, km: KernelManager) -> None:
        """Stop a kernel in the background (``close`` waits for it)."""
        stopping = threading.Thread(target=_shutdown, args=(km,), name="kernel-stop")
        with self._lock:
            self._stopping = [t for t in self._stopping if t.is_alive()] + [stopping]
        stopping.start()

    def close(self) -> None:
        with self._lock:
            ready, self._ready = list(self._ready.values()), {}
        for km, _ in ready:
            self.stop(km)
        self._wait_for_stops()
        zygote.close()

    def release(self) -> None:
        """For a process that ends without its exit hooks (``os._exit``): the files of the
        kernels started for no notebook (connection file, sockets) go now, without waiting for
        those kernels, which end with this process as their zygote does (0.17 s less than
        ``close``, measured); kernels being stopped finish stopping."""
        with self._lock:
            ready, self._ready = list(self._ready.values()), {}
        for km, _ in ready:
            km.cleanup_resources()
        self._wait_for_stops()

    def _wait_for_stops(self) -> None:
        with self._lock:
            stopping, self._stopping = self._stopping, []
        for thread in stopping:
            thread.join()


def _shutdown(km: KernelManager) -> None:
    try:
        km.shutdown_kernel(now=True)
    except Exception:  # noqa: BLE001 - already gone
        log.debug("kernel already gone", exc_info=True)
    finally:
        km.cleanup_resources()


POOL = KernelPool()


class _HandedOverClient(PapermillNotebookClient):
    """papermill's client on a warm kernel: before the first cell, the kernel takes this task's
    own variables (no secret among them: dag, task and run ids)."""

    def papermill_execute_cells(self):
        task = {k: v for k, v in os.environ.items() if _task_variable(k)}
        code = (
            "import os as _os\n"
            f"_os.environ.update({task!r})\n"
            f"[_os.environ.pop(_k) for _k in list(_os.environ) if _k.startswith({TASK_PREFIXES!r}) "
            f"and _k not in {sorted(task)!r}]\n"
            "del _os"
        )
        self.wait_for_reply(self.kc.execute(code, silent=True, store_history=False))
        super().papermill_execute_cells()

    async def _async_cleanup_kernel(self) -> None:
        """Close the client's channels and leave the kernel to ``POOL`` to stop: the notebook
        has nothing left for it to do, so its task need not wait for the kill."""
        km, kc = self.km, self.kc
        self.km = self.kc = None
        if kc is not None:
            kc.stop_channels()
        if km is not None:
            POOL.stop(km)

    _cleanup_kernel = run_sync(_async_cleanup_kernel)  # what papermill's execute calls


class _CodeCellSaves(NotebookExecutionManager):
    """papermill's record of a notebook's execution, written to the output notebook when a
    code cell starts (with the cells before it complete) and when the notebook ends, instead
    of also when each cell ends and when a markdown cell starts: a save copies, validates and
    writes the whole notebook (about 6 ms), twice per cell on the task's critical path."""

    _quiet = False

    def cell_start(self, cell, cell_index=None, **kwargs):
        self._quiet = cell.cell_type != "code"
        try:
            super().cell_start(cell, cell_index, **kwargs)
        finally:
            self._quiet = False

    def cell_complete(self, cell, cell_index=None, **kwargs):
        self._quiet = True  # saved with the next code cell's start, or the notebook's end
        try:
            super().cell_complete(cell, cell_index, **kwargs)
        finally:
            self._quiet = False

    def save(self, **kwargs):
        if not self._quiet:
            super().save(**kwargs)


class WarmKernelEngine(SocketEngine):
    """papermill's nbclient engine, with the kernel started ahead by ``POOL`` and the
    notebook saved at code cells' starts (``_CodeCellSaves``)."""

    @classmethod
    def execute_notebook(
        cls,
        nb,
        kernel_name,
        output_path=None,
        progress_bar=True,
        log_output=False,
        autosave_cell_every=30,
        **kwargs,
    ):
        # papermill's Engine.execute_notebook, with its execution manager replaced
        nb_man = _CodeCellSaves(
            nb,
            output_path=output_path,
            progress_bar=progress_bar,
            log_output=log_output,
            autosave_cell_every=autosave_cell_every,
        )
        nb_man.notebook_start()
        try:
            cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output, **kwargs)
        finally:
            nb_man.cleanup_pbar()
            nb_man.notebook_complete()
        return nb_man.nb

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name: str, **kwargs: Any):
        km = POOL.take(kernel_name)
        POOL.start_next(kernel_name)  # for the notebook after this one
        if km is None:
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
        # As NBClientEngine does, but on the warm kernel, which the client stops when the
        # notebook ends (cleanup_kc: its channels and the kernel, as for one it started).
        timeout = kwargs.pop("execution_timeout", None) or kwargs.get("timeout")
        startup_timeout = kwargs.pop("start_timeout", 60)
        client_args = merge_kwargs(
            remove_args(["input_path", "timeout", "startup_timeout"], **kwargs),
            timeout=timeout,
            startup_timeout=startup_timeout,
            kernel_name=kernel_name,
            log=papermill_log,
        )
        client = _HandedOverClient(nb_man, km=km, **client_args)
        return client.execute(cleanup_kc=True)


def use_warm_kernels() -> None:
    """Make ``WarmKernelEngine`` papermill's default engine in this process."""
    papermill_engines.register(None, WarmKernelEngine)
    papermill_engines.register("nbclient", WarmKernelEngine)
