"""Warehouse I/O (PostgreSQL): engine, transactions, ordered DDL, COPY loading, run log.

pandas, NumPy and pyarrow are imported by the functions that load or read frames: the command
line (`make run`) uses this module for its bootstrap and the ledger without them (0.3 s).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

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

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from adbc_driver_postgresql import dbapi as adbc_dbapi


def engine(conn_id: str = "postgres_default") -> Engine:
    """A SQLAlchemy engine (psycopg2) for an Airflow postgres connection id."""
    return engine_for(get_connection(conn_id))


def engine_for(conn: Connection) -> Engine:
    """A SQLAlchemy engine (psycopg2) for a resolved postgres connection."""
    # the session limits first: options of the connection's own come after and win
    options = " ".join(f"-c {k}={v}" for k, v in WAREHOUSE_SESSION.items())
    options = f"{options} {conn.extra.get('options', '')}".strip()
    # in the URL (not in connect_args), so that adbc_uri carries them too
    url = URL.create(
        "postgresql+psycopg2",
        username=conn.login,
        password=conn.password,
        host=conn.host,
        port=conn.port,
        database=conn.schema or "postgres",
        query={k: v for k, v in conn.extra.items() if k == "sslmode"} | {"options": options},
    )
    return create_engine(url, pool_pre_ping=True)


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


# --------------------------------------------------------------------------- loading


def adbc_uri(eng: Engine) -> str:
    """The libpq URI of an engine's database, for an ADBC connection (it holds the password:
    never logged or shown)."""
    url = eng.url
    query = urlencode(dict(url.query), quote_via=quote)
    credentials = f"{quote(url.username or '', safe='')}:{quote(url.password or '', safe='')}"
    address = f"{url.host}:{url.port or 5432}/{quote(url.database or '', safe='')}"
    return f"postgresql://{credentials}@{address}" + (f"?{query}" if query else "")


def adbc_connection(eng: Engine) -> adbc_dbapi.Connection:
    """An ADBC (Arrow Database Connectivity) connection to an engine's database: what pandas'
    ``to_sql`` loads through with PostgreSQL's binary COPY, from Arrow, without turning each
    value into a Python object first."""
    import adbc_driver_postgresql.dbapi

    return adbc_driver_postgresql.dbapi.connect(adbc_uri(eng))


class AdbcConnections:
    """ADBC connections to an engine's database, opened when a load first needs one and handed
    to the next load once it is done with them (opening one takes about 50 ms here: two of them
    per table were most of a 10k-line run's load); all closed with the block. A connection
    whose load failed is closed at once, never handed on."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        self.opened = 0
        self._idle: list[adbc_dbapi.Connection] = []
        self._lock = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[adbc_dbapi.Connection]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = adbc_connection(self.eng)
            with self._lock:
                self.opened += 1
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._idle.append(conn)

    def __enter__(self) -> AdbcConnections:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def register_sources(eng: Engine, run_id: str) -> dict[str, int]:
    """The key of each of the run's files (``staging.fact_sources``: the files its silver step
    recorded, registered on the first call), by which its lines name their source."""
    with transaction(eng) as conn:
        rows = conn.execute(
            text("select source_object, source_key from staging.register_sources(:r)"),
            {"r": run_id},
        )
        return dict(rows.all())


def with_source_keys(batch: pa.RecordBatch, sources: dict[str, int]) -> pa.RecordBatch:
    """A gold batch whose ``source_object`` (the file's 90-byte name on every line) is replaced by
    the file's key, ``source_key``; a batch without it is returned as it is. A line of a file
    the run's silver step did not record stops the load: its lineage would be lost."""
    import pyarrow as pa
    import pyarrow.compute as pc

    at = batch.schema.get_field_index("source_object")
    if at < 0:
        return batch
    names = batch.column(at)
    if pa.types.is_dictionary(names.type):
        names = names.dictionary_decode()
    positions = pc.index_in(names, value_set=pa.array(list(sources), pa.string()))
    if positions.null_count:
        unknown = pc.unique(pc.filter(names, pc.is_null(positions))).to_pylist()
        raise ValueError(
            f"lines of files the run's silver step did not record: {unknown[:5]} "
            f"(recorded: {sorted(sources)[:5]})"
        )
    keys = pa.array(list(sources.values()), pa.int32()).take(positions)
    return batch.set_column(at, pa.field("source_key", pa.int32()), keys)


def transit_frame(batch: pa.RecordBatch | pa.Table) -> pd.DataFrame:
    """A gold batch as the DataFrame handed to ``to_sql``: every column Arrow-backed with gold's
    own type (text, integers, exact decimals, dates), so pandas hands it back to Arrow without
    a copy and the server gets the declared types."""
    import pandas as pd
    import pyarrow as pa

    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    return table.to_pandas(types_mapper=pd.ArrowDtype)


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


def _declared_types(conn, name: str, columns: list[str]) -> pa.Schema:
    """The Arrow types of a transit table's columns, as PostgreSQL declares them."""
    import pyarrow as pa

    # the Arrow type of each PostgreSQL type a transit table has (numeric: decimal128, below)
    pg_to_arrow = {
        "text": pa.string(),
        "bigint": pa.int64(),
        "integer": pa.int32(),
        "date": pa.date32(),
    }
    with conn.cursor() as cur:
        cur.execute(
            "select column_name, data_type, numeric_precision, numeric_scale "
            "from information_schema.columns "
            f"where table_schema = 'public' and table_name = '{name}'"  # noqa: S608 - ours
        )
        declared = {column: (kind, p, s) for column, kind, p, s in cur.fetchall()}
    fields = []
    for column in columns:
        kind, precision, scale = declared.get(column, (None, None, None))
        if kind == "numeric":
            fields.append(pa.field(column, pa.decimal128(precision, scale)))
        elif kind in pg_to_arrow:
            fields.append(pa.field(column, pg_to_arrow[kind]))
        else:
            raise ValueError(f"public.{name}: no column {column!r} to load (type {kind})")
    return pa.schema(fields)


def load_transit(conn: adbc_dbapi.Connection, table: str, frame: pd.DataFrame) -> int:
    """Append a batch to ``public.bulk_<table>`` through ``to_sql(if_exists="append")`` on an
    ADBC connection (``adbc_connection``): pandas hands the frame to Arrow and the driver sends
    it with binary COPY, then commits. The frame is cast to the table's declared types first,
    by Arrow and safely (1.5 never becomes bigint 1, an amount with a fifth decimal is an
    error, not rounded). The rows the server copied."""
    import pandas as pd
    import pyarrow as pa

    name = TRANSIT_TABLES[table]
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    arrow = arrow.cast(_declared_types(conn, name, arrow.column_names))
    return arrow.to_pandas(types_mapper=pd.ArrowDtype).to_sql(
        name, conn, schema="public", if_exists="append", index=False
    )


def load_run(
    eng: Engine,
    table: str,
    run_id: str,
    batches: Iterable[pa.RecordBatch],
    streams: int = 2,
    connections: AdbcConnections | None = None,
) -> int:
    """Load a run's gold batches into ``public.bulk_<table>``: its earlier rows are removed,
    then the batches go through ``load_transit`` (``to_sql`` + binary COPY) on up to
    ``streams`` ADBC connections at once, so that one connection's COPY runs on the server
    while the next batch is prepared here; a stream takes a connection (from ``connections``,
    shared with other loads) only once it has a batch. Each row's ``bulk_seq`` is its place in
    gold (the merge keeps the later of two lines with one key), and each line names its file by
    key (``register_sources``, ``with_source_keys``). If any batch fails, the run's rows are
    removed again and the error is raised: the transit table holds all of the run or none of it.
    """
    if connections is None:
        with AdbcConnections(eng) as own:
            return load_run(eng, table, run_id, batches, streams, own)
    import numpy as np

    with transaction(eng) as conn:
        clear_transit(conn, table, run_id)
    sources = register_sources(eng, run_id)
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
        if (item := next_batch()) is None:
            return rows  # another stream took every batch: no connection
        with connections.connection() as conn:
            while item is not None:
                batch, first = item
                frame = transit_frame(with_source_keys(batch, sources))
                # each row's place in gold: the streams' COPYs run at once, so the order in
                # which the server stores rows is not gold's (the merge keeps, per line key,
                # the row with the highest bulk_seq: the later line)
                frame["bulk_seq"] = np.arange(first, first + len(frame), dtype=np.int64)
                rows += load_transit(conn, table, frame)
                item = next_batch()
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
    import pandas as pd

    with eng.connect() as conn:
        return pd.read_sql(
            text("select * from audit.run_log where run_id = :run_id order by started_at, step"),
            conn,
            params={"run_id": run_id},
        )
