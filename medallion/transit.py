"""The transit tables ``public.bulk_*``: a run's gold objects loaded through ``to_sql``, and
loaded again when PostgreSQL lost them.

Transit tables are UNLOGGED (a copy of gold needs no WAL), and PostgreSQL's crash recovery
empties UNLOGGED tables. What notebook 04 loaded is recorded in ``audit.run_log`` (step
``load``, one row per table); the merge refuses a run whose transit rows fall short of that
(SQLSTATE MDT01), and the merge task then reloads the run from gold (``reload_missing``) and
merges it again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from minio import Minio
from sqlalchemy import Engine, text

from medallion import storage, warehouse

log = logging.getLogger(__name__)


def gold_manifest(s3: Minio, gold_bucket: str, run_id: str) -> dict[str, Any]:
    """What notebook 03 wrote for the run: its object per table and their row counts
    (``storage.MissingStep`` when notebook 03 has not run for this run id)."""
    return storage.get_manifest(s3, gold_bucket, run_id, "gold")


def load_gold(
    db: Engine, s3: Minio, gold_bucket: str, run_id: str, batch_size: int = 100_000
) -> dict[str, int]:
    """Load the run's gold objects into the transit tables, check that the server copied as many
    rows as gold's manifest says (COPY's own counts: the tables are not read again), and record
    the load per table in ``audit.run_log``. The dimensions load while the fact does (one
    after the other, beside the fact's two streams): the fact takes most of the time."""
    manifest = gold_manifest(s3, gold_bucket, run_id)
    tables = list(manifest["objects"])
    dimensions = [t for t in tables if t != "fact_operaciones_ventas"]

    with (
        warehouse.AdbcConnections(db) as connections,  # the dimensions' one goes on to the next
        ThreadPoolExecutor(max_workers=2, thread_name_prefix="load") as pool,
    ):

        def load(some: list[str]) -> dict[str, int]:
            return {
                t: _load_table(db, s3, gold_bucket, run_id, manifest, t, batch_size, connections)
                for t in some
            }

        fact = pool.submit(load, [t for t in tables if t not in dimensions])
        loaded = pool.submit(load, dimensions).result() | fact.result()
    return {table: loaded[table] for table in tables}  # in gold's order


def _load_table(
    db: Engine,
    s3: Minio,
    gold_bucket: str,
    run_id: str,
    manifest: Mapping[str, Any],
    table: str,
    batch_size: int,
    connections: warehouse.AdbcConnections,
) -> int:
    started = datetime.now(UTC)
    batches = storage.iter_parquet_batches(s3, gold_bucket, manifest["objects"][table], batch_size)
    loaded = warehouse.load_run(db, table, run_id, batches, connections=connections)
    if loaded != manifest["rows"][table]:
        raise RuntimeError(
            f"public.{warehouse.TRANSIT_TABLES[table]}: gold has {manifest['rows'][table]} "
            f"rows for run {run_id}, the server copied {loaded}"
        )
    target = f"public.{warehouse.TRANSIT_TABLES[table]}"
    warehouse.log_step(db, run_id, "load", target, rows_out=loaded, started_at=started)
    return loaded


def reload_missing(parameters: Mapping[str, Any]) -> dict[str, int]:
    """After the merge refused a run (MDT01): reload its transit rows from gold when they fall
    short of what the load recorded (``staging.transit_shortfall``: a PostgreSQL restart since
    the load), unless the run is already published. Returns the tables reloaded and rows."""
    db = warehouse.engine(parameters["postgres_conn_id"])
    run_id = parameters["run_id"]
    with db.connect() as conn:
        published, missing = conn.execute(
            text("select staging.run_published(:r), staging.transit_shortfall(:r)"),
            {"r": run_id},
        ).one()
    if published or missing is None:
        return {}
    log.warning("Transit rows of run %s are incomplete (%s): reloading them from gold",
                run_id, missing)  # fmt: skip
    s3 = storage.s3_client(parameters["minio_conn_id"])
    return load_gold(
        db, s3, parameters["gold_bucket"], run_id, parameters.get("batch_size", 100_000)
    )


def publish(db: Engine, run_id: str, scd_type: int = 1) -> None:
    """Publish a run outside Airflow (JupyterLab after notebook 04, the notebook checks): the
    same statements as the DAG's ``merge_staging`` task, on one autocommit connection."""
    from medallion.operators import PUBLISH_SQL

    parameters = {"run_id": run_id, "scd_type": scd_type}
    connection = db.raw_connection()
    try:
        connection.driver_connection.autocommit = True  # VACUUM runs outside a transaction
        with connection.driver_connection.cursor() as cursor:
            for statement in PUBLISH_SQL:
                cursor.execute(statement, parameters)
    finally:
        connection.driver_connection.autocommit = False
        connection.close()
