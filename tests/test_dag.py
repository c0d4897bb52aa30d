"""DAG integrity: it imports without errors and follows the house rules."""

import json
import os
import subprocess
import sys

import pytest

from medallion.dag_process import AIRFLOW_HOME, airflow_env
from medallion.settings import PROJECT_ROOT

pytestmark = pytest.mark.pure  # no service: runs without starting any

CHECK = r"""
import json, warnings
warnings.simplefilter("ignore")
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder="{dags}")
dag = bag.dags.get("medallion_ventas")
tasks = dag.tasks if dag else []
print(json.dumps({{
    "errors": {{k: str(v) for k, v in bag.import_errors.items()}},
    "found": dag is not None,
    "schedule": str(dag.schedule) if dag else None,
    "tags": sorted(dag.tags) if dag else [],
    "doc_md": bool(dag and dag.doc_md),
    "order": [t.task_id for t in dag.topological_sort()] if dag else [],
    "tasks": {{t.task_id: {{
        "types": [c.__name__ for c in type(t).__mro__] + [getattr(t, "operator_name", "")],
        "mapped": type(t).__name__ == "MappedOperator" or bool(t.get_closest_mapped_task_group()),
        "upstream": sorted(t.upstream_task_ids),
        "retries": t.retries,
        "backoff": bool(t.retry_exponential_backoff),
        "timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None,
        "trigger_rule": getattr(t.trigger_rule, "value", t.trigger_rule),
        "outlets": [getattr(o, "name", str(o)) for o in t.outlets],
        "log_output": (t.partial_kwargs.get("log_output") if hasattr(t, "partial_kwargs")
                       else getattr(t, "log_output", None)),
        "conn_id": getattr(t, "conn_id", None),
        "sql": getattr(t, "sql", None),
    }} for t in tasks}},
}}))
"""


def load_dag(**env) -> dict:
    env = airflow_env(dict(os.environ, AIRFLOW_HOME=str(AIRFLOW_HOME), **env))
    out = subprocess.run(
        [sys.executable, "-c", CHECK.format(dags=PROJECT_ROOT / "dags")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dag_info():
    return load_dag()


def test_dag_imports_without_errors(dag_info):
    assert dag_info["errors"] == {}
    assert dag_info["found"]


def test_dag_has_tags_doc_retries_and_timeouts(dag_info):
    assert "medallion" in dag_info["tags"]
    assert dag_info["doc_md"]
    tasks = dag_info["tasks"]
    # every task is bounded in time; everything but the final bookkeeping retries with backoff
    assert all(t["timeout"] for t in tasks.values()), {k: t["timeout"] for k, t in tasks.items()}
    retried = {k for k, t in tasks.items() if t["retries"] >= 1 and t["backoff"]}
    assert set(tasks) - retried == {"record_run"}


def test_per_file_notebooks_then_one_gold_load_merge_and_gate(dag_info):
    assert dag_info["order"] == [
        "prepare_run",
        "discover_deliveries",
        "file_tasks",
        "files.01_bronze_ingest",
        "files.02_silver_clean",
        "03_gold_model",
        "04_load_postgres",
        "merge_staging",
        "05_resultado",
        "record_run",
    ]
    tasks = dag_info["tasks"]
    assert tasks["files.01_bronze_ingest"]["mapped"] and tasks["files.02_silver_clean"]["mapped"]
    assert not tasks["03_gold_model"]["mapped"]
    # gold runs when every file is done and at least one reached silver; the ledger always
    assert tasks["03_gold_model"]["trigger_rule"] == "all_done_min_one_success"
    assert tasks["record_run"]["trigger_rule"] == "all_done"
    notebooks = [
        t for t in tasks if t[:2] in ("01", "02", "03", "04", "05") or t.startswith("files.")
    ]
    for name in notebooks:
        assert "PapermillOperator" in tasks[name]["types"], name
        assert tasks[name]["log_output"] is True, name


def test_sql_task_takes_the_connection_of_the_parameter_set(dag_info):
    task = dag_info["tasks"]["merge_staging"]
    assert "SQLExecuteQueryOperator" in task["types"]
    assert "prepare_run" in task["conn_id"] and "postgres_conn_id" in task["conn_id"]


def test_merge_runs_with_session_limits_and_clears_transit_only_after_it(dag_info):
    statements = dag_info["tasks"]["merge_staging"]["sql"]
    assert statements[:3] == [
        "set lock_timeout = '2min'",
        "set statement_timeout = '1h'",
        "set idle_in_transaction_session_timeout = '15min'",
    ]
    merge = next(i for i, s in enumerate(statements) if "sp_merge_operaciones_ventas" in s)
    clear = next(i for i, s in enumerate(statements) if "sp_clear_transit" in s)
    assert merge < clear  # separate statements in autocommit: the merge has committed
    assert not any("sp_publish_gate" in s for s in statements)  # inside the merge


def test_each_layer_is_an_asset(dag_info):
    outlets = {k: t["outlets"] for k, t in dag_info["tasks"].items() if t["outlets"]}
    assert outlets == {
        "files.01_bronze_ingest": ["ventas_bronze"],
        "files.02_silver_clean": ["ventas_silver"],
        "03_gold_model": ["ventas_gold"],
        "merge_staging": ["ventas_staging"],
    }


def test_schedule_is_optional():
    assert load_dag()["schedule"] in ("None", "null")
    assert "*/15" in load_dag(MEDALLION_SCHEDULE="*/15 * * * *")["schedule"]


def test_dag_file_does_no_io_at_import():
    source = (PROJECT_ROOT / "dags" / "medallion_ventas.py").read_text()
    top_level = source.split("def prepare_run")[0]
    for forbidden in ("Variable.get", "open(", "read_text", "connect(", "s3_client", "engine("):
        assert forbidden not in top_level, forbidden
