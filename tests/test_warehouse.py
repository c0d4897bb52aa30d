"""COPY loading through to_sql, the merge procedure and the publish gate, on the real PostgreSQL.

Each test uses its own ids (customers, products, line keys, runs), so tests share one database.
"""

import datetime as dt
import re
import threading
import uuid
from decimal import Decimal

import pandas as pd
import pyarrow as pa
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from medallion import warehouse

SOURCE_OBJECT = "s3://b/k.csv"  # the bronze object of a test run's lines


class Delivery:
    """A run's transit rows, built like gold would build them."""

    def __init__(self, prefix: str, run_id: str):
        self.prefix, self.run_id = prefix, run_id
        self.facts: list[dict] = []
        self.customers: dict[str, dict] = {}
        self.products: dict[str, dict] = {}

    def line(
        self,
        n: int,
        customer="C1",
        product="P1",
        name="Ana",
        product_name="Silla",
        order_date=dt.date(2024, 3, 1),
        **values,
    ) -> "Delivery":
        cid, pid = f"{self.prefix}-{customer}", f"{self.prefix}-{product}"
        self.facts.append(
            {
                "line_key": f"{self.prefix}-L{n}",
                "row_id": str(n),
                "order_id": f"{self.prefix}-O1",
                "order_date": order_date,
                "ship_date": order_date + dt.timedelta(days=2),
                "ship_mode": "Estándar",
                "customer_id": cid,
                "product_id": pid,
                "country": "España",
                "city": "Madrid",
                "state": "Madrid",
                "postal_code": "08001",
                "region": "Centro",
                "sales": Decimal("957.5775"),
                "quantity": 3,
                "discount": Decimal("0.2"),
                "profit": Decimal("-383.031"),
                "source_object": SOURCE_OBJECT,
                "source_line": n + 1,
                "run_id": self.run_id,
            }
            | values
        )
        for table, key, attrs in (
            (self.customers, cid, {"customer_name": name, "segment": "Consumo"}),
            (
                self.products,
                pid,
                {"product_name": product_name, "category": "Muebles", "sub_category": "Sillas"},
            ),
        ):
            row = table.setdefault(
                key, attrs | {"first_order_date": order_date, "last_order_date": order_date}
            )
            if order_date >= row["last_order_date"]:
                row.update(attrs, last_order_date=order_date)
            row["first_order_date"] = min(row["first_order_date"], order_date)
        return self

    def load(self, db) -> "Delivery":
        customers = pd.DataFrame(
            [{"customer_id": k, **v, "run_id": self.run_id} for k, v in self.customers.items()]
        )
        products = pd.DataFrame(
            [{"product_id": k, **v, "run_id": self.run_id} for k, v in self.products.items()]
        ).drop(columns="first_order_date")
        warehouse.log_step(  # as notebook 02 records its file
            db,
            self.run_id,
            "silver",
            SOURCE_OBJECT,
            rows_out=len(self.facts),
            details={"sales_total": str(sum(f["sales"] for f in self.facts))},
        )
        facts = pd.DataFrame(self.facts)  # each line names its file by key, as load_run does
        facts["source_object"] = facts["source_object"].map(
            warehouse.register_sources(db, self.run_id)
        )
        loaded = {}
        frames = {
            "dim_inventario": products,
            "dim_cliente": customers,
            "fact_operaciones_ventas": facts.rename(columns={"source_object": "source_key"}),
        }
        with warehouse.transaction(db) as conn:
            for table in frames:
                warehouse.clear_transit(conn, table, self.run_id)
        with warehouse.adbc_connection(db) as conn:
            for table, frame in frames.items():
                loaded[table] = warehouse.load_transit(conn, table, frame)
        for table, rows in loaded.items():  # as notebook 04 records its load
            warehouse.log_step(
                db, self.run_id, "load", f"public.{warehouse.TRANSIT_TABLES[table]}", rows_out=rows
            )
        return self


def merge(
    db,
    run_id: str,
    scd_type: int = 1,
    bulk_min: int = 500_000,
    clear_after: bool = True,
    key_probe: int = 100_000,
) -> dict:
    """Merge and publish a run as the DAG's merge task does: the merge (with the publish gate)
    in one transaction, then the removal of its transit rows."""
    with warehouse.transaction(db) as conn:
        conn.execute(
            text("call staging.sp_merge_operaciones_ventas(:r, :s, :b, :k)"),
            {"r": run_id, "s": scd_type, "b": bulk_min, "k": key_probe},
        )
    if clear_after:
        clear(db, run_id)
    with db.connect() as conn:
        rows = conn.execute(
            text("select source, details from audit.run_log where run_id = :r and step = 'merge'"),
            {"r": run_id},
        ).all()
    return {
        source.removeprefix("staging."): {k: v for k, v in d.items() if k != "strategy"}
        for source, d in rows
    }


def scalar(db, sql: str, **params):
    with db.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


def strategy(db, run_id: str) -> str:
    """How the merge wrote a run's fact lines (audit.run_log)."""
    return scalar(
        db,
        "select details ->> 'strategy' from audit.run_log where run_id = :r "
        "and step = 'merge' and source = 'staging.fact_operaciones_ventas'",
        r=run_id,
    )


def new_prefix() -> str:
    return "T" + uuid.uuid4().hex[:8]


def load_and_read_back(db, frame: pd.DataFrame, run_id: str, columns: str) -> list[tuple]:
    """Load a frame into the fact's transit table with load_transit, read it back in load
    order and remove it."""
    with warehouse.transaction(db) as conn:
        warehouse.clear_transit(conn, "fact_operaciones_ventas", run_id)
    with warehouse.adbc_connection(db) as conn:
        assert warehouse.load_transit(conn, "fact_operaciones_ventas", frame) == len(frame)
    with warehouse.transaction(db) as conn:
        back = conn.execute(
            text(
                f"select {columns} from public.bulk_fact_operaciones_ventas "  # noqa: S608
                "where run_id = :r order by bulk_seq"
            ),
            {"r": run_id},
        ).all()
        warehouse.clear_transit(conn, "fact_operaciones_ventas", run_id)
    return [tuple(r) for r in back]


def test_load_transit_round_trips_awkward_values(db):
    frame = pd.DataFrame(
        {
            "line_key": ["tab\there", "new\nline", "back\\slash", "", None],
            "sales": [Decimal("0.0001"), Decimal("957.5775"), None, Decimal("1E+2"), Decimal("-3")],
            "order_date": [dt.date(2024, 1, 1), None, dt.date(2024, 2, 29), None, None],
            "run_id": ["copy-test"] * 5,
        }
    )
    back = load_and_read_back(db, frame, "copy-test", "line_key, sales, order_date")
    assert [r[0] for r in back] == ["tab\there", "new\nline", "back\\slash", "", None]
    assert [r[1] for r in back] == [
        Decimal("0.0001"),
        Decimal("957.5775"),
        None,
        Decimal("100"),
        Decimal("-3"),
    ]
    assert back[2][2] == dt.date(2024, 2, 29)


def test_load_transit_refuses_a_value_its_column_cannot_hold_and_loads_nothing(db):
    for column, value in (("sales", Decimal("1.00001")), ("quantity", 1.5)):
        frame = pd.DataFrame({"line_key": ["a"], column: [value], "run_id": ["cast-test"]})
        with pytest.raises(pa.ArrowInvalid), warehouse.adbc_connection(db) as conn:
            warehouse.load_transit(conn, "fact_operaciones_ventas", frame)
    rows = scalar(
        db, "select count(*) from public.bulk_fact_operaciones_ventas where run_id = 'cast-test'"
    )
    assert rows == 0


def test_transit_frame_keeps_values_and_loads_them(db):
    batch = pa.record_batch(
        {
            "line_key": pa.array(["k1", "k2", None]),
            "order_date": pa.array([dt.date(2024, 3, 1), None, dt.date(2024, 3, 1)]),
            "sales": pa.array([Decimal("1.5000"), None, Decimal("-0.0001")], pa.decimal128(18, 4)),
            "quantity": pa.array([1, None, 3], pa.int64()),
            "run_id": pa.array(["frame-test"] * 3),
        }
    )
    frame = warehouse.transit_frame(batch)
    back = load_and_read_back(db, frame, "frame-test", "line_key, order_date, sales, quantity")
    assert [tuple(r) for r in back] == [
        ("k1", dt.date(2024, 3, 1), Decimal("1.5000"), 1),
        ("k2", None, None, None),
        (None, dt.date(2024, 3, 1), Decimal("-0.0001"), 3),
    ]


def _fact_batch(run_id: str, first: int, rows: int) -> pa.RecordBatch:
    return pa.record_batch(
        {
            "line_key": pa.array([f"{run_id}-{i}" for i in range(first, first + rows)]),
            "sales": pa.array([Decimal("1.0001")] * rows, pa.decimal128(18, 4)),
            "run_id": pa.array([run_id] * rows),
        }
    )


def test_load_run_replaces_the_runs_rows_over_two_streams(db):
    batches = [_fact_batch("streams-test", i * 7, 7) for i in range(9)]
    for _ in range(2):  # a retry replaces, never doubles
        loaded = warehouse.load_run(db, "fact_operaciones_ventas", "streams-test", iter(batches))
        assert loaded == 63
    rows, keys, sales = (
        scalar(
            db,
            f"select {expr} from public.bulk_fact_operaciones_ventas where run_id = :r",
            r="streams-test",
        )
        for expr in ("count(*)", "count(distinct line_key)", "sum(sales)")
    )
    with warehouse.transaction(db) as conn:
        warehouse.clear_transit(conn, "fact_operaciones_ventas", "streams-test")
    assert (rows, keys, sales) == (63, 63, Decimal("63.0063"))


def test_load_run_numbers_rows_in_gold_order_though_the_streams_copy_at_once(db):
    """bulk_seq is each row's place in gold: the merge keeps the line with the highest one
    among lines with one key (the later line), so a COPY of the next batch running beside
    this one's must not number its rows in between."""
    batches = [_fact_batch("order-test", i * 5_000, 5_000) for i in range(12)]
    loaded = warehouse.load_run(db, "fact_operaciones_ventas", "order-test", iter(batches))
    with warehouse.transaction(db) as conn:
        keys = conn.execute(
            text(
                "select line_key from public.bulk_fact_operaciones_ventas "
                "where run_id = 'order-test' order by bulk_seq"
            )
        ).scalars()
        keys = list(keys)
        warehouse.clear_transit(conn, "fact_operaciones_ventas", "order-test")
    assert loaded == 60_000
    assert keys == [f"order-test-{i}" for i in range(60_000)]


def test_loads_share_their_connections_and_open_one_only_for_a_batch(db):
    runs = ("share-a", "share-b", "share-failing", "share-c")

    failing = pa.record_batch(  # a fifth decimal: the COPY of its one batch fails
        {
            "line_key": pa.array(["share-failing-0"]),
            "sales": pa.array([Decimal("1.00001")], pa.decimal128(18, 5)),
            "run_id": pa.array([runs[2]]),
        }
    )
    with warehouse.AdbcConnections(db) as connections:

        def load(run: str, batches) -> int:
            return warehouse.load_run(db, "fact_operaciones_ventas", run, batches, 2, connections)

        for run in runs[:2]:  # a batch each: one stream loads it, on the connection of the last
            assert load(run, iter([_fact_batch(run, 0, 3)])) == 3
        assert connections.opened == 1
        with pytest.raises(pa.ArrowInvalid):  # its connection is closed, not handed on
            load(runs[2], iter([failing]))
        assert load(runs[3], iter([_fact_batch(runs[3], 0, 3)])) == 3
        assert connections.opened == 2
    loaded = {r: in_transit(db, r) for r in runs}
    with warehouse.transaction(db) as conn:
        for run in runs:
            warehouse.clear_transit(conn, "fact_operaciones_ventas", run)
    assert loaded == {"share-a": 3, "share-b": 3, "share-failing": 0, "share-c": 3}


def test_load_run_failing_batch_leaves_nothing_of_the_run(db):
    def batches():
        for i in range(6):
            yield _fact_batch("failing-load", i * 5, 5)
        raise OSError("gold object truncated")

    with pytest.raises(OSError, match="truncated"):
        warehouse.load_run(db, "fact_operaciones_ventas", "failing-load", batches())
    rows = scalar(
        db, "select count(*) from public.bulk_fact_operaciones_ventas where run_id = 'failing-load'"
    )
    assert rows == 0


def test_insert_then_rerun_changes_nothing_then_corrections_update(db):
    p = new_prefix()
    first = Delivery(p, f"{p}-r1").line(1).line(2).line(3, customer="C2", name="Luis").load(db)
    assert merge(db, first.run_id) == {
        "dim_inventario": {"inserted": 1, "updated": 0, "unchanged": 0},
        "dim_cliente": {"inserted": 2, "updated": 0, "unchanged": 0},
        "fact_operaciones_ventas": {"inserted": 3, "updated": 0, "unchanged": 0},
    }
    keys = scalar(
        db,
        "select array_agg(cliente_key order by customer_id) from staging.dim_cliente "
        "where customer_id like :p",
        p=f"{p}-%",
    )

    again = Delivery(p, f"{p}-r2").line(1).line(2).line(3, customer="C2", name="Luis").load(db)
    assert merge(db, again.run_id)["fact_operaciones_ventas"] == {
        "inserted": 0,
        "updated": 0,
        "unchanged": 3,
    }

    later = dt.date(2024, 4, 1)
    fix = (
        Delivery(p, f"{p}-r3")
        .line(2, sales=Decimal("10.5"), name="Ana María", order_date=later)
        .line(4, customer="C3", name="Eva")
        .load(db)
    )
    result = merge(db, fix.run_id)
    assert result["fact_operaciones_ventas"] == {"inserted": 1, "updated": 1, "unchanged": 0}
    assert result["dim_cliente"] == {"inserted": 1, "updated": 1, "unchanged": 0}
    assert scalar(
        db, "select sales from staging.fact_operaciones_ventas where line_key = :k", k=f"{p}-L2"
    ) == Decimal("10.5")
    assert (
        scalar(
            db,
            "select customer_name from staging.vw_operaciones_ventas where line_key = :k",
            k=f"{p}-L1",
        )
        == "Ana María"
    )
    assert (
        scalar(
            db,
            "select array_agg(cliente_key order by customer_id) "
            "from staging.dim_cliente where customer_id like :p "
            "and customer_id <> :c3",
            p=f"{p}-%",
            c3=f"{p}-C3",
        )
        == keys
    )  # stable
    assert (
        scalar(
            db,
            "select count(*) from public.bulk_fact_operaciones_ventas where run_id like :p",
            p=f"{p}-%",
        )
        == 0
    )


FACT_STRUCTURES = (  # the foreign keys to both dimensions
    "select count(*) from pg_constraint "
    "where conrelid = 'staging.fact_operaciones_ventas'::regclass and contype = 'f' "
    "and confrelid in ('staging.dim_cliente'::regclass, 'staging.dim_inventario'::regclass)"
)
FACT_INDEXES = (  # on cliente_key, inventario_key and source_key
    "select count(*) from pg_indexes where schemaname = 'staging' "
    "and tablename = 'fact_operaciones_ventas' and indexname like '%key_idx'"
)


def test_bulk_merge_gives_the_same_result_and_restores_keys_and_indexes(db):
    if not scalar(db, "select exists (select 1 from staging.fact_operaciones_ventas)"):
        seed = Delivery(q := new_prefix(), f"{q}-r0").line(1).load(db)  # not a first load
        merge(db, seed.run_id)
    with warehouse.transaction(db) as conn:
        conn.execute(text("analyze staging.fact_operaciones_ventas"))
    facts = scalar(
        db,
        "select greatest(reltuples, 0)::bigint from pg_class "
        "where oid = 'staging.fact_operaciones_ventas'::regclass",
    )
    lines = max(6, facts // 5 + 1)  # a fifth of the fact or more: the bulk path
    p = new_prefix()
    merge(db, Delivery(p, f"{p}-r0").line(1, customer="C1", name="Cliente 1").load(db).run_id)
    delivery = Delivery(p, f"{p}-r1")  # line 1 is in the fact already: a merge
    for i in range(1, lines + 1):
        delivery.line(i, customer=f"C{i % 3}", name=f"Cliente {i % 3}")
    delivery.load(db)
    assert merge(db, delivery.run_id, bulk_min=5)["fact_operaciones_ventas"] == {
        "inserted": lines - 1,
        "updated": 0,
        "unchanged": 1,
    }
    assert strategy(db, delivery.run_id) == "merge (bulk)"
    assert (scalar(db, FACT_STRUCTURES), scalar(db, FACT_INDEXES)) == (2, 3)
    primary_key = scalar(
        db,
        "select pg_get_constraintdef(oid) from pg_constraint "
        "where conrelid = 'staging.fact_operaciones_ventas'::regclass and contype = 'p'",
    )
    assert primary_key == "PRIMARY KEY (line_key)"
    orphans = scalar(
        db,
        "select count(*) from staging.fact_operaciones_ventas f "
        "left join staging.dim_cliente c using (cliente_key) where f.line_key like :p "
        "and c.cliente_key is null",
        p=f"{p}-%",
    )
    assert orphans == 0
    # added back without reading the fact again (not valid); validating them finds no line
    # without its customer or product
    keys = scalar(
        db,
        "select array_agg(conname::text order by conname) from pg_constraint "
        "where conrelid = 'staging.fact_operaciones_ventas'::regclass and contype = 'f' "
        "and not convalidated",
    )
    assert keys == [
        "fact_operaciones_ventas_cliente_key_fkey",
        "fact_operaciones_ventas_inventario_key_fkey",
    ]
    with warehouse.transaction(db) as conn:
        for key in keys:
            conn.execute(
                text(f"alter table staging.fact_operaciones_ventas validate constraint {key}")
            )
    assert scalar(db, FACT_STRUCTURES + " and convalidated") == 2
    with pytest.raises(DBAPIError, match="foreign key"):  # the keys are enforced again
        with warehouse.transaction(db) as conn:
            conn.execute(
                text(
                    "update staging.fact_operaciones_ventas set cliente_key = -999 "
                    "where line_key like :p"
                ),
                {"p": f"{p}-%"},
            )


def transit_fact_analyses(db) -> int:
    return scalar(
        db,
        "select analyze_count from pg_stat_user_tables "
        "where relid = 'public.bulk_fact_operaciones_ventas'::regclass",
    )


def transit_fact_analyzed_columns(db) -> list[str]:
    return scalar(
        db,
        "select coalesce(array_agg(attname::text order by attname), '{}') from pg_stats "
        "where schemaname = 'public' and tablename = 'bulk_fact_operaciones_ventas'",
    )


def test_new_lines_are_inserted_without_comparing_and_keys_built_once(empty_warehouse):
    db = empty_warehouse
    p = new_prefix()
    first = Delivery(p, f"{p}-r1").line(1).line(2, customer="C2", sales=Decimal("1.5")).load(db)
    assert merge(db, first.run_id)["fact_operaciones_ventas"] == {
        "inserted": 2,
        "updated": 0,
        "unchanged": 0,
    }
    assert strategy(db, first.run_id) == "insert (bulk)"
    assert (scalar(db, FACT_STRUCTURES), scalar(db, FACT_INDEXES)) == (2, 3)
    assert scalar(db, "select count(*) from pg_constraint where conname = :c",
                  c="fact_operaciones_ventas_pkey") == 1  # fmt: skip
    # new lines are inserted as they are: of their statistics the insert's plan needs only
    # the run's size, so that the dimensions are hashed and the run read once
    assert transit_fact_analyses(db) == 1
    assert transit_fact_analyzed_columns(db) == ["run_id"]
    # the filled fact: statistics of what the gate and notebook 05 filter, join and group on
    assert scalar(
        db,
        "select array_agg(attname::text order by attname) from pg_stats "
        "where schemaname = 'staging' and tablename = 'fact_operaciones_ventas'",
    ) == ["cliente_key", "inventario_key", "order_date", "region", "source_key"]
    checks = scalar(
        db,
        "select details from audit.run_log where run_id = :r and step = 'publish'",
        r=first.run_id,
    )
    assert (checks["staged_line_keys"], Decimal(str(checks["staged_sales"]))) == (
        2,
        Decimal("959.0775"),
    )
    assert scalar(db, "select count(*) from staging.vw_operaciones_ventas") == 2
    # the fact holds lines now: the next run is merged (compared, corrected lines updated)
    second = Delivery(p, f"{p}-r2").line(2, customer="C2", sales=Decimal("2.5")).line(3).load(db)
    assert merge(db, second.run_id)["fact_operaciones_ventas"] == {
        "inserted": 1,
        "updated": 1,
        "unchanged": 0,
    }
    assert strategy(db, second.run_id) == "merge"
    assert transit_fact_analyses(db) == 3  # the run's size, then all: the merge's plans
    assert "line_key" in transit_fact_analyzed_columns(db)
    # new lines only, onto a fact that holds lines: inserted, with its keys and checks in place
    third = Delivery(p, f"{p}-r3").line(5).line(6).load(db)
    assert merge(db, third.run_id)["fact_operaciones_ventas"]["inserted"] == 2
    assert strategy(db, third.run_id) == "insert"
    checks = scalar(  # the gate read the run's own lines in the fact, not the fact's others
        db,
        "select details from audit.run_log where run_id = :r and step = 'publish'",
        r=third.run_id,
    )
    assert (checks["staged_line_keys"], Decimal(str(checks["staged_sales"]))) == (
        2,
        Decimal("1915.1550"),
    )
    assert transit_fact_analyses(db) == 4  # the run's size only
    assert (scalar(db, FACT_STRUCTURES), scalar(db, FACT_INDEXES)) == (2, 3)


def dimension_analyses(db, table: str) -> int:
    return scalar(
        db,
        "select analyze_count from pg_stat_user_tables where relid = ('staging.' || :t)::regclass",
        t=table,
    )


def test_a_dimension_a_run_fills_is_analyzed_before_the_fact_is_joined_to_it(empty_warehouse):
    db = empty_warehouse
    p = new_prefix()
    first = Delivery(p, f"{p}-r1")
    for n in range(1, 21):
        first.line(n, customer=f"C{n}")
    merge(db, first.load(db).run_id)
    # filled by the run: analyzed in the merge, before the fact's insert joins to them
    assert (dimension_analyses(db, "dim_cliente"), dimension_analyses(db, "dim_inventario")) == (
        1,
        1,
    )
    analyzed = scalar(
        db,
        "select array_agg(attname::text) from pg_stats "
        "where schemaname = 'staging' and tablename = 'dim_cliente'",
    )
    assert "customer_id" in analyzed
    # a run that changes less than a tenth of a dimension keeps its statistics
    second = Delivery(p, f"{p}-r2").line(21, customer="C1").line(22, customer="C21")
    merge(db, second.load(db).run_id)
    assert (dimension_analyses(db, "dim_cliente"), dimension_analyses(db, "dim_inventario")) == (
        1,
        1,
    )


@pytest.mark.parametrize("bulk_min", [500_000, 2], ids=["insert", "insert (bulk)"])
def test_a_line_in_the_fact_beyond_the_looked_up_lines_is_merged_not_doubled(
    empty_warehouse, bulk_min
):
    db = empty_warehouse
    p = new_prefix()
    merge(db, Delivery(p, f"{p}-r1").line(1).line(2).line(3).load(db).run_id)
    # lines 4 and 5 are new, line 3 (a correction) is in the fact: only the first line of the
    # run is looked up, so the insert is tried and the fact's primary key refuses line 3
    run = Delivery(p, f"{p}-r2").line(4).line(5).line(3, quantity=9).load(db)
    assert merge(db, run.run_id, bulk_min=bulk_min, key_probe=1)["fact_operaciones_ventas"] == {
        "inserted": 2,
        "updated": 1,
        "unchanged": 0,
    }
    assert strategy(db, run.run_id).startswith("merge")
    assert scalar(db, "select count(*) from staging.fact_operaciones_ventas") == 5
    assert scalar(db, "select quantity from staging.fact_operaciones_ventas "
                      "where line_key = :k", k=f"{p}-L3") == 9  # fmt: skip
    assert (scalar(db, FACT_STRUCTURES), scalar(db, FACT_INDEXES)) == (2, 3)


def test_a_first_load_that_repeats_a_line_key_is_merged_the_latest_wins(empty_warehouse):
    db = empty_warehouse
    p = new_prefix()
    run = Delivery(p, f"{p}-r1").line(1, quantity=1).line(2).line(1, quantity=7).load(db)
    assert merge(db, run.run_id)["fact_operaciones_ventas"]["inserted"] == 2
    assert strategy(db, run.run_id) == "merge"
    assert transit_fact_analyses(db) == 2  # the run's size, then all for the merge
    assert scalar(db, "select quantity from staging.fact_operaciones_ventas "
                      "where line_key = :k", k=f"{p}-L1") == 7  # fmt: skip
    assert (scalar(db, FACT_STRUCTURES), scalar(db, FACT_INDEXES)) == (2, 3)


def test_a_first_load_with_a_line_missing_its_customer_publishes_nothing(empty_warehouse):
    db = empty_warehouse
    p = new_prefix()
    run = Delivery(p, f"{p}-r1").line(1).line(2, customer="C2")
    del run.customers[f"{p}-C2"]  # gold without the line's customer
    run.load(db)
    with pytest.raises(DBAPIError) as failure:
        merge(db, run.run_id)
    assert failure.value.orig.pgcode == "MDG01"
    assert "fact lines of the run without their customer or product: 0 expected, 1 found" in str(
        failure.value
    )
    assert scalar(db, "select count(*) from staging.fact_operaciones_ventas") == 0
    assert (scalar(db, FACT_STRUCTURES), scalar(db, FACT_INDEXES)) == (2, 3)  # as before


def test_duplicate_keys_in_transit_merge_once_the_latest_wins(db):
    p = new_prefix()
    run = Delivery(p, f"{p}-r1").line(1, quantity=1).line(1, quantity=7).load(db)
    assert merge(db, run.run_id)["fact_operaciones_ventas"]["inserted"] == 1
    assert strategy(db, run.run_id) == "merge"
    assert (
        scalar(
            db,
            "select quantity from staging.fact_operaciones_ventas where line_key = :k",
            k=f"{p}-L1",
        )
        == 7
    )


def test_an_older_order_does_not_rename_a_product(db):
    p = new_prefix()
    Delivery(p, f"{p}-r1").line(1, product_name="Silla azul", order_date=dt.date(2024, 5, 1)).load(
        db
    )
    merge(db, f"{p}-r1")
    late = (
        Delivery(p, f"{p}-r2")
        .line(2, product_name="Silla vieja", order_date=dt.date(2024, 1, 1))
        .load(db)
    )
    assert merge(db, late.run_id)["dim_inventario"] == {"inserted": 0, "updated": 0, "unchanged": 1}
    newer = (
        Delivery(p, f"{p}-r3")
        .line(3, product_name="Silla azul marino", order_date=dt.date(2024, 6, 1))
        .load(db)
    )
    assert merge(db, newer.run_id)["dim_inventario"]["updated"] == 1
    assert (
        scalar(
            db, "select product_name from staging.dim_inventario where product_id = :p", p=f"{p}-P1"
        )
        == "Silla azul marino"
    )


def test_customer_in_several_cities_and_same_product_twice_in_an_order(db):
    p = new_prefix()
    run = (
        Delivery(p, f"{p}-r1")
        .line(1, city="Madrid")
        .line(2, city="Sevilla")
        .line(3, city="Bilbao", quantity=1)
        .load(db)
    )
    merge(db, run.run_id)
    assert (
        scalar(db, "select count(*) from staging.dim_cliente where customer_id = :c", c=f"{p}-C1")
        == 1
    )
    cities = scalar(
        db,
        "select array_agg(city order by line_key) from staging.vw_operaciones_ventas"
        " where order_id = :o and product_id = :p",
        o=f"{p}-O1",
        p=f"{p}-P1",
    )
    assert cities == ["Madrid", "Sevilla", "Bilbao"]  # three lines, same order and product


def test_scd2_keeps_history_and_points_facts_at_the_version_of_their_date(db):
    p = new_prefix()
    march, may = dt.date(2024, 3, 1), dt.date(2024, 5, 1)
    first = Delivery(p, f"{p}-r1").line(1, order_date=march).line(2, order_date=may).load(db)
    merge(db, first.run_id, scd_type=2)
    rename = (
        Delivery(p, f"{p}-r2")
        .line(3, name="Ana Gómez", order_date=dt.date(2024, 4, 1))
        .line(4, name="Ana Gómez", order_date=dt.date(2024, 6, 1))
    )
    rename.load(db)
    assert merge(db, rename.run_id, scd_type=2)["dim_cliente"] == {
        "inserted": 0,
        "updated": 1,
        "unchanged": 0,
    }
    with db.connect() as conn:
        versions = conn.execute(
            text(
                "select customer_name, valid_from, valid_to, is_current from staging.dim_cliente "
                "where customer_id = :c order by valid_from"
            ),
            {"c": f"{p}-C1"},
        ).all()
        names = dict(
            conn.execute(
                text(
                    "select line_key, customer_name from staging.vw_operaciones_ventas "
                    "where order_id = :o"
                ),
                {"o": f"{p}-O1"},
            ).all()
        )
    assert [(v[0], v[3]) for v in versions] == [("Ana", False), ("Ana Gómez", True)]
    assert versions[0][2] == versions[1][1] == dt.date(2024, 4, 1)
    # March keeps the old name; April and June (new lines) and May (already loaded, moved)
    # point at the version valid on their date
    assert names == {
        f"{p}-L1": "Ana",
        f"{p}-L2": "Ana Gómez",
        f"{p}-L3": "Ana Gómez",
        f"{p}-L4": "Ana Gómez",
    }
    rename.run_id = f"{p}-r3"
    for f in rename.facts:
        f["run_id"] = rename.run_id
    rename.load(db)
    assert merge(db, rename.run_id, scd_type=2)["dim_cliente"]["updated"] == 0  # re-run: no-op


def test_failed_merge_rolls_back_everything_with_a_clear_message(db):
    p = new_prefix()
    run = Delivery(p, f"{p}-r1").line(1).line(2, order_id=None).load(db)
    with pytest.raises(
        DBAPIError,
        match=rf"sp_merge_operaciones_ventas\({p}-r1\) failed, "
        "nothing was merged",
    ):
        merge(db, run.run_id)
    assert (
        scalar(db, "select count(*) from staging.dim_cliente where customer_id like :p", p=f"{p}-%")
        == 0
    )  # the dimensions merged before the fact were rolled back
    assert (
        scalar(
            db,
            "select count(*) from public.bulk_fact_operaciones_ventas where run_id = :r",
            r=run.run_id,
        )
        == 2
    )  # kept: fix and merge again


def in_staging(db, prefix: str) -> int:
    return scalar(
        db,
        "select count(*) from staging.fact_operaciones_ventas where line_key like :p",
        p=f"{prefix}-%",
    )


def in_transit(db, run_id: str) -> int:
    return scalar(
        db, "select count(*) from public.bulk_fact_operaciones_ventas where run_id = :r", r=run_id
    )


def test_the_gate_checks_the_natural_keys_of_the_runs_members_only(empty_warehouse):
    """A small run onto many customers and products: the checks of their natural keys read
    the run's members, not every member of the dimensions."""
    db = empty_warehouse
    p = new_prefix()
    many = Delivery(p, f"{p}-r1")
    for n in range(1, 1001):
        many.line(n, customer=f"C{n}", product=f"P{n}")
    merge(db, many.load(db).run_id)
    small = Delivery(p, f"{p}-r2").line(2000, customer="C7", product="P7").load(db)
    merge(db, small.run_id, clear_after=False)
    rows_read = (  # from the dimensions
        "select coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)), 0) "
        "from pg_stat_xact_user_tables where schemaname = 'staging' and relname like 'dim\\_%'"
    )
    gate = "call staging.sp_publish_gate(:r)"
    assert change_during(db, rows_read, gate, r=small.run_id) < 20  # 1,001 of each before
    checks = scalar(
        db,
        "select details -> 'checks' from audit.run_log where run_id = :r and step = 'publish'",
        r=small.run_id,
    )
    assert [(c["check"], c["found"]) for c in checks if "ids" in c["check"]] == [
        ("dim_cliente: customer ids with more than one current row", 0),
        ("dim_inventario: duplicated product ids", 0),
    ]


def test_publish_gate_runs_in_the_merge_and_a_failed_check_publishes_nothing(db):
    p = new_prefix()
    run = Delivery(p, f"{p}-r1").line(1).line(2).load(db)
    # silver reported one cent more than transit holds: the gate's reconciliation fails
    warehouse.log_step(
        db, run.run_id, "silver", SOURCE_OBJECT, rows_out=2, details={"sales_total": "1915.1650"}
    )
    with pytest.raises(DBAPIError) as failure:
        merge(db, run.run_id)
    assert failure.value.orig.pgcode == "MDG01"
    assert re.search(
        rf"sp_merge_operaciones_ventas\({p}-r1\) failed, nothing was merged: publish gate failed"
        r" for run .*sum of sales silver -> transit: 1915\.1650 expected, 1915\.1550 found "
        r"\(-0\.0100\)",
        str(failure.value),
    )
    assert in_staging(db, p) == 0  # nothing the gate rejects is ever visible
    assert scalar(db, "select staging.run_published(:r)", r=run.run_id) is False
    assert in_transit(db, run.run_id) == 2  # kept for inspection and for a retry
    with pytest.raises(DBAPIError, match="the run is not published; its transit rows are kept"):
        clear(db, run.run_id)


def test_published_run_is_left_alone_and_its_transit_rows_are_cleared_after(db):
    p = new_prefix()
    run = Delivery(p, f"{p}-r1").line(1).line(2).load(db)
    first = merge(db, run.run_id, clear_after=False)
    assert first["fact_operaciones_ventas"]["inserted"] == 2
    assert in_transit(db, run.run_id) == 2  # until the commit: the merge does not remove them
    # a retry after the commit: nothing merged again
    assert merge(db, run.run_id, clear_after=False) == first
    clear(db, run.run_id)
    assert in_transit(db, run.run_id) == 0
    assert in_staging(db, p) == 2


def test_rows_loaded_again_under_a_published_run_id_are_merged(db):
    """A cleared run (same run id) with a new file: its new rows must not be taken for the
    published ones."""
    p = new_prefix()
    run = Delivery(p, f"{p}-r1").line(1).line(2).load(db)
    merge(db, run.run_id)
    again = Delivery(p, run.run_id).line(1).line(2).line(3).load(db)
    assert merge(db, again.run_id)["fact_operaciones_ventas"] == {
        "inserted": 1,
        "updated": 0,
        "unchanged": 2,
    }
    assert in_staging(db, p) == 3


@pytest.mark.parametrize("in_staging_before", [0, 2], ids=["new lines: insert", "merge"])
def test_merge_of_incomplete_transit_rows_fails_at_once_saying_so(db, in_staging_before):
    p = new_prefix()
    if in_staging_before:  # lines 1 and 2: the run below is merged, not inserted
        merge(db, Delivery(p, f"{p}-r0").line(1).line(2).load(db).run_id)
    run = Delivery(p, f"{p}-r1").line(1, sales=Decimal("5.0000")).line(2).line(3).load(db)
    with db.begin() as conn:  # what PostgreSQL's crash recovery does to UNLOGGED tables
        conn.execute(
            text("delete from public.bulk_fact_operaciones_ventas where line_key = :k"),
            {"k": f"{p}-L3"},
        )
    with pytest.raises(DBAPIError) as failure:
        merge(db, run.run_id)
    assert failure.value.orig.pgcode == "MDT01"
    assert (
        "transit rows are incomplete, nothing was merged: public.bulk_fact_operaciones_ventas "
        "holds 2 of the 3 rows loaded from gold"
    ) in str(failure.value)
    assert in_staging(db, p) == in_staging_before
    assert scalar(db, "select staging.run_published(:r)", r=run.run_id) is False


def test_a_first_load_reads_its_fact_transit_rows_once(empty_warehouse):
    """Its insert's own counts say whether the rows were all there and feed the publish gate:
    no count before it, none in the gate (each a full read of a large load)."""
    db = empty_warehouse
    p = new_prefix()
    run = Delivery(p, f"{p}-r1").line(1).line(2).line(3).load(db)
    reads = text(  # this session's reads of the fact's transit table (not yet in pg_stat)
        "select coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0) "
        "from pg_stat_xact_user_tables "
        "where schemaname = 'public' and relname = 'bulk_fact_operaciones_ventas'"
    )
    with warehouse.transaction(db) as conn:
        before = conn.execute(reads).scalar_one()
        conn.execute(text("call staging.sp_merge_operaciones_ventas(:r)"), {"r": run.run_id})
        assert conn.execute(reads).scalar_one() - before == 1
    assert in_staging(db, p) == 3
    assert scalar(db, "select staging.run_published(:r)", r=run.run_id) is True


def test_a_first_load_takes_its_dimensions_members_without_comparing_them(empty_warehouse):
    """Dimensions that hold only their unknown member: each merge inserts the run's members
    and counts them itself, with no count of new members before it and none by the caller
    (each a read of the run's members, sorted for the latest per key)."""
    db = empty_warehouse
    p = new_prefix()
    run = Delivery(p, f"{p}-r1").line(1).line(2, customer="C2").line(3, product="P2").load(db)
    reads = text(  # this session's reads of a dimension's transit table (not yet in pg_stat)
        "select coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0) "
        "from pg_stat_xact_user_tables where schemaname = 'public' and relname = :t"
    )
    tables = ("bulk_dim_cliente", "bulk_dim_inventario")
    with warehouse.transaction(db) as conn:
        before = [conn.execute(reads, {"t": t}).scalar_one() for t in tables]
        conn.execute(text("call staging.sp_merge_operaciones_ventas(:r)"), {"r": run.run_id})
        after = [conn.execute(reads, {"t": t}).scalar_one() for t in tables]
    # the load's count (staging.check_transit), the look for the unknown member, the merge
    # (the publish gate checks a first load's dimensions whole: no read of the run's keys)
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 3]
    clear(db, run.run_id)
    counts = merge(db, run.run_id)  # published: the counts the merge recorded
    assert counts["dim_cliente"] == {"inserted": 2, "updated": 0, "unchanged": 0}
    assert counts["dim_inventario"] == {"inserted": 2, "updated": 0, "unchanged": 0}
    assert scalar(db, "select count(*) from staging.dim_cliente where customer_id like :p",
                  p=f"{p}-%") == 2  # fmt: skip


def test_a_first_load_that_names_the_unknown_member_is_merged(empty_warehouse):
    """Its members are compared (the unknown member is met), and each is counted once."""
    db = empty_warehouse
    p = new_prefix()
    run = Delivery(p, f"{p}-r1").line(1).line(2, customer="C2")
    unknown = scalar(db, "select customer_id from staging.dim_cliente where cliente_key = -1")
    run.customers[unknown] = dict(run.customers[f"{p}-C2"])  # a member no line points at
    counts = merge(db, run.load(db).run_id)
    assert counts["dim_cliente"] == {"inserted": 2, "updated": 1, "unchanged": 0}
    assert scalar(db, "select count(*) from staging.dim_cliente") == 3


def clear(db, run_id: str) -> None:
    with warehouse.transaction(db) as conn:
        conn.execute(text("call staging.sp_clear_transit(:r)"), {"r": run_id})


def change_during(db, counter: str, call: str, **params) -> int:
    """How much ``counter`` (this session's statistics, not yet flushed to pg_stat) grew while
    ``call`` ran, in one transaction."""
    with warehouse.transaction(db) as conn:
        before = conn.execute(text(counter)).scalar_one()
        conn.execute(text(call), params)
        return conn.execute(text(counter)).scalar_one() - before


def transit_file(db) -> int:
    return scalar(
        db,
        "select relfilenode from pg_class "
        "where oid = 'public.bulk_fact_operaciones_ventas'::regclass",
    )


def test_clearing_a_run_never_touches_another_runs_transit_rows(empty_warehouse):
    db = empty_warehouse
    p = new_prefix()
    first = Delivery(p, f"{p}-r1").line(1).load(db)
    second = Delivery(p, f"{p}-r2").line(2).load(db)
    merge(db, first.run_id, clear_after=False)
    before = transit_file(db)
    clear(db, first.run_id)  # the second run's rows are there: only the first's are deleted
    assert (in_transit(db, first.run_id), in_transit(db, second.run_id)) == (0, 1)
    assert transit_file(db) == before
    # a third run's load under way (not committed) holds the table: no wait, no truncate
    loading = db.connect()
    try:
        third = Delivery(p, f"{p}-r3").line(3)
        with loading.begin():  # as a COPY under way: rows not committed yet
            loading.execute(
                text(
                    "insert into public.bulk_fact_operaciones_ventas (line_key, run_id) "
                    "values (:k, :r)"
                ),
                {"k": third.facts[0]["line_key"], "r": third.run_id},
            )
            merge(db, second.run_id)  # clears the second run's rows while the load goes on
            assert transit_file(db) == before
        assert (in_transit(db, second.run_id), in_transit(db, third.run_id)) == (0, 1)
    finally:
        loading.close()
    fourth = Delivery(p, f"{p}-r4").line(4).load(db)
    with warehouse.transaction(db) as conn:
        warehouse.clear_transit(conn, "fact_operaciones_ventas", third.run_id)
    merge(db, fourth.run_id)  # alone in the transit tables: they are emptied at once
    assert transit_file(db) != before
    assert in_transit(db, fourth.run_id) == 0


def test_clearing_reads_no_transit_table_while_no_other_run_is_under_way(empty_warehouse):
    db = empty_warehouse
    p = new_prefix()
    published = Delivery(p, f"{p}-r1").line(1).load(db)
    merge(db, published.run_id)
    run = Delivery(p, f"{p}-r2").line(2).load(db)
    merge(db, run.run_id, clear_after=False)
    reads = (  # of the transit tables
        "select coalesce(sum(seq_scan), 0) from pg_stat_xact_user_tables "
        "where schemaname = 'public' and relname like 'bulk\\_%'"
    )
    assert change_during(db, reads, "call staging.sp_clear_transit(:r)", r=run.run_id) == 0
    assert in_transit(db, run.run_id) == 0


def test_clearing_asks_about_each_run_under_way_once_not_per_row(empty_warehouse):
    """Whether a run is under way is asked of the run, never of each of its transit rows
    (a run of millions of lines under way made every other run's clear take half a minute)."""
    db = empty_warehouse
    p = new_prefix()
    under_way = Delivery(p, f"{p}-loaded")
    for i in range(300):
        under_way.line(i)
    under_way.load(db)  # loaded, not merged yet: its rows are kept
    run = Delivery(p, f"{p}-r1").line(1000).load(db)
    merge(db, run.run_id, clear_after=False)
    lookups = (  # of the run log
        "select coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0) "
        "from pg_stat_xact_user_tables where schemaname = 'audit' and relname = 'run_log'"
    )
    clear = "call staging.sp_clear_transit(:r)"
    assert change_during(db, lookups, clear, r=run.run_id) < 30  # 3 tables, a few per run
    assert (in_transit(db, run.run_id), in_transit(db, under_way.run_id)) == (0, 300)


def test_rows_a_run_left_behind_go_with_the_next_runs(empty_warehouse):
    db = empty_warehouse
    p = new_prefix()
    failed = Delivery(p, f"{p}-failed").line(1).load(db)  # loaded, never merged
    with db.begin() as conn:  # and nothing logged for it since, for a day and a minute
        conn.execute(
            text("update audit.run_log set started_at = started_at - interval '1 day 1 minute', "
                 "finished_at = finished_at - interval '1 day 1 minute' where run_id = :r"),
            {"r": failed.run_id},
        )  # fmt: skip
    recent = Delivery(p, f"{p}-recent").line(2).load(db)  # a run still under way
    first = Delivery(p, f"{p}-r1").line(3).load(db)
    before = transit_file(db)
    merge(db, first.run_id)
    assert [in_transit(db, r.run_id) for r in (failed, recent, first)] == [0, 1, 0]
    assert transit_file(db) == before  # the recent run's rows are there: deleted, not emptied
    merge(db, recent.run_id)  # nothing left but its own rows: the table is emptied at once
    assert transit_file(db) != before
    assert scalar(db, "select count(*) from public.bulk_fact_operaciones_ventas") == 0
    assert scalar(db, "select count(*) from public.bulk_dim_cliente") == 0


def test_two_runs_at_once_are_serialised(db):
    p = new_prefix()
    runs = [Delivery(p, f"{p}-r{i}").line(i, customer=f"C{i}").load(db) for i in range(4)]
    errors: list[Exception] = []

    def work(run_id: str) -> None:
        try:
            merge(db, run_id)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(r.run_id,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (
        scalar(
            db,
            "select count(*) from staging.fact_operaciones_ventas where line_key like :p",
            p=f"{p}-%",
        )
        == 4
    )
    assert (
        scalar(db, "select count(*) from staging.dim_inventario where product_id = :p", p=f"{p}-P1")
        == 1
    )


def test_sql_is_applied_once_per_version(db, tmp_path):
    assert warehouse.apply_sql(db) == []  # applied at the start of the session: nothing new
    for path in warehouse.SQL_DIR.glob("*.sql"):
        (tmp_path / path.name).write_text(path.read_text())
    changed = tmp_path / "050_vw_operaciones_ventas.sql"
    changed.write_text(changed.read_text() + "\n-- a new version of the file\n")
    after = sorted(p.name for p in tmp_path.glob("*.sql") if p.name >= changed.name)
    assert warehouse.apply_sql(db, tmp_path) == after  # the changed file and what follows it
    assert warehouse.apply_sql(db, tmp_path) == []
    assert warehouse.apply_sql(db) == after  # back to the committed version
    assert scalar(db, "select count(*) from staging.dim_cliente where cliente_key = -1") == 1


def test_a_lock_wait_times_out_and_the_holder_is_named(db):
    holder = db.connect()
    holder.execute(text("select 1"))
    holder_pid = holder.execute(text("select pg_backend_pid()")).scalar_one()
    holder.execute(text("lock table staging.dim_inventario in access exclusive mode"))
    try:
        with db.connect() as waiter:
            waiter.execute(text("set lock_timeout = '200ms'"))
            with pytest.raises(DBAPIError) as err:
                waiter.execute(text("select count(*) from staging.dim_inventario"))
            assert err.value.orig.pgcode in warehouse.LOCK_ERRORS
        holders = warehouse.lock_holders(db)
        assert f"pid {holder_pid} (" in holders
        assert "AccessExclusiveLock on staging.dim_inventario" in holders
        assert "lock table staging.dim_inventario" in holders  # what the holder runs
    finally:
        holder.rollback()
        holder.close()


def test_pipeline_sessions_carry_the_limits(db):
    with db.connect() as conn:
        settings = {
            name: conn.execute(text(f"show {name}")).scalar_one()
            for name in ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout")
        }
    assert settings == {
        "lock_timeout": "2min",
        "statement_timeout": "1h",
        "idle_in_transaction_session_timeout": "15min",
    }


def test_a_server_older_than_postgresql_15_is_refused_before_anything_is_applied(db, monkeypatch):
    """MERGE needs PostgreSQL 15: an older server gets one clear error and an untouched
    database (here the real server, with the bar raised above its version)."""
    applied_before = scalar(db, "select max(applied_at) from audit.schema_migrations")
    monkeypatch.setattr(warehouse, "MIN_SERVER_VERSION", 10_000_000)
    with pytest.raises(warehouse.UnsupportedServer, match=r"PostgreSQL 15 or newer is required"):
        warehouse.apply_sql(db)
    assert scalar(db, "select max(applied_at) from audit.schema_migrations") == applied_before


def test_the_transit_tables_are_the_same_list_in_python_and_in_sql(db):
    from medallion.settings import TRANSIT_TABLES

    assert scalar(db, "select staging.transit_tables()") == list(TRANSIT_TABLES.values())
    for table in TRANSIT_TABLES.values():  # and each one exists, unlogged
        assert (
            scalar(
                db, f"select relpersistence from pg_class where oid = 'public.{table}'::regclass"
            )
            == "u"
        )


def test_a_new_fact_column_is_merged_without_naming_it_in_the_merge(tmp_path):
    """Adding a fact column is DDL only (the transit table and the fact, sql/022 and 032): the
    merge takes it from the catalog, writes it with a new line and counts a change of it as an
    update. In a database of its own: the shared one keeps the project's schema."""
    import shutil

    from medallion.settings import SQL_DIR, get_connection

    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    for name, table in (
        ("022_bulk_fact_operaciones_ventas.sql", "public.bulk_fact_operaciones_ventas"),
        ("032_fact_operaciones_ventas.sql", "staging.fact_operaciones_ventas"),
    ):
        ddl = sql_dir / name
        ddl.write_text(
            ddl.read_text() + f"alter table {table} add column if not exists canal text;\n"
        )
    name = f"{get_connection('postgres_default').schema}_column"
    db = warehouse.engine_for(warehouse.fresh_database("postgres_default", name))
    try:
        warehouse.apply_sql(db, sql_dir)
        p = new_prefix()
        first = Delivery(p, f"{p}-r1").line(1, canal="web").line(2, canal="web").load(db)
        assert merge(db, first.run_id)["fact_operaciones_ventas"]["inserted"] == 2
        moved = Delivery(p, f"{p}-r2").line(1, canal="tienda").line(2, canal="web").load(db)
        assert merge(db, moved.run_id)["fact_operaciones_ventas"] == {
            "inserted": 0,
            "updated": 1,
            "unchanged": 1,
        }
        channels = (
            "select string_agg(canal, ',' order by line_key) from staging.fact_operaciones_ventas"
        )
        assert scalar(db, channels) == "tienda,web"
    finally:
        db.dispose()


LINE_KEY_COLLATIONS = """
    select a.attrelid::regclass::text, c.collname
    from pg_attribute as a join pg_collation as c on c.oid = a.attcollation
    where a.attname = 'line_key'
      and a.attrelid in ('staging.fact_operaciones_ventas'::regclass,
                         'public.bulk_fact_operaciones_ventas'::regclass)
    order by 1"""


@pytest.mark.parametrize("granted", [True, False], ids=["view-granted", "view-not-granted"])
def test_a_warehouse_whose_line_keys_compared_as_words_is_changed_in_place(granted):
    """A warehouse made before line_key compared byte by byte (collation "C", sql/022 and 032):
    the next bootstrap changes both columns, keeps the fact's lines, makes the analysts' view
    again with its grants (or none), and the merge, which compares the two columns, goes on. In
    a database of its own: the shared one keeps the project's schema."""
    from medallion.services import ANALYST_ROLE
    from medallion.settings import SQL_DIR, get_connection

    name = f"{get_connection('postgres_default').schema}_collation"
    db = warehouse.engine_for(warehouse.fresh_database("postgres_default", name))
    try:
        warehouse.apply_sql(db)
        p = new_prefix()
        first = Delivery(p, f"{p}-r1").line(1).line(2).load(db)
        assert merge(db, first.run_id)["fact_operaciones_ventas"]["inserted"] == 2
        if not scalar(db, "select to_regrole(:r) is not null", r=ANALYST_ROLE):
            pytest.skip(f"no role {ANALYST_ROLE} on this server (sql/roles/ not applied)")
        with warehouse.transaction(db) as conn:  # as the earlier version made them
            conn.execute(text("drop view staging.vw_operaciones_ventas"))
            conn.execute(text("drop view public.bulk_fact_operaciones_ventas_latest"))
            conn.execute(text("drop view public.bulk_fact_operaciones_ventas_keyed"))
            for table in ("staging.fact_operaciones_ventas", "public.bulk_fact_operaciones_ventas"):
                conn.execute(
                    text(f'alter table {table} alter column line_key type text collate "default"')
                )
            for view in ("035_bulk_fact_operaciones_ventas_keyed", "050_vw_operaciones_ventas"):
                conn.execute(text((SQL_DIR / f"{view}.sql").read_text()))
            if granted:
                grant = f"grant select on staging.vw_operaciones_ventas to {ANALYST_ROLE}"
                conn.execute(text(grant))
            conn.execute(text("delete from audit.schema_migrations where file_name >= '022'"))
        before = scalar(db, f"select array_agg(collname) from ({LINE_KEY_COLLATIONS}) as c")
        assert before == ["default", "default"]

        assert "022_bulk_fact_operaciones_ventas.sql" in warehouse.apply_sql(db)

        with db.connect() as conn:
            assert conn.execute(text(LINE_KEY_COLLATIONS)).all() == [
                ("bulk_fact_operaciones_ventas", "C"),  # public: on the search path
                ("staging.fact_operaciones_ventas", "C"),
            ]
        assert (
            scalar(
                db,
                "select has_table_privilege(:r, 'staging.vw_operaciones_ventas', 'select')",
                r=ANALYST_ROLE,
            )
            is granted
        )
        assert scalar(db, "select count(*) from staging.vw_operaciones_ventas") == 2
        second = Delivery(p, f"{p}-r2").line(2, quantity=5).line(3).load(db)
        assert merge(db, second.run_id)["fact_operaciones_ventas"] == {
            "inserted": 1,
            "updated": 1,
            "unchanged": 0,
        }
    finally:
        db.dispose()


def test_lines_that_carried_their_run_and_file_get_their_source_keys(empty_warehouse):
    """A warehouse made before lines named their source by key (sql/015): the next bootstrap
    registers each line's run and file in staging.fact_sources, gives every line of the fact and
    of the transit table (a run loaded, not merged yet) its key, drops the file's name (and the
    fact's run id), and the merge and the result figures go on. In a database of its own: the
    shared one keeps the project's schema."""
    from medallion import results

    db = empty_warehouse
    p = new_prefix()
    first = Delivery(p, f"{p}-r1").line(1).line(2).load(db)
    merge(db, first.run_id)
    second = Delivery(p, f"{p}-r2").line(3).load(db)
    merge(db, second.run_id)
    third = Delivery(p, f"{p}-r3").line(3, quantity=5).line(4).load(db)  # not merged yet
    with warehouse.transaction(db) as conn:  # as the earlier version made them
        conn.execute(text("drop view public.bulk_fact_operaciones_ventas_latest"))
        conn.execute(text("drop view public.bulk_fact_operaciones_ventas_keyed"))
        for table, columns in (
            ("staging.fact_operaciones_ventas", ("source_object", "run_id")),
            ("public.bulk_fact_operaciones_ventas", ("source_object",)),
        ):
            added = ", ".join(f"add column {c} text" for c in columns)
            conn.execute(text(f"alter table {table} {added}"))
            lineage = ", ".join(f"{c} = s.{c}" for c in columns)
            conn.execute(
                text(
                    f"update {table} as f set {lineage} "
                    "from staging.fact_sources as s where s.source_key = f.source_key"
                )
            )
            conn.execute(text(f"alter table {table} drop column source_key"))
        conn.execute(text("create index on staging.fact_operaciones_ventas (run_id)"))
        conn.execute(text("delete from staging.fact_sources"))
        conn.execute(text("delete from audit.schema_migrations where file_name >= '015'"))

    applied = warehouse.apply_sql(db)
    assert {"022_bulk_fact_operaciones_ventas.sql", "032_fact_operaciones_ventas.sql"} <= set(
        applied
    )

    columns = scalar(
        db,
        "select array_agg(attrelid::regclass::text || '.' || attname order by 1) "
        "from pg_attribute where attrelid in ('staging.fact_operaciones_ventas'::regclass, "
        "'public.bulk_fact_operaciones_ventas'::regclass) and attnum > 0 "
        "and not attisdropped and attname in ('source_object', 'run_id', 'source_key')",
    )
    assert sorted(columns) == [
        "bulk_fact_operaciones_ventas.run_id",  # public: on the search path
        "bulk_fact_operaciones_ventas.source_key",
        "staging.fact_operaciones_ventas.source_key",
    ]
    with db.connect() as conn:
        lines = conn.execute(
            text(
                "select f.line_key, s.run_id, s.source_object "
                "from staging.fact_operaciones_ventas as f "
                "join staging.fact_sources as s using (source_key) order by 1"
            )
        ).all()
    assert lines == [
        (f"{p}-L1", first.run_id, SOURCE_OBJECT),
        (f"{p}-L2", first.run_id, SOURCE_OBJECT),
        (f"{p}-L3", second.run_id, SOURCE_OBJECT),
    ]
    assert scalar(db, FACT_INDEXES) == 3  # the one on source_key among them
    assert merge(db, third.run_id)["fact_operaciones_ventas"] == {
        "inserted": 1,
        "updated": 1,
        "unchanged": 0,
    }
    assert results.by_month(db, first.run_id)["new_lines"].sum() == 2
    figures = results.by_month(db, third.run_id)[["new_lines", "updated_lines"]]
    assert figures.sum().tolist() == [1, 1]
