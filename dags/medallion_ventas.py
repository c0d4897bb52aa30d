"""
### medallion_ventas

Sales files (CSV/JSON) -> bronze -> silver -> gold -> PostgreSQL star schema.

Each step is a parameterized notebook run by papermill (`NotebookOperator`, a PapermillOperator
that does not retry a file that breaks the data contract); the executed copy of every notebook
is kept under `outputs/<run_id>/` as the log of the run. Then `merge_staging` merges the run's
transit rows (`public.bulk_*`) into `staging` (`staging.sp_merge_operaciones_ventas`) and
`publish_gate` checks the result (`staging.sp_publish_gate`): reconciliation with silver, keys.

**Params** (also `dag_run.conf`): `input_path` (file or folder; default from the parameter set),
`params_env` (`local` or `docker`; default Variable `medallion_params_env`, else `local`),
`scd_type_cliente` (1 or 2), `merge_strategy` (`auto`, `merge`, `upsert`).
**Connections**: `minio_default` (aws, `endpoint_url` in extra), `postgres_default`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.sdk import DAG, Param, task

from medallion.operators import NotebookOperator

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["01_bronze_ingest", "02_silver_clean", "03_gold_model", "04_load_postgres"]

with DAG(
    dag_id="medallion_ventas",
    doc_md=__doc__,
    schedule=None,
    catchup=False,
    max_active_runs=1,
    tags=["medallion", "ventas", "papermill"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "owner": "datos"},
    params={
        "input_path": Param(None, type=["null", "string"], description="File or folder"),
        "params_env": Param(None, type=["null", "string"], description="local | docker"),
        "scd_type_cliente": Param(1, enum=[1, 2], description="dim_cliente: SCD type 1 or 2"),
        "merge_strategy": Param(
            "auto",
            enum=["auto", "merge", "upsert"],
            description="auto: MERGE on PostgreSQL >= 15, INSERT ... ON CONFLICT before",
        ),
    },
    render_template_as_native_obj=True,
) as dag:

    @task
    def prepare_run(params: dict | None = None, run_id: str | None = None) -> dict:
        """Resolve this run's notebook parameters and create its outputs folder."""
        from airflow.sdk import Variable

        from medallion.runs import prepare_run as prepare

        params_env = params.get("params_env") or Variable.get(
            "medallion_params_env", default="local"
        )
        return prepare(run_id=run_id, params_env=params_env, input_path=params.get("input_path"))

    run = prepare_run()
    previous = run
    for name in NOTEBOOKS:
        notebook = NotebookOperator(
            task_id=name,
            input_nb=str(PROJECT_ROOT / "notebooks" / f"{name}.ipynb"),
            output_nb="{{ ti.xcom_pull(task_ids='prepare_run')['output_dir'] }}/" + f"{name}.ipynb",
            parameters="{{ ti.xcom_pull(task_ids='prepare_run')['notebook_parameters'] }}",
            kernel_name="python3",
            language_name="python",
        )
        previous >> notebook
        previous = notebook

    merge = SQLExecuteQueryOperator(
        task_id="merge_staging",
        conn_id="postgres_default",
        sql="call staging.sp_merge_operaciones_ventas(%(run_id)s, %(scd_type)s, %(strategy)s)",
        parameters={
            "run_id": "{{ run_id }}",
            "scd_type": "{{ params.scd_type_cliente }}",
            "strategy": "{{ params.merge_strategy }}",
        },
        autocommit=True,
    )
    publish_gate = SQLExecuteQueryOperator(
        task_id="publish_gate",
        conn_id="postgres_default",
        # the gate deletes the run's transit rows; VACUUM gives their space back at once, so
        # that the next run does not scan millions of dead rows (it cannot run in a procedure)
        sql=[
            "call staging.sp_publish_gate(%(run_id)s)",
            "vacuum public.bulk_fact_operaciones_ventas, public.bulk_dim_cliente, "
            "public.bulk_dim_inventario",
        ],
        parameters={"run_id": "{{ run_id }}"},
        autocommit=True,
    )
    previous >> merge >> publish_gate
