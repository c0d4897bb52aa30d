"""Object-store plumbing that needs no server."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from medallion import storage

pytestmark = pytest.mark.pure  # no service: runs without starting any


def test_work_dirs_of_dead_processes_are_removed_and_live_ones_kept():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    root = Path(tempfile.gettempdir())
    orphan = root / f"{storage.TEMP_PREFIX}{gone.pid}-left-by-a-killed-kernel"
    (orphan / "part.parquet").parent.mkdir(parents=True, exist_ok=True)
    (orphan / "part.parquet").write_bytes(b"half written")
    with storage.work_dir() as mine:
        assert Path(mine).name.startswith(f"{storage.TEMP_PREFIX}{os.getpid()}-")
        assert not orphan.exists()
        with storage.work_dir():  # a second one of the same process keeps the first
            assert Path(mine).exists()
