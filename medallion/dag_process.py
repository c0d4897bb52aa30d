"""The DAG's process of `make run`: the command's side (``DagProcess``) and the process's own
entry point (``python -m medallion.dag_process``, which runs ``medallion.runs.main``).

The command starts the process first thing (``DagProcess(...)``): the process's own start
(Python, Airflow and its execution API imported, the DAG parsed: about 3 s of a 100-line run's
8-12 s here) then overlaps all the command does before the run on the other core: the services'
check (0.2-0.3 s) and its heavier imports and bootstrap (buckets and SQL objects, 0.7 s). The
services' connections reach the process as a line on its stdin (``use_environment``), before it
starts anything that resolves one (the first notebook's kernel). The process runs the DAG only
when the command says so (``run``: another line). If the command stops before (a service that
does not answer), it ends the process (``cancel``), which has written nothing yet; a process
whose stdin closes before the line (its command killed) ends without running.

A light module (the standard library and ``medallion.settings``): the command imports it before
anything heavy, and the processes that the DAG's process spawns (the notebooks' renderer,
``medallion.report``) import their parent's main module, this one, and not ``medallion.runs``
(0.4 s of CPU).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

from medallion.settings import DAG_ID, LOCAL_DIR, PROJECT_ROOT

AIRFLOW_HOME = LOCAL_DIR / "airflow"
GO = "run\n"  # what the command writes when the process may run the DAG
CANCEL_WAIT_S = 5.0


def airflow_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for an embedded Airflow: SQLite metadata under .local/, our DAGs folder."""
    env = dict(base or os.environ)
    env.setdefault("AIRFLOW_HOME", str(AIRFLOW_HOME))
    env.update(
        {
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": env.get(
                "AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING"
            ),
            "MEDALLION_HOME": str(PROJECT_ROOT),
        }
    )
    return env


def ensure_airflow_db(env: dict[str, str]) -> None:
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    if not db.exists():
        Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [_airflow_bin(), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL
        )


def _airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


class DagProcess:
    """One run of the DAG (as `airflow dags test` makes it) in a child process, started ahead
    of the run: it imports and parses while the command goes on, takes the services'
    connections (``use_environment``) and waits for ``run``."""

    def __init__(self, conf: dict[str, Any], env: dict[str, str], log_file: Path) -> None:
        ensure_airflow_db(env)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = log_file
        self.result_file = log_file.with_suffix(".result.json")
        self.result_file.unlink(missing_ok=True)
        self.tasks = TaskProgress(Path(env["AIRFLOW_HOME"]) / "airflow.db")
        self.environment_sent = False
        with log_file.open("w") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "medallion.dag_process", json.dumps(conf)]
                + [str(self.result_file)],
                env=env,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )

    def use_environment(self, variables: dict[str, str]) -> None:
        """Add ``variables`` (the services' connections) to the process's environment: it waits
        for them before it starts the first notebook's kernel."""
        self._tell(json.dumps(variables) + "\n")
        self.environment_sent = True

    def run(self, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Let the process run the DAG and wait for it: run id and state (and, when the run's
        conf names a parameter set, its ``summary``). ``progress`` gets a line for each task
        as it finishes."""
        if not self.environment_sent:
            self.use_environment({})  # it was started with everything it needs
        self._tell(GO)
        with suppress(BrokenPipeError):
            self.proc.stdin.close()
        while self.proc.poll() is None:
            with suppress(subprocess.TimeoutExpired):  # returns as soon as the child ends
                self.proc.wait(timeout=0.5)
            self._report(progress)
        self._report(progress)
        if not self.result_file.exists():
            raise RuntimeError(
                f"The DAG did not run (exit {self.proc.returncode}); see {self.log_file}"
            )
        return json.loads(self.result_file.read_text())

    def _tell(self, line: str) -> None:
        with suppress(BrokenPipeError):  # it ended already: `run` says so
            self.proc.stdin.write(line)
            self.proc.stdin.flush()

    def cancel(self) -> None:
        """End the process without a run (it has not started one: it waits for ``run``); the
        kernels it started end with it."""
        with suppress(BrokenPipeError):
            self.proc.stdin.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=CANCEL_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _report(self, progress: Callable[[str], None] | None) -> None:
        for line in self.tasks.finished() if progress else ():
            progress(line)


def environment_from_command() -> bool:
    """In the DAG's process: wait for the command's environment variables (``use_environment``)
    and add them to this process's (False: its stdin closed first)."""
    line = sys.stdin.readline()
    if not line:
        return False
    os.environ.update(json.loads(line))
    return True


def told_to_run() -> bool:
    """In the DAG's process: wait for the command's ``run`` (False: its stdin closed first)."""
    return sys.stdin.readline() == GO


class TaskProgress:
    """Task instances of the newest run in an embedded Airflow's SQLite metadata, reported
    once each as they finish (read-only; a busy database is read again at the next call)."""

    FINISHED = ("success", "failed", "skipped", "upstream_failed", "up_for_retry", "removed")

    def __init__(self, db: Path):
        self.db = db
        self.reported: set[tuple] = set()
        self.after_run = self._query("select coalesce(max(id), 0) from dag_run") or [(0,)]

    def _query(self, sql: str, *args) -> list[tuple] | None:
        if not self.db.exists():
            return None
        try:
            with closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=0.2)) as c:
                return c.execute(sql, args).fetchall()
        except sqlite3.Error:
            return None

    def finished(self) -> list[str]:
        rows = self._query(
            f"""select ti.task_id, ti.map_index, ti.rendered_map_index, ti.try_number, ti.state,
                       ti.duration
                from task_instance ti join dag_run dr
                  on dr.dag_id = ti.dag_id and dr.run_id = ti.run_id
                where dr.dag_id = ? and dr.id > ?
                  and ti.state in ({", ".join("?" * len(self.FINISHED))})
                order by ti.end_date, ti.task_id, ti.map_index""",
            DAG_ID,
            self.after_run[0][0],
            *self.FINISHED,
        )
        lines = []
        for task_id, map_index, file_name, try_number, state, duration in rows or []:
            if (key := (task_id, map_index, try_number, state)) in self.reported:
                continue
            self.reported.add(key)
            name = task_id if map_index < 0 else f"{task_id} [{file_name or map_index}]"
            seconds = f"{duration:7.1f} s" if duration is not None else ""
            lines.append(f"  {name:<52} {state:<16}{seconds}")
        return lines


if __name__ == "__main__":
    import gc

    # Airflow's imports and the DAG's parse make objects by the million and free few: the
    # collector, run every few hundred of them, took a fifth of the imports' time (1.67 ->
    # 1.34 s measured). It runs again once the DAG is parsed (medallion.runs._dag_test).
    gc.disable()
    from medallion.runs import main

    main(sys.argv[1:])
