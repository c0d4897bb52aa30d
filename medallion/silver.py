"""Bronze -> silver: read a delivered file chunk by chunk, apply the contract's rules, split the
lines into typed silver rows and quarantined rows (with every reason), and lose none of them."""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from minio import Minio

from medallion import storage
from medallion.contract import Contract

DATA_COLUMNS = ["source_line", "raw_record", "parse_error", "extra_attributes"]
_DECIMAL = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_INTEGER = re.compile(r"^\+?\d+$")


class InputFileError(ValueError):
    """A delivered file that cannot be read as sales lines; the message says why, for a person."""


@dataclass
class SourceFormat:
    """What was detected about a file, reported in the silver notebook and the run log."""

    kind: str  # csv | json | jsonl
    encoding: str = "utf-8"
    delimiter: str | None = None
    headers: list[str] = field(default_factory=list)
    mapping: dict[str, str] = field(default_factory=dict)  # source header -> canonical column
    extra_columns: list[str] = field(default_factory=list)


@dataclass
class FileReport:
    source_object: str
    format: SourceFormat
    lines_in: int = 0
    rows_out: int = 0
    quarantined: int = 0
    blank_lines: int = 0
    reasons: Counter = field(default_factory=Counter)
    silver_key: str | None = None
    quarantine_key: str | None = None

    def as_row(self) -> dict[str, Any]:
        return {
            "source_object": self.source_object,
            "format": self.format.kind,
            "delimiter": self.format.delimiter,
            "encoding": self.format.encoding,
            "lines_in": self.lines_in,
            "rows_out": self.rows_out,
            "quarantined": self.quarantined,
            "blank_lines": self.blank_lines,
            "extra_columns": ", ".join(self.format.extra_columns),
        }


# --------------------------------------------------------------------------- reading


def _decode_stream(path: Path, source: str) -> io.TextIOWrapper:
    raw = path.read_bytes()[:4096]
    if not raw.strip():
        raise InputFileError(f"{source}: the file is empty.")
    if b"\x00" in raw:
        raise InputFileError(f"{source}: the file is binary (NUL bytes), not CSV or JSON text.")
    return open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - caller closes


def _map_headers(headers: list[str], contract: Contract, source: str) -> SourceFormat:
    fmt = SourceFormat(kind="csv", headers=headers)
    seen: dict[str, str] = {}
    for header in headers:
        canonical = contract.canonical(header)
        if canonical is None:
            fmt.extra_columns.append(header)
            continue
        if canonical in seen:
            raise InputFileError(
                f"{source}: columns '{seen[canonical]}' and '{header}' both mean '{canonical}'."
            )
        seen[canonical] = header
        fmt.mapping[header] = canonical
    missing = [c for c in contract.required if c not in seen]
    if missing:
        raise InputFileError(
            f"{source}: required column(s) {missing} not found among the headers {headers}; "
            "add the source's spelling to the synonyms in params/contract.yaml."
        )
    return fmt


class _LineTap:
    """Feeds lines to csv.reader and remembers them, so a record's raw text can be kept."""

    def __init__(self, stream: io.TextIOBase):
        self._stream = stream
        self.taken: list[str] = []

    def __iter__(self) -> _LineTap:
        return self

    def __next__(self) -> str:
        line = next(self._stream)
        self.taken.append(line)
        return line

    def take(self) -> str:
        text = "".join(self.taken).rstrip("\r\n")
        self.taken.clear()
        return text


def _sniff_delimiter(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def read_csv_chunks(
    path: Path, contract: Contract, source: str, batch_size: int
) -> tuple[SourceFormat, Iterator[pd.DataFrame]]:
    stream = _decode_stream(path, source)
    try:
        sample = stream.read(65536)
    except UnicodeDecodeError as err:
        stream.close()
        raise InputFileError(
            f"{source}: not valid UTF-8 text ({err.reason} at byte {err.start})."
        ) from err
    stream.seek(0)
    delimiter = _sniff_delimiter(sample)
    tap = _LineTap(stream)
    reader = csv.reader(tap, delimiter=delimiter)
    try:
        headers = [h.strip() for h in next(reader)]
    except StopIteration as err:
        stream.close()
        raise InputFileError(f"{source}: the file is empty.") from err
    tap.take()
    fmt = _map_headers(headers, contract, source)
    fmt.delimiter = delimiter
    positions = {canonical: headers.index(h) for h, canonical in fmt.mapping.items()}
    extra_positions = {h: i for i, h in enumerate(headers) if h in fmt.extra_columns}

    def chunks() -> Iterator[pd.DataFrame]:
        rows: list[dict[str, Any]] = []
        line_no = 1
        try:
            while True:
                start = line_no + 1
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                except csv.Error as err:  # e.g. a NUL byte inside a field
                    fields, error = None, f"unreadable line: {err}"
                else:
                    error = None
                line_no = reader.line_num
                raw = tap.take()
                if fields == []:
                    rows.append({"source_line": start, "blank": True})
                elif fields is None or len(fields) != len(headers):
                    error = error or (
                        f"wrong number of fields: expected {len(headers)}, found {len(fields)}"
                    )
                    rows.append({"source_line": start, "raw_record": raw, "parse_error": error})
                else:
                    row = {c: fields[i] for c, i in positions.items()}
                    if extra_positions:
                        row["extra_attributes"] = json.dumps(
                            {h: fields[i] for h, i in extra_positions.items()}, ensure_ascii=False
                        )
                    row.update(source_line=start, raw_record=raw)
                    rows.append(row)
                if len(rows) >= batch_size:
                    yield pd.DataFrame(rows)
                    rows = []
        except UnicodeDecodeError as err:
            raise InputFileError(
                f"{source}: not valid UTF-8 text after line {line_no} ({err.reason})."
            ) from err
        finally:
            stream.close()
        if rows:
            yield pd.DataFrame(rows)

    return fmt, chunks()


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}_"))
        elif isinstance(value, list):
            out[name] = json.dumps(value, ensure_ascii=False)
        else:
            out[name] = None if value is None else str(value)
    return out


def read_json_chunks(
    path: Path, contract: Contract, source: str, batch_size: int
) -> tuple[SourceFormat, Iterator[pd.DataFrame]]:
    """A JSON array of records or JSON Lines; numbers are kept as their delivered text."""
    stream = _decode_stream(path, source)
    first = stream.read(4096).lstrip()[:1]
    stream.seek(0)
    loads = {"parse_float": str, "parse_int": str}

    if first == "[":
        try:
            records = json.load(stream, **loads)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputFileError(f"{source}: not a valid JSON array ({err}).") from err
        finally:
            stream.close()
        items: Iterator[tuple[int, str, Any]] = (
            (i, json.dumps(r, ensure_ascii=False), r) for i, r in enumerate(records, 1)
        )
        kind = "json"
    else:

        def lines() -> Iterator[tuple[int, str, Any]]:
            with stream:
                for i, line in enumerate(stream, 1):
                    text = line.rstrip("\r\n")
                    if not text.strip():
                        yield i, text, _BLANK
                        continue
                    try:
                        yield i, text, json.loads(text, **loads)
                    except json.JSONDecodeError as err:
                        yield i, text, _InvalidJson(str(err))

        items, kind = lines(), "jsonl"

    fmt = SourceFormat(kind=kind)
    mapping_cache: dict[str, str | None] = {}

    def chunks() -> Iterator[pd.DataFrame]:
        rows: list[dict[str, Any]] = []
        for line_no, raw, record in items:
            if record is _BLANK:
                rows.append({"source_line": line_no, "blank": True})
            elif isinstance(record, _InvalidJson):
                rows.append(
                    {
                        "source_line": line_no,
                        "raw_record": raw,
                        "parse_error": f"invalid JSON: {record.error}",
                    }
                )
            elif not isinstance(record, dict):
                rows.append(
                    {
                        "source_line": line_no,
                        "raw_record": raw,
                        "parse_error": "record is not a JSON object",
                    }
                )
            else:
                row: dict[str, Any] = {"source_line": line_no, "raw_record": raw}
                extra: dict[str, Any] = {}
                for key, value in _flatten(record).items():
                    if key not in mapping_cache:
                        mapping_cache[key] = contract.canonical(key)
                        if mapping_cache[key] is None:
                            fmt.extra_columns.append(key)
                        else:
                            fmt.mapping[key] = mapping_cache[key]
                    canonical = mapping_cache[key]
                    if canonical is None:
                        extra[key] = value
                    else:
                        row[canonical] = value
                if extra:
                    row["extra_attributes"] = json.dumps(extra, ensure_ascii=False)
                rows.append(row)
            if len(rows) >= batch_size:
                yield pd.DataFrame(rows)
                rows = []
        if rows:
            yield pd.DataFrame(rows)
        fmt.headers = list(mapping_cache)

    return fmt, chunks()


_BLANK = object()


@dataclass(frozen=True)
class _InvalidJson:
    error: str


def read_chunks(
    path: Path, contract: Contract, source: str, batch_size: int = 100_000
) -> tuple[SourceFormat, Iterator[pd.DataFrame]]:
    """Detect the file's format and return it with an iterator of raw chunks."""
    suffix = path.suffix.lower()
    if suffix in {".json", ".jsonl", ".ndjson"}:
        return read_json_chunks(path, contract, source, batch_size)
    if suffix in {".csv", ".txt", ".tsv"}:
        return read_csv_chunks(path, contract, source, batch_size)
    raise InputFileError(f"{source}: unsupported file type '{suffix}' (expected CSV or JSON).")


# --------------------------------------------------------------------------- rules


class LineKeys:
    """The contract's line key: the source's row id where the file has one, otherwise
    order id + position of the line in its order. Keys seen twice in a file are flagged."""

    def __init__(self) -> None:
        self._positions: Counter = Counter()
        self._first_line: dict[str, int] = {}

    def assign(self, chunk: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        order = chunk["order_id"]
        has_order = order.notna()
        position = pd.Series(pd.NA, index=chunk.index, dtype="Int64")
        if has_order.any():
            offsets = order[has_order].map(lambda o: self._positions[o])
            position[has_order] = (
                offsets + order[has_order].groupby(order[has_order]).cumcount() + 1
            )
            for order_id, count in order[has_order].value_counts().items():
                self._positions[order_id] += count
        by_position = order + "-" + position.astype("string")
        key = chunk["row_id"].where(chunk["row_id"].notna(), by_position)
        duplicate = pd.Series("", index=chunk.index, dtype="string")
        for idx, k, line in zip(chunk.index, key, chunk["source_line"], strict=True):
            if k is None or k is pd.NA or isinstance(k, float):
                continue
            first = self._first_line.setdefault(k, line)
            if first != line:
                duplicate[idx] = f"duplicate line key {k} (first seen at line {first})"
        return key, duplicate


def _clean_strings(chunk: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    for col in columns:
        if col not in chunk:
            chunk[col] = None
        s = chunk[col].astype("string").str.strip()
        chunk[col] = s.mask(s == "")
    return chunk


def _parse_dates(values: pd.Series, fallback_format: str) -> pd.Series:
    iso = pd.to_datetime(values, format="ISO8601", errors="coerce")
    missing = iso.isna() & values.notna()
    if missing.any():
        iso[missing] = pd.to_datetime(values[missing], format=fallback_format, errors="coerce")
    return iso


def apply_rules(
    chunk: pd.DataFrame, contract: Contract, keys: LineKeys
) -> tuple[pd.DataFrame, pd.Series]:
    """Check every rule on every row. Returns the cleaned chunk and each row's reasons
    ('' when the row passes); a row is reported with all the rules it fails, not the first."""
    columns = list(contract.columns)
    chunk = _clean_strings(chunk, columns)
    checks: list[tuple[str, pd.Series]] = []
    parse_error = chunk.get("parse_error", pd.Series(None, index=chunk.index))
    structural = parse_error.notna()
    checks.append(("", structural))  # reason text added below

    for name in contract.required:
        checks.append((f"missing {name}", chunk[name].isna() & ~structural))

    dates = {}
    for col in (c for c in contract.columns.values() if c.type == "date"):
        dates[col.name] = _parse_dates(chunk[col.name], contract.date_format_fallback)
        checks.append(
            (f"invalid date in {col.name}", chunk[col.name].notna() & dates[col.name].isna())
        )
        chunk[col.name] = dates[col.name].dt.date
    if {"order_date", "ship_date"} <= dates.keys():
        checks.append(("ship_date before order_date", dates["ship_date"] < dates["order_date"]))

    for col in (c for c in contract.columns.values() if c.type == "decimal"):
        s = chunk[col.name].str.replace(r"^\+", "", regex=True)
        chunk[col.name] = s
        bad = s.notna() & ~s.str.fullmatch(_DECIMAL.pattern).fillna(False)
        checks.append((f"{col.name} is not a number", bad))
        decimals = s.str.extract(r"\.(\d*)$", expand=False).str.len().fillna(0)
        checks.append(
            (f"{col.name} has more than {col.scale} decimal places", ~bad & (decimals > col.scale))
        )
    numbers = {c: pd.to_numeric(chunk[c], errors="coerce") for c in ("sales", "discount")}
    checks.append(("sales is negative", numbers["sales"] < 0))
    checks.append(
        ("discount outside [0, 1]", (numbers["discount"] < 0) | (numbers["discount"] > 1))
    )

    qty = chunk["quantity"]
    not_int = qty.notna() & ~qty.str.fullmatch(_INTEGER.pattern).fillna(False)
    checks.append(("quantity is not an integer", not_int))
    qty_value = pd.to_numeric(qty.where(~not_int), errors="coerce")
    checks.append(("quantity is not > 0", qty_value.notna() & (qty_value <= 0)))
    chunk["quantity"] = qty_value.astype("Int64")

    chunk["line_key"], duplicate = keys.assign(chunk)
    checks.append(("", duplicate != ""))

    reasons = pd.Series("", index=chunk.index, dtype="string")
    for message, mask in checks:
        mask = mask.fillna(False).astype(bool)
        if message:
            reasons = reasons.mask(mask, reasons + message + "; ")
    reasons = reasons + parse_error.astype("string").fillna("")
    reasons = reasons.mask(duplicate != "", reasons + duplicate)
    return chunk, reasons.str.rstrip("; ")


def to_silver_table(good: pd.DataFrame, contract: Contract) -> pa.Table:
    """Typed silver rows; decimals are cast from their delivered text (exact, never float)."""
    schema = contract.silver_schema
    arrays = []
    for f in schema:
        values = good[f.name] if f.name in good else pd.Series(None, index=good.index)
        if pa.types.is_decimal(f.type):
            arrays.append(
                pa.array(values.astype(object).where(values.notna(), None), type=pa.string()).cast(
                    f.type
                )
            )
        else:
            arrays.append(
                pa.array(
                    values.astype(object).where(values.notna(), None), type=f.type, from_pandas=True
                )
            )
    return pa.Table.from_arrays(arrays, schema=schema)


def to_quarantine_table(bad: pd.DataFrame, reasons: pd.Series, contract: Contract) -> pa.Table:
    frame = bad.assign(reject_reason=reasons)
    schema = contract.quarantine_schema
    arrays = []
    for f in schema:
        values = frame[f.name] if f.name in frame else pd.Series(None, index=frame.index)
        values = values.astype(object).where(values.notna(), None)
        if f.type == pa.string():
            values = values.map(lambda v: None if v is None else str(v))
        arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


# --------------------------------------------------------------------------- one file


def silver_keys(bronze_key: str) -> tuple[str, str]:
    """Silver and quarantine keys derived from the bronze object: a re-run overwrites its own
    output with the same rows and never touches another delivery's."""
    content_id = Path(bronze_key).parent.name
    stem = Path(bronze_key).name
    return (
        f"ventas/source={content_id}/{stem}.parquet",
        f"quarantine/ventas/source={content_id}/{stem}.parquet",
    )


def clean_file(
    client: Minio,
    bronze_bucket: str,
    bronze_key: str,
    silver_bucket: str,
    run_id: str,
    contract: Contract,
    batch_size: int = 100_000,
) -> FileReport:
    """Bronze object -> silver Parquet + quarantine Parquet, chunk by chunk."""
    source = f"s3://{bronze_bucket}/{bronze_key}"
    silver_key, quarantine_key = silver_keys(bronze_key)
    with storage.downloaded(client, bronze_bucket, bronze_key) as path:
        fmt, chunks = read_chunks(path, contract, source, batch_size)
        report = FileReport(source_object=source, format=fmt)
        keys = LineKeys()
        with (
            storage.ParquetUpload(client, silver_bucket, silver_key, contract.silver_schema) as out,
            storage.ParquetUpload(
                client, silver_bucket, quarantine_key, contract.quarantine_schema
            ) as quarantine,
        ):
            for chunk in chunks:
                if "blank" in chunk:
                    blank = chunk["blank"].fillna(False).astype(bool)
                    report.blank_lines += int(blank.sum())
                    chunk = chunk[~blank].drop(columns="blank")
                chunk = chunk.assign(source_object=source, run_id=run_id)
                report.lines_in += len(chunk)
                chunk, reasons = apply_rules(chunk, contract, keys)
                rejected = reasons != ""
                out.write(to_silver_table(chunk[~rejected], contract))
                quarantine.write(to_quarantine_table(chunk[rejected], reasons[rejected], contract))
                for reason_list in reasons[rejected]:
                    report.reasons.update(_reason_names(reason_list))
            report.rows_out, report.quarantined = out.rows, quarantine.rows
    report.silver_key = silver_key if report.rows_out else None
    report.quarantine_key = quarantine_key if report.quarantined else None
    if report.lines_in != report.rows_out + report.quarantined:
        raise AssertionError(f"{source}: lines were lost ({report.as_row()})")
    return report


def _reason_names(reason_list: str) -> list[str]:
    """'missing order_id; sales is negative' -> rule names without the per-line details."""
    names = []
    for reason in reason_list.split("; "):
        if reason.startswith("wrong number of fields"):
            reason = "wrong number of fields"
        elif reason.startswith("duplicate line key"):
            reason = "duplicate line key"
        elif reason.startswith("invalid JSON"):
            reason = "invalid JSON"
        elif reason.startswith("unreadable line"):
            reason = "unreadable line"
        names.append(reason)
    return names
