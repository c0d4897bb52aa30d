"""Warehouse I/O (PostgreSQL): engine, transactions, ordered DDL, COPY loading, run log."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg2 import sql
from sqlalchemy import Connection as SAConnection
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL

from medallion.settings import SQL_DIR, get_connection

TRANSIT_TABLES = {
    "dim_inventario": "bulk_dim_inventario",
    "dim_cliente": "bulk_dim_cliente",
    "fact_operaciones_ventas": "bulk_fact_operaciones_ventas",
}


def engine(conn_id: str = "postgres_default") -> Engine:
    """A SQLAlchemy engine (psycopg2) for an Airflow postgres connection."""
    conn = get_connection(conn_id)
    url = URL.create(
        "postgresql+psycopg2",
        username=conn.login,
        password=conn.password,
        host=conn.host,
        port=conn.port,
        database=conn.schema or "postgres",
        query={k: v for k, v in conn.extra.items() if k in {"sslmode", "options"}},
    )
    return create_engine(url, pool_pre_ping=True)


@contextmanager
def transaction(eng: Engine) -> Iterator[SAConnection]:
    """One transaction: commits when the block ends, rolls back on any error."""
    with eng.begin() as conn:
        yield conn


_REQUIRES = re.compile(r"^-- requires: server_version_num >= (\d+)", re.M)


def apply_sql(eng: Engine, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply every ``sql/NNN_*.sql`` file in order; each file is idempotent. A file whose first
    lines say ``-- requires: server_version_num >= N`` is skipped on older servers."""
    applied = []
    with transaction(eng) as conn, conn.connection.driver_connection.cursor() as cur:
        # Serialise concurrent bootstraps (two runs starting at once).
        cur.execute("select pg_advisory_xact_lock(hashtext('medallion.apply_sql'))")
        cur.execute("select current_setting('server_version_num')::int")
        version = cur.fetchone()[0]
        for path in sorted(sql_dir.glob("[0-9][0-9][0-9]_*.sql")):
            sql_text = path.read_text()
            needed = _REQUIRES.search(sql_text)
            if needed and version < int(needed.group(1)):
                continue  # e.g. MERGE procedures on PostgreSQL < 15: the upsert ones are used
            cur.execute(sql_text)  # no parameters: '%' in the files stays literal
            applied.append(path.name)
    return applied


# --------------------------------------------------------------------------- COPY loading


def copy_method(table: Any, conn: Any, keys: list[str], data_iter: Iterable[tuple]) -> int:
    """``DataFrame.to_sql(method=copy_method)``: one COPY per call instead of INSERTs.

    It writes ``table.frame`` as CSV with Arrow (strings quoted, NULL unquoted, decimals and
    dates as text) and streams it to ``COPY ... FROM STDIN``. Because it reads the whole frame,
    it must not be combined with ``chunksize`` (pandas would call it once per chunk); it checks
    that the rows pandas hands it are the whole frame and refuses otherwise.
    """
    frame = table.frame
    rows = sum(1 for _ in data_iter)
    if rows != len(frame):
        raise ValueError("copy_method writes the whole frame: call to_sql without chunksize")
    arrow = pa.Table.from_pandas(frame[keys], preserve_index=False)
    buffer = io.BytesIO()
    pacsv.write_csv(arrow, buffer, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    buffer.seek(0)
    target = (
        sql.Identifier(table.schema, table.name) if table.schema else sql.Identifier(table.name)
    )
    statement = sql.SQL("copy {} ({}) from stdin with (format csv)").format(
        target, sql.SQL(", ").join(map(sql.Identifier, keys))
    )
    dbapi = conn.connection.driver_connection
    with dbapi.cursor() as cur:
        cur.copy_expert(statement.as_string(dbapi), buffer)
    return rows


def clear_transit(conn: SAConnection, table: str, run_id: str) -> int:
    """Remove a run's rows from a transit table, so a retried load never doubles them."""
    result = conn.execute(
        text(f"delete from public.{TRANSIT_TABLES[table]} where run_id = :run_id"),  # noqa: S608 - fixed names
        {"run_id": run_id},
    )
    return result.rowcount


def load_transit(conn: SAConnection, table: str, frame: pd.DataFrame) -> int:
    """Append a batch to ``public.bulk_<table>`` through ``to_sql(if_exists="append")``."""
    frame.to_sql(
        TRANSIT_TABLES[table],
        conn,
        schema="public",
        if_exists="append",
        index=False,
        method=copy_method,
    )
    return len(frame)


# --------------------------------------------------------------------------- run log


def log_step(
    eng: Engine,
    run_id: str,
    step: str,
    source: str,
    *,
    lines_in: int | None = None,
    rows_out: int | None = None,
    rows_quarantined: int | None = None,
    rows_duplicate: int | None = None,
    status: str = "success",
    started_at: datetime | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Record (or replace, on a retry) one row of ``audit.run_log`` for a run, step and source."""
    with transaction(eng) as conn:
        conn.execute(
            text(
                """
                insert into audit.run_log as r (run_id, step, source, lines_in, rows_out,
                    rows_quarantined, rows_duplicate, status, started_at, finished_at, details)
                values (:run_id, :step, :source, :lines_in, :rows_out, :rows_quarantined,
                    :rows_duplicate, :status, coalesce(:started_at, now()), now(),
                    cast(:details as jsonb))
                on conflict (run_id, step, source) do update set
                    lines_in = excluded.lines_in, rows_out = excluded.rows_out,
                    rows_quarantined = excluded.rows_quarantined,
                    rows_duplicate = excluded.rows_duplicate, status = excluded.status,
                    started_at = excluded.started_at, finished_at = excluded.finished_at,
                    details = excluded.details
                """
            ),
            {
                "run_id": run_id,
                "step": step,
                "source": source,
                "lines_in": lines_in,
                "rows_out": rows_out,
                "rows_quarantined": rows_quarantined,
                "rows_duplicate": rows_duplicate,
                "status": status,
                "started_at": started_at,
                "details": json.dumps(details or {}, default=str, ensure_ascii=False),
            },
        )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (the kernel's, in a notebook)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def log_metrics(eng: Engine, run_id: str, step: str, started_at: datetime) -> dict[str, float]:
    """Record a step's wall time and peak RSS in ``audit.step_metrics``; returns them."""
    metrics = {
        "wall_seconds": round((datetime.now(started_at.tzinfo) - started_at).total_seconds(), 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    with transaction(eng) as conn:
        conn.execute(
            text(
                """
                insert into audit.step_metrics (run_id, step, wall_seconds, peak_rss_mb)
                values (:run_id, :step, :wall_seconds, :peak_rss_mb)
                on conflict (run_id, step) do update set wall_seconds = excluded.wall_seconds,
                    peak_rss_mb = excluded.peak_rss_mb, recorded_at = now()
                """
            ),
            {"run_id": run_id, "step": step, **metrics},
        )
    return metrics


def run_log(eng: Engine, run_id: str) -> pd.DataFrame:
    with eng.connect() as conn:
        return pd.read_sql(
            text("select * from audit.run_log where run_id = :run_id order by started_at, step"),
            conn,
            params={"run_id": run_id},
        )
