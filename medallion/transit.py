"""The transit tables ``public.bulk_*``: a run's gold objects loaded through ``to_sql``, and
loaded again when PostgreSQL lost them.

Transit tables are UNLOGGED (a copy of gold needs no WAL), and PostgreSQL's crash recovery
empties UNLOGGED tables. What notebook 04 loaded is recorded in ``audit.run_log`` (step
``load``, one row per table); the merge refuses a run whose transit rows fall short of that,
and the merge task reloads the missing tables from gold first (``reload_missing``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from minio import Minio
from sqlalchemy import Engine, text

from medallion import storage, warehouse

log = logging.getLogger(__name__)


def gold_manifest(s3: Minio, gold_bucket: str, run_id: str) -> dict[str, Any]:
    """What notebook 03 wrote for the run: its object per table and their row counts."""
    return storage.get_json(s3, gold_bucket, storage.manifest_key(run_id, "gold"))


def counts(db: Engine, run_id: str, tables: Iterable[str] = warehouse.TRANSIT_TABLES) -> dict:
    """Rows of the run in each transit table now."""
    with db.connect() as conn:
        return {
            table: conn.execute(
                text(
                    f"select count(*) from public.{warehouse.TRANSIT_TABLES[table]} "  # noqa: S608 - fixed names
                    "where run_id = :r"
                ),
                {"r": run_id},
            ).scalar_one()
            for table in tables
        }


def load_gold(
    db: Engine,
    s3: Minio,
    gold_bucket: str,
    run_id: str,
    batch_size: int = 100_000,
    tables: Iterable[str] | None = None,
) -> dict[str, int]:
    """Load the run's gold objects (all, or ``tables``) into the transit tables, check that each
    holds what gold's manifest says, and record the load per table in ``audit.run_log``."""
    manifest = gold_manifest(s3, gold_bucket, run_id)
    wanted = set(tables) if tables is not None else set(manifest["objects"])
    loaded = {}
    for table, key in manifest["objects"].items():
        if table not in wanted:
            continue
        started = datetime.now(UTC)
        batches = storage.iter_parquet_batches(s3, gold_bucket, key, batch_size)
        loaded[table] = warehouse.load_run(db, table, run_id, batches)
        found = counts(db, run_id, [table])[table]
        if not loaded[table] == found == manifest["rows"][table]:
            raise RuntimeError(
                f"public.{warehouse.TRANSIT_TABLES[table]}: gold has {manifest['rows'][table]} "
                f"rows for run {run_id}, {loaded[table]} were sent and {found} are there"
            )
        warehouse.log_step(
            db,
            run_id,
            "load",
            f"public.{warehouse.TRANSIT_TABLES[table]}",
            rows_out=found,
            started_at=started,
        )
    return loaded


def shortfall(db: Engine, run_id: str) -> dict[str, tuple[int | None, int]]:
    """Transit tables holding fewer (or more) rows of the run than the load recorded, as
    ``table: (recorded, found)``; recorded is None when no load is recorded. Empty when the
    run is complete, or already published (its transit rows are gone on purpose)."""
    with db.connect() as conn:
        if conn.execute(text("select staging.run_published(:r)"), {"r": run_id}).scalar_one():
            return {}
        recorded = dict(
            conn.execute(
                text(
                    "select source, rows_out from audit.run_log where run_id = :r "
                    "and step = 'load' and status = 'success'"
                ),
                {"r": run_id},
            ).all()
        )
    found = counts(db, run_id)
    out = {}
    for table, rows in found.items():
        expected = recorded.get(f"public.{warehouse.TRANSIT_TABLES[table]}")
        if expected != rows:
            out[table] = (expected, rows)
    return out


def reload_missing(parameters: Mapping[str, Any]) -> dict[str, int]:
    """Before a merge: reload from gold the transit tables of the run that lost rows (a
    PostgreSQL restart since the load). Returns the tables reloaded and their rows."""
    db = warehouse.engine(parameters["postgres_conn_id"])
    run_id = parameters["run_id"]
    missing = shortfall(db, run_id)
    if not missing:
        return {}
    for table, (expected, found) in missing.items():
        log.warning(
            "public.%s holds %s rows of run %s, the load recorded %s: reloading it from gold",
            warehouse.TRANSIT_TABLES[table],
            found,
            run_id,
            expected,
        )
    s3 = storage.s3_client(parameters["minio_conn_id"])
    return load_gold(
        db, s3, parameters["gold_bucket"], run_id, parameters.get("batch_size", 100_000), missing
    )
