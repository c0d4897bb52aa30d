"""The result notebook's figures (medallion.results) against the analysts' view they stand for."""

from decimal import Decimal

import pandas as pd
import pytest
from sqlalchemy import text

from medallion import results
from tests.test_warehouse import Delivery, merge, new_prefix


def view(db, sql: str) -> pd.DataFrame:
    with db.connect() as conn:
        return pd.read_sql(text(sql), conn)


@pytest.fixture
def published(db) -> None:
    """A run with two customers, one of them in two segments' worth of lines, and two products."""
    p = new_prefix()
    run = (
        Delivery(p, f"{p}-r1")
        .line(1, customer="C1", product="P1", sales=Decimal("10.5"), profit=Decimal("1.25"))
        .line(2, customer="C2", product="P1", sales=Decimal("99.0001"), region="Norte")
        .line(3, customer="C2", product="P2", sales=Decimal("0.0001"), region=None)
    )
    merge(db, run.load(db).run_id)


def test_sales_by_month_and_region_are_the_views(db, published):
    by_month = view(
        db,
        "select make_date(order_year, order_month, 1) as month, sum(sales)::float8 as sales, "
        "sum(profit)::float8 as profit from staging.vw_operaciones_ventas group by 1 order by 1",
    ).set_index("month")
    pd.testing.assert_frame_equal(results.sales_by_month(db), by_month)
    by_region = view(
        db,
        "select coalesce(region, '(sin región)') as region, "
        "coalesce(segment, '(sin segmento)') as segment, sum(sales)::float8 as sales "
        "from staging.vw_operaciones_ventas group by 1, 2",
    ).pivot_table(index="region", columns="segment", values="sales", fill_value=0)
    pd.testing.assert_frame_equal(results.sales_by_region_and_segment(db), by_region)


@pytest.mark.parametrize(
    ("top", "key", "name"),
    [
        (results.top_products, "product_id", "product_name"),
        (results.top_customers, "customer_id", "customer_name"),
    ],
)
def test_the_top_ten_are_the_views(db, published, top, key, name):
    expected = view(
        db,
        f"select {key}, max({name}) as {name}, sum(sales)::float8 as sales, "
        f"sum(profit)::float8 as profit from staging.vw_operaciones_ventas group by {key} "
        f"order by sum(sales) desc, {key} limit 10",
    )
    assert len(expected) > 0
    pd.testing.assert_frame_equal(top(db, 10), expected)
