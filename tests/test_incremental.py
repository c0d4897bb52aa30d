"""Two real-world-shaped deliveries through the whole DAG: quirks, re-runs, corrections, renames.

Delivery 1 has the same product id with two names, a customer shipping to several cities and an
order with the same product on two lines. Delivery 2 corrects 5 lines, renames 2 customers (on
newer orders) and adds new lines. Every delivery is also run twice.
"""

from decimal import Decimal

import pytest
from sqlalchemy import text

from tests.corpus import render_csv
from tests.test_e2e import run_pipeline

pytestmark = pytest.mark.e2e
P = "INC"  # ids of this test


def line(n: int, customer: int, product: int, day: int, **values) -> dict[str, str]:
    row = {
        "row_id": f"{P}-{n}",
        "order_id": f"{P}-O{(n + 1) // 2}",
        "order_date": f"2024-05-{day:02d}",
        "ship_date": f"2024-05-{day + 1:02d}",
        "ship_mode": "Estándar",
        "customer_id": f"{P}-C{customer}",
        "customer_name": f"Cliente {customer}",
        "segment": "Consumo",
        "country": "España",
        "city": "Madrid",
        "state": "Madrid",
        "postal_code": "28001",
        "region": "Centro",
        "product_id": f"{P}-P{product}",
        "category": "Muebles",
        "sub_category": "Sillas",
        "product_name": f"Producto {product}",
        "sales": f"{100 + n}.{n:04d}",
        "quantity": str(1 + n % 5),
        "discount": "0",
        "profit": f"{n}.5",
    }
    return row | values


def delivery_1() -> list[dict]:
    rows = [line(n, customer=n % 6, product=n % 8, day=1 + n % 20) for n in range(1, 31)]
    rows[0] |= {
        "product_name": "Producto 1 (nombre antiguo)",
        "order_date": "2024-05-01",
        "ship_date": "2024-05-02",
    }  # P1 with two names: the later order's name wins
    rows[2] |= {"city": "Sevilla", "postal_code": "41001"}  # C3 ships to several cities
    rows[8] |= {"city": "Bilbao", "postal_code": "48001"}
    rows[3] |= {
        "order_id": rows[4]["order_id"],
        "product_id": rows[4]["product_id"],
        "customer_id": rows[4]["customer_id"],
    }  # same product twice in one order
    return rows


def delivery_2(first: list[dict]) -> list[dict]:
    corrected = [dict(first[i], quantity="9", sales=f"{i}.1234") for i in (5, 6, 7, 10, 11)]
    renames = [
        line(100 + c, customer=c, product=1, day=28, customer_name=f"Cliente {c} S.L.")
        for c in (1, 2)
    ]
    new = [line(200 + n, customer=7, product=9, day=25) for n in range(6)]
    return corrected + renames + new


def write(tmp_path, name: str, rows: list[dict]):
    path = tmp_path / name
    path.write_bytes(render_csv(rows))
    return path


def state(db) -> dict:
    with db.connect() as conn:

        def q(sql):
            return conn.execute(text(sql), {"p": f"{P}-%"}).all()

        return {
            "facts": {
                r[0]: r[1:]
                for r in q(
                    "select line_key, quantity, sales, cliente_key, inventario_key, city "
                    "from staging.fact_operaciones_ventas where line_key like :p"
                )
            },
            "customers": {
                r[0]: r[1:]
                for r in q(
                    "select customer_id, cliente_key, customer_name from staging.dim_cliente "
                    "where customer_id like :p"
                )
            },
            "products": {
                r[0]: r[1:]
                for r in q(
                    "select product_id, inventario_key, product_name from staging.dim_inventario "
                    "where product_id like :p"
                )
            },
            "orphans": q(
                "select count(*) from staging.fact_operaciones_ventas f "
                "where line_key like :p and (cliente_key = -1 or inventario_key = -1)"
            ),
        }


def merge_counts(db, run_id: str) -> dict:
    with db.connect() as conn:
        rows = conn.execute(
            text("select source, details from audit.run_log where run_id = :r and step = 'merge'"),
            {"r": run_id},
        ).all()
    return {s.removeprefix("staging."): (d["inserted"], d["updated"]) for s, d in rows}


def test_deliveries_corrections_and_renames(db, tmp_path):
    first = delivery_1()
    run_1 = run_pipeline("--input", str(write(tmp_path, "entrega_1.csv", first)))
    s1 = state(db)
    assert len(s1["facts"]) == len(first)  # one fact row per valid line, same product twice too
    assert sum(f[1] for f in s1["facts"].values()) == sum(Decimal(r["sales"]) for r in first)
    assert set(s1["customers"]) == {r["customer_id"] for r in first}
    assert set(s1["products"]) == {r["product_id"] for r in first}
    assert s1["products"][f"{P}-P1"][1] == "Producto 1"  # the later order's name
    assert s1["orphans"] == [(0,)]
    assert {f[4] for k, f in s1["facts"].items() if k in (f"{P}-3", f"{P}-9")} == {
        "Sevilla",
        "Bilbao",
    }
    assert merge_counts(db, run_1)["fact_operaciones_ventas"] == (len(first), 0)

    # the same file again: the ledger skips it; loaded again on purpose, nothing changes
    run_1b = run_pipeline("--reprocess", "--input", str(write(tmp_path, "entrega_1.csv", first)))
    assert set(merge_counts(db, run_1b).values()) == {(0, 0)}
    assert state(db) == s1

    second = delivery_2(first)
    run_2 = run_pipeline("--input", str(write(tmp_path, "entrega_2.csv", second)))
    s2 = state(db)
    assert merge_counts(db, run_2)["fact_operaciones_ventas"] == (8, 5)
    assert merge_counts(db, run_2)["dim_cliente"] == (1, 2)
    assert len(s2["facts"]) == len(first) + 8
    for row in second[:5]:
        quantity, sales = s2["facts"][row["row_id"]][:2]
        assert (quantity, sales) == (9, Decimal(row["sales"]))
    assert {c: s2["customers"][f"{P}-C{c}"][1] for c in (1, 2)} == {
        1: "Cliente 1 S.L.",
        2: "Cliente 2 S.L.",
    }
    for cid, (key, _) in s1["customers"].items():  # keys never change
        assert s2["customers"][cid][0] == key
    for pid, (key, name) in s1["products"].items():
        assert s2["products"][pid] == (key, name)

    run_2b = run_pipeline("--reprocess", "--input", str(write(tmp_path, "entrega_2.csv", second)))
    assert set(merge_counts(db, run_2b).values()) == {(0, 0)}
    assert state(db) == s2
    with db.connect() as conn:
        published = conn.execute(
            text(
                "select count(*) from audit.run_log where step = 'publish' and status = 'success' "
                "and run_id in (:a, :b, :c, :d)"
            ),
            dict(a=run_1, b=run_1b, c=run_2, d=run_2b),
        ).scalar()
    assert published == 4
