"""Bronze -> silver for one delivered file: read it as it comes (parsing), run the contract's
rules (rules), and split its lines into typed silver rows, quarantined rows and dropped exact
duplicates, chunk by chunk. Lines read = silver + quarantine + duplicates, always."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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
from medallion.fingerprints import ExactDuplicates, LineKeys, fingerprint
from medallion.formats import InputFileError, SourceFormat, printable
from medallion.parsing import prefetched, read_chunks
from medallion.rules import Verdict, apply_rules
from medallion.settings import run_slug
from medallion.values import ValueFormat, detect_value_format

__all__ = ["FileRejected", "FileReport", "InputFileError", "clean_file", "read_chunks"]


# Threads that run the contract's rules on chunks side by side. Measured on the 2-vCPU
# machine (issue 12): one and two give the same time, with the rules in pandas (1M lines 3.9 s
# in-process, 10M 61 s through S3) and in Arrow (1M 3.0-3.6 s either way): the chunk reader,
# the Parquet writer and the S3 server already share the two cores, and a second worker holds
# one more chunk (10M peak RSS 969 MB instead of 947 MB).
RULE_WORKERS = 1


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
    read_from: str | None = None  # clean_file: "bronze", or "local file" (the delivered one)

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


def to_arrow(
    columns: dict[str, pa.Array], rows: int, schema: pa.Schema, constants: dict[str, str]
) -> pa.Table:
    """``schema``'s table of ``rows`` rows, cast by Arrow: decimals from their canonical text
    (exact, never through float); ``constants`` fills a column with one value (the source
    object, the run id); a column that is in neither is missing."""
    arrays = []
    for f in schema:
        if f.name in constants:
            arrays.append(pa.repeat(pa.scalar(constants[f.name], f.type), rows))
        elif f.name in columns:
            arrays.append(columns[f.name].cast(f.type))
        else:
            arrays.append(pa.nulls(rows, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


# Up to this many runs of kept rows, a chunk's silver rows are zero-copy slices of its typed
# table; more (a chunk with many rejects) are copied by Arrow's filter. Filtering copies every
# column: 0.2-0.5 s of CPU per 1M lines with one reject in a thousand (issue 12).
MAX_SLICES = 256


def without_rows(table: pa.Table, drop: np.ndarray) -> pa.Table:
    """``table`` without the rows where ``drop`` is True, in order: the runs of kept rows as
    slices (no copy) when they are few, else Arrow's filter."""
    if not drop.any():
        return table
    # starts and ends of the runs of kept rows: where ``drop`` changes
    edges = np.flatnonzero(np.diff(np.concatenate(([True], drop, [True])).astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]
    if len(starts) > MAX_SLICES:
        return table.filter(pa.array(~drop))
    parts = [table.slice(a, b - a) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    return pa.concat_tables(parts) if parts else table.slice(0, 0)


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


class _FileChanged(Exception):
    """The delivered file changed while silver read it instead of its bronze object."""


def clean_path(
    path: Path,
    source: str,
    contract: Contract,
    run_id: str,
    batch_size: int,
    out,
    quarantine,
    label: str | None = None,
    workers: int = RULE_WORKERS,
) -> FileReport:
    """Read, check and split one local file into two writers (silver and quarantine).
    ``source`` is stored on every row; ``label`` (default: source) names the file in messages;
    ``workers`` threads run the rules on chunks side by side (the outputs do not depend on it)."""
    label = label or source
    fmt, chunks = read_chunks(path, contract, label, batch_size)
    report = FileReport(source_object=source, format=fmt)
    _clean_chunks(prefetched(chunks), report, contract, run_id, out, quarantine, workers)
    _gate(report, contract, label)
    if report.lines_in != report.rows_out + report.quarantined + report.duplicates:
        raise AssertionError(f"{label}: lines were lost ({report.as_row()})")
    return report


def clean_local(
    path: Path,
    contract: Contract,
    run_id: str = "local",
    batch_size: int = 100_000,
    workers: int = RULE_WORKERS,
) -> tuple[FileReport, pa.Table, pa.Table]:
    """Check a local file without any service: (report, silver rows, quarantined rows)."""
    out = TableCollector(contract.silver_schema)
    quarantine = TableCollector(contract.quarantine_schema)
    report = clean_path(
        path, str(path), contract, run_id, batch_size, out, quarantine, workers=workers
    )
    return report, out.table(), quarantine.table()


def clean_file(
    client: Minio,
    bronze_bucket: str,
    bronze_key: str,
    silver_bucket: str,
    run_id: str,
    contract: Contract,
    batch_size: int = 100_000,
    local: dict | None = None,
) -> FileReport:
    """Bronze object -> silver Parquet + quarantine Parquet, chunk by chunk.

    ``local``: the delivered file as bronze hashed it (``bronze.file_identity``, in the bronze
    manifest). While it is unchanged it holds the object's bytes, and silver reads it instead
    of downloading them (a 10M-line file: 2.35 GB, 10 s and 19 s of CPU through the embedded
    S3). If it changes before silver is done, or cannot be read, what was read of it is
    dropped and the object is read. ``report.read_from`` says which.

    Raises InputFileError (unreadable file) or FileRejected (too many rejects, or a `fail`
    rule); then nothing of the file is written to the silver bucket.
    """
    source = f"s3://{bronze_bucket}/{bronze_key}"
    delivered = bronze.delivered_name(client, bronze_bucket, bronze_key)
    label = source
    if delivered != Path(bronze_key).name:  # the key has a safe form of the delivered name
        label = f"{source} (delivered as '{printable(delivered)}')"
    silver_key, quarantine_key = silver_keys(bronze_key, run_id)

    def clean(path: Path, unchanged: Callable[[], bool] = lambda: True) -> FileReport:
        with (
            storage.ParquetUpload(
                client,
                silver_bucket,
                silver_key,
                contract.silver_schema,
                contract.dictionary_columns(contract.silver_schema),
            ) as out,
            storage.ParquetUpload(
                client,
                silver_bucket,
                quarantine_key,
                contract.quarantine_schema,
                contract.dictionary_columns(contract.quarantine_schema),
            ) as quarantine,
        ):
            try:
                report = clean_path(
                    path, source, contract, run_id, batch_size, out, quarantine, label
                )
            except Exception as err:
                if not unchanged():  # dropped with the writers: nothing is uploaded
                    raise _FileChanged from err
                raise
            if not unchanged():
                raise _FileChanged
        return report

    report = None
    if bronze.unchanged(local):
        try:
            report = clean(Path(local["path"]), lambda: bronze.unchanged(local))
            report.read_from = "local file"
        except (_FileChanged, OSError):  # changed, or not readable here: the object then
            pass
    if report is None:
        with storage.downloaded(client, bronze_bucket, bronze_key) as path:
            report = clean(path)
            report.read_from = "bronze"
    report.silver_key = silver_key if report.rows_out else None
    report.quarantine_key = quarantine_key if report.quarantined else None
    return report


@dataclass
class _Checked:
    """One chunk after the stateless work (rules, casts, fingerprints of its lines)."""

    blank_lines: int
    verdict: Verdict | None = None  # None: the chunk had blank lines only
    structural: np.ndarray | None = None  # lines that are not records
    hi: np.ndarray | None = None  # 128-bit fingerprints of the lines' raw text
    lo: np.ndarray | None = None


def _check_chunks(
    chunks, contract: Contract, fmt: SourceFormat, workers: int = RULE_WORKERS
) -> Iterator[_Checked]:
    """What each chunk's lines are, independently of the lines before them: the contract's
    rules, the typed values and the lines' fingerprints, on ``workers`` threads (Arrow's
    kernels and the hashing release the GIL), in file order."""
    value_format: ValueFormat | None = None
    with ThreadPoolExecutor(workers, thread_name_prefix="silver-rules") as pool:
        pending: deque[Future] = deque()
        for chunk in chunks:
            blank_lines = 0
            if "blank" in chunk:
                blank = chunk["blank"].fillna(False).astype(bool)
                blank_lines = int(blank.sum())
                chunk = chunk[~blank].drop(columns="blank")
            if value_format is None and not chunk.empty:  # a chunk of bad lines tells nothing
                structural = chunk["parse_error"].notna() if "parse_error" in chunk else False
                records = chunk[~structural] if "parse_error" in chunk else chunk
                if len(records):
                    value_format = detect_value_format(records, contract, fmt)
            pending.append(pool.submit(_check, chunk, blank_lines, contract, value_format))
            if len(pending) >= workers:  # at most ``workers`` chunks in the threads
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _check(
    chunk: pd.DataFrame, blank_lines: int, contract: Contract, value_format: ValueFormat | None
) -> _Checked:
    if chunk.empty:
        return _Checked(blank_lines)
    structural = chunk["parse_error"].notna() if "parse_error" in chunk else False
    structural = pd.Series(structural, index=chunk.index).to_numpy(dtype=bool)
    hi, lo = fingerprint(chunk["raw_record"])
    verdict = apply_rules(chunk, contract, value_format or ValueFormat())  # no records yet
    return _Checked(blank_lines, verdict, structural, hi, lo)


def _clean_chunks(
    chunks,
    report: FileReport,
    contract: Contract,
    run_id: str,
    out: storage.ParquetUpload,
    quarantine: storage.ParquetUpload,
    workers: int = RULE_WORKERS,
) -> None:
    """The sequential part, in file order: exact duplicates, line keys, counts, writing."""
    keys, duplicates = LineKeys(contract.source_id), ExactDuplicates()
    constants = {"source_object": report.source_object, "run_id": run_id}
    for checked in _check_chunks(chunks, contract, report.format, workers):
        report.blank_lines += checked.blank_lines
        verdict = checked.verdict
        if verdict is None:
            continue
        report.lines_in += len(verdict.lines)
        repeated = duplicates.mark_hashed(checked.hi, checked.lo) & ~checked.structural
        if repeated.any():
            report.duplicates += int(repeated.sum())
            verdict = verdict.subset(~repeated)

        table = verdict.table
        line_key, conflicts = keys.assign(table)
        report.conflicts += conflicts
        counts, first_line = verdict.tally()
        for severity, counter in counts.items():
            report.rules[severity].update(counter)
        for rule, line in first_line.items():
            report.first_line[rule] = min(line, report.first_line.get(rule, line))

        rejected = ~pc.equal(verdict.reasons, "").to_numpy(zero_copy_only=False)
        # the whole chunk is typed by Arrow, then split (a rejected row's values are missing
        # where they could not be typed); the few rejected rows keep their text
        warnings = pc.if_else(pc.equal(verdict.warnings, ""), None, verdict.warnings)
        columns = dict(zip(table.column_names, table.columns, strict=True))
        columns |= {"line_key": line_key, "dq_warnings": warnings}
        typed = to_arrow(columns, table.num_rows, contract.silver_schema, constants)
        good = without_rows(typed, rejected)
        out.write(good)
        report.sales_total += pc.sum(good.column("sales")).as_py() or Decimal(0)
        if rejected.any():
            rows = pa.array(rejected)
            bad = {name: values.filter(rows) for name, values in columns.items()}
            bad["reject_reason"] = verdict.reasons.filter(rows)
            quarantine.write(
                to_arrow(bad, int(rejected.sum()), contract.quarantine_schema, constants)
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
