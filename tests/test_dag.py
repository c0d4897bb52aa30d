"""DAG integrity: it imports without errors and follows the house rules."""

import os
import subprocess
import sys

import pytest

from medallion.runs import AIRFLOW_HOME, airflow_env
from medallion.settings import PROJECT_ROOT

CHECK = r"""
import json, warnings
warnings.simplefilter("ignore")
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder="{dags}")
dag = bag.dags.get("medallion_ventas")
print(json.dumps({{
    "errors": {{k: str(v) for k, v in bag.import_errors.items()}},
    "found": dag is not None,
    "tags": sorted(dag.tags) if dag else [],
    "doc_md": bool(dag and dag.doc_md),
    "retries": {{t.task_id: t.retries for t in dag.tasks}} if dag else {{}},
    "order": [t.task_id for t in dag.topological_sort()] if dag else [],
    "types": {{t.task_id: [c.__name__ for c in type(t).__mro__] for t in dag.tasks}}
             if dag else {{}},
}}))
"""


@pytest.fixture(scope="module")
def dag_info():
    import json

    env = airflow_env(dict(os.environ, AIRFLOW_HOME=str(AIRFLOW_HOME)))
    out = subprocess.run(
        [sys.executable, "-c", CHECK.format(dags=PROJECT_ROOT / "dags")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_dag_imports_without_errors(dag_info):
    assert dag_info["errors"] == {}
    assert dag_info["found"]


def test_dag_has_tags_doc_and_retries(dag_info):
    assert "medallion" in dag_info["tags"]
    assert dag_info["doc_md"]
    assert all(r >= 1 for r in dag_info["retries"].values()), dag_info["retries"]


def test_notebooks_run_in_order_then_merge(dag_info):
    assert dag_info["order"] == [
        "prepare_run",
        "01_bronze_ingest",
        "02_silver_clean",
        "03_gold_model",
        "04_load_postgres",
        "merge_staging",
        "publish_gate",
    ]
    assert all("PapermillOperator" in dag_info["types"][t] for t in dag_info["order"][1:5])
    assert "SQLExecuteQueryOperator" in dag_info["types"]["merge_staging"]
    assert "SQLExecuteQueryOperator" in dag_info["types"]["publish_gate"]


def test_dag_file_does_no_io_at_import():
    source = (PROJECT_ROOT / "dags" / "medallion_ventas.py").read_text()
    top_level = source.split("def prepare_run")[0]
    for forbidden in ("Variable.get", "open(", "read_text", "connect(", "s3_client", "engine("):
        assert forbidden not in top_level, forbidden
