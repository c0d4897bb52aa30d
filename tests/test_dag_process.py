"""The DAG's process of `make run` (medallion.dag_process): started ahead of the run, it runs
the DAG only when the command says so, and ends with nothing run otherwise."""

import os
import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path

import pytest

from medallion.dag_process import CANCEL_WAIT_S, DagProcess, airflow_env
from medallion.settings import PROJECT_ROOT

CONF = {"params_env": "local", "input_path": str(PROJECT_ROOT / "data" / "sample")}


def marked_processes(marker: str) -> list[int]:
    """Processes with ``marker`` in their environment: the DAG's process and all it started
    (the kernels' zygote, kernels, the notebooks' renderer)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:  # ended meanwhile, or not ours
            continue
    return found


def until_none_left(marker: str, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def dag_runs(env: dict[str, str]) -> int:
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("select count(*) from dag_run").fetchone()[0]


@pytest.fixture
def started(tmp_path):
    """A DAG's process of the sample, started as `make run` starts it; ended afterwards."""
    marker = f"medallion-test-{uuid.uuid4()}"
    env = airflow_env(dict(os.environ, MEDALLION_TEST_MARKER=marker))
    process = DagProcess(CONF, env, tmp_path / "last_run.log")
    yield process, env, marker
    if process.proc.poll() is None:
        process.cancel()


def test_a_dags_process_whose_command_ends_first_runs_nothing(started):
    process, env, marker = started
    runs_before = dag_runs(env)
    process.proc.stdin.close()  # the command ended (killed) without saying `run`
    assert process.proc.wait(timeout=60) == 3
    assert not process.result_file.exists()
    assert dag_runs(env) == runs_before
    assert until_none_left(marker) == []  # its kernel and renderer ended with it


def test_cancel_ends_a_dags_process_at_once_with_nothing_run(started):
    process, env, marker = started
    runs_before = dag_runs(env)
    time.sleep(1)  # under way: importing Airflow, starting the first kernel
    began = time.monotonic()
    process.cancel()
    assert time.monotonic() - began < CANCEL_WAIT_S
    assert process.proc.returncode != 0
    assert not process.result_file.exists()
    assert dag_runs(env) == runs_before
    assert until_none_left(marker) == []


def test_the_first_kernel_starts_only_with_the_commands_connections(started):
    process, env, marker = started
    time.sleep(4)  # imported and parsed meanwhile; no kernel without the connections
    assert marked_processes(marker) == [process.proc.pid]
    process.use_environment({"MEDALLION_TEST_HANDED": marker})
    deadline = time.monotonic() + 30
    while len(kernels := marked_processes(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    started_after = [pid for pid in kernels if pid != process.proc.pid]
    assert started_after, "no kernel started once the connections came"
    environ = Path(f"/proc/{started_after[0]}/environ").read_bytes()
    assert f"MEDALLION_TEST_HANDED={marker}".encode() in environ.split(b"\0")
