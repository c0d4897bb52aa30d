"""Reading delivered files as they come: detect compression, encoding, delimiter, JSON shape,
decimal separator and date format per file, report what was detected, and hand the records on
chunk by chunk as text, with each record's line number and raw text.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import queue
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from medallion.contract import Contract

csv.field_size_limit(256 * 1024 * 1024)  # a 1 MB description is data, not an error

GZIP_MAGIC = b"\x1f\x8b"
_BLOCK = 1 << 20


class InputFileError(ValueError):
    """A delivered file that cannot be read as sales lines; the message says why, for a person."""


@dataclass
class SourceFormat:
    """What was detected about a file; shown in the silver notebook and kept in the run log."""

    kind: str = "csv"  # csv | json | jsonl
    compression: str | None = None
    encoding: str = "utf-8"
    delimiter: str | None = None
    headers: list[str] = field(default_factory=list)
    mapping: dict[str, str] = field(default_factory=dict)  # source header -> canonical column
    extra_columns: list[str] = field(default_factory=list)
    decimal_separator: str | None = None
    thousands_separator: str | None = None
    date_format: str | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "format": self.kind + (f"+{self.compression}" if self.compression else ""),
            "encoding": self.encoding,
            "delimiter": {"\t": "tab"}.get(self.delimiter, self.delimiter),
            "decimal": self.decimal_separator,
            "thousands": self.thousands_separator,
            "dates": self.date_format,
            "extra_columns": ", ".join(self.extra_columns),
            "notes": "; ".join(self.notes),
        }


# --------------------------------------------------------------------------- bytes and text


def open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed when it is gzip (detected by content, not by name)."""
    with path.open("rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == GZIP_MAGIC else path.open("rb")


def logical_suffix(path: Path) -> str:
    """'.csv' for ventas.csv and ventas.csv.gz."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def detect_encoding(path: Path, candidates: tuple[str, ...], source: str) -> str:
    """UTF-8 (BOM or not) when every byte of the file is valid UTF-8; otherwise the contract's
    fallback encodings, ranked by charset-normalizer on the first megabyte."""
    with open_binary(path) as fh:
        head = fh.read(_BLOCK)
        if not head.strip(b" \t\r\n\x00"):
            raise InputFileError(f"{source}: the file is empty.")
        if b"\x00" in head[:8192]:
            raise InputFileError(
                f"{source}: the file is binary (it contains NUL bytes), not CSV or JSON text."
            )
        if head.startswith(codecs.BOM_UTF8):
            return "utf-8-sig"
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            block = head
            while block:
                decoder.decode(block)
                block = fh.read(_BLOCK)
            decoder.decode(b"", final=True)
            return "utf-8"
        except UnicodeDecodeError:
            pass
    from charset_normalizer import from_bytes

    fallbacks = [codecs.lookup(c).name for c in candidates if codecs.lookup(c).name != "utf-8"]
    best = from_bytes(head, cp_isolation=fallbacks).best() if fallbacks else None
    encoding = codecs.lookup(best.encoding).name if best else (fallbacks or ["latin-1"])[-1]
    try:  # the whole file must decode, not just its first megabyte
        with open_binary(path) as fh:
            decoder = codecs.getincrementaldecoder(encoding)()
            while block := fh.read(_BLOCK):
                decoder.decode(block)
    except UnicodeDecodeError:
        encoding = "latin-1"  # decodes any byte; the rules catch what makes no sense
    return encoding


def open_text(path: Path, encoding: str) -> io.TextIOWrapper:
    return io.TextIOWrapper(open_binary(path), encoding=encoding, newline="")


# --------------------------------------------------------------------------- headers


def map_headers(fmt: SourceFormat, headers: list[str], contract: Contract, source: str) -> None:
    """Map the file's headers onto the contract; unknown headers are kept as extra columns."""
    fmt.headers = headers
    seen: dict[str, str] = {}
    for header in headers:
        canonical = contract.canonical(header)
        if canonical is None:
            fmt.extra_columns.append(header)
            continue
        if canonical in seen:
            raise InputFileError(
                f"{source}: columns '{seen[canonical]}' and '{header}' both mean '{canonical}'; "
                "a file must have each column once."
            )
        seen[canonical] = header
        fmt.mapping[header] = canonical
    missing = [c for c in contract.required if c not in seen]
    if missing:
        raise InputFileError(
            f"{source}: required column(s) {missing} not found among the headers {headers[:30]}; "
            "add the source's spelling to the synonyms in params/contract.yaml."
        )


def detect_delimiter(header_line: str, contract: Contract) -> str:
    """The delimiter that splits the header into the most contract columns (then the most
    columns). A decimal comma in the data cannot fool it: headers have no numbers."""
    best, best_score = ",", (-1, -1)
    for delimiter in (d.encode().decode("unicode_escape") for d in contract.parsing.delimiters):
        fields = next(csv.reader([header_line], delimiter=delimiter), [])
        score = (sum(contract.canonical(f) is not None for f in fields), len(fields))
        if score > best_score:
            best, best_score = delimiter, score
    if best_score[0] <= 0:
        try:
            return csv.Sniffer().sniff(header_line, delimiters=",;\t|").delimiter
        except csv.Error:
            return ","
    return best


# --------------------------------------------------------------------------- CSV


class _LineTap:
    """Feeds lines to csv.reader and remembers them, so a record's raw text can be kept."""

    def __init__(self, stream: IO[str]):
        self._stream = stream
        self.taken: list[str] = []

    def __iter__(self) -> _LineTap:
        return self

    def __next__(self) -> str:
        line = next(self._stream)
        self.taken.append(line)
        return line

    def take(self) -> list[str]:
        lines, self.taken = self.taken, []
        return lines


def _raw(lines: list[str]) -> str:
    return "".join(lines).rstrip("\r\n")


def read_csv(
    path: Path, fmt: SourceFormat, contract: Contract, source: str, batch_size: int
) -> Iterator[pd.DataFrame]:
    stream = open_text(path, fmt.encoding)
    tap = _LineTap(stream)
    try:
        header_lines: list[str] = []
        for line in tap:
            if line.strip():
                header_lines = [line]
                break
        if not header_lines:
            raise InputFileError(f"{source}: the file is empty.")
        fmt.delimiter = detect_delimiter(header_lines[0], contract)
        header = next(csv.reader(header_lines, delimiter=fmt.delimiter))
        map_headers(fmt, [h.strip() for h in header], contract, source)
    except Exception:
        stream.close()
        raise
    first_data_line = len(tap.take()) + 1  # blank lines above the header count too
    if _byte_lines(fmt.encoding) and header_lines[0].endswith("\n"):
        stream.close()
        return _csv_blocks(path, fmt, contract, source, batch_size, first_data_line)
    return _csv_records(stream, tap, fmt, contract, source, batch_size, first_data_line)


# --------------------------------------------------------------------------- CSV, fast path

_CSV_BLOCK = 16 << 20  # bytes handed to Arrow's CSV parser at once


def _byte_lines(encoding: str) -> bool:
    """Encodings where a line ends at byte 0x0A and ASCII is ASCII (UTF-8, cp1252, latin-1):
    blocks can be cut at newlines in bytes, and Arrow can parse their UTF-8 text."""
    try:
        return 'a;,\t|"\r\n'.encode(encoding).lstrip(codecs.BOM_UTF8) == b'a;,\t|"\r\n'
    except (LookupError, UnicodeError):
        return False


class _Prefixed(io.RawIOBase):
    """Bytes already read, then the rest of a stream: lets the careful reader take over."""

    def __init__(self, prefix: bytes, rest: IO[bytes]):
        self._prefix, self._rest = memoryview(prefix), rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if len(self._prefix):
            n = min(len(buffer), len(self._prefix))
            buffer[:n], self._prefix = self._prefix[:n], self._prefix[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._rest.close()
        super().close()


def _csv_blocks(
    path: Path,
    fmt: SourceFormat,
    contract: Contract,
    source: str,
    batch_size: int,
    line_no: int,
) -> Iterator[pd.DataFrame]:
    """Blocks of whole lines parsed by Arrow (C++), each record with its line number and raw
    text. A block where a quoted field may span lines (an odd number of quotes on a line)
    hands the rest of the file to the line-by-line reader, which resolves it exactly."""
    fh = open_binary(path)
    for _ in range(line_no - 1):
        fh.readline()
    carry = b""
    try:
        while True:
            data = fh.read(_CSV_BLOCK)
            block, carry = carry + data, b""
            if data:
                cut = block.rfind(b"\n") + 1
                if cut == 0:  # one line longer than a block: read on
                    carry = block
                    continue
                block, carry = block[:cut], block[cut:]
            if not block:
                break
            parsed = _parse_block(block, fmt, source, line_no)
            if parsed is None:
                rest = io.BufferedReader(_Prefixed(block + carry, fh))
                stream = io.TextIOWrapper(rest, encoding=fmt.encoding, newline="")
                yield from _csv_records(
                    stream, _LineTap(stream), fmt, contract, source, batch_size, line_no
                )
                return
            frame, other, lines = parsed
            line_no += lines
            for start in range(0, len(frame), batch_size):
                yield frame.iloc[start : start + batch_size].reset_index(drop=True)
            if len(other):  # blank and malformed lines of the block, as their own chunk
                yield other
            if not data:
                break
    finally:
        fh.close()


_ARROW_STRINGS = {
    pa.string(): pd.StringDtype("pyarrow"),
    pa.large_string(): pd.StringDtype("pyarrow"),
}


def _parse_block(
    block: bytes, fmt: SourceFormat, source: str, first_line: int
) -> tuple[pd.DataFrame, pd.DataFrame, int] | None:
    """(records of the block, its blank and malformed lines, physical lines in it), or None
    when a quoted field may span lines, which only the line-by-line reader can resolve."""
    try:
        text = block.decode(fmt.encoding)
    except UnicodeDecodeError as err:
        raise InputFileError(
            f"{source}: not valid {fmt.encoding} text after line {first_line} ({err.reason})."
        ) from err
    lines = pc.list_flatten(pc.split_pattern(pa.array([text], pa.large_string()), "\n"))
    if text.endswith("\n"):
        lines = lines.slice(0, len(lines) - 1)
    if pc.any(pc.equal(pc.bit_wise_and(pc.count_substring(lines, '"'), 1), 1)).as_py():
        return None
    width = len(fmt.headers)
    names = [str(i) for i in range(width)]
    invalid: dict[int, int] = {}

    def skip(row) -> str:
        invalid[row.number - 1] = row.actual_columns
        return "skip"

    utf8 = block if fmt.encoding in ("utf-8", "utf-8-sig") else text.encode()
    table = pacsv.read_csv(
        io.BytesIO(utf8),
        read_options=pacsv.ReadOptions(
            column_names=names, use_threads=False, block_size=len(utf8) + 1
        ),
        parse_options=pacsv.ParseOptions(
            delimiter=fmt.delimiter, ignore_empty_lines=False, invalid_row_handler=skip
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    n = len(lines)
    if table.num_rows + len(invalid) != n:
        return None
    raw = pc.utf8_rtrim(lines, characters="\r").cast(pa.string())
    line_numbers = np.arange(first_line, first_line + n, dtype=np.int64)
    parsed = np.ones(n, dtype=bool)
    parsed[list(invalid)] = False
    blank = pc.equal(raw, "").to_numpy(zero_copy_only=False)
    record = ~blank[parsed]  # rows of `table` that are records, not blank lines
    rows = table.filter(pa.array(record)) if not record.all() else table
    positions = {c: fmt.headers.index(h) for h, c in fmt.mapping.items()}
    frame = pa.table(
        {c: rows.column(i) for c, i in positions.items()}
        | {
            "source_line": line_numbers[parsed][record],
            "raw_record": raw.filter(pa.array(parsed & ~blank)),
        }
    ).to_pandas(types_mapper=_ARROW_STRINGS.get)
    extra = [(h, i) for i, h in enumerate(fmt.headers) if h in fmt.extra_columns]
    if extra:
        values = [rows.column(i).to_pylist() for _, i in extra]
        frame["extra_attributes"] = [
            json.dumps(dict(zip([h for h, _ in extra], row, strict=True)), ensure_ascii=False)
            for row in zip(*values, strict=True)
        ]
    other = [
        {"source_line": int(line_numbers[i]), "blank": True} for i in np.flatnonzero(blank)
    ] + [
        {
            "source_line": int(line_numbers[i]),
            "raw_record": raw[i].as_py(),
            "parse_error": f"wrong number of fields: expected {width}, found {found}",
        }
        for i, found in invalid.items()
    ]
    return frame, pd.DataFrame(other), n


# --------------------------------------------------------------------------- CSV, line by line


class _CsvChunk:
    """Records of one chunk kept column-wise (well-formed rows as lists, the rest as dicts):
    building the DataFrame from lists is several times cheaper than from one dict per row."""

    def __init__(self, fmt: SourceFormat):
        self.width = len(fmt.headers)
        self.positions = {c: fmt.headers.index(h) for h, c in fmt.mapping.items()}
        self.extra = [(h, i) for i, h in enumerate(fmt.headers) if h in fmt.extra_columns]
        self.fields: list[list[str]] = []
        self.lines: list[int] = []
        self.raw: list[str] = []
        self.other: list[dict[str, Any]] = []  # blank and structural lines

    def __len__(self) -> int:
        return len(self.fields) + len(self.other)

    def add(self, start: int, fields: list[str] | None, lines: list[str], error: str | None):
        if fields == [] and not error:
            self.other.append({"source_line": start, "blank": True})
        elif error or fields is None or len(fields) != self.width:
            error = error or f"wrong number of fields: expected {self.width}, found {len(fields)}"
            self.other.append(
                {"source_line": start, "raw_record": _raw(lines), "parse_error": error}
            )
        else:
            self.fields.append(fields)
            self.lines.append(start)
            self.raw.append(_raw(lines))

    def frame(self) -> pd.DataFrame:
        table = pd.DataFrame(self.fields, columns=range(self.width), dtype=object)
        out = pd.DataFrame({c: table[i] for c, i in self.positions.items()})
        if self.extra:
            out["extra_attributes"] = [
                json.dumps({h: row[i] for h, i in self.extra}, ensure_ascii=False)
                for row in self.fields
            ]
        out["source_line"] = self.lines
        out["raw_record"] = self.raw
        if self.other:
            out = pd.concat([out, pd.DataFrame(self.other)], ignore_index=True)
            out = out.sort_values("source_line", ignore_index=True)
        return out


def _csv_records(
    stream: IO[str],
    tap: _LineTap,
    fmt: SourceFormat,
    contract: Contract,
    source: str,
    batch_size: int,
    line_no: int,
) -> Iterator[pd.DataFrame]:
    reader = csv.reader(tap, delimiter=fmt.delimiter)
    chunk = _CsvChunk(fmt)
    try:
        while True:
            try:
                fields, error = next(reader), None
            except StopIteration:
                break
            except csv.Error as err:
                fields, error = None, f"unreadable line: {err}"
            lines = tap.take()
            if len(lines) > 1 and (error or len(fields) != chunk.width):
                # An unbalanced quote swallows the lines after it: read them one by one, so
                # that one bad quote costs one line, not the rest of the file.
                for offset, line in enumerate(lines):
                    single = next(csv.reader([line], delimiter=fmt.delimiter), [])
                    chunk.add(line_no + offset, single, [line], None)
            else:
                chunk.add(line_no, fields, lines, error)
            line_no += len(lines)
            if len(chunk) >= batch_size:
                yield chunk.frame()
                chunk = _CsvChunk(fmt)
    except UnicodeDecodeError as err:
        raise InputFileError(
            f"{source}: not valid {fmt.encoding} text after line {line_no} ({err.reason})."
        ) from err
    finally:
        stream.close()
    if len(chunk):
        yield chunk.frame()


# --------------------------------------------------------------------------- JSON


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"customer": {"id": 1}} -> {"customer_id": "1"}; lists stay JSON text."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}_"))
        elif isinstance(value, list):
            out[name] = json.dumps(value, ensure_ascii=False)
        elif isinstance(value, bool):
            out[name] = str(value).lower()
        else:
            out[name] = None if value is None else str(value)
    return out


_LOADS = {"parse_float": str, "parse_int": str}  # numbers stay exactly as delivered


class _Blank:
    pass


@dataclass(frozen=True)
class _Invalid:
    error: str


def _records_from_document(doc: Any, source: str) -> tuple[str, list[Any]]:
    if isinstance(doc, list):
        return "json array", doc
    if isinstance(doc, dict):
        lists = [v for v in doc.values() if isinstance(v, list) and v and isinstance(v[0], dict)]
        if len(lists) == 1:
            return "json object with an array of records", lists[0]
        return "json object", [doc]
    raise InputFileError(f"{source}: JSON must hold records (objects), found {type(doc).__name__}.")


def read_json(
    path: Path, fmt: SourceFormat, contract: Contract, source: str, batch_size: int
) -> Iterator[pd.DataFrame]:
    """A JSON array of records, an object wrapping one, or JSON Lines (detected by content)."""
    with open_text(path, fmt.encoding) as stream:
        text_head = stream.read(65536)
    stripped = text_head.lstrip("\ufeff \t\r\n")
    first_line = stripped.split("\n", 1)[0].strip()
    is_lines = stripped.startswith("{") and _parses(first_line) and "\n" in stripped.strip()
    if stripped.startswith("[") or (stripped.startswith("{") and not is_lines):
        with open_text(path, fmt.encoding) as stream:
            try:
                doc = json.load(stream, **_LOADS)
            except json.JSONDecodeError as err:
                raise InputFileError(
                    f"{source}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})."
                ) from err
        fmt.kind = "json"
        shape, records = _records_from_document(doc, source)
        fmt.notes.append(shape)
        items: Iterator[tuple[int, str, Any]] = (
            (i, json.dumps(r, ensure_ascii=False), r) for i, r in enumerate(records, 1)
        )
    else:
        fmt.kind = "jsonl"
        items = _json_lines(path, fmt.encoding)
    return _json_records(items, fmt, contract, batch_size)


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _json_lines(path: Path, encoding: str) -> Iterator[tuple[int, str, Any]]:
    with open_text(path, encoding) as stream:
        for i, line in enumerate(stream, 1):
            text = line.rstrip("\r\n")
            if not text.strip():
                yield i, text, _Blank()
                continue
            try:
                yield i, text, json.loads(text, **_LOADS)
            except json.JSONDecodeError as err:
                yield i, text, _Invalid(f"invalid JSON: {err.msg} (column {err.colno})")


def _json_records(
    items: Iterator[tuple[int, str, Any]], fmt: SourceFormat, contract: Contract, batch_size: int
) -> Iterator[pd.DataFrame]:
    mapping: dict[str, str | None] = {}
    rows: list[dict[str, Any]] = []
    for line_no, raw, record in items:
        if isinstance(record, _Blank):
            rows.append({"source_line": line_no, "blank": True})
        elif isinstance(record, _Invalid) or not isinstance(record, dict):
            error = record.error if isinstance(record, _Invalid) else "invalid JSON: not an object"
            rows.append({"source_line": line_no, "raw_record": raw, "parse_error": error})
        else:
            row: dict[str, Any] = {"source_line": line_no, "raw_record": raw}
            extra: dict[str, Any] = {}
            for key, value in _flatten(record).items():
                if key not in mapping:
                    mapping[key] = canonical = contract.canonical(key)
                    if canonical is None:
                        fmt.extra_columns.append(key)
                    elif canonical in fmt.mapping.values():  # two keys for one column
                        mapping[key] = None
                        fmt.extra_columns.append(key)
                    else:
                        fmt.mapping[key] = canonical
                target = mapping[key]
                if target is None:
                    extra[key] = value
                else:
                    row[target] = value
            if extra:
                row["extra_attributes"] = json.dumps(extra, ensure_ascii=False)
            rows.append(row)
        if len(rows) >= batch_size:
            yield pd.DataFrame(rows)
            rows = []
    fmt.headers = list(mapping)
    if rows:
        yield pd.DataFrame(rows)


# --------------------------------------------------------------------------- one file


SUPPORTED = {".csv", ".tsv", ".txt", ".json", ".jsonl", ".ndjson"}


def prefetched(chunks: Iterator[pd.DataFrame], depth: int = 1) -> Iterator[pd.DataFrame]:
    """Read the next chunk(s) in a background thread while the caller works on the current
    one: Arrow parses CSV without holding the GIL, so reading and checking overlap."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        slots.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(done)
        except BaseException as err:  # handed to the consumer, raised there
            slots.put(err)

    worker = threading.Thread(target=produce, name="chunk-reader", daemon=True)
    worker.start()
    try:
        while (item := slots.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def read_chunks(
    path: Path, contract: Contract, source: str, batch_size: int = 100_000
) -> tuple[SourceFormat, Iterator[pd.DataFrame]]:
    """Detect how the file is written and return that with an iterator of raw chunks."""
    suffix = logical_suffix(path)
    if suffix not in SUPPORTED:
        raise InputFileError(
            f"{source}: unsupported file type '{suffix}' (expected {sorted(SUPPORTED)})."
        )
    fmt = SourceFormat()
    with path.open("rb") as fh:
        fmt.compression = "gzip" if fh.read(2) == GZIP_MAGIC else None
    fmt.encoding = detect_encoding(path, contract.parsing.encodings, source)
    if suffix in {".json", ".jsonl", ".ndjson"}:
        return fmt, read_json(path, fmt, contract, source, batch_size)
    return fmt, read_csv(path, fmt, contract, source, batch_size)


# --------------------------------------------------------------------------- values


# Explicit characters, no \s and no \u escapes: that keeps pandas on Arrow's RE2 engine.
_SPACES = re.compile("[ \t\u00a0\u202f]")
_CURRENCY = re.compile(r"^[€$]|[€$]$|^(EUR|USD|MXN|COP|ARS|CLP|PEN) *| *(EUR|USD)$")


def strip_amount(values: pd.Series) -> pd.Series:
    """'€ 1.234,50' -> '1.234,50': currency symbols and (thin) spaces are presentation."""
    # Pattern strings (not compiled objects) keep pandas on Arrow's vectorised regex engine.
    return values.str.replace(_CURRENCY.pattern, "", regex=True).str.replace(
        _SPACES.pattern, "", regex=True
    )


def detect_decimal(values: pd.Series, default: str) -> tuple[str, str | None, str | None]:
    """Decimal and thousands separators of a file's amounts: (decimal, thousands, note)."""
    v = values.dropna()
    v = v[v.str.contains(r"[.,]", regex=True)]
    if v.empty:
        return default, None, None
    both = v[v.str.contains(",", regex=False) & v.str.contains(".", regex=False)]
    if len(both):
        comma_last = (both.str.rfind(",") > both.str.rfind(".")).mean() >= 0.5
        return (",", ".", None) if comma_last else (".", ",", None)
    comma_decimal = (
        v.str.contains(r",(?:\d{1,2}|\d{4,})$", regex=True).any()
        or v.str.contains(r"\.\d{3}\.", regex=True).any()
    )
    point_decimal = (
        v.str.contains(r"\.(?:\d{1,2}|\d{4,})$", regex=True).any()
        or v.str.contains(r",\d{3},", regex=True).any()
    )
    if comma_decimal and not point_decimal:
        return ",", "." if v.str.contains(".", regex=False).any() else None, None
    if point_decimal and not comma_decimal:
        return ".", "," if v.str.contains(",", regex=False).any() else None, None
    if comma_decimal and point_decimal:
        return (
            default,
            None,
            (
                f"amounts mix ',' and '.' as decimal separators; used '{default}' (contract), "
                "the others are quarantined"
            ),
        )
    return (
        default,
        None,
        f"amounts like '{v.iloc[0]}' are ambiguous; used decimal '{default}' (contract)",
    )


def normalize_amount(values: pd.Series, decimal: str) -> tuple[pd.Series, pd.Series]:
    """Amounts as canonical text ('1234.50'); returns (text, is_valid)."""
    if decimal == ".":  # most values are canonical already: only the others are rewritten
        plain = values.str.fullmatch(r"-?\d+(?:\.\d+)?").fillna(False).astype(bool)
        if plain.all() or not (~plain & values.notna()).any():
            return values.where(plain), plain
        text, valid = _normalize_amount(values[~plain], decimal)
        return values.where(plain).fillna(text), plain | valid.reindex(
            values.index, fill_value=False
        )
    return _normalize_amount(values, decimal)


def _normalize_amount(values: pd.Series, decimal: str) -> tuple[pd.Series, pd.Series]:
    thousands = "." if decimal == "," else ","
    t, d = re.escape(thousands), re.escape(decimal)
    pattern = rf"^[+-]?(?:\d{{1,3}}(?:{t}\d{{3}})+|\d+)?(?:{d}\d+)?$"
    cleaned = strip_amount(values)
    valid = cleaned.str.fullmatch(pattern).fillna(False) & cleaned.str.contains(r"\d", regex=True)
    canonical = cleaned.str.replace(thousands, "", regex=False)
    if decimal == ",":
        canonical = canonical.str.replace(",", ".", regex=False)
    # no back-references in the replacements: they keep pandas on Arrow's regex engine
    canonical = (
        canonical.str.replace(r"^\+", "", regex=True)
        .str.replace(r"^\.", "0.", regex=True)
        .str.replace(r"^-\.", "-0.", regex=True)
    )
    return canonical.where(valid), valid


_SLASHED = re.compile(r"^(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})(?:[ T](\d{1,2}:\d{2}(?::\d{2})?))?$")
_ISO = re.compile(
    r"^\d{4}-\d{1,2}-\d{1,2}(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$"
)


def detect_date_format(values: pd.Series, day_first: bool) -> tuple[str, str | None]:
    """'iso', 'dd/mm/yyyy' or 'mm/dd/yyyy' from the data: a first part above 12 proves day
    first, a second part above 12 proves month first. Returns (format, note)."""
    v = values.dropna().str.strip()
    v = v[~v.str.match(r"\d{4}").fillna(False)]  # ISO dates say nothing about day and month
    parts = v.str.extract(_SLASHED)
    slashed = parts[0].notna()
    if not slashed.any():
        return "iso", None
    first, second = parts.loc[slashed, 0].astype(int), parts.loc[slashed, 1].astype(int)
    day_evidence, month_evidence = int((first > 12).sum()), int((second > 12).sum())
    default = "dd/mm/yyyy" if day_first else "mm/dd/yyyy"
    if day_evidence and month_evidence:
        chosen = "dd/mm/yyyy" if day_evidence >= month_evidence else "mm/dd/yyyy"
        return chosen, (
            f"dates contradict each other ({day_evidence} day-first, {month_evidence} "
            f"month-first); read as {chosen}, the others are quarantined"
        )
    if day_evidence:
        return "dd/mm/yyyy", None
    if month_evidence:
        return "mm/dd/yyyy", None
    return default, f"no date tells day from month; read as {default} (contract day_first)"


def parse_dates(values: pd.Series, date_format: str) -> pd.Series:
    """Dates in the file's format; ISO 8601 is always accepted. Unparseable -> NaT."""
    v = values.str.strip()
    out = pd.Series(pd.NaT, index=v.index, dtype="datetime64[us]")
    iso = v.str.fullmatch(_ISO.pattern).fillna(False)
    if iso.any():
        out[iso] = pd.to_datetime(v[iso].str.slice(0, 10), format="%Y-%m-%d", errors="coerce")
    parts = v[~iso].str.extract(_SLASHED)
    ok = parts[0].notna()
    if ok.any():
        p = parts[ok]
        day, month = (p[0], p[1]) if date_format == "dd/mm/yyyy" else (p[1], p[0])
        text = p[2] + "-" + month.str.zfill(2) + "-" + day.str.zfill(2)
        out[p.index] = pd.to_datetime(text, format="%Y-%m-%d", errors="coerce")
    return out
