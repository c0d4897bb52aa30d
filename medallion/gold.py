"""Silver -> gold: the star schema of a run (dim_inventario, dim_cliente, fact_operaciones_ventas).

Gold holds natural keys; surrogate keys are assigned once, in the warehouse, so they never change
between runs. Ship-to geography (country, city, state, postal code, region) varies per order, so
it lives on the fact, not on the customer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from minio import Minio

from medallion import storage
from medallion.contract import Contract
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
    versioned: bool = False  # carries first_order_date, where a new version starts (SCD 2)

    @property
    def dates(self) -> list[str]:
        return ["first_order_date", "last_order_date"] if self.versioned else ["last_order_date"]

    def schema(self, silver: pa.Schema) -> pa.Schema:
        date = silver.field("order_date").type
        fields = [silver.field(n) for n in (self.natural_key, *self.attributes)]
        return pa.schema(
            [*fields, *(pa.field(d, date) for d in self.dates), pa.field("run_id", pa.string())]
        )


DIM_CLIENTE = Dimension("dim_cliente", "customer_id", ("customer_name", "segment"), True)
DIM_INVENTARIO = Dimension(
    "dim_inventario", "product_id", ("product_name", "category", "sub_category")
)
DIMENSIONS = (DIM_INVENTARIO, DIM_CLIENTE)


def gold_key(table: str, run_id: str) -> str:
    return f"{table}/run={run_slug(run_id)}/{table}.parquet"


class DimensionBuilder:
    """One row per natural key, built batch by batch (Arrow group-bys, bounded by the number of
    distinct keys, not by the size of the delivery).

    Every distinct set of attributes of a key is a variant (first and last order date, last
    line). The winner is the variant of the latest order, then of the later line, so the choice
    is the same on every run; a key with more than one variant is a conflict, counted.
    """

    # Each batch's variants wait beside the ones reduced so far until they hold at least this
    # many rows and as many as those: reducing everything again after every batch made a
    # customer dimension of 500k keys cost 500k rows per 100k-line batch (superlinear: 10M
    # lines reduced 50M rows).
    MIN_PENDING = 1_000_000

    def __init__(self, dim: Dimension):
        self.dim = dim
        self.group = [dim.natural_key, *dim.attributes]
        self.variants: pa.Table | None = None  # reduced: one row per variant
        self.pending: list[pa.Table] = []  # batches' variants, not reduced together yet
        self.pending_rows = 0

    def _reduce(self, table: pa.Table, first: str, last: str, seq: str) -> pa.Table:
        out = table.group_by(self.group, use_threads=False).aggregate(
            [(first, "min"), (last, "max"), (seq, "max")]
        )
        return out.select(
            [*self.group, f"{first}_min", f"{last}_max", f"{seq}_max"]
        ).rename_columns([*self.group, "first_order_date", "last_order_date", "_seq"])

    def add(self, batch: pa.RecordBatch, first_seq: int) -> None:
        part = pa.Table.from_batches([batch]).select([*self.group, "order_date"])
        part = part.append_column(
            "_seq", pa.array(np.arange(first_seq, first_seq + len(part), dtype=np.int64))
        )
        part = self._reduce(part, "order_date", "order_date", "_seq")
        self.pending.append(part)
        self.pending_rows += part.num_rows
        reduced = self.variants.num_rows if self.variants is not None else 0
        if self.pending_rows >= max(self.MIN_PENDING, reduced):
            self._compact()

    def _compact(self) -> None:
        """Reduce the pending variants together with the ones reduced so far."""
        if not self.pending:
            return
        parts = [self.variants, *self.pending] if self.variants is not None else self.pending
        self.variants = self._reduce(
            pa.concat_tables(parts), "first_order_date", "last_order_date", "_seq"
        )
        self.pending, self.pending_rows = [], 0

    def _variants(self) -> pa.Table:
        self._compact()
        if self.variants is None:
            date = pa.date32()
            return pa.table(
                {c: pa.array([], pa.string()) for c in self.group}
                | {"first_order_date": pa.array([], date), "last_order_date": pa.array([], date)}
                | {"_seq": pa.array([], pa.int64())}
            )
        return self.variants

    @property
    def conflicts(self) -> int:
        """Natural keys delivered with more than one set of attributes in this run."""
        per_key = self._variants().group_by(self.dim.natural_key).aggregate([([], "count_all")])
        return int(pc.sum(pc.greater(per_key.column("count_all"), 1)).as_py() or 0)

    def result(self, run_id: str) -> pa.Table:
        """The winning variant per natural key (latest order, then later line), in Arrow."""
        variants = self._variants()
        order = pc.sort_indices(
            variants,
            [
                (self.dim.natural_key, "ascending"),
                ("last_order_date", "ascending"),
                ("_seq", "ascending"),
            ],
        )
        ranked = variants.take(order).append_column(
            "_rank", pa.array(np.arange(len(variants), dtype=np.int64))
        )
        last = ranked.group_by(self.dim.natural_key, use_threads=False).aggregate(
            [("_rank", "max")]
        )
        ranks = last.column("_rank_max").combine_chunks()
        winners = ranked.take(pc.take(ranks, pc.array_sort_indices(ranks)))  # by natural key
        columns = [*self.group, *self.dim.dates]
        return winners.select(columns).append_column(
            "run_id", pa.repeat(pa.scalar(run_id, pa.string()), len(winners))
        )


def build_gold(
    client: Minio,
    silver_bucket: str,
    silver_objects: list[str],
    gold_bucket: str,
    run_id: str,
    contract: Contract,
    batch_size: int = 100_000,
) -> tuple[dict[str, int], dict[str, int]]:
    """Read this run's silver objects batch by batch and write the three gold tables.
    Returns the rows per table and the attribute conflicts per dimension."""
    builders = {dim.name: DimensionBuilder(dim) for dim in DIMENSIONS}
    silver_schema = contract.silver_schema
    fact_schema = pa.schema([silver_schema.field(c) for c in FACT_COLUMNS])
    seq = 0
    with storage.ParquetUpload(
        client,
        gold_bucket,
        gold_key("fact_operaciones_ventas", run_id),
        fact_schema,
        contract.dictionary_columns(fact_schema),
    ) as fact:
        for key in silver_objects:
            for batch in storage.iter_parquet_batches(client, silver_bucket, key, batch_size):
                fact.write(pa.Table.from_batches([batch]).select(FACT_COLUMNS))
                for builder in builders.values():
                    builder.add(batch, seq)
                seq += batch.num_rows
    counts = {"fact_operaciones_ventas": fact.rows}
    for dim in DIMENSIONS:
        table = builders[dim.name].result(run_id).cast(dim.schema(silver_schema))
        with storage.ParquetUpload(
            client, gold_bucket, gold_key(dim.name, run_id), table.schema
        ) as out:
            out.write(table)
        counts[dim.name] = table.num_rows
    return counts, {name: builder.conflicts for name, builder in builders.items()}
