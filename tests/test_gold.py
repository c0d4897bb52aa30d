"""Gold dimensions: one row per natural key, chosen the same way on every run."""

import datetime as dt
import random

import pandas as pd
import pyarrow as pa
import pytest

from medallion.gold import DIM_CLIENTE, DIM_INVENTARIO, DimensionBuilder

pytestmark = pytest.mark.pure  # no service: runs without starting any

COLUMNS = [
    "product_id",
    "product_name",
    "category",
    "sub_category",
    "customer_id",
    "customer_name",
    "segment",
    "order_date",
]


def batch(rows):
    return pa.RecordBatch.from_pandas(pd.DataFrame(rows, columns=COLUMNS), preserve_index=False)


def test_same_product_with_two_names_latest_order_wins_across_batches():
    builder = DimensionBuilder(DIM_INVENTARIO)
    builder.add(
        batch(
            [
                [
                    "P1",
                    "Silla nueva",
                    "Muebles",
                    "Sillas",
                    "C1",
                    "Ana",
                    "Consumo",
                    dt.date(2024, 5, 1),
                ],
                ["P2", "Mesa", "Muebles", "Mesas", "C1", "Ana", "Consumo", dt.date(2024, 1, 1)],
            ]
        ),
        0,
    )
    builder.add(
        batch(
            [
                [
                    "P1",
                    "Silla vieja",
                    "Muebles",
                    "Sillas",
                    "C1",
                    "Ana",
                    "Consumo",
                    dt.date(2024, 2, 1),
                ],
                ["P2", "Mesa", "Muebles", "Mesas", "C1", "Ana", "Consumo", dt.date(2024, 1, 1)],
            ]
        ),
        2,
    )
    result = builder.result("r1").to_pandas().set_index("product_id")
    assert list(result.index) == ["P1", "P2"]
    assert result.loc["P1", "product_name"] == "Silla nueva"
    assert builder.conflicts == 1


def test_same_date_the_later_line_wins():
    builder = DimensionBuilder(DIM_CLIENTE)
    day = dt.date(2024, 3, 1)
    builder.add(
        batch(
            [
                ["P1", "x", "c", "s", "C1", "Ana", "Consumo", day],
                ["P1", "x", "c", "s", "C1", "Ana María", "Consumo", day],
            ]
        ),
        0,
    )
    assert builder.result("r1").to_pandas().loc[0, "customer_name"] == "Ana María"


def test_first_order_date_is_where_the_winning_attributes_start():
    builder = DimensionBuilder(DIM_CLIENTE)
    builder.add(
        batch(
            [
                ["P1", "x", "c", "s", "C1", "Ana", "Consumo", dt.date(2024, 1, 1)],
                ["P1", "x", "c", "s", "C1", "Ana Gómez", "Consumo", dt.date(2024, 4, 1)],
                ["P1", "x", "c", "s", "C1", "Ana Gómez", "Consumo", dt.date(2024, 6, 1)],
            ]
        ),
        0,
    )
    row = builder.result("r1").to_pandas().iloc[0]
    assert (row["customer_name"], row["first_order_date"], row["last_order_date"]) == (
        "Ana Gómez",
        dt.date(2024, 4, 1),
        dt.date(2024, 6, 1),
    )


@pytest.mark.parametrize("dim", [DIM_CLIENTE, DIM_INVENTARIO], ids=lambda d: d.name)
def test_the_winners_do_not_depend_on_when_batches_are_reduced_together(dim):
    rng = random.Random(7)
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=rng.randrange(60)) for _ in range(400)]
    rows = [
        [f"P{rng.randrange(15)}", rng.choice("xy"), "c", "s", f"C{rng.randrange(15)}",
         rng.choice(["Ana", "Ana M."]), "Consumo", day]
        for day in days
    ]  # fmt: skip
    outcomes = []
    for min_pending in (1, 37, 10**6):  # after every batch, now and then, only at the end
        builder = DimensionBuilder(dim)
        builder.MIN_PENDING = min_pending
        for start in range(0, len(rows), 25):
            builder.add(batch(rows[start : start + 25]), start)
        outcomes.append((builder.result("r1").to_pylist(), builder.conflicts))
    assert outcomes[0][1] > 0  # the input has conflicts to resolve
    assert outcomes[0] == outcomes[1] == outcomes[2]
