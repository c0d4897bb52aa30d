"""The result notebook's figures (medallion.results) against the analysts' view they stand for,
for the lines the run wrote."""

import datetime as dt
from decimal import Decimal

import pandas as pd
import pytest
from sqlalchemy import text

from medallion import results
from tests.test_warehouse import Delivery, change_during, merge, new_prefix, scalar


def view(db, sql: str, run_id: str) -> pd.DataFrame:
    """``sql`` on the view's rows of the fact lines the run wrote (``{lines}``)."""
    lines = (
        "staging.vw_operaciones_ventas where line_key in "
        "(select line_key from staging.fact_operaciones_ventas "
        "join staging.fact_sources using (source_key) where run_id = :r)"
    )
    with db.connect() as conn:
        return pd.read_sql(text(sql.format(lines=lines)), conn, params={"r": run_id})


@pytest.fixture
def runs(db) -> tuple[str, str]:
    """Two runs: the second corrects one line of the first and adds one."""
    p = new_prefix()
    first = (
        Delivery(p, f"{p}-r1")
        .line(1, customer="C1", product="P1", sales=Decimal("10.5"), profit=Decimal("1.25"))
        .line(2, customer="C2", product="P1", sales=Decimal("99.0001"), region="Norte")
        .line(3, customer="C2", product="P2", sales=Decimal("0.0001"), region=None)
    )
    merge(db, first.load(db).run_id)
    second = (
        Delivery(p, f"{p}-r2")
        .line(2, customer="C2", product="P1", sales=Decimal("5"), region="Norte")
        .line(4, customer="C3", product="P3", sales=Decimal("7.25"))
    )
    merge(db, second.load(db).run_id)
    return first.run_id, second.run_id


@pytest.mark.parametrize("which", [0, 1])
def test_sales_by_month_and_region_are_the_views(db, runs, which):
    run_id = runs[which]
    by_month = view(
        db,
        "select make_date(order_year, order_month, 1) as month, sum(sales)::float8 as sales, "
        "sum(profit)::float8 as profit from {lines} group by 1 order by 1",
        run_id,
    ).set_index("month")
    assert len(by_month)
    pd.testing.assert_frame_equal(results.by_month(db, run_id)[["sales", "profit"]], by_month)
    by_region = view(
        db,
        "select coalesce(region, '(sin región)') as region, "
        "coalesce(segment, '(sin segmento)') as segment, sum(sales)::float8 as sales "
        "from {lines} group by 1, 2",
        run_id,
    ).pivot_table(index="region", columns="segment", values="sales", fill_value=0)
    pd.testing.assert_frame_equal(results.sales_by_region_and_segment(db, run_id), by_region)


@pytest.mark.parametrize(
    ("top", "key", "name"),
    [
        (results.top_products, "product_id", "product_name"),
        (results.top_customers, "customer_id", "customer_name"),
    ],
)
def test_the_top_ten_are_the_views_for_the_runs_lines(db, runs, top, key, name):
    first, second = runs
    for run_id, lines in ((first, 2), (second, 2)):  # the first run's line 2 is the second's now
        expected = view(
            db,
            f"select {key}, max({name}) as {name}, sum(sales)::float8 as sales, "
            f"sum(profit)::float8 as profit from {{lines}} group by {key} "
            f"order by sum(sales) desc, {key} limit 10",
            run_id,
        )
        assert len(expected) == lines
        pd.testing.assert_frame_equal(top(db, run_id, 10), expected)


def test_top_customers_add_up_a_customers_versions(empty_warehouse):
    """With SCD type 2, a run's lines may point at two versions of one customer: the customer
    is one row of the top ten, with the sum of both."""
    db = empty_warehouse
    p = new_prefix()
    march, june = dt.date(2024, 3, 1), dt.date(2024, 6, 1)
    first = (
        Delivery(p, f"{p}-r1")
        .line(1, order_date=march, sales=Decimal("10"))
        .line(2, customer="C2", order_date=march, sales=Decimal("12"))
    )
    merge(db, first.load(db).run_id, scd_type=2)
    expected = [(f"{p}-C2", "Ana", 12.0), (f"{p}-C1", "Ana", 10.0)]  # one version each
    top = results.top_customers(db, first.run_id, 10)
    assert list(top[["customer_id", "customer_name", "sales"]].itertuples(index=False)) == expected
    rename = Delivery(p, f"{p}-r2").line(3, name="Ana Gómez", order_date=dt.date(2024, 4, 1))
    merge(db, rename.load(db).run_id, scd_type=2)  # C1's second version, from April on
    both = (  # March: the first version; June: the second
        Delivery(p, f"{p}-r3")
        .line(4, name="Ana Gómez", order_date=march, sales=Decimal("8"))
        .line(5, name="Ana Gómez", order_date=june, sales=Decimal("7"))
        .line(6, customer="C2", order_date=june, sales=Decimal("14"))
    )
    merge(db, both.load(db).run_id, scd_type=2)
    with db.connect() as conn:
        assert (
            conn.execute(  # the run's lines point at both of C1's versions
                text(
                    "select count(distinct cliente_key) from staging.fact_operaciones_ventas "
                    "where line_key in (:a, :b)"
                ),
                {"a": f"{p}-L4", "b": f"{p}-L5"},
            ).scalar_one()
            == 2
        )
    top = results.top_customers(db, both.run_id, 10)
    assert list(top[["customer_id", "customer_name", "sales"]].itertuples(index=False)) == [
        (f"{p}-C1", "Ana Gómez", 15.0),
        (f"{p}-C2", "Ana", 14.0),
    ]


def test_equal_totals_are_ordered_by_key_whatever_order_float8_adds_them_in(db):
    p = new_prefix()
    run = (
        Delivery(p, f"{p}-ties")  # 0.3 against 0.1 + 0.2, which float8 makes 0.30000000000000004
        .line(1, customer="C1", product="P1", sales=Decimal("0.3"))
        .line(2, customer="C2", product="P2", sales=Decimal("0.1"))
        .line(3, customer="C2", product="P2", sales=Decimal("0.2"))
    )
    merge(db, run.load(db).run_id)
    top = results.top_products(db, run.run_id, 10)
    assert list(top.product_id) == [f"{p}-P1", f"{p}-P2"]
    assert list(top.sales) == [0.3, 0.3]


def test_new_and_updated_lines_by_month_are_the_runs_writes(db, runs):
    first, second = runs
    totals = {
        r: results.by_month(db, r)[["new_lines", "updated_lines"]].sum().to_dict() for r in runs
    }
    # the first run's line 2 is the second's now: the second updated it, and added line 4
    assert totals[first] == {"new_lines": 2, "updated_lines": 0}
    assert totals[second] == {"new_lines": 1, "updated_lines": 1}


def test_a_run_that_changed_nothing_has_no_figures(db, runs):
    assert results.by_month(db, "no-such-run").empty
    assert results.top_products(db, "no-such-run", 10).empty


def test_staging_rows_are_each_tables_and_the_views_count(db, runs):
    rows = results.staging_rows(db).set_index("table")["rows"]
    with db.connect() as conn:
        for table in rows.index:
            assert rows[table] == conn.execute(text(f"select count(*) from {table}")).scalar_one()


# scans of the fact in this transaction (sequential and index scans, index-only ones too)
FACT_READS = (
    "select coalesce(seq_scan, 0) + coalesce(idx_scan, 0) from pg_stat_xact_user_tables "
    "where relid = 'staging.fact_operaciones_ventas'::regclass"
)


def kept_fact_lines(db) -> int | None:
    with db.connect() as conn:
        return conn.execute(text("select lines from audit.fact_line_count")).scalar_one_or_none()


def fact_count(db) -> int:
    return scalar(db, "select count(*) from staging.fact_operaciones_ventas")


def test_the_fact_lines_shown_are_the_merges_count_not_a_read_of_every_line(db):
    with db.connect() as conn, conn.begin():
        conn.execute(text("select audit.fact_lines()"))  # counted once and kept, if it was not
    p = new_prefix()
    merge(db, Delivery(p, f"{p}-r1").line(1).line(2).load(db).run_id)
    # a line changed and a new one: the merge path, not the insert of new lines
    merge(db, Delivery(p, f"{p}-r2").line(2, sales=Decimal("3")).line(3).load(db).run_id)
    assert change_during(db, FACT_READS, "select audit.fact_lines()") == 0
    shown = results.staging_rows(db).set_index("table")["rows"]
    assert shown["staging.fact_operaciones_ventas"] == fact_count(db) == kept_fact_lines(db)


def test_a_write_that_is_not_a_merges_has_the_fact_lines_counted_again(db):
    p = new_prefix()
    run = Delivery(p, f"{p}-r1").line(1).line(2).load(db).run_id
    merge(db, run)
    with db.connect() as conn, conn.begin():
        conn.execute(text("select audit.fact_lines()"))  # counted once and kept, if it was not
    assert kept_fact_lines(db) is not None
    with db.connect() as conn, conn.begin():  # by hand, outside the merge: a line of the run goes
        conn.execute(
            text("delete from staging.fact_operaciones_ventas where line_key = :k"),
            {"k": f"{p}-L1"},
        )
    assert kept_fact_lines(db) is None  # forgotten: never a stale number
    assert change_during(db, FACT_READS, "select audit.fact_lines()") > 0  # counted again
    shown = results.staging_rows(db).set_index("table")["rows"]
    assert shown["staging.fact_operaciones_ventas"] == fact_count(db) == kept_fact_lines(db)


def test_a_first_load_keeps_its_lines_as_the_fact_count(empty_warehouse):
    db = empty_warehouse
    p = new_prefix()
    merge(db, Delivery(p, f"{p}-r1").line(1).line(2).line(3).load(db).run_id)
    assert kept_fact_lines(db) == 3 == fact_count(db)
    assert change_during(db, FACT_READS, "select audit.fact_lines()") == 0


def test_a_runs_summary_takes_the_staging_counts_its_result_notebook_recorded(db, runs):
    from medallion import runs as pipeline_runs

    first, second = runs
    shown = results.staging_rows(db, second)  # as notebook 05 calls it
    recorded = results.recorded_staging_rows(db, second)
    assert recorded == {table: int(n) for table, n in shown.itertuples(index=False)}
    results.staging_rows(db)  # without a run: nothing recorded
    assert results.recorded_staging_rows(db, first) is None
    with db.connect() as conn, conn.begin():  # what the summary shows is the record, not a count
        conn.execute(
            text(
                "update audit.run_log set details = jsonb_set(details, "
                "'{staging_rows,staging.dim_cliente}', '-1') "
                "where run_id = :r and step = 'result'"
            ),
            {"r": second},
        )
    assert pipeline_runs.summary(db, second)["staging_rows"]["staging.dim_cliente"] == -1
    counted = pipeline_runs.summary(db, first)["staging_rows"]  # no record: counted
    assert counted == {table: int(n) for table, n in shown.itertuples(index=False)}
