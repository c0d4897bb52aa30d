"""The peer in `make bench`: dlt (https://dlthub.com) loads the same CSV into the same PostgreSQL.

Not part of the pipeline and not one of its dependencies: `medallion.bench` runs this file by
path with the python of a venv of its own (requirements-bench.txt), so it imports only dlt,
pyarrow and the standard library. What it does is dlt's fastest way here:

* the CSV is read by pyarrow's streaming reader with explicit types (money as numeric(18,4),
  exact) and handed to dlt as Arrow tables of ``--chunk-rows`` lines;
* the lines our contract rejects are left out with a few Arrow compute checks (wrong number of
  fields, a missing required value, a date that is not one, quantity not a positive integer,
  negative sales, discount outside [0, 1], shipped before ordered), so that both tools load
  the same lines; their number is in the output (``rejected``);
* three tables, each merged (delete-insert) on its key: ``fact_ventas`` on row_id,
  ``dim_producto`` on product_id, ``dim_cliente`` on customer_id (a dimension's rows are the
  distinct attribute sets of the delivery, gathered over all chunks and handed over once);
* the loader file format ``parquet``, which dlt loads into PostgreSQL through ADBC
  (adbc-driver-postgresql: binary COPY); without the driver it falls back to INSERT statements;
* ``--load-workers`` load jobs at once and files of ``--file-max-items`` rows.

    DESTINATION__POSTGRES__CREDENTIALS=postgresql://... \\
        dlt-venv/bin/python medallion/bench_dlt.py FILE --pipelines-dir DIR

The credentials come from the environment (dlt reads that variable itself) and are never
printed. The last line on stdout is JSON: seconds (from the first read of the file to the end of
the load, imports excluded), rows per table in this load, lines rejected, peak RSS.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

MONEY = pa.decimal128(18, 4)
# The generated file's columns (medallion.sample.CSV_HEADERS) and how pyarrow reads them: dates
# and quantity as text first, so that a bad value rejects its line instead of failing the read.
COLUMNS = {
    "Row ID": ("row_id", pa.string()),
    "Order ID": ("order_id", pa.string()),
    "Order Date": ("order_date", pa.string()),
    "Ship Date": ("ship_date", pa.string()),
    "Ship Mode": ("ship_mode", pa.string()),
    "Customer ID": ("customer_id", pa.string()),
    "Customer Name": ("customer_name", pa.string()),
    "Segment": ("segment", pa.string()),
    "Country": ("country", pa.string()),
    "City": ("city", pa.string()),
    "State": ("state", pa.string()),
    "Postal Code": ("postal_code", pa.string()),
    "Region": ("region", pa.string()),
    "Product ID": ("product_id", pa.string()),
    "Category": ("category", pa.string()),
    "Sub-Category": ("sub_category", pa.string()),
    "Product Name": ("product_name", pa.string()),
    "Sales": ("sales", MONEY),
    "Quantity": ("quantity", pa.string()),
    "Discount": ("discount", MONEY),
    "Profit": ("profit", MONEY),
}
FACT = "fact_ventas"
# Written as a dlt user would write them, on purpose not imported from medallion (gold's
# FACT_COLUMNS): this file runs in a venv without the pipeline.
DIMENSIONS = {  # table: (key, attributes)
    "dim_producto": ("product_id", ("product_name", "category", "sub_category")),
    "dim_cliente": ("customer_id", ("customer_name", "segment")),
}
FACT_COLUMNS = [
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
]


class Reader:
    """The CSV as Arrow tables of exactly ``chunk_rows`` valid-or-not lines (the last one
    shorter), with the count of lines of the wrong width that pyarrow skipped."""

    def __init__(self, path: Path, chunk_rows: int) -> None:
        with path.open(encoding="utf-8") as fh:
            header = next(csv.reader([fh.readline()]))
        if header != list(COLUMNS):
            raise SystemExit(f"bench_dlt: unexpected header in {path}: {header}")
        self.path, self.chunk_rows, self.wrong_width = path, chunk_rows, 0

    def _skip(self, row: pacsv.InvalidRow) -> str:
        self.wrong_width += 1
        return "skip"

    def __iter__(self) -> Iterator[pa.Table]:
        names = [name for name, _ in COLUMNS.values()]
        reader = pacsv.open_csv(
            self.path,
            read_options=pacsv.ReadOptions(
                column_names=names, skip_rows=1, block_size=8 << 20, use_threads=True
            ),
            parse_options=pacsv.ParseOptions(invalid_row_handler=self._skip),
            convert_options=pacsv.ConvertOptions(
                column_types=dict(COLUMNS.values()), strings_can_be_null=True
            ),
        )
        pending: list[pa.RecordBatch] = []
        rows = 0
        for batch in reader:
            pending.append(batch)
            rows += batch.num_rows
            while rows >= self.chunk_rows:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, self.chunk_rows)
                rest = table.slice(self.chunk_rows)
                pending, rows = rest.to_batches(), rest.num_rows
        if rows:
            yield pa.Table.from_batches(pending, schema=reader.schema)


def _strict_date(text: pa.ChunkedArray) -> pa.ChunkedArray:
    """ISO dates; anything else is null, 2024-02-30 too (strptime rolls it over to March 1st:
    its day of the month is then not the one written)."""
    shaped = pc.if_else(pc.match_substring_regex(text, r"^\d{4}-\d{2}-\d{2}$"), text, None)
    parsed = pc.strptime(shaped, format="%Y-%m-%d", unit="s", error_is_null=True)
    written_day = pc.utf8_slice_codeunits(shaped, 8, 10).cast(pa.int64())
    return pc.if_else(pc.equal(pc.day(parsed), written_day), parsed, None).cast(pa.date32())


def clean(table: pa.Table) -> tuple[pa.Table, int]:
    """The chunk with typed dates and quantity, and without the lines the contract rejects."""
    order_date = _strict_date(table["order_date"])
    ship_date = _strict_date(table["ship_date"])
    text_qty = table["quantity"]
    is_int = pc.match_substring_regex(text_qty, r"^[0-9]{1,18}$")
    quantity = pc.if_else(is_int, text_qty, None).cast(pa.int64())
    zero, one = pa.scalar(0, MONEY), pa.scalar(1, MONEY)
    checks = [
        pc.is_valid(table["row_id"]),  # the merge key (our contract would make one up)
        pc.is_valid(table["order_id"]),
        pc.is_valid(table["customer_id"]),
        pc.is_valid(table["product_id"]),
        pc.is_valid(order_date),
        pc.is_valid(quantity),
        pc.greater(quantity, 0),
        pc.greater_equal(table["sales"], zero),
        # optional values: absent is fine, present must be right
        pc.or_kleene(pc.is_null(table["ship_date"]), pc.is_valid(ship_date)),
        pc.or_kleene(pc.is_null(ship_date), pc.greater_equal(ship_date, order_date)),
        pc.or_kleene(
            pc.is_null(table["discount"]),
            pc.and_(
                pc.greater_equal(table["discount"], zero), pc.less_equal(table["discount"], one)
            ),
        ),
    ]
    keep = checks[0]
    for check in checks[1:]:
        keep = pc.and_kleene(keep, check)
    keep = pc.fill_null(keep, False)
    table = (
        table.set_column(table.schema.get_field_index("order_date"), "order_date", order_date)
        .set_column(table.schema.get_field_index("ship_date"), "ship_date", ship_date)
        .set_column(table.schema.get_field_index("quantity"), "quantity", quantity)
    )
    kept = table.filter(keep)
    return kept, table.num_rows - kept.num_rows


def _distinct(tables: list[pa.Table], columns: list[str]) -> pa.Table:
    return pa.concat_tables(tables).group_by(columns, use_threads=False).aggregate([])


def keyed(table: pa.Table, key: str) -> pa.Table:
    """The table with its key declared not null, as dlt declares a primary key's column (else
    dlt warns, on every load, that the Arrow schema and its own differ)."""
    i = table.schema.get_field_index(key)
    return table.cast(table.schema.set(i, table.schema.field(i).with_nullable(False)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--pipelines-dir", type=Path, required=True)
    parser.add_argument("--pipeline-name", default="medallion_bench_peer")
    parser.add_argument("--dataset", default="dlt_peer")
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--file-format", default="parquet", choices=["parquet", "csv"])
    parser.add_argument("--load-workers", type=int, default=20)
    parser.add_argument("--normalize-workers", type=int, default=1)
    parser.add_argument("--file-max-items", type=int, default=100_000, help="0: no limit")
    parser.add_argument(
        "--trust-keys",
        action="store_true",
        help="declare the staged rows unique by key: dlt skips its de-duplication",
    )
    args = parser.parse_args()
    # dlt's configuration from the environment (its own names), set before dlt reads it
    os.environ.update(
        {
            "RUNTIME__DLTHUB_TELEMETRY": "false",
            "LOAD__WORKERS": str(args.load_workers),
            "NORMALIZE__WORKERS": str(args.normalize_workers),
        }
    )
    if args.file_max_items:  # 0: dlt's default (one file per table and load)
        os.environ["DATA_WRITER__FILE_MAX_ITEMS"] = str(args.file_max_items)
    import dlt

    started = time.monotonic()
    reader = Reader(args.csv, args.chunk_rows)
    rejected = 0
    seen: dict[str, list[pa.Table]] = {name: [] for name in DIMENSIONS}

    @dlt.resource(name="ventas", file_format=args.file_format)
    def ventas() -> Iterator[object]:
        nonlocal rejected
        for chunk in reader:
            table, dropped = clean(chunk)
            rejected += dropped
            for name, (key, attributes) in DIMENSIONS.items():
                columns = [key, *attributes]
                seen[name].append(_distinct([table.select(columns)], columns))
            yield dlt.mark.with_table_name(keyed(table.select(FACT_COLUMNS), "row_id"), FACT)
        for name, (key, attributes) in DIMENSIONS.items():
            dimension = keyed(_distinct(seen[name], [key, *attributes]), key)
            yield dlt.mark.with_table_name(dimension, name)

    merge = {"disposition": "merge", "strategy": "delete-insert"}
    extra = {"x-stage-data-deduplicated": True} if args.trust_keys else None
    data = ventas()  # the hints go on this instance (a call makes a new one)
    for table, key in [(FACT, "row_id"), *((n, k) for n, (k, _) in DIMENSIONS.items())]:
        data.apply_hints(
            table_name=table,
            write_disposition=merge,
            primary_key=key,
            additional_table_hints=extra,
            create_table_variant=True,
        )
    pipeline = dlt.pipeline(
        pipeline_name=args.pipeline_name,
        pipelines_dir=str(args.pipelines_dir),
        destination="postgres",
        dataset_name=args.dataset,
    )
    info = pipeline.run(data, loader_file_format=args.file_format)
    seconds = time.monotonic() - started
    # the format each table's rows were loaded from (parquet only when dlt found the ADBC
    # driver), not that of the merge's SQL jobs that follow
    loaded_as = {
        job.job_file_info.table_name: job.job_file_info.file_format
        for package in info.load_packages
        for job in package.jobs["completed_jobs"]
        if job.job_file_info.file_format != "sql"
        and not job.job_file_info.table_name.startswith("_dlt")
    }
    counts = pipeline.last_trace.last_normalize_info.row_counts
    peak = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    phases = {
        step.step: round((step.finished_at - step.started_at).total_seconds(), 2)
        for step in pipeline.last_trace.steps
        if step.step in ("extract", "normalize", "load")
    }
    result = {
        "seconds": round(seconds, 2),
        "phases": phases,
        "rows": {t: n for t, n in counts.items() if not t.startswith("_dlt")},
        "loaded_as": loaded_as,
        "rejected": rejected + reader.wrong_width,
        "peak_rss_mb": round(peak / 1024),
        "settings": {
            "chunk_rows": args.chunk_rows,
            "file_format": args.file_format,
            "load_workers": args.load_workers,
            "normalize_workers": args.normalize_workers,
            "file_max_items": args.file_max_items,
            "trust_keys": args.trust_keys,
        },
        "versions": {"dlt": dlt.__version__, "pyarrow": pa.__version__},
    }
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
