"""Bronze -> silver for one delivered file: read it as it comes (parsing), run the contract's
rules (rules), and split its lines into typed silver rows, quarantined rows and dropped exact
duplicates, chunk by chunk. Lines read = silver + quarantine + duplicates, always."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from minio import Minio

from medallion import bronze, storage
from medallion.contract import Contract
from medallion.parsing import (
    InputFileError,
    SourceFormat,
    detect_date_format,
    detect_decimal,
    prefetched,
    printable,
    read_chunks,
)
from medallion.rules import ValueFormat, apply_rules
from medallion.settings import run_slug

__all__ = ["FileRejected", "FileReport", "InputFileError", "clean_file", "read_chunks"]


class FileRejected(InputFileError):
    """A readable file whose lines break the contract too much (threshold or a `fail` rule)."""


@dataclass
class FileReport:
    source_object: str
    format: SourceFormat
    lines_in: int = 0
    rows_out: int = 0
    quarantined: int = 0
    duplicates: int = 0
    conflicts: int = 0
    blank_lines: int = 0
    sales_total: Decimal = Decimal(0)  # of the rows written to silver, for reconciliation
    rules: dict[str, Counter] = field(
        default_factory=lambda: {s: Counter() for s in ("warn", "drop", "fail")}
    )
    first_line: dict[str, int] = field(default_factory=dict)
    silver_key: str | None = None
    quarantine_key: str | None = None

    def as_row(self) -> dict[str, Any]:
        return {
            "source_object": self.source_object,
            **self.format.describe(),
            "lines_in": self.lines_in,
            "rows_out": self.rows_out,
            "quarantined": self.quarantined,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "warnings": sum(self.rules["warn"].values()),
            "blank_lines": self.blank_lines,
            "sales_total": str(self.sales_total),
        }

    def rule_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "source_object": self.source_object,
                "rule": rule,
                "severity": severity,
                "lines": lines,
                "first_line": self.first_line.get(rule),
            }
            for severity, counter in self.rules.items()
            for rule, lines in sorted(counter.items())
        ]


class Fingerprints:
    """A set of 64- or 128-bit fingerprints kept as sorted numpy runs: 8 or 16 bytes per entry
    and no Python objects, so it holds a 10M-line delivery in ~100 MB where a Python set of
    digests took over a gigabyte. Runs are merged (a linear timsort merge) up to `max_run`
    entries, which bounds the transient memory of a merge."""

    def __init__(self, max_run: int = 1 << 21):
        self.max_run = max_run
        self._runs: list[tuple[np.ndarray, np.ndarray | None]] = []

    def __len__(self) -> int:
        return sum(len(hi) for hi, _ in self._runs)

    def add(self, hi: np.ndarray, lo: np.ndarray | None = None) -> np.ndarray:
        """Add fingerprints; True where one was already there (or earlier in this call)."""
        columns = {"hi": hi} if lo is None else {"hi": hi, "lo": lo}
        seen = pd.DataFrame(columns).duplicated().to_numpy(copy=True)
        for run_hi, run_lo in self._runs:
            at = np.minimum(np.searchsorted(run_hi, hi), len(run_hi) - 1)
            hit = run_hi[at] == hi
            if lo is not None and hit.any():
                hit &= self._same_lo(run_hi, run_lo, at, hi, lo, hit)
            seen |= hit
        fresh = ~seen
        self._push(hi[fresh], None if lo is None else lo[fresh])
        return seen

    @staticmethod
    def _same_lo(run_hi, run_lo, at, hi, lo, hit) -> np.ndarray:
        same = run_lo[at] == lo
        for i in np.flatnonzero(hit & ~same):  # equal 64-bit halves: look at all of them
            end = np.searchsorted(run_hi, hi[i], side="right")
            same[i] = bool((run_lo[at[i] : end] == lo[i]).any())
        return same

    def _push(self, hi: np.ndarray, lo: np.ndarray | None) -> None:
        if not len(hi):
            return
        order = np.argsort(hi, kind="stable")
        self._runs.append((hi[order], None if lo is None else lo[order]))
        while len(self._runs) > 1:
            (a_hi, a_lo), (b_hi, b_lo) = self._runs[-2], self._runs[-1]
            if len(a_hi) > 2 * len(b_hi) or len(a_hi) + len(b_hi) > self.max_run:
                break
            merged = np.concatenate([a_hi, b_hi])
            order = np.argsort(merged, kind="stable")  # two sorted runs: a linear merge
            lows = None if a_lo is None else np.concatenate([a_lo, b_lo])[order]
            self._runs[-2:] = [(merged[order], lows)]


_KEYS = ("medallion-silver", "ventas-lineas-16")  # siphash keys (16 characters)


def fingerprint(values: pd.Series, bits: int = 128) -> tuple[np.ndarray, np.ndarray | None]:
    """Vectorised siphash of text values: (high, low) 64-bit halves (low is None for 64 bits)."""
    text = values.astype("string").to_numpy(dtype=object, na_value="\x00")
    hi = pd.util.hash_array(text, hash_key=_KEYS[0], categorize=False)
    lo = pd.util.hash_array(text, hash_key=_KEYS[1], categorize=False) if bits == 128 else None
    return hi, lo


class LineKeys:
    """The contract's line key: the source's own line id where the file has it, otherwise
    order id + position of the line in its order. A key seen again on a line that is not an
    exact duplicate is a conflict: both lines go on, and the later one wins in the warehouse.
    Keys are remembered as 64-bit fingerprints (a collision could only add one to the count
    of conflicts, never change a row)."""

    def __init__(self, source_id: str | None):
        self.source_id = source_id
        self._positions: Counter = Counter()
        self._seen = Fingerprints()

    def assign(self, chunk: pd.DataFrame) -> tuple[pd.Series, int]:
        key = pd.Series(pd.NA, index=chunk.index, dtype="string")
        if self.source_id and self.source_id in chunk:
            key = chunk[self.source_id].astype("string")
        missing = key.isna() & chunk["order_id"].notna()
        if missing.any():  # order id + position, only where the source has no line id
            order = chunk.loc[missing, "order_id"]
            known = order.map(lambda o: self._positions[o]).astype("Int64")
            position = known + order.groupby(order).cumcount() + 1
            self._positions.update(order.value_counts().to_dict())
            key[missing] = order + "-" + position.astype("string")
        present = key.notna().to_numpy()
        hi, _ = fingerprint(key[present], bits=64)
        return key, int(self._seen.add(hi).sum())


class ExactDuplicates:
    """Lines whose raw text was already seen in the file (a 128-bit fingerprint per line)."""

    def __init__(self) -> None:
        self._seen = Fingerprints()

    def mark(self, raw: pd.Series) -> pd.Series:
        hi, lo = fingerprint(raw)
        return pd.Series(self._seen.add(hi, lo), index=raw.index)


def detect_value_format(chunk: pd.DataFrame, contract: Contract, fmt: SourceFormat) -> ValueFormat:
    """Decimal separator and date format of a file, from its first chunk."""

    def values_of(kind: str, *more: str) -> pd.Series:
        names = [c.name for c in contract.columns.values() if c.type == kind] + list(more)
        parts = [chunk[c].astype("string").str.strip() for c in names if c in chunk]
        return pd.concat(parts, ignore_index=True) if parts else pd.Series([], dtype="string")

    decimal, thousands, note = detect_decimal(
        values_of("decimal", "quantity"), contract.parsing.decimal_separator
    )
    date_format, date_note = detect_date_format(values_of("date"), contract.parsing.day_first)
    fmt.decimal_separator, fmt.thousands_separator, fmt.date_format = (
        decimal,
        thousands,
        date_format,
    )
    fmt.notes += [n for n in (note, date_note) if n]
    return ValueFormat(decimal_separator=decimal, date_format=date_format)


def to_arrow(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Typed Arrow columns, converted by Arrow: decimals are cast from their canonical text
    (exact, never through float), dates from datetime64."""
    arrays = []
    for f in schema:
        if f.name not in frame:
            arrays.append(pa.nulls(len(frame), f.type))
            continue
        values = pa.array(frame[f.name], from_pandas=True)
        if pa.types.is_decimal(f.type) and not pa.types.is_decimal(values.type):
            values = values.cast(pa.string())
        arrays.append(values.cast(f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def silver_keys(bronze_key: str, run_id: str) -> tuple[str, str]:
    """Silver and quarantine keys of a bronze object in a run: a retry of the run overwrites
    its own output with the same rows; another run (even on the same bytes, at the same
    time) writes beside it, never over it."""
    content_id = Path(bronze_key).parent.name
    stem = Path(bronze_key).name
    run = run_slug(run_id)
    return (
        f"ventas/source={content_id}/run={run}/{stem}.parquet",
        f"quarantine/ventas/source={content_id}/run={run}/{stem}.parquet",
    )


class TableCollector:
    """In-memory stand-in for ParquetUpload (same write/rows), for checking a local file."""

    def __init__(self, schema: pa.Schema):
        self.schema, self.tables, self.rows = schema, [], 0

    def write(self, table: pa.Table) -> None:
        self.tables.append(table)
        self.rows += table.num_rows

    def table(self) -> pa.Table:
        return pa.concat_tables(self.tables) if self.tables else self.schema.empty_table()


def clean_path(
    path: Path,
    source: str,
    contract: Contract,
    run_id: str,
    batch_size: int,
    out,
    quarantine,
    label: str | None = None,
) -> FileReport:
    """Read, check and split one local file into two writers (silver and quarantine).
    ``source`` is stored on every row; ``label`` (default: source) names the file in messages."""
    label = label or source
    fmt, chunks = read_chunks(path, contract, label, batch_size)
    report = FileReport(source_object=source, format=fmt)
    _clean_chunks(prefetched(chunks), report, contract, run_id, out, quarantine)
    _gate(report, contract, label)
    if report.lines_in != report.rows_out + report.quarantined + report.duplicates:
        raise AssertionError(f"{label}: lines were lost ({report.as_row()})")
    return report


def clean_local(
    path: Path, contract: Contract, run_id: str = "local", batch_size: int = 100_000
) -> tuple[FileReport, pa.Table, pa.Table]:
    """Check a local file without any service: (report, silver rows, quarantined rows)."""
    out = TableCollector(contract.silver_schema)
    quarantine = TableCollector(contract.quarantine_schema)
    report = clean_path(path, str(path), contract, run_id, batch_size, out, quarantine)
    return report, out.table(), quarantine.table()


def clean_file(
    client: Minio,
    bronze_bucket: str,
    bronze_key: str,
    silver_bucket: str,
    run_id: str,
    contract: Contract,
    batch_size: int = 100_000,
) -> FileReport:
    """Bronze object -> silver Parquet + quarantine Parquet, chunk by chunk.

    Raises InputFileError (unreadable file) or FileRejected (too many rejects, or a `fail`
    rule); then nothing of the file is written to the silver bucket.
    """
    source = f"s3://{bronze_bucket}/{bronze_key}"
    delivered = bronze.delivered_name(client, bronze_bucket, bronze_key)
    label = source
    if delivered != Path(bronze_key).name:  # the key has a safe form of the delivered name
        label = f"{source} (delivered as '{printable(delivered)}')"
    silver_key, quarantine_key = silver_keys(bronze_key, run_id)
    with (
        storage.downloaded(client, bronze_bucket, bronze_key) as path,
        storage.ParquetUpload(client, silver_bucket, silver_key, contract.silver_schema) as out,
        storage.ParquetUpload(
            client, silver_bucket, quarantine_key, contract.quarantine_schema
        ) as quarantine,
    ):
        report = clean_path(path, source, contract, run_id, batch_size, out, quarantine, label)
    report.silver_key = silver_key if report.rows_out else None
    report.quarantine_key = quarantine_key if report.quarantined else None
    return report


def _clean_chunks(
    chunks,
    report: FileReport,
    contract: Contract,
    run_id: str,
    out: storage.ParquetUpload,
    quarantine: storage.ParquetUpload,
) -> None:
    keys, duplicates = LineKeys(contract.source_id), ExactDuplicates()
    value_format: ValueFormat | None = None
    for chunk in chunks:
        if "blank" in chunk:
            blank = chunk["blank"].fillna(False).astype(bool)
            report.blank_lines += int(blank.sum())
            chunk = chunk[~blank].drop(columns="blank")
        if chunk.empty:
            continue
        chunk = chunk.assign(source_object=report.source_object, run_id=run_id)
        report.lines_in += len(chunk)
        structural = chunk["parse_error"].notna() if "parse_error" in chunk else False
        records = chunk[~structural] if "parse_error" in chunk else chunk
        if value_format is None and len(records):  # a chunk of bad lines tells nothing
            value_format = detect_value_format(records, contract, report.format)
        repeated = duplicates.mark(chunk["raw_record"]) & ~structural
        if repeated.any():
            report.duplicates += int(repeated.sum())
            chunk = chunk[~repeated]

        verdict = apply_rules(chunk, contract, value_format or ValueFormat())  # no records yet
        chunk = verdict.chunk
        chunk["line_key"], conflicts = keys.assign(chunk)
        chunk["dq_warnings"] = verdict.warnings.mask(verdict.warnings == "")
        report.conflicts += conflicts
        for severity, counter in verdict.counts.items():
            report.rules[severity].update(counter)
        for rule, line in verdict.first_line.items():
            report.first_line[rule] = min(line, report.first_line.get(rule, line))

        rejected = verdict.reasons != ""
        good = to_arrow(chunk[~rejected], contract.silver_schema)
        out.write(good)
        report.sales_total += pc.sum(good.column("sales")).as_py() or Decimal(0)
        quarantine.write(
            to_arrow(
                chunk[rejected].assign(reject_reason=verdict.reasons[rejected]),
                contract.quarantine_schema,
            )
        )
        report.rows_out, report.quarantined = out.rows, quarantine.rows


def _gate(report: FileReport, contract: Contract, source: str) -> None:
    """Stop the file (nothing reaches silver) on a `fail` rule or too many rejects."""
    if report.lines_in == 0:
        raise InputFileError(f"{source}: the file has a header but no sales lines.")
    nothing = "Nothing of this file was written to silver."
    for rule, lines in report.rules["fail"].most_common(1):
        raise FileRejected(
            f"{source}: rule '{rule}' (severity fail in params/contract.yaml) failed on {lines} "
            f"of {report.lines_in} lines, first at line {report.first_line[rule]}. {nothing}"
        )
    share = report.quarantined / report.lines_in
    if share > contract.max_reject_share:
        worst = ", ".join(
            f"{rule}: {n} lines (first at line {report.first_line[rule]})"
            for rule, n in report.rules["drop"].most_common(3)
        )
        raise FileRejected(
            f"{source}: {report.quarantined} of {report.lines_in} lines ({share:.0%}) were "
            f"rejected, above the contract's max_reject_share of "
            f"{contract.max_reject_share:.0%}. Most frequent: {worst}. {nothing}"
        )
