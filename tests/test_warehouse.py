"""COPY loading through to_sql and the merge procedure, on the real PostgreSQL."""

import datetime as dt
from decimal import Decimal

import pandas as pd
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from medallion import warehouse


def fact_row(line_key: str, run_id: str, **changes) -> dict:
    row = {
        "line_key": line_key,
        "row_id": line_key,
        "order_id": "ES-1",
        "order_date": dt.date(2024, 3, 1),
        "ship_date": dt.date(2024, 3, 4),
        "ship_mode": "Estándar",
        "customer_id": "CL-T1",
        "product_id": "P-T1",
        "country": "España",
        "city": "Madrid",
        "state": "Madrid",
        "postal_code": "08001",
        "region": "Centro",
        "sales": Decimal("957.5775"),
        "quantity": 3,
        "discount": Decimal("0.2"),
        "profit": Decimal("-383.031"),
        "source_object": "s3://b/k.csv",
        "source_line": 2,
        "run_id": run_id,
    }
    return row | changes


def load_run(db, run_id: str, facts: list[dict], customer_name: str = "Ana") -> None:
    dims = {
        "dim_inventario": pd.DataFrame(
            [
                {
                    "product_id": "P-T1",
                    "product_name": "Silla",
                    "category": "Muebles",
                    "sub_category": "Sillas",
                    "last_order_date": dt.date(2024, 3, 1),
                    "run_id": run_id,
                }
            ]
        ),
        "dim_cliente": pd.DataFrame(
            [
                {
                    "customer_id": "CL-T1",
                    "customer_name": customer_name,
                    "segment": "Consumo",
                    "last_order_date": dt.date(2024, 3, 1),
                    "run_id": run_id,
                }
            ]
        ),
        "fact_operaciones_ventas": pd.DataFrame(facts),
    }
    with warehouse.transaction(db) as conn:
        for table, frame in dims.items():
            warehouse.clear_transit(conn, table, run_id)
            warehouse.load_transit(conn, table, frame)


def merge(db, run_id: str) -> None:
    with warehouse.transaction(db) as conn:
        conn.execute(text("call staging.sp_merge_operaciones_ventas(:r)"), {"r": run_id})


def merged(db, run_id: str) -> dict:
    with db.connect() as conn:
        rows = conn.execute(
            text("select source, details from audit.run_log where run_id = :r and step = 'merge'"),
            {"r": run_id},
        ).all()
    return {source.removeprefix("staging."): details for source, details in rows}


def test_copy_method_round_trips_awkward_values(db):
    frame = pd.DataFrame(
        {
            "line_key": ["tab\there", "new\nline", "back\\slash", "", None],
            "sales": [Decimal("0.0001"), Decimal("957.5775"), None, Decimal("1E+2"), Decimal("-3")],
            "order_date": [dt.date(2024, 1, 1), None, dt.date(2024, 2, 29), None, None],
            "run_id": ["copy-test"] * 5,
        }
    )
    with warehouse.transaction(db) as conn:
        warehouse.clear_transit(conn, "fact_operaciones_ventas", "copy-test")
        assert warehouse.load_transit(conn, "fact_operaciones_ventas", frame) == 5
    with db.connect() as conn:
        back = conn.execute(
            text(
                "select line_key, sales, order_date from public.bulk_fact_operaciones_ventas "
                "where run_id = 'copy-test' order by bulk_seq"
            )
        ).all()
        conn.execute(
            text("delete from public.bulk_fact_operaciones_ventas where run_id = 'copy-test'")
        )
        conn.commit()
    assert [r[0] for r in back] == ["tab\there", "new\nline", "back\\slash", "", None]
    assert [r[1] for r in back] == [
        Decimal("0.0001"),
        Decimal("957.5775"),
        None,
        Decimal("100"),
        Decimal("-3"),
    ]
    assert back[2][2] == dt.date(2024, 2, 29)


def test_merge_inserts_then_changes_nothing_then_updates(db):
    load_run(db, "m1", [fact_row("T-1", "m1"), fact_row("T-2", "m1")])
    merge(db, "m1")
    assert merged(db, "m1")["fact_operaciones_ventas"] == {"inserted": 2, "updated": 0}

    load_run(db, "m2", [fact_row("T-1", "m2"), fact_row("T-2", "m2", source_line=99)])
    merge(db, "m2")
    assert merged(db, "m2")["fact_operaciones_ventas"] == {"inserted": 0, "updated": 0}
    assert merged(db, "m2")["dim_cliente"] == {"inserted": 0, "updated": 0}

    load_run(db, "m3", [fact_row("T-2", "m3", sales=Decimal("10.5"))], customer_name="Ana María")
    merge(db, "m3")
    assert merged(db, "m3")["fact_operaciones_ventas"] == {"inserted": 0, "updated": 1}
    assert merged(db, "m3")["dim_cliente"] == {"inserted": 0, "updated": 1}
    with db.connect() as conn:
        sales = conn.execute(
            text("select sales from staging.fact_operaciones_ventas where line_key = 'T-2'")
        ).scalar_one()
        name = conn.execute(
            text("select customer_name from staging.vw_operaciones_ventas where line_key = 'T-1'")
        ).scalar_one()
        left = conn.execute(
            text(
                "select count(*) from public.bulk_fact_operaciones_ventas "
                "where run_id in ('m1', 'm2', 'm3')"
            )
        ).scalar_one()
    assert sales == Decimal("10.5")
    assert name == "Ana María"
    assert left == 0  # merged transit rows are removed


def test_duplicate_keys_in_transit_merge_once_latest_wins(db):
    load_run(db, "d1", [fact_row("T-D", "d1", quantity=1), fact_row("T-D", "d1", quantity=7)])
    merge(db, "d1")
    with db.connect() as conn:
        qty = conn.execute(
            text("select quantity from staging.fact_operaciones_ventas where line_key = 'T-D'")
        ).scalar_one()
    assert qty == 7


def test_failed_merge_rolls_back_everything_with_a_clear_message(db):
    load_run(db, "f1", [fact_row("T-F1", "f1"), fact_row("T-F2", "f1", order_id=None)])
    with pytest.raises(
        DBAPIError, match=r"sp_merge_operaciones_ventas\(f1\) failed, nothing was merged"
    ):
        merge(db, "f1")
    with db.connect() as conn:
        inserted = conn.execute(
            text("select count(*) from staging.fact_operaciones_ventas where line_key like 'T-F%'")
        ).scalar_one()
        waiting = conn.execute(
            text("select count(*) from public.bulk_fact_operaciones_ventas where run_id = 'f1'")
        ).scalar_one()
    assert inserted == 0
    assert waiting == 2  # nothing merged, nothing lost: the run can be fixed and merged again


def test_sql_is_reappliable(db):
    assert warehouse.apply_sql(db) == warehouse.apply_sql(db)
    with db.connect() as conn:
        unknown = conn.execute(
            text("select count(*) from staging.dim_cliente where cliente_key = -1")
        ).scalar_one()
    assert unknown == 1
