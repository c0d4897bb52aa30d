"""Scale-out on Celery without Docker (`make celery-check`): Debian's redis-server and two
Celery workers against `make airflow`'s components; one run's per-file tasks spread over both."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.corpus import render_csv
from tests.deployment import start_local_airflow, stop_local_airflow
from tests.test_airflow import sales_lines, states

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def celery():
    if shutil.which("redis-server") is None:
        pytest.fail(
            "redis-server is missing: `make test` installs it (apt-get install redis-server)"
        )
    local = start_local_airflow("celery", EXECUTOR="CeleryExecutor", WORKERS="2")
    yield local
    stop_local_airflow(local)


def test_one_runs_files_spread_over_two_workers(celery, tmp_path):
    status = celery.dep_status()
    assert status["executor"] == "CeleryExecutor"
    assert {"redis", "worker1", "worker2"} <= {
        n for n, s in status["processes"].items() if s == "running"
    }
    assert (
        celery.component_environments()["scheduler"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    )
    for n in range(1, 5):
        (tmp_path / f"ventas_celery_{n}.csv").write_bytes(render_csv(sales_lines(f"CE{n}", 30)))
    run_id = celery.trigger(input_path=str(tmp_path))
    assert celery.wait(run_id) == "success"
    tis = celery.task_instances(run_id)
    files = {f"ventas_celery_{n}.csv" for n in range(1, 5)}
    for task in ("files.01_bronze_ingest", "files.02_silver_clean"):
        assert states(tis, task) == dict.fromkeys(files, "success")
    mapped = [t for t in tis if t["task_id"].startswith("files.")]
    workers = {re.sub(r".*-(worker\d)$", r"\1", t["hostname"]) for t in mapped}
    assert workers == {"worker1", "worker2"}, [t["hostname"] for t in mapped]
    assert {t["executor"] for t in mapped} <= {None, "CeleryExecutor"}
    with celery.engine.connect() as conn:
        from sqlalchemy import text

        facts = conn.execute(text("select count(*) from staging.fact_operaciones_ventas")).scalar()
    assert facts == 4 * 30
