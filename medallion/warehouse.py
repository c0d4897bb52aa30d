"""Warehouse I/O (PostgreSQL): engine, transactions, ordered DDL, COPY loading, run log."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from psycopg2 import sql
from sqlalchemy import Connection as SAConnection
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL

from medallion.settings import (
    SQL_DIR,
    TRANSIT_TABLES,  # noqa: F401 - the warehouse's name for it (transit, results, notebook 04)
    WAREHOUSE_SESSION,
    Connection,
    get_connection,
)


def engine(conn_id: str = "postgres_default") -> Engine:
    """A SQLAlchemy engine (psycopg2) for an Airflow postgres connection id."""
    return engine_for(get_connection(conn_id))


def engine_for(conn: Connection) -> Engine:
    """A SQLAlchemy engine (psycopg2) for a resolved postgres connection."""
    url = URL.create(
        "postgresql+psycopg2",
        username=conn.login,
        password=conn.password,
        host=conn.host,
        port=conn.port,
        database=conn.schema or "postgres",
        query={k: v for k, v in conn.extra.items() if k == "sslmode"},
    )
    # the session limits first: options of the connection's own come after and win
    options = " ".join(f"-c {k}={v}" for k, v in WAREHOUSE_SESSION.items())
    options = f"{options} {conn.extra.get('options', '')}".strip()
    return create_engine(url, pool_pre_ping=True, connect_args={"options": options})


def fresh_database(conn_id: str, name: str) -> Connection:
    """Drop and create database ``name`` on the server of ``conn_id`` and return the connection
    to it: the tests and the benchmark start from an empty warehouse, never the user's.

    On the embedded server the pipeline's role may not create databases: its superuser makes
    the database and hands it to that role (sql/roles/). On a server of the user's own, the
    connection's user does it, and needs CREATEDB there."""
    import psycopg2

    from medallion import services

    conn = get_connection(conn_id)
    if services.is_embedded(conn):
        services.prepare_database(name, fresh=True)
        return replace(conn, schema=name)
    admin = psycopg2.connect(
        host=conn.host,
        port=conn.port,
        user=conn.login,
        password=conn.password,
        dbname=conn.schema or "postgres",
    )
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            drop = sql.SQL("drop database if exists {} with (force)")
            cur.execute(drop.format(sql.Identifier(name)))
            cur.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    except psycopg2.errors.InsufficientPrivilege as err:
        raise PermissionError(
            f"fresh_database: role {conn.login} may not drop or create database {name} on "
            f"{conn.host}:{conn.port} ({str(err).strip()}); it needs CREATEDB (and to own "
            f"{name} if it exists), or use the embedded services"
        ) from err
    finally:
        admin.close()
    return replace(conn, schema=name)


@contextmanager
def transaction(eng: Engine) -> Iterator[SAConnection]:
    """One transaction: commits when the block ends, rolls back on any error."""
    with eng.begin() as conn:
        yield conn


MIGRATIONS = "000_schema_migrations.sql"  # applied first, always: the record of the others
MIN_SERVER_VERSION = 150000  # PostgreSQL 15: MERGE (14 reached its end of life in November 2026)


class UnsupportedServer(RuntimeError):
    """The warehouse's PostgreSQL is older than the pipeline supports."""


def apply_sql(eng: Engine, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply the ``sql/NNN_*.sql`` files from the first new or changed one on, in order (a
    later file may depend on it: a view's ``select *``), and record each one's checksum in
    ``audit.schema_migrations``; when nothing changed nothing is applied, so a bootstrap does
    not touch tables that other runs are using. Every file is idempotent (an old database
    without the record gets them all once). A server older than PostgreSQL 15 is refused
    before anything is applied."""
    applied = []
    with transaction(eng) as conn, conn.connection.driver_connection.cursor() as cur:
        cur.execute("select current_setting('server_version_num')::int, version()")
        version, description = cur.fetchone()
        if version < MIN_SERVER_VERSION:
            raise UnsupportedServer(
                f"PostgreSQL 15 or newer is required (MERGE); the warehouse runs "
                f"{description.split(',')[0]}. Upgrade it, or point postgres_conn_id elsewhere."
            )
        # Serialise concurrent bootstraps (two runs starting at once).
        cur.execute("select pg_advisory_xact_lock(hashtext('medallion.apply_sql'))")
        cur.execute((sql_dir / MIGRATIONS).read_text())
        cur.execute("select file_name, sha256 from audit.schema_migrations")
        recorded = dict(cur.fetchall())
        files = sorted(sql_dir.glob("[0-9][0-9][0-9]_*.sql"))
        for path in files:
            sql_text = path.read_text()
            checksum = hashlib.sha256(sql_text.encode()).hexdigest()
            if path.name == MIGRATIONS or (recorded.get(path.name) == checksum and not applied):
                continue  # unchanged, and nothing before it changed
            cur.execute(sql_text)  # no parameters: '%' in the files stays literal
            cur.execute(
                "insert into audit.schema_migrations (file_name, sha256) values (%s, %s) "
                "on conflict (file_name) do update set sha256 = excluded.sha256, "
                "applied_at = now()",
                (path.name, checksum),
            )
            applied.append(path.name)
        # files that left sql/ (their objects are dropped by the files that replaced them)
        cur.execute(
            "delete from audit.schema_migrations where file_name <> all(%s)",
            ([p.name for p in files],),
        )
    return applied


# --------------------------------------------------------------------------- COPY loading


class _BinaryCopyStream(io.RawIOBase):
    """A file for ``copy_expert`` that encodes Arrow batches into PostgreSQL's binary COPY
    format as the server asks for bytes: encoding overlaps the server's parsing, and only one
    batch is encoded at a time."""

    def __init__(self, table: pa.Table, batch_rows: int = 32_768):
        from pgpq import ArrowToPostgresBinaryEncoder

        self._encoder = ArrowToPostgresBinaryEncoder(table.schema)
        self._batches = iter(table.to_batches(max_chunksize=batch_rows))
        self._pending = memoryview(self._encoder.write_header())
        self._finished = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not len(self._pending) and not self._finished:
            batch = next(self._batches, None)
            if batch is None:
                self._pending, self._finished = memoryview(self._encoder.finish()), True
            else:
                self._pending = memoryview(self._encoder.write_batch(batch))
        n = min(len(buffer), len(self._pending))
        buffer[:n], self._pending = self._pending[:n], self._pending[n:]
        return n


_PG_TO_ARROW = {
    "text": pa.string(),
    "character varying": pa.string(),
    "bigint": pa.int64(),
    "integer": pa.int32(),
    "smallint": pa.int16(),
    "date": pa.date32(),
    "boolean": pa.bool_(),
    "double precision": pa.float64(),
    "real": pa.float32(),
    "timestamp with time zone": pa.timestamp("us", tz="UTC"),
    "timestamp without time zone": pa.timestamp("us"),
}


def _target_schema(cur, schema: str | None, name: str, keys: list[str]) -> pa.Schema:
    """The Arrow types that binary COPY needs for the target table's columns."""
    cur.execute(
        "select column_name, data_type, numeric_precision, numeric_scale "
        "from information_schema.columns where table_schema = coalesce(%s, current_schema()) "
        "and table_name = %s",
        (schema, name),
    )
    declared = {}
    for column, data_type, precision, scale in cur.fetchall():
        if data_type == "numeric":
            declared[column] = pa.decimal128(precision or 38, scale or 0)
        elif data_type in _PG_TO_ARROW:
            declared[column] = _PG_TO_ARROW[data_type]
    missing = [k for k in keys if k not in declared]
    if missing:
        raise ValueError(f"copy_method: no binary COPY type for columns {missing} of {name}")
    return pa.schema([pa.field(k, declared[k]) for k in keys])


def copy_method(table: Any, conn: Any, keys: list[str], data_iter: Iterable[tuple]) -> int:
    """``DataFrame.to_sql(method=copy_method)``: one binary COPY per call instead of INSERTs.

    ``table.frame`` goes to Arrow (zero-copy for Arrow-backed columns), is encoded by pgpq
    into PostgreSQL's binary COPY format batch by batch and streamed to ``COPY ... FROM STDIN
    (FORMAT binary)`` on the connection of ``to_sql``, inside its transaction. Binary COPY
    spares the server the text parsing of CSV. Columns that are all null (no type) are left
    out of the COPY, so they take NULL. Because it reads the whole frame, it must not be
    combined with ``chunksize``: pandas would call it once per chunk on the same table, and
    the second call raises, which rolls the transaction back.
    """
    if getattr(table, "_copied_by_copy_method", False):
        raise ValueError("copy_method writes the whole frame: call to_sql without chunksize")
    table._copied_by_copy_method = True
    frame = table.frame
    arrow = pa.Table.from_pandas(frame[keys], preserve_index=False)
    keys = [k for k in keys if not pa.types.is_null(arrow.schema.field(k).type)]
    target = (
        sql.Identifier(table.schema, table.name) if table.schema else sql.Identifier(table.name)
    )
    statement = sql.SQL("copy {} ({}) from stdin with (format binary)").format(
        target, sql.SQL(", ").join(map(sql.Identifier, keys))
    )
    dbapi = conn.connection.driver_connection
    with dbapi.cursor() as cur:
        # Arrow casts to the declared types (safely: 1.5 never becomes bigint 1)
        arrow = arrow.select(keys).cast(_target_schema(cur, table.schema, table.name, keys))
        cur.copy_expert(statement.as_string(dbapi), _BinaryCopyStream(arrow), size=1 << 20)
        return cur.rowcount  # the rows the server copied, as COPY reports them


def transit_frame(batch: pa.RecordBatch | pa.Table) -> pd.DataFrame:
    """A gold batch as the DataFrame handed to ``to_sql``: text, integers and decimals stay
    Arrow-backed (nullable, exact); dates and columns with few distinct values (ship mode,
    region, run id ...) become categories. pandas converts every value of the frame to a Python
    object before it calls the method (``insert_data``): a category converts each distinct
    value once, which halves that cost on a fact batch."""
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    for i, f in enumerate(table.schema):
        column = table.column(i)
        if pa.types.is_date(f.type) or (
            (pa.types.is_string(f.type) or pa.types.is_decimal(f.type)) and _few_distinct(column)
        ):
            table = table.set_column(i, f.name, pc.dictionary_encode(column))

    def dtype(t: pa.DataType):
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return pd.StringDtype("pyarrow")
        return pd.ArrowDtype(t) if pa.types.is_decimal(t) or pa.types.is_integer(t) else None

    return table.to_pandas(types_mapper=dtype)


def _few_distinct(column: pa.ChunkedArray, sample: int = 4096) -> bool:
    """At most one distinct value in ten, judged on the first rows of the batch."""
    head = column.slice(0, sample)
    return len(head) > 0 and pc.count_distinct(head).as_py() * 10 <= len(head)


def clear_transit(conn: SAConnection, table: str, run_id: str) -> int:
    """Remove a run's rows from a transit table, so a retried load never doubles them. Rows
    loaded again (a cleared run, new files under the same run id) are not published yet: the
    run's publish record goes too, and the merge runs again."""
    conn.execute(
        text("delete from audit.run_log where run_id = :run_id and step = 'publish'"),
        {"run_id": run_id},
    )
    result = conn.execute(
        text(f"delete from public.{TRANSIT_TABLES[table]} where run_id = :run_id"),  # noqa: S608 - fixed names
        {"run_id": run_id},
    )
    return result.rowcount


def load_transit(conn: SAConnection, table: str, frame: pd.DataFrame) -> int:
    """Append a batch to ``public.bulk_<table>`` through ``to_sql(if_exists="append")``: the
    rows the server copied."""
    return frame.to_sql(
        TRANSIT_TABLES[table],
        conn,
        schema="public",
        if_exists="append",
        index=False,
        method=copy_method,
    )


def load_run(
    eng: Engine,
    table: str,
    run_id: str,
    batches: Iterable[pa.RecordBatch],
    streams: int = 2,
) -> int:
    """Load a run's gold batches into ``public.bulk_<table>``: its earlier rows are removed,
    then the batches go through ``load_transit`` (``to_sql`` + binary COPY) on ``streams``
    connections at once, so that one connection's COPY runs on the server while the next
    batch is prepared here. Each row's ``bulk_seq`` is its place in gold (the merge keeps the
    later of two lines with one key). If any batch fails, the run's rows are removed again and
    the error is raised: the transit table holds all of the run or none of it.
    """
    with transaction(eng) as conn:
        clear_transit(conn, table, run_id)
    source = iter(batches)
    lock = threading.Lock()
    handed_out = 0  # rows of the batches handed to the streams so far

    def next_batch() -> tuple[pa.RecordBatch, int] | None:
        """The next batch and the place of its first row in gold."""
        nonlocal handed_out
        with lock:  # reading the Parquet file is not thread-safe
            batch = next(source, None)
            if batch is None:
                return None
            first, handed_out = handed_out, handed_out + batch.num_rows
            return batch, first

    def stream() -> int:
        rows = 0
        with transaction(eng) as conn:
            while (item := next_batch()) is not None:
                batch, first = item
                frame = transit_frame(batch)
                # each row's place in gold: the streams' COPYs run at once, so the order in
                # which the server stores rows is not gold's (the merge keeps, per line key,
                # the row with the highest bulk_seq: the later line)
                frame["bulk_seq"] = np.arange(first, first + len(frame), dtype=np.int64)
                rows += load_transit(conn, table, frame)
        return rows

    try:
        with ThreadPoolExecutor(max_workers=streams, thread_name_prefix="copy") as pool:
            return sum(f.result() for f in [pool.submit(stream) for _ in range(streams)])
    except BaseException:
        with transaction(eng) as conn:
            clear_transit(conn, table, run_id)
        raise


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


def log_metrics(
    eng: Engine, run_id: str, step: str, started_at: datetime, source: str | None = None
) -> dict[str, float]:
    """Record a step's wall time and peak RSS in ``audit.step_metrics`` (``source``: the
    delivered file of a per-file step); returns them."""
    metrics = {
        "wall_seconds": round((datetime.now(started_at.tzinfo) - started_at).total_seconds(), 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    with transaction(eng) as conn:
        conn.execute(
            text(
                """
                insert into audit.step_metrics (run_id, step, source, wall_seconds, peak_rss_mb)
                values (:run_id, :step, :source, :wall_seconds, :peak_rss_mb)
                on conflict (run_id, step, source) do update set
                    wall_seconds = excluded.wall_seconds, peak_rss_mb = excluded.peak_rss_mb,
                    recorded_at = now()
                """
            ),
            {"run_id": run_id, "step": step, "source": source or "", **metrics},
        )
    return metrics


LOCK_ERRORS = {"55P03": "lock_timeout", "57014": "statement_timeout"}  # SQLSTATE -> setting


def lock_holders(eng: Engine) -> str:
    """Who holds locks on the pipeline's tables (or its advisory locks) now, one line per
    session: what a statement that timed out was waiting on."""
    with eng.connect() as conn:
        rows = conn.execute(text("select * from audit.vw_locks_held")).mappings().all()
    if not rows:
        return "no other session holds a lock on the pipeline's tables now"
    return "\n".join(
        f"- pid {r['pid']} ({r['user_name']}, {r['application_name'] or 'no application name'},"
        f" {r['state']} for {r['in_transaction_for']}): {r['mode']} on {r['locked']};"
        f" query: {r['query']}"
        for r in rows
    )


def run_log(eng: Engine, run_id: str) -> pd.DataFrame:
    with eng.connect() as conn:
        return pd.read_sql(
            text("select * from audit.run_log where run_id = :run_id order by started_at, step"),
            conn,
            params={"run_id": run_id},
        )
