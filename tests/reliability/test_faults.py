"""Faults during a run: PostgreSQL crashing at each step after silver, S3 down for longer than
the retries. Each run ends published with exact counts, or fails with a clear message and the
next run loads the delivery exactly once."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import text

from medallion import services, storage
from medallion.settings import OUTPUTS_DIR as OUTPUTS
from medallion.settings import TRANSIT_TABLES
from tests.corpus import render_csv
from tests.reliability.conftest import (
    Outcome,
    PipelineRun,
    crash_postgres,
    wait_for,
    waiting_on_lock,
)
from tests.test_airflow import sales_lines

pytestmark = pytest.mark.reliability
LINES = 300
KILL_LINES = 150_000  # silver takes a few seconds: time to kill its kernel


def delivery(tmp_path: Path, prefix: str, n: int = LINES) -> tuple[Path, Decimal]:
    """A folder with one new file of n valid lines (ids of its own) and its sum of sales."""
    rows = sales_lines(prefix, n)
    folder = tmp_path / prefix
    folder.mkdir()
    (folder / f"ventas_{prefix.lower()}.csv").write_bytes(render_csv(rows))
    return folder, sum(Decimal(r["sales"]) for r in rows)


def published(db, scenario: str, outcome: str, prefix: str, run_id: str, sales: Decimal):
    """The run's counts, checked exact: every line of the delivery in staging once."""
    with db.connect() as conn:
        lines_in, quarantined = conn.execute(
            text("select coalesce(sum(lines_in), 0), coalesce(sum(rows_quarantined), 0) "
                 "from audit.run_log where run_id = :r and step = 'silver'"),
            {"r": run_id},
        ).one()  # fmt: skip
        staged, distinct, staged_sales = conn.execute(
            text("select count(*), count(distinct line_key), sum(sales) "
                 "from staging.fact_operaciones_ventas where line_key like :p"),
            {"p": f"{prefix}-%"},
        ).one()  # fmt: skip
        left_in_transit = conn.execute(
            text("select count(*) from public.bulk_fact_operaciones_ventas where run_id = :r"),
            {"r": run_id},
        ).scalar_one()
    row = Outcome(scenario, outcome, int(lines_in), staged, int(quarantined), staged - distinct)
    assert (lines_in, staged, quarantined, row.duplicated) == (LINES, LINES, 0, 0), row
    assert staged_sales == sales
    assert left_in_transit == 0
    return row


def retried(output: str, task: str) -> bool:
    return any(task in line and "up_for_retry" in line for line in output.splitlines())


def run_id_of_delivery(db, prefix: str) -> str | None:
    """The run that is loading this delivery (its silver step is in the run log)."""
    with db.connect() as conn:
        return conn.execute(
            text("select run_id from audit.run_log where step = 'silver' and source like :f "
                 "order by started_at desc limit 1"),
            {"f": f"%ventas_{prefix.lower()}.csv%"},
        ).scalar()  # fmt: skip


def transit_rows(db, run_id: str) -> int:
    with db.connect() as conn:
        return conn.execute(
            text("select count(*) from public.bulk_fact_operaciones_ventas where run_id = :r"),
            {"r": run_id},
        ).scalar_one()


@contextmanager
def merge_waiting(db, folder: Path) -> Iterator[PipelineRun]:
    """The run of ``folder`` with its merge waiting, until the block ends, for the merge's
    advisory lock, which this holds."""
    holder = db.connect()
    holder.execute(text("select pg_advisory_lock(hashtext('staging.sp_merge_operaciones_ventas'))"))
    run = PipelineRun(folder)
    try:
        wait_for(lambda: waiting_on_lock(db, "%sp_merge_operaciones_ventas%"), "the merge")
        yield run
    finally:
        holder.invalidate()


def test_postgres_crash_during_the_merge_recovers_by_itself(db, tmp_path, report):
    folder, sales = delivery(tmp_path, "PGMERGE")
    with merge_waiting(db, folder) as run:
        run_id = run_id_of_delivery(db, "PGMERGE")
        assert transit_rows(db, run_id) == LINES
        crash_postgres()
        assert transit_rows(db, run_id) == 0  # crash recovery emptied the UNLOGGED table
    code, output = run.wait()
    assert code == 0, output[-3000:]
    assert retried(output, "merge_staging")
    report.add(published(db, "PostgreSQL crash during merge", "published after a retry",
                         "PGMERGE", run_id, sales))  # fmt: skip


def test_transit_rows_lost_before_the_merge_are_reloaded_in_the_same_try(db, tmp_path, report):
    folder, sales = delivery(tmp_path, "TRANSITLOST")
    with merge_waiting(db, folder) as run:
        run_id = run_id_of_delivery(db, "TRANSITLOST")
        with db.begin() as conn:  # what crash recovery does to the UNLOGGED transit tables
            for table in TRANSIT_TABLES.values():
                conn.execute(text(f"truncate public.{table}"))
        assert transit_rows(db, run_id) == 0
    code, output = run.wait()
    assert code == 0, output[-3000:]
    assert not retried(output, "merge_staging")  # refused, reloaded and merged in one try
    report.add(published(db, "transit rows lost before the merge", "reloaded, published",
                         "TRANSITLOST", run_id, sales))  # fmt: skip


def test_postgres_crash_during_the_load_recovers_by_itself(db, tmp_path, report):
    folder, sales = delivery(tmp_path, "PGLOAD")
    holder = db.connect()  # the load waits to clear the fact's transit rows
    holder.execute(text("begin"))
    holder.execute(text("lock table public.bulk_fact_operaciones_ventas in access exclusive mode"))
    run = PipelineRun(folder)
    try:
        wait_for(lambda: waiting_on_lock(db, "%bulk_fact_operaciones_ventas%"), "the load")
        crash_postgres()
    finally:
        holder.invalidate()
    code, output = run.wait()
    assert code == 0, output[-3000:]
    assert retried(output, "04_load_postgres")
    run_id = PipelineRun.run_id(output)
    report.add(published(db, "PostgreSQL crash during load", "published after a retry",
                         "PGLOAD", run_id, sales))  # fmt: skip


def test_postgres_crash_during_the_publish_gate_publishes_nothing_then_recovers(
    db, tmp_path, report
):
    folder, sales = delivery(tmp_path, "PGGATE")
    run = PipelineRun(folder)
    run_id = wait_for(lambda: run_id_of_delivery(db, "PGGATE"), "the run's silver step")
    holder = db.connect()  # the gate's record of its checks waits for this row's transaction
    holder.execute(text("begin"))
    holder.execute(
        text("insert into audit.run_log (run_id, step, source, status) "
             "values (:r, 'publish', 'staging', 'held by the test')"),
        {"r": run_id},
    )  # fmt: skip
    try:
        wait_for(lambda: waiting_on_lock(db, "%sp_merge_operaciones_ventas%"), "the gate")
        with db.connect() as conn:  # merged but not committed: nothing visible yet
            assert conn.execute(
                text("select count(*) from staging.fact_operaciones_ventas where line_key like :p"),
                {"p": "PGGATE-%"},
            ).scalar_one() == 0  # fmt: skip
        crash_postgres()
    finally:
        holder.invalidate()
    code, output = run.wait()
    assert code == 0, output[-3000:]
    assert retried(output, "merge_staging")
    report.add(published(db, "PostgreSQL crash during the gate", "published after a retry",
                         "PGGATE", run_id, sales))  # fmt: skip


@pytest.mark.parametrize(
    ("prefix", "table", "after", "task"),
    [
        ("S3DOWN", "audit.run_log", "discover", "01_bronze_ingest"),
        ("S3SILVER", "audit.step_metrics", "bronze", "02_silver_clean"),
    ],
    ids=["bronze", "silver"],
)
def test_s3_down_longer_than_the_retries_fails_clearly_then_the_next_run_loads_it(
    db, tmp_path, report, prefix, table, after, task
):
    folder, sales = delivery(tmp_path, prefix)
    file_name = f"ventas_{prefix.lower()}.csv"
    # The step before the task ends with a row in a table of the warehouse, after its work
    # with S3: that row waits for the test's lock, so S3 is gone before the task starts (a
    # 300-line step is quick: killed as it was seen done, S3 could be gone a step later).
    holder = db.connect()
    holder.execute(text("begin"))
    holder.execute(text(f"lock table {table} in share mode"))
    run = PipelineRun(folder)
    try:
        wait_for(lambda: waiting_on_lock(db, f"%{table}%'{after}'%"), f"the {after} step's end")
        kill_s3()  # killed, not stopped: it answers nothing from now on
        holder.invalidate()
        code, output = run.wait()
    finally:
        holder.invalidate()
        services.start_s3()
    assert code != 0
    # the failure names the file, the step and the object store it could not reach
    failure = next(line for line in output.splitlines() if line.startswith(f"{file_name}:"))
    assert str(services.S3_PORT) in failure and "Connection refused" in failure, failure
    assert retried(output, task)  # a service fault is retried (data errors not)
    with db.connect() as conn:
        status = conn.execute(
            text("select status from audit.deliveries where file_name = :f"), {"f": file_name}
        ).scalar_one()
    assert status == "failed"
    step = task.split("_")[1]
    report.add(Outcome(f"S3 killed during {step} (3 tries)", "failed clearly, nothing loaded",
                       LINES, 0, 0, 0))  # fmt: skip
    code, output = PipelineRun(folder).wait()
    assert code == 0, output[-3000:]
    assert "reintento" in output  # the ledger retries the failed file
    report.add(published(db, "S3 back: the next run", "published",
                         prefix, PipelineRun.run_id(output), sales))  # fmt: skip


def test_s3_down_before_the_run_is_one_clear_line(db, tmp_path):
    folder, _ = delivery(tmp_path, "S3GONE")
    kill_s3()
    try:
        code, output = PipelineRun(folder).wait()
    finally:
        services.start_s3()
    assert code == 2
    assert "error: El almacén S3 de la conexión minio_default no responde" in output
    assert "Traceback" not in output


def kill_s3() -> None:
    """SIGKILL the embedded S3 server's process group (a crash: no grace period)."""
    import os
    import signal

    os.killpg(int(services.PATHS.s3_pid.read_text()), signal.SIGKILL)
    wait_for(lambda: not services._port_open(services.S3_PORT), "the S3 port to close", 30)


def test_kernel_killed_while_silver_writes_is_retried_to_exact_counts(db, tmp_path, report):
    import psutil

    rows = [  # amounts of their own: the generator's have more decimals past line 9999
        r | {"sales": f"{100 + i % 900}.{i % 10_000:04d}", "profit": "1.5"}
        for i, r in enumerate(sales_lines("KILL", KILL_LINES))
    ]
    folder = tmp_path / "KILL"
    folder.mkdir()
    (folder / "ventas_kill.csv").write_bytes(render_csv(rows))
    run = PipelineRun(folder)

    def cleaning() -> bool:
        """Notebook 02 of this run is running its cleaning cell (papermill records each cell's
        status; copies of earlier sessions' runs are in the same outputs folder)."""
        return any(map(_cleaning, OUTPUTS.glob("*/02_silver_clean__ventas_kill.csv.ipynb")))

    wait_for(cleaning, "notebook 02's cleaning cell")
    kernels = sorted(
        (p for p in psutil.Process(run.proc.pid).children(recursive=True) if _kernel(p)),
        key=lambda p: p.create_time(),
    )
    # notebook 02's kernel, and maybe the one started ahead for the next notebook (warm
    # kernels, medallion.kernels): notebook 02's was started first
    assert 1 <= len(kernels) <= 2, kernels
    kernels[0].kill()
    code, output = run.wait()
    assert code == 0, output[-3000:]
    assert retried(output, "02_silver_clean")
    run_id = PipelineRun.run_id(output)
    with db.connect() as conn:
        lines_in, rows_out, quarantined, staged = conn.execute(
            text("select sum(lines_in), sum(rows_out), sum(rows_quarantined), "
                 "(select count(*) from staging.fact_operaciones_ventas "
                 " where line_key like 'KILL-%') "
                 "from audit.run_log where run_id = :r and step = 'silver'"),
            {"r": run_id},
        ).one()  # fmt: skip
    assert (lines_in, rows_out, quarantined, staged) == (KILL_LINES, KILL_LINES, 0, KILL_LINES)
    # the killed kernel's temporary folder was removed by the next step that made one
    assert not [
        d for d in Path(tempfile.gettempdir()).glob(f"{storage.TEMP_PREFIX}*-*")
        if not services.pid_alive(int(d.name.removeprefix(storage.TEMP_PREFIX).split("-")[0]))
    ]  # fmt: skip
    report.add(Outcome("kernel killed during silver", "published after a retry",
                       int(lines_in), staged, int(quarantined), 0))  # fmt: skip


def _kernel(process) -> bool:
    """A notebook's kernel: started by jupyter_client (ipykernel_launcher), or forked from the
    run's zygote (medallion.zygote: the zygote's child, with its command line)."""
    command = " ".join(process.cmdline())
    if "ipykernel" in command:
        return True
    parent = process.parent()
    return "medallion.zygote" in command and "medallion.zygote" in " ".join(parent.cmdline())


def _cleaning(notebook: Path) -> bool:
    try:
        cells = json.loads(notebook.read_text())["cells"]
    except (ValueError, OSError):  # being written
        return False
    return any(
        c.get("metadata", {}).get("papermill", {}).get("status") == "running"
        and "silver.clean_file" in "".join(c["source"])
        for c in cells
    )


def test_two_runs_at_once_on_the_same_files_load_each_line_once(db, tmp_path, report):
    folder, sales = delivery(tmp_path, "TWICE")
    first, second = PipelineRun(folder), PipelineRun(folder)
    results = [first.wait(), second.wait()]
    assert [code for code, _ in results] == [0, 0], [out[-2000:] for _, out in results]
    with db.connect() as conn:
        staged, distinct, staged_sales = conn.execute(
            text("select count(*), count(distinct line_key), sum(sales) "
                 "from staging.fact_operaciones_ventas where line_key like 'TWICE-%'")
        ).one()  # fmt: skip
        status = conn.execute(
            text("select status from audit.deliveries where file_name = 'ventas_twice.csv'")
        ).scalar_one()
    assert (staged, distinct, staged_sales, status) == (LINES, LINES, sales, "loaded")
    report.add(Outcome("two runs at once, same files", "both succeed, each line once",
                       LINES, staged, 0, staged - distinct))  # fmt: skip
