"""
### medallion_ventas

Sales files (CSV/JSON) -> bronze -> silver -> gold -> PostgreSQL star schema.

1. `prepare_run` resolves the run's notebook parameters (parameter set `params/<env>.yaml`,
   Params below) and creates `outputs/<run_id>/`.
2. `discover_deliveries` looks at the input (a file, or a folder such as `incoming/`) and
   the delivery ledger `audit.deliveries`: a file whose exact content was loaded before is
   skipped; new, changed and failed files are processed.
3. `files`: per new file (dynamic task mapping), notebook 01 (bronze) then notebook 02
   (silver), each executed copy named after the file. A file that breaks the data contract
   fails its own task at once (no retries); the other files go on.
4. Once per run, over the files that reached silver: notebook 03 (gold), notebook 04 (load
   into `public.bulk_*`), then `merge_staging`: the merge and the publish gate in one
   transaction (nothing the gate rejects is ever visible in `staging`); transit rows that a
   PostgreSQL restart emptied are reloaded from gold first, so its retry recovers by itself.
   Then notebook 05 (`05_resultado`): the run's files, merge counts, gate checks and charts.
5. `record_run` (always) marks each file loaded or failed in the ledger, writes the run's
   record (`outputs/<run>/run.json`, every executed notebook as HTML, `outputs/index.html`)
   and fails the run, naming the files and tasks and why, if any failed.

**Params** (also `dag_run.conf`): `input_path` (file or folder; default from the parameter
set), `params_env` (`local` or `docker`; default Variable `medallion_params_env`, else
`local`), `minio_conn_id` / `postgres_conn_id` (default from the parameter set),
`reprocess` (load files the ledger already has), `scd_type_cliente` (1 or 2).
**Schedule**: none, or the cron in the environment variable `MEDALLION_SCHEDULE` (each run
then takes what is new in the input folder).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from airflow.sdk import DAG, Asset, Param, task, task_group
from airflow.sdk.exceptions import DownstreamTasksSkipped
from airflow.task.trigger_rule import TriggerRule

from medallion.operators import NotebookOperator, PublishOperator
from medallion.report import record_failure
from medallion.settings import DAG_ID, KERNEL_NAME

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
RUN = "ti.xcom_pull(task_ids='prepare_run')"
# What each layer publishes: a downstream DAG can be scheduled on the warehouse asset.
BRONZE, SILVER, GOLD, WAREHOUSE = (
    Asset(name=f"ventas_{layer}", uri=f"medallion://ventas/{layer}")
    for layer in ("bronze", "silver", "gold", "staging")
)


def notebook(name: str, **kwargs) -> NotebookOperator:
    return NotebookOperator(
        task_id=name,
        input_nb=str(NOTEBOOKS / f"{name}.ipynb"),
        kernel_name=KERNEL_NAME,
        language_name="python",
        **kwargs,
    )


with DAG(
    dag_id=DAG_ID,
    doc_md=__doc__,
    schedule=os.environ.get("MEDALLION_SCHEDULE") or None,
    catchup=False,
    max_active_runs=1,
    tags=["medallion", "ventas", "papermill"],
    default_args={
        "owner": "datos",
        "retries": 2,
        "retry_delay": timedelta(seconds=20),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "execution_timeout": timedelta(hours=1),
        "on_failure_callback": record_failure,  # the failed task and why, in the run's record
    },
    params={
        "input_path": Param(None, type=["null", "string"], description="File or folder"),
        "params_env": Param(None, type=["null", "string"], description="local | docker"),
        "minio_conn_id": Param(None, type=["null", "string"], description="S3 connection id"),
        "postgres_conn_id": Param(None, type=["null", "string"], description="Warehouse id"),
        "reprocess": Param(False, type="boolean", description="Load already loaded files too"),
        "scd_type_cliente": Param(1, enum=[1, 2], description="dim_cliente: SCD type 1 or 2"),
    },
    render_template_as_native_obj=True,
) as dag:

    @task(execution_timeout=timedelta(minutes=5))
    def prepare_run(params: dict | None = None, run_id: str | None = None) -> dict:
        """Resolve this run's notebook parameters and create its outputs folder."""
        from airflow.sdk import Variable

        from medallion.runs import prepare_run as prepare

        params_env = params.get("params_env") or Variable.get(
            "medallion_params_env", default="local"
        )
        return prepare(run_id=run_id, params_env=params_env, overrides=params)

    @task(execution_timeout=timedelta(minutes=30))
    def discover_deliveries(run: dict, params: dict | None = None) -> list[dict]:
        """What this run loads: the input's new files, per the delivery ledger."""
        from medallion.operators import use_connections
        from medallion.runs import discover

        use_connections(run["notebook_parameters"])
        return discover(run, reprocess=bool(params.get("reprocess")))

    @task
    def file_tasks(deliveries: list[dict], ti=None) -> list[dict]:
        """The arguments of the per-file notebooks, for the files to process. With none, the
        steps after it are skipped here, all at once (Airflow would skip them one level per
        scheduling pass, a second each under `dags test`), and the run goes to its record."""
        notebooks = [d["notebooks"] for d in deliveries if d["notebooks"]]
        if not notebooks:
            ti.xcom_push("return_value", notebooks)  # what a cleared file step expands over
            after = ti.task.get_flat_relative_ids(upstream=False)
            raise DownstreamTasksSkipped(tasks=sorted(after - {"record_run"}))
        return notebooks

    @task_group(group_id="files")
    def per_file(bronze_nb: str, silver_nb: str, bronze_parameters: dict, silver_parameters: dict):
        bronze = notebook(
            "01_bronze_ingest",
            output_nb=bronze_nb,
            parameters=bronze_parameters,
            outlets=[BRONZE],
            map_index_template="{{ task.parameters['input_path'].rsplit('/', 1)[-1] }}",
        )
        silver = notebook(
            "02_silver_clean",
            output_nb=silver_nb,
            parameters=silver_parameters,
            outlets=[SILVER],
            map_index_template="{{ task.parameters['source_file'] }}",
        )
        bronze >> silver

    @task(trigger_rule=TriggerRule.ALL_DONE, retries=0, execution_timeout=timedelta(minutes=15))
    def record_run(ti=None, dag_run=None) -> dict:
        """Always, last: each file loaded or failed in the ledger, the run's record in outputs/
        (run.json, every notebook as HTML, the runs' index); the run fails, saying why, if a
        file or a task failed."""
        from airflow.sdk.exceptions import AirflowFailException

        from medallion.operators import use_connections
        from medallion.runs import close_run

        states = ti.get_task_states(dag_id=dag_run.dag_id, run_ids=[dag_run.run_id])
        result = close_run(
            dag_run.run_id,
            dag_run.start_date,
            ti.xcom_pull(task_ids="prepare_run"),
            ti.xcom_pull(task_ids="discover_deliveries"),
            {t: s for t, s in states.get(dag_run.run_id, {}).items() if t != ti.task_id},
            connect=use_connections,
        )
        if result["failed"]:
            raise AirflowFailException(result["message"])
        return result

    run = prepare_run()
    deliveries = discover_deliveries(run)
    files = per_file.expand_kwargs(file_tasks(deliveries))
    # Once per run, over the files that reached silver (a bad file does not hold the others)
    gold = notebook(
        "03_gold_model",
        output_nb="{{ " + RUN + "['output_dir'] }}/03_gold_model.ipynb",
        parameters="{{ " + RUN + "['notebook_parameters'] }}",
        trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS,
        outlets=[GOLD],
    )
    load = notebook(
        "04_load_postgres",
        output_nb="{{ " + RUN + "['output_dir'] }}/04_load_postgres.ipynb",
        parameters="{{ " + RUN + "['notebook_parameters'] }}",
    )
    publish = PublishOperator(
        task_id="merge_staging",
        conn_id="{{ " + RUN + "['notebook_parameters']['postgres_conn_id'] }}",
        run_parameters="{{ " + RUN + "['notebook_parameters'] }}",
        parameters={
            "run_id": "{{ run_id }}",
            "scd_type": "{{ params.scd_type_cliente }}",
        },
        outlets=[WAREHOUSE],
    )
    result = notebook(
        "05_resultado",
        output_nb="{{ " + RUN + "['output_dir'] }}/05_resultado.ipynb",
        parameters="{{ " + RUN + "['notebook_parameters'] }}",
    )
    files >> gold >> load >> publish >> result
    [deliveries, result] >> record_run()
