"""papermill with the clients of its remote notebook stores imported on first use.

When papermill's I/O module (``papermill.iorw``) is imported, it imports the client of every
remote store it can read notebooks from and write them to: S3 (boto3), Azure, Google Cloud
Storage and GitHub. They are all installed (the Airflow provider requires papermill[all]), and
importing them takes about 0.5 s in every process that runs a notebook: the in-process run's,
and each task's in a real Airflow. The notebooks of this pipeline are local files.

``install`` (called when the ``medallion`` package is imported, so before anything of ours
imports papermill) has ``papermill.iorw`` imported without those clients and puts in their
place functions that import the client when a remote path is first used: an ``s3://`` or
``gs://`` notebook works as before.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

IO_MODULE = "papermill.iorw"

# papermill.iorw's name for each remote store's client -> (module, name in that module)
REMOTE_CLIENTS = {
    "S3": ("papermill.s3", "S3"),
    "ADL": ("papermill.adl", "ADL"),
    "AzureBlobStore": ("papermill.abs", "AzureBlobStore"),
    "GCSFileSystem": ("gcsfs", "GCSFileSystem"),
    "gs_is_retriable": ("gcsfs.retry", "is_retriable"),
    "Github": ("github", "Github"),
}


def install() -> None:
    """From now on in this process, ``papermill.iorw`` imports its remote clients on first use."""
    if IO_MODULE not in sys.modules and not any(
        isinstance(finder, _ClientsOnFirstUse) for finder in sys.meta_path
    ):
        sys.meta_path.insert(0, _ClientsOnFirstUse())


def on_first_use(module: str, name: str, fallback: Callable[..., Any]) -> Callable[..., Any]:
    """A stand-in for ``module.name`` that imports the module when it is called (``fallback``,
    papermill's own, if it cannot be imported: papermill then says what to install)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            client = getattr(importlib.import_module(module), name)
        except ImportError:
            client = fallback
        return client(*args, **kwargs)

    call.__name__ = name
    call.__qualname__ = f"{module}.{name} (imported on first use)"
    return call


class _ClientsOnFirstUse(importlib.abc.MetaPathFinder):
    """Finds ``papermill.iorw`` as Python would, and runs it without the remote clients."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != IO_MODULE:
            return None
        sys.meta_path.remove(self)  # once per process
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            # A module that is None in sys.modules fails to import: iorw's own fallback. For
            # the time of this import (0.3 s, once per process), it fails in any thread: ours
            # import papermill before they start threads that could import these clients.
            skipped = {m for m, _ in REMOTE_CLIENTS.values() if m not in sys.modules}
            sys.modules.update(dict.fromkeys(skipped))
            try:
                run_module(module)
            finally:
                for m in skipped:
                    if sys.modules.get(m, ...) is None:
                        del sys.modules[m]
            for attribute, (m, name) in REMOTE_CLIENTS.items():
                setattr(module, attribute, on_first_use(m, name, getattr(module, attribute)))

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
