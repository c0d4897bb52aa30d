"""`make airflow` as users run the pipeline: a real scheduler, api-server, dag-processor and
triggerer; files dropped into a folder; runs triggered and followed through the REST API v2;
connections that exist only in Airflow's metadata (`airflow connections add`)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from sqlalchemy import text

from medallion.settings import OUTPUTS_DIR, PROJECT_ROOT, run_slug
from tests.corpus import CASES, render_csv
from tests.deployment import DAG, PG_CONN, S3_CONN, start_local_airflow, stop_local_airflow
from tests.test_e2e import TABLES, snapshot

pytestmark = pytest.mark.e2e


def sales_lines(prefix: str, n: int) -> list[dict[str, str]]:
    """n valid lines with ids of their own (the ledger and the warehouse see new data)."""
    from tests.test_incremental import line

    return [
        line(i, customer=i % 4, product=i % 5, day=1 + i % 20)
        | {"row_id": f"{prefix}-{i}", "customer_id": f"{prefix}-C{i % 4}",
           "product_id": f"{prefix}-P{i % 5}", "order_id": f"{prefix}-O{i}"}
        for i in range(1, n + 1)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def airflow():
    local = start_local_airflow("airflow")
    yield local
    stop_local_airflow(local)
    assert not _leftover_processes(local), "make airflow-stop left processes behind"


def _leftover_processes(local) -> list[int]:
    from medallion.deploy import _marked_processes

    return _marked_processes(local.dep)


@pytest.fixture(scope="module")
def drop_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("incoming")
    for name in ("ventas_2024_h1.csv", "ventas_2024_h2.json"):
        (folder / name).write_bytes((PROJECT_ROOT / "data" / "sample" / name).read_bytes())
    (folder / "ventas_extra.csv").write_bytes(render_csv(sales_lines("AF1", 40)))
    return folder


def states(tis: list[dict], task_id: str) -> dict[str, str]:
    """{file name (the rendered map index): state} of a per-file task."""
    return {t["rendered_map_index"]: t["state"] for t in tis if t["task_id"] == task_id}


def ledger(db) -> dict[str, tuple[str, str | None]]:
    with db.connect() as conn:
        rows = conn.execute(text("select file_name, status, message from audit.deliveries"))
        return {name: (status, message) for name, status, message in rows}


@pytest.fixture(scope="module")
def first_run(airflow, drop_folder):
    run_id = airflow.trigger(input_path=str(drop_folder))
    return run_id, airflow.wait(run_id), snapshot(airflow.engine)


def test_components_get_no_connection_variables(airflow):
    """Every task resolves its connections from Airflow's metadata: nothing in the env."""
    environments = airflow.component_environments()
    assert {"scheduler", "dag-processor", "triggerer"} <= set(environments)
    for name, env in environments.items():
        assert not [k for k in env if k.startswith("AIRFLOW_CONN_")], name
        for shared in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
            assert env[shared] == environments["scheduler"][shared], (name, shared)
    listed = json.loads(airflow.airflow_cli("connections", "list", "-o", "json"))
    assert {S3_CONN, PG_CONN} <= {c["conn_id"] for c in listed}


def test_three_new_files_load_in_per_file_tasks(airflow, first_run, sample_expected):
    run_id, state, counts = first_run
    assert state == "success"
    tis = airflow.task_instances(run_id)
    files = {"ventas_2024_h1.csv", "ventas_2024_h2.json", "ventas_extra.csv"}
    for task in ("files.01_bronze_ingest", "files.02_silver_clean"):
        assert states(tis, task) == dict.fromkeys(files, "success"), task
    once = {t["task_id"]: t["state"] for t in tis if t["map_index"] == -1}
    assert once == dict.fromkeys(
        ["prepare_run", "discover_deliveries", "file_tasks", "03_gold_model",
         "04_load_postgres", "merge_staging", "05_resultado", "record_run"],
        "success",
    )  # fmt: skip
    valid = sum(f["valid"] for f in sample_expected.values()) + 40
    assert counts["staging.fact_operaciones_ventas"][0] == valid
    assert counts["staging.vw_operaciones_ventas"][0] == valid
    assert ledger(airflow.engine) == dict.fromkeys(files, ("loaded", None))
    folder = OUTPUTS_DIR / run_slug(run_id)
    assert sorted(p.name for p in folder.glob("*.ipynb")) == sorted(
        [f"{step}__{f}.ipynb" for f in files for step in ("01_bronze_ingest", "02_silver_clean")]
        + ["03_gold_model.ipynb", "04_load_postgres.ipynb", "05_resultado.ipynb"]
    )
    with airflow.engine.connect() as conn:
        sales = conn.execute(
            text("select sum(sales) from staging.fact_operaciones_ventas")
        ).scalar()
    extra = sum(Decimal(r["sales"]) for r in sales_lines("AF1", 40))
    assert sales == sum(Decimal(f["sales"]) for f in sample_expected.values()) + extra


def test_notebook_output_reaches_the_task_log_without_secrets(airflow, first_run, secrets_in_use):
    run_id, _, _ = first_run
    silver = next(
        t for t in airflow.task_instances(run_id)
        if t["task_id"] == "files.02_silver_clean" and t["rendered_map_index"] == "ventas_extra.csv"
    )  # fmt: skip
    log = airflow.task_log(run_id, "files.02_silver_clean", silver["map_index"])
    assert "archivos procesados" in log  # printed by a cell of notebook 02
    assert "lines_in" in log
    for secret in secrets_in_use:
        assert secret not in log


def test_a_cleared_run_reruns_to_the_same_result(airflow, first_run):
    """What a retry does, for every step from silver on: the same data, nothing doubled."""
    run_id, _, before = first_run
    airflow.api(
        "POST",
        f"/api/v2/dags/{DAG}/clearTaskInstances",
        {
            "dag_run_id": run_id,
            "task_ids": ["files.02_silver_clean"],
            "include_downstream": True,
            "only_failed": False,
            "dry_run": False,
        },
    )
    assert airflow.wait(run_id) == "success"
    tis = airflow.task_instances(run_id)
    retried = {t["task_id"] for t in tis if t["try_number"] == 2 and t["state"] == "success"}
    assert {"files.02_silver_clean", "03_gold_model", "merge_staging"} <= retried
    assert snapshot(airflow.engine) == before
    assert {s for s, _ in ledger(airflow.engine).values()} == {"loaded"}


def test_triggering_again_loads_nothing_and_changes_nothing(airflow, first_run, drop_folder):
    _, _, before = first_run
    run_id = airflow.trigger(input_path=str(drop_folder))
    assert airflow.wait(run_id) == "success"
    tis = airflow.task_instances(run_id)
    skipped = {t["task_id"] for t in tis if t["state"] == "skipped"}
    assert {"files.01_bronze_ingest", "03_gold_model", "merge_staging"} <= skipped
    assert snapshot(airflow.engine) == before
    with airflow.engine.connect() as conn:
        decisions = conn.execute(
            text("select status, count(*) from audit.run_log where run_id = :r "
                 "and step = 'discover' group by status"),
            {"r": run_id},
        ).all()  # fmt: skip
    assert decisions == [("already loaded", 3)]


def test_a_corrupt_file_fails_its_own_task_and_the_others_are_published(
    airflow, first_run, drop_folder
):
    (drop_folder / "ventas_rotas.csv").write_bytes(
        next(c for c in CASES if c.name == "binary_garbage.csv").build()
    )
    (drop_folder / "ventas_nuevas.csv").write_bytes(render_csv(sales_lines("AF2", 12)))
    before = snapshot(airflow.engine)
    run_id = airflow.trigger(input_path=str(drop_folder))
    assert airflow.wait(run_id) == "failed"
    tis = airflow.task_instances(run_id)
    assert states(tis, "files.02_silver_clean") == {
        "ventas_nuevas.csv": "success",
        "ventas_rotas.csv": "failed",
    }
    by_task = {t["task_id"]: t for t in tis if t["map_index"] == -1}
    for task in ("03_gold_model", "04_load_postgres", "merge_staging"):
        assert by_task[task]["state"] == "success", task
    assert by_task["record_run"]["state"] == "failed"
    bad = next(t for t in tis if t.get("rendered_map_index") == "ventas_rotas.csv"
               and t["task_id"] == "files.02_silver_clean")  # fmt: skip
    assert bad["try_number"] == 1  # a data error is not retried
    log = airflow.task_log(run_id, "files.02_silver_clean", bad["map_index"])
    assert "ventas_rotas.csv: s3://" in log and "FileRejected" in log
    summary = airflow.task_log(run_id, "record_run")
    assert "1 of 2 new file(s) failed" in summary and "ventas_rotas.csv" in summary
    entries = ledger(airflow.engine)
    assert entries["ventas_nuevas.csv"] == ("loaded", None)
    status, message = entries["ventas_rotas.csv"]
    assert status == "failed" and "FileRejected" in message and "the file is binary" in message
    after = snapshot(airflow.engine)
    assert (
        after["staging.fact_operaciones_ventas"][0]
        == before["staging.fact_operaciones_ventas"][0] + 12
    )
    assert set(after) == set(TABLES)


def test_no_secret_in_any_log(airflow, first_run, secrets_in_use):
    """Component and task logs of the deployment: no password, key or token in them."""
    from medallion import services

    secrets = [
        *secrets_in_use,
        airflow.env["AIRFLOW_ADMIN_PASSWORD"],
        *(services.secret(n) for n in ("airflow_db_password", "airflow_jwt_secret",
                                       "airflow_api_secret_key", "airflow_fernet_key")),
    ]  # fmt: skip
    logs = [p for p in (airflow.dep.root / "logs").rglob("*") if p.is_file()]
    assert len(logs) > 20, "the deployment's logs were expected here"
    for path in logs:
        content = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in content, f"{path} contains a secret"
