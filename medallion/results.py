"""What a published run left in the warehouse, for its result notebook (05_resultado) and its
record: its files, the merge's counts, the publish gate's checks, and the first figures an
analyst looks at (those of ``staging.vw_operaciones_ventas``)."""

from __future__ import annotations

import json
from decimal import Decimal

import pandas as pd
from sqlalchemy import Engine, text

from medallion import warehouse


class RunNotPublished(RuntimeError):
    """The run has no published result (yet): its merge comes first."""


def _frame(db: Engine, sql: str, run_id: str | None = None, **params) -> pd.DataFrame:
    """``sql``'s rows; with ``run_id``, ``:sources`` is the keys of the run's files, by which
    the run's fact lines name it (``staging.run_sources``), passed as constants."""
    with db.connect() as conn, conn.begin():
        if run_id is not None:
            params["sources"] = conn.execute(
                text("select staging.run_sources(:r)"), {"r": run_id}
            ).scalar_one()
        # A run's lines are found through the index on source_key (a bitmap scan), then read in
        # table order: walking a whole first load by the key indexes costs several times more
        # (30 s instead of 5 s for the top products of 10M lines, measured). The sums per
        # customer and per product of a large run fit in memory with 64 MB per worker instead
        # of spilling to disk (10M lines: the five figures 15.5 s -> 13.6 s, measured).
        conn.execute(text("set local enable_indexscan = off"))
        conn.execute(text("set local work_mem = '64MB'"))
        return pd.read_sql(text(sql), conn, params=params)


def publish_checks(db: Engine, run_id: str) -> pd.DataFrame:
    """The publish gate's checks of the run: check, expected, found, passed. A run that is not
    published has none: the error says which step comes first."""
    with db.connect() as conn:
        checks = conn.execute(
            text(
                "select coalesce(details ->> 'checks', '[]') from audit.run_log "  # [] before 039
                "where run_id = :r and step = 'publish' and status = 'success'"
            ),
            {"r": run_id},
        ).scalar_one_or_none()
    if checks is None:
        raise RunNotPublished(
            f"run {run_id!r} is not published: merge it first (the DAG's merge_staging task, "
            f"`call staging.sp_merge_operaciones_ventas('{run_id}')` after notebook "
            "04_load_postgres, or `make run`)"
        )
    exact = json.loads(checks, parse_float=Decimal)  # sums of sales as delivered, not floats
    return pd.DataFrame(exact, columns=["check", "expected", "found", "passed"])


def run_files(db: Engine, run_id: str) -> pd.DataFrame:
    """Each file the run saw: its decision and, if processed, its lines by destination."""
    return (
        _frame(
            db,
            """select file_name, decision, lines_in, silver, quarantined, duplicates, note
           from audit.vw_run_files where run_id = :r order by file_name""",
            r=run_id,
        )
        .astype({c: "Int64" for c in ("lines_in", "silver", "quarantined", "duplicates")})
        .fillna(
            {"decision": "—"}  # a notebook run by hand: no discovery
        )
    )


def merge_counts(db: Engine, run_id: str) -> pd.DataFrame:
    """Per staging table: rows the merge inserted, updated and found unchanged."""
    return _frame(
        db,
        """select source as "table", (details ->> 'inserted')::bigint as inserted,
                  (details ->> 'updated')::bigint as updated,
                  (details ->> 'unchanged')::bigint as unchanged, details ->> 'strategy' as how
           from audit.run_log where run_id = :r and step = 'merge' order by started_at""",
        r=run_id,
    )


def staging_rows(db: Engine, run_id: str | None = None) -> pd.DataFrame:
    """Rows now in each staging table and in the view. The view joins each fact line to its
    customer and product, which its validated foreign keys guarantee: it holds one row per fact
    line, so the fact's count is the view's. The fact's lines are the count the merges keep
    (``audit.fact_lines``, exact: lines inserted or deleted by anything else make the next call
    count them again), not a read of every line (10M lines: 0.25-0.6 s per run, growing with
    the warehouse).

    With ``run_id`` (notebook 05) the counts also go to the run's log (step 'result'), where the
    command's summary takes them (``recorded_staging_rows``)."""
    fact = "fact_operaciones_ventas"
    counts = " union all ".join(
        f"select 'staging.{t}' as \"table\", count(*) as rows from staging.{t}"  # noqa: S608
        if t != fact
        else f"select 'staging.{t}', audit.fact_lines()"
        for t in warehouse.TRANSIT_TABLES  # keyed by staging table
    )
    with db.connect() as conn, conn.begin():  # a count of the fact may be kept (a write)
        rows = pd.read_sql(text(counts), conn)
    lines = rows.loc[rows["table"] == f"staging.{fact}", "rows"].iloc[0]
    view = pd.DataFrame([{"table": "staging.vw_operaciones_ventas", "rows": lines}])
    rows = pd.concat([rows, view], ignore_index=True)
    if run_id is not None:
        counts = {table: int(n) for table, n in rows.itertuples(index=False)}
        warehouse.log_step(db, run_id, "result", "staging", details={"staging_rows": counts})
    return rows


def recorded_staging_rows(db: Engine, run_id: str) -> dict[str, int] | None:
    """The rows per staging table that the run's result notebook counted, if it ran."""
    with db.connect() as conn:
        return conn.execute(
            text(
                "select details -> 'staging_rows' from audit.run_log "
                "where run_id = :r and step = 'result' and source = 'staging'"
            ),
            {"r": run_id},
        ).scalar_one_or_none()


# -- for analysts: what the run published ------------------------------------------------------
# The view's figures (staging.vw_operaciones_ventas) for the fact lines the run inserted or
# updated (a line keeps the source key of the last run that wrote it; the fact's index on
# source_key finds them), so that a run's record costs what the run brought, not what the
# warehouse holds. Summed by the integer surrogate keys first and named after; every fact line
# has its customer and product (foreign keys), so the sums are the view's.


def by_month(db: Engine, run_id: str) -> pd.DataFrame:
    """Per month of the order: sales and profit, and the lines inserted (new) and updated, in
    one pass over the run's lines (two passes took 6.5 s of a 10M-line run's result notebook,
    one takes 3.5 s; issue 12). A line keeps the source of the last run that wrote it
    (``source_key``); an updated line's ``updated_at`` is after its ``created_at``, an inserted
    one's is the same (one transaction). The month of a date is truncated as a timestamp
    without time zone: the same month, without converting each line's date to the session's
    time zone first (10M lines: 2.5-2.7 s -> 2.0-2.1 s)."""
    return _frame(
        db,
        """select date_trunc('month', order_date::timestamp)::date as month,
                  sum(sales)::float8 as sales, sum(profit)::float8 as profit,
                  count(*) filter (where updated_at = created_at) as new_lines,
                  count(*) filter (where updated_at > created_at) as updated_lines
           from staging.fact_operaciones_ventas where source_key = any(:sources)
           group by 1 order by 1""",
        run_id=run_id,
    ).set_index("month")


def sales_by_region_and_segment(db: Engine, run_id: str) -> pd.DataFrame:
    """Sales per region (rows) and segment (columns)."""
    return _frame(
        db,
        """select coalesce(f.region, '(sin región)') as region,
                  coalesce(c.segment, '(sin segmento)') as segment, sum(f.sales)::float8 as sales
           from staging.fact_operaciones_ventas as f
           join staging.dim_cliente as c using (cliente_key)
           where f.source_key = any(:sources)
           group by 1, 2""",
        run_id=run_id,
    ).pivot_table(index="region", columns="segment", values="sales", fill_value=0)


def top_products(db: Engine, run_id: str, n: int = 10) -> pd.DataFrame:
    return _top(db, run_id, "inventario", "product_id", "product_name", n)


def top_customers(db: Engine, run_id: str, n: int = 10) -> pd.DataFrame:
    return _top(db, run_id, "cliente", "customer_id", "customer_name", n, _has_versions(db))


def _has_versions(db: Engine) -> bool:
    """Whether a customer has more than one row in ``dim_cliente`` (SCD type 2 closed one)."""
    with db.connect() as conn:
        return conn.execute(
            text("select exists (select 1 from staging.dim_cliente where not is_current)")
        ).scalar_one()


def _top(
    db: Engine, run_id: str, dimension: str, key: str, name: str, n: int, versions: bool = False
) -> pd.DataFrame:
    """The ``n`` natural keys with the most sales: key, name, sales, profit. Summed per
    surrogate key in float8 as they are shown: 50,000 exact numeric sums side by side took
    twice as long (the top products of 1M lines 0.88 -> 0.45 s, of 10M 5.2 -> 3.6 s; issue
    12). The totals are rounded to the columns' four decimals, so that equal totals stay equal
    (ordered by key) whatever order float8 added them in; over the 10M bench lines every one
    was the exact total (largest float8 difference 3e-9, measured).

    A dimension with one row per natural key (``versions`` False) names only its ``n`` best
    members (and those tied with the last); with versions (SCD type 2) a customer's sums are
    added up over them first, which regroups every member by its text id (10M lines onto
    500k customers: 1.2 s)."""
    if versions:
        sql = f"""select d.{key}, max(d.{name}) as {name},
                         round(sum(t.sales)::numeric, 4)::float8 as sales,
                         round(sum(t.profit)::numeric, 4)::float8 as profit
                  from (select {dimension}_key, sum(sales::float8) as sales,
                               sum(profit::float8) as profit
                        from staging.fact_operaciones_ventas where source_key = any(:sources)
                        group by 1) as t
                  join staging.dim_{dimension} as d using ({dimension}_key)
                  group by d.{key}
                  order by round(sum(t.sales)::numeric, 4) desc, d.{key} limit :n"""  # noqa: S608 - our column names
    else:
        sql = f"""select d.{key}, d.{name}, t.sales::float8 as sales, t.profit::float8 as profit
                  from (select {dimension}_key, round(sum(sales::float8)::numeric, 4) as sales,
                               round(sum(profit::float8)::numeric, 4) as profit
                        from staging.fact_operaciones_ventas where source_key = any(:sources)
                        group by 1 order by 2 desc fetch first :n rows with ties) as t
                  join staging.dim_{dimension} as d using ({dimension}_key)
                  order by t.sales desc, d.{key} limit :n"""  # noqa: S608 - our column names
    return _frame(db, sql, run_id=run_id, n=n)
