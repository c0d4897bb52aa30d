"""Silver -> gold: the star schema of a run (dim_inventario, dim_cliente, fact_operaciones_ventas).

Gold holds natural keys; surrogate keys are assigned once, in the warehouse, so they never change
between runs. Ship-to geography (country, city, state, postal code, region) varies per order, so
it lives on the fact, not on the customer.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
from minio import Minio

from medallion import storage
from medallion.settings import run_slug

FACT_COLUMNS = [
    "line_key",
    "row_id",
    "order_id",
    "order_date",
    "ship_date",
    "ship_mode",
    "customer_id",
    "product_id",
    "country",
    "city",
    "state",
    "postal_code",
    "region",
    "sales",
    "quantity",
    "discount",
    "profit",
    "source_object",
    "source_line",
    "run_id",
]


@dataclass(frozen=True)
class Dimension:
    name: str
    natural_key: str
    attributes: tuple[str, ...]

    def schema(self, silver: pa.Schema) -> pa.Schema:
        names = [self.natural_key, *self.attributes, "last_order_date", "run_id"]
        return pa.schema(
            [
                silver.field("order_date").with_name("last_order_date")
                if n == "last_order_date"
                else silver.field(n)
                for n in names
            ]
        )


DIM_CLIENTE = Dimension("dim_cliente", "customer_id", ("customer_name", "segment"))
DIM_INVENTARIO = Dimension(
    "dim_inventario", "product_id", ("product_name", "category", "sub_category")
)
DIMENSIONS = (DIM_INVENTARIO, DIM_CLIENTE)


def gold_key(table: str, run_id: str) -> str:
    return f"{table}/run={run_slug(run_id)}/{table}.parquet"


class DimensionBuilder:
    """One row per natural key, built batch by batch: the attributes of the latest order win
    (then the later line of the run), so the choice is the same on every run."""

    def __init__(self, dim: Dimension):
        self.dim = dim
        self.rows = pd.DataFrame(columns=[dim.natural_key, *dim.attributes, "order_date", "_seq"])

    def add(self, batch: pd.DataFrame, first_seq: int) -> None:
        cols = [self.dim.natural_key, *self.dim.attributes, "order_date"]
        part = batch[cols].assign(_seq=range(first_seq, first_seq + len(batch)))
        both = [self.rows, part] if len(self.rows) else [part]
        self.rows = _latest(pd.concat(both, ignore_index=True), self.dim.natural_key)

    def result(self, run_id: str) -> pd.DataFrame:
        out = self.rows.rename(columns={"order_date": "last_order_date"}).drop(columns="_seq")
        return out.assign(run_id=run_id).sort_values(self.dim.natural_key, ignore_index=True)


def _latest(rows: pd.DataFrame, key: str) -> pd.DataFrame:
    ordered = rows.sort_values([key, "order_date", "_seq"], kind="stable")
    return ordered.drop_duplicates(key, keep="last")


def build_gold(
    client: Minio,
    silver_bucket: str,
    silver_objects: list[str],
    gold_bucket: str,
    run_id: str,
    silver_schema: pa.Schema,
    batch_size: int = 100_000,
) -> dict[str, int]:
    """Read this run's silver objects batch by batch and write the three gold tables."""
    builders = {dim.name: DimensionBuilder(dim) for dim in DIMENSIONS}
    fact_schema = pa.schema([silver_schema.field(c) for c in FACT_COLUMNS])
    seq = 0
    with storage.ParquetUpload(
        client, gold_bucket, gold_key("fact_operaciones_ventas", run_id), fact_schema
    ) as fact:
        for key in silver_objects:
            for batch in storage.iter_parquet_batches(client, silver_bucket, key, batch_size):
                fact.write(pa.Table.from_batches([batch]).select(FACT_COLUMNS))
                frame = batch.to_pandas()
                for builder in builders.values():
                    builder.add(frame, seq)
                seq += len(frame)
    counts = {"fact_operaciones_ventas": fact.rows}
    for dim in DIMENSIONS:
        table = pa.Table.from_pandas(
            builders[dim.name].result(run_id),
            schema=dim.schema(silver_schema),
            preserve_index=False,
        )
        with storage.ParquetUpload(
            client, gold_bucket, gold_key(dim.name, run_id), table.schema
        ) as out:
            out.write(table)
        counts[dim.name] = table.num_rows
    return counts
