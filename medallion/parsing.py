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
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from medallion.contract import Contract, Limits

csv.field_size_limit(256 * 1024 * 1024)  # a 1 MB description is data, not an error

GZIP_MAGIC = b"\x1f\x8b"
_BLOCK = 1 << 20
_HEAD = 1024  # what is kept of a line longer than limits.max_line_kb (its first characters)
# C0 control characters but tab, LF and CR, and DEL: no sales value has them, and PostgreSQL's
# COPY refuses NUL in text. As bytes (a file's first block) and as a pattern (RE2 and Python).
CONTROL_BYTES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
_CONTROL = re.compile(CONTROL)


class InputFileError(ValueError):
    """A delivered file that cannot be read as sales lines; the message says why, for a person."""


def printable(text: str) -> str:
    """A name for a message: control characters as escapes (\\x00), the rest as it is."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def cut_line(head: str, size: int) -> str:
    """The raw text kept of a line too long to keep: its first characters and a marker."""
    return f"{head[:_HEAD]} … [cut: the line has {size:,} bytes]"


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


class _Gunzip(io.RawIOBase):
    """A gzip member's decompressed bytes that stop at a size cap and say in plain words what
    is wrong with a truncated or damaged stream: EOFError or zlib.error would reach the
    orchestrator as if the service had failed, and be retried."""

    def __init__(self, path: Path, source: str, max_bytes: int | None):
        self._gz = gzip.open(path, "rb")
        self._source, self._max, self.total = source, max_bytes, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self._gz.read(len(buffer))
        except EOFError as err:
            raise InputFileError(
                f"{self._source}: the gzip file is truncated: its compressed data stops before "
                "the end of the gzip stream, so its last lines are missing. The delivery is "
                "incomplete; ask for the file again."
            ) from err
        except (gzip.BadGzipFile, zlib.error) as err:
            raise InputFileError(
                f"{self._source}: the gzip file is damaged and does not decompress ({err})."
            ) from err
        self.total += len(data)
        if self._max is not None and self.total > self._max:
            raise InputFileError(too_big(self._source, self._max, "once decompressed"))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._gz.close()
        super().close()


def too_big(source: str, max_bytes: int, how: str = "") -> str:
    return (
        f"{source}: the file is larger than {max_bytes >> 20:,} MB{' ' + how if how else ''} "
        "(limits.max_file_mb in params/contract.yaml); split the delivery or raise the limit."
    )


def open_binary(path: Path, source: str = "", max_bytes: int | None = None) -> IO[bytes]:
    """The file's bytes, decompressed when it is gzip (detected by content, not by name); a
    broken or oversized gzip stream raises InputFileError naming ``source``."""
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic != GZIP_MAGIC:
        return path.open("rb")
    return io.BufferedReader(_Gunzip(path, source or str(path), max_bytes), _BLOCK)


def logical_suffix(path: Path) -> str:
    """'.csv' for ventas.csv and ventas.csv.gz."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _decodes(path: Path, encoding: str, source: str, max_bytes: int | None) -> int | None:
    """None when the whole file decodes in ``encoding``, else the offset of the first bad byte."""
    decoder, offset, pending = codecs.getincrementaldecoder(encoding)(), 0, 0
    with open_binary(path, source, max_bytes) as fh:
        try:
            while block := fh.read(_BLOCK):
                pending = len(decoder.getstate()[0])  # bytes of a character cut by the block
                decoder.decode(block)
                offset += len(block)
            pending = len(decoder.getstate()[0])
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as err:
            return offset - pending + err.start
    return None


def detect_encoding(
    path: Path, candidates: tuple[str, ...], source: str, max_bytes: int | None = None
) -> str:
    """UTF-8 (BOM or not) when every byte of the file is valid UTF-8; otherwise the first of
    the contract's other encodings, ranked by charset-normalizer on the first megabyte, that
    decodes the whole file. None does: InputFileError. Reading the whole file here also finds
    a truncated or oversized gzip stream before any line is checked."""
    with open_binary(path, source, max_bytes) as fh:
        head = fh.read(_BLOCK)
    if not head.strip(b" \t\r\n\x00"):
        raise InputFileError(f"{source}: the file is empty.")
    sample = head[:8192]
    controls = len(sample) - len(sample.translate(None, CONTROL_BYTES))
    if b"\x00" in sample and controls * 100 > len(sample):  # a stray NUL is a bad value, not this
        raise InputFileError(
            f"{source}: the file is binary (it contains NUL bytes), not CSV or JSON text."
        )
    bad_at = _decodes(path, "utf-8", source, max_bytes)
    if bad_at is None:
        return "utf-8-sig" if head.startswith(codecs.BOM_UTF8) else "utf-8"
    from charset_normalizer import from_bytes

    fallbacks = [codecs.lookup(c).name for c in candidates if codecs.lookup(c).name != "utf-8"]
    best = from_bytes(head, cp_isolation=fallbacks).best() if fallbacks else None
    if best and codecs.lookup(best.encoding).name in fallbacks:
        first = codecs.lookup(best.encoding).name
        fallbacks = [first] + [c for c in fallbacks if c != first]
    for encoding in fallbacks:  # the whole file must decode, not just its first megabyte
        if _decodes(path, encoding, source, max_bytes) is None:
            return encoding
    tried = ", ".join(dict.fromkeys(["utf-8", *fallbacks]))
    raise InputFileError(
        f"{source}: the file is not text in any encoding of the contract ({tried}): the byte "
        f"at offset {bad_at:,} is not valid UTF-8, and the others fail too. Add the source's "
        "encoding to parsing.encodings in params/contract.yaml, or ask for a UTF-8 file."
    )


def open_text(
    path: Path, encoding: str, source: str = "", max_bytes: int | None = None
) -> io.TextIOWrapper:
    return io.TextIOWrapper(open_binary(path, source, max_bytes), encoding=encoding, newline="")


class _PhysicalLines:
    """The physical lines of a text stream opened with ``newline=''`` (newlines kept; '' at
    the end). A line of more than ``cap`` bytes (UTF-8) comes as its first characters and its
    size in bytes: the rest is read in pieces and dropped, so no line is ever held whole."""

    def __init__(self, stream: IO[str], cap: int):
        self._stream, self.cap = stream, cap
        self._cut_after_cr = False  # a read limit fell between the '\r' and '\n' of a CRLF

    def _piece(self, limit: int) -> str:
        piece = self._stream.readline(limit)
        if self._cut_after_cr and piece == "\n":  # the rest of the CRLF: not a line
            piece = self._stream.readline(limit)
        self._cut_after_cr = len(piece) == limit and piece.endswith("\r")
        return piece

    def read(self) -> tuple[str, int]:
        line = self._piece(self.cap + 2)
        if len(line) <= self.cap >> 2:  # cannot be more than cap bytes: the common case
            return line, 0
        body = line.rstrip("\r\n")
        if len(body) <= self.cap and len(body.encode("utf-8", "surrogatepass")) <= self.cap:
            return line, 0
        size = len(body.encode("utf-8", "surrogatepass"))
        while not line.endswith(("\n", "\r")):
            line = self._piece(_BLOCK)
            if not line:
                break
            size += len(line.rstrip("\r\n").encode("utf-8", "surrogatepass"))
        return body[:_HEAD], size


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


class _RecordTooLong(Exception):
    """A quoted record that runs on over more than limits.max_line_kb (an unclosed quote)."""


class _LineTap:
    """Feeds lines to csv.reader and remembers them, so a record's raw text can be kept. No line
    is held longer than ``cap`` bytes: a longer one is handed on as an empty line and kept in
    ``long`` (its first characters and size); a record that runs on past the cap stops."""

    def __init__(self, stream: IO[str], cap: int):
        self._lines, self.cap = _PhysicalLines(stream, cap), cap
        self.taken: list[str] = []
        self.long: dict[int, tuple[str, int]] = {}  # index in `taken` -> (head, bytes)
        self._size = 0

    def __iter__(self) -> _LineTap:
        return self

    def __next__(self) -> str:
        line, size = self._lines.read()
        if not line:
            raise StopIteration
        if size:
            self.long[len(self.taken)] = (line, size)
            line = "\n"
        self.taken.append(line)
        self._size += len(line)
        if self._size > self.cap and len(self.taken) > 1:
            raise _RecordTooLong
        return line

    def take(self) -> tuple[list[str], dict[int, tuple[str, int]]]:
        taken, self.taken, self._size = (self.taken, self.long), [], 0
        self.long = {}
        return taken


def _raw(lines: list[str]) -> str:
    return "".join(lines).rstrip("\r\n")


def too_long(limits: Limits, what: str = "line") -> str:
    return f"{what} longer than {limits.max_line_kb:,} KB (limits.max_line_kb)"


def _long_row(line_no: int, head: str, size: int, limits: Limits) -> dict[str, Any]:
    return {
        "source_line": line_no,
        "raw_record": cut_line(head, size),
        "parse_error": too_long(limits),
        "parse_rule": "line_too_long",
    }


def _display_names(fmt: SourceFormat) -> list[str]:
    """Per field of the file, the name a message gives it: the contract's, or the header."""
    return [fmt.mapping.get(h) or printable(h) for h in fmt.headers]


def _control_fields(values: list[str | None], names: list[str]) -> str:
    return ", ".join(n for v, n in zip(values, names, strict=True) if v and _CONTROL.search(v))


def read_csv(
    path: Path, fmt: SourceFormat, contract: Contract, source: str, batch_size: int
) -> Iterator[pd.DataFrame]:
    limits = contract.limits
    stream = open_text(path, fmt.encoding, source, limits.max_file_mb << 20)
    tap = _LineTap(stream, limits.max_line_kb << 10)
    try:
        header_lines: list[str] = []
        for line in tap:
            if tap.long:
                raise InputFileError(
                    f"{source}: line {len(tap.taken)} (where the header should be) is longer "
                    f"than {limits.max_line_kb:,} KB (limits.max_line_kb); this is not a CSV "
                    "file of sales lines."
                )
            if line.strip():
                header_lines = [line]
                break
        if not header_lines:
            raise InputFileError(f"{source}: the file is empty.")
        if bad := _CONTROL.search(header_lines[0]):
            raise InputFileError(
                f"{source}: the header has a control character "
                f"({printable(bad.group())}); a file's column names must be text."
            )
        fmt.delimiter = detect_delimiter(header_lines[0], contract)
        header = next(csv.reader(header_lines, delimiter=fmt.delimiter))
        map_headers(fmt, [h.strip() for h in header], contract, source)
    except Exception:
        stream.close()
        raise
    above_data = tap.take()[0]  # blank lines above the header count too
    first_data_line = len(above_data) + 1
    # the fast path skips those lines in bytes, where only '\n' ends one (a bare '\r' too, here)
    if _byte_lines(fmt.encoding) and all(line.endswith("\n") for line in above_data):
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
    hands the rest of the file to the line-by-line reader, which resolves it exactly. A line
    longer than limits.max_line_kb is read on in blocks and dropped, but for its first
    characters: it is quarantined, never held whole."""
    limits = contract.limits
    cap = limits.max_line_kb << 10
    fh = open_binary(path, source, limits.max_file_mb << 20)
    for _ in range(line_no - 1):
        fh.readline()
    carry = b""
    try:
        while True:
            data = fh.read(_CSV_BLOCK)
            block, carry = carry + data, b""
            if data:
                cut = block.rfind(b"\n") + 1
                if cut == 0 and len(block) <= cap:  # one line longer than a block: read on
                    carry = block
                    continue
                if cut == 0:  # longer than the cap: keep its head, drop the rest
                    size = len(block)
                    head = block[:_HEAD].decode(fmt.encoding, "ignore")
                    while data := fh.read(_CSV_BLOCK):
                        end = data.find(b"\n")
                        size += len(data) if end < 0 else end
                        if end >= 0:
                            carry = data[end + 1 :]
                            break
                    yield pd.DataFrame([_long_row(line_no, head, size, limits)])
                    line_no += 1
                    if not data:
                        break
                    continue
                block, carry = block[:cut], block[cut:]
            if not block:
                break
            parsed = _parse_block(block, fmt, source, line_no, limits)
            if parsed is None:
                rest = io.BufferedReader(_Prefixed(block + carry, fh))
                stream = io.TextIOWrapper(rest, encoding=fmt.encoding, newline="")
                tap = _LineTap(stream, cap)
                yield from _csv_records(stream, tap, fmt, contract, source, batch_size, line_no)
                return
            frame, other, lines = parsed
            line_no += lines
            for start in range(0, len(frame), batch_size):
                yield frame.iloc[start : start + batch_size].reset_index(drop=True)
            if len(other):  # blank, malformed and too long lines of the block, as their own chunk
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
    block: bytes, fmt: SourceFormat, source: str, first_line: int, limits: Limits
) -> tuple[pd.DataFrame, pd.DataFrame, int] | None:
    """(records of the block, its blank, malformed and too long lines, physical lines in it),
    or None when a quoted field may span lines, which only the line-by-line reader can
    resolve."""
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
    n = len(lines)
    cap = limits.max_line_kb << 10
    long = np.zeros(n, dtype=bool)
    if len(block) > cap:  # only then can a line of the block be longer than the cap
        sizes = pc.binary_length(lines).to_numpy(zero_copy_only=False)
        long = sizes > cap
    utf8 = block if fmt.encoding in ("utf-8", "utf-8-sig") else text.encode()
    long_rows = []
    if long.any():  # Arrow reads them as blank lines; they are reported as too long
        long_rows = [
            _long_row(first_line + int(i), lines[int(i)].as_py()[:_HEAD], int(sizes[i]), limits)
            for i in np.flatnonzero(long)
        ]
        kept = pc.if_else(pa.array(long), pa.scalar("", lines.type), lines).to_pylist()
        utf8 = ("\n".join(kept) + "\n").encode()
    width = len(fmt.headers)
    names = [str(i) for i in range(width)]
    invalid: dict[int, int] = {}

    def skip(row) -> str:
        invalid[row.number - 1] = row.actual_columns
        return "skip"

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
    if table.num_rows + len(invalid) != n:
        return None
    raw = pc.utf8_rtrim(lines, characters="\r").cast(pa.string())
    line_numbers = np.arange(first_line, first_line + n, dtype=np.int64)
    parsed = np.ones(n, dtype=bool)
    parsed[list(invalid)] = False
    blank = pc.equal(raw, "").to_numpy(zero_copy_only=False) & ~long
    record = ~(blank | long)[parsed]  # rows of `table` that are records
    rows = table.filter(pa.array(record)) if not record.all() else table
    positions = {c: fmt.headers.index(h) for h, c in fmt.mapping.items()}
    is_record = parsed & ~blank & ~long
    frame = pa.table(
        {c: rows.column(i) for c, i in positions.items()}
        | {
            "source_line": line_numbers[is_record],
            "raw_record": raw.filter(pa.array(is_record)),
        }
    ).to_pandas(types_mapper=_ARROW_STRINGS.get)
    extra = [(h, i) for i, h in enumerate(fmt.headers) if h in fmt.extra_columns]
    if extra:
        values = [rows.column(i).to_pylist() for _, i in extra]
        frame["extra_attributes"] = [
            json.dumps(dict(zip([h for h, _ in extra], row, strict=True)), ensure_ascii=False)
            for row in zip(*values, strict=True)
        ]
    if len(block) != len(block.translate(None, CONTROL_BYTES)):  # rare: which rows, which fields
        hit = pc.match_substring_regex(pa.array(frame["raw_record"]), CONTROL)
        at = np.flatnonzero(hit.to_numpy(zero_copy_only=False))
        if len(at):
            shown = _display_names(fmt)
            fields = rows.take(pa.array(at)).to_pylist()
            control = pd.Series(pd.NA, index=frame.index, dtype="string")
            control.iloc[at] = [_control_fields(list(r.values()), shown) for r in fields]
            frame["control_fields"] = control
    other = (
        [{"source_line": int(line_numbers[i]), "blank": True} for i in np.flatnonzero(blank)]
        + [
            {
                "source_line": int(line_numbers[i]),
                "raw_record": raw[i].as_py(),
                "parse_error": f"wrong number of fields: expected {width}, found {found}",
                "parse_rule": "wrong_field_count",
            }
            for i, found in invalid.items()
        ]
        + long_rows
    )
    return frame, pd.DataFrame(other), n


# --------------------------------------------------------------------------- CSV, line by line


class _CsvChunk:
    """Records of one chunk kept column-wise (well-formed rows as lists, the rest as dicts):
    building the DataFrame from lists is several times cheaper than from one dict per row."""

    def __init__(self, fmt: SourceFormat, limits: Limits):
        self.width = len(fmt.headers)
        self.positions = {c: fmt.headers.index(h) for h, c in fmt.mapping.items()}
        self.extra = [(h, i) for i, h in enumerate(fmt.headers) if h in fmt.extra_columns]
        self.names = _display_names(fmt)
        self.limits = limits
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
                {
                    "source_line": start,
                    "raw_record": _raw(lines),
                    "parse_error": error,
                    "parse_rule": "wrong_field_count",
                }
            )
        else:
            self.fields.append(fields)
            self.lines.append(start)
            self.raw.append(_raw(lines))

    def add_long(self, start: int, head: str, size: int) -> None:
        self.other.append(_long_row(start, head, size, self.limits))

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
        hit = pc.match_substring_regex(pa.array(self.raw, pa.string()), CONTROL)
        at = np.flatnonzero(hit.to_numpy(zero_copy_only=False))
        if len(at):
            control = pd.Series(pd.NA, index=out.index, dtype="string")
            control.iloc[at] = [_control_fields(self.fields[i], self.names) for i in at]
            out["control_fields"] = control
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
    chunk = _CsvChunk(fmt, contract.limits)
    try:
        while True:
            try:
                fields, error = next(reader), None
            except StopIteration:
                break
            except csv.Error as err:
                fields, error = None, f"unreadable line: {err}"
            except _RecordTooLong:
                fields, error = None, "a quoted field runs on past limits.max_line_kb"
            lines, long = tap.take()
            if long or (len(lines) > 1 and (error or len(fields) != chunk.width)):
                # An unbalanced quote swallows the lines after it: read them one by one, so
                # that one bad quote costs one line, not the rest of the file.
                for offset, line in enumerate(lines):
                    if offset in long:
                        chunk.add_long(line_no + offset, *long[offset])
                        continue
                    single = next(csv.reader([line], delimiter=fmt.delimiter), [])
                    chunk.add(line_no + offset, single, [line], None)
            else:
                chunk.add(line_no, fields, lines, error)
            line_no += len(lines)
            if len(chunk) >= batch_size:
                yield chunk.frame()
                chunk = _CsvChunk(fmt, contract.limits)
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
        name = f"{prefix}{key}" if prefix else key
        kind = type(value)
        if kind is str or value is None:  # numbers are text too (_DECODER): the common case
            out[name] = value
        elif kind is dict:
            out.update(_flatten(value, f"{name}_"))
        elif kind is list:
            out[name] = json.dumps(value, ensure_ascii=False)
        elif kind is bool:
            out[name] = "true" if value else "false"
        else:
            out[name] = str(value)
    return out


# Numbers stay exactly as delivered (text); one decoder for every record (json.loads with
# these arguments would build a new one per call).
_DECODER = json.JSONDecoder(parse_float=str, parse_int=str)
_JSON_BATCH = 25_000  # rows of a JSON chunk: a record as Python objects takes ~3 KB


class _Blank:
    pass


@dataclass(frozen=True)
class _Invalid:
    error: str
    rule: str = "invalid_json"


def _nested(limits: Limits) -> _Invalid:
    return _Invalid(
        f"JSON nested deeper than {limits.max_json_depth} levels (limits.max_json_depth)",
        "nesting_too_deep",
    )


# JSON is scanned as bytes with numpy, a block at a time: where the structural characters
# ({ } [ ] , outside strings) are and at what depth. That splits an array into its records
# without parsing the whole document (each record is then parsed on its own, with its exact
# text), measures a record's nesting before json.loads recurses into it, and lets a record
# longer than limits.max_line_kb go by without ever being held whole.
_JSON_BLOCK = 4 << 20
_JSON_KIND = np.zeros(256, dtype=np.int8)
_JSON_KIND[[ord("{"), ord("[")]] = 1
_JSON_KIND[[ord("}"), ord("]")]] = -1
_JSON_KIND[ord(",")] = 2
_OPEN, _CLOSE, _COMMA = 1, -1, 2


class _JsonScan:
    """The structural characters of a JSON byte stream, block by block, with no Python work
    per character: strings are found from the unescaped quotes (a quote after an odd run of
    backslashes is escaped), and depth is a running sum of opening and closing brackets."""

    def __init__(self) -> None:
        self.in_string = False
        self.backslashes = 0  # the run of backslashes that ended the previous block
        self.depth = 0

    def block(self, data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(position in the block, kind, depth after it) of each structural character."""
        b = np.frombuffer(data, dtype=np.uint8)
        quotes = np.flatnonzero(b == 0x22)
        if len(quotes) and (self.backslashes or b"\\" in data):
            quotes = quotes[~self._escaped(b, quotes)]
        kinds = _JSON_KIND[b]
        pos = np.flatnonzero(kinds)
        pos = pos[(np.searchsorted(quotes, pos) + self.in_string) % 2 == 0]  # not in strings
        kind = kinds[pos]
        depth = self.depth + np.cumsum(np.where(kind == _COMMA, 0, kind), dtype=np.int64)
        run = len(data) - len(data.rstrip(b"\\"))
        self.backslashes = run + (self.backslashes if run == len(data) else 0)
        self.in_string ^= bool(len(quotes) % 2)
        if len(depth):
            self.depth = int(depth[-1])
        return pos, kind, depth

    def _escaped(self, b: np.ndarray, quotes: np.ndarray) -> np.ndarray:
        slashes = np.flatnonzero(b == 0x5C)
        run = np.where(quotes == 0, self.backslashes, 0)
        if len(slashes):
            starts = np.ones(len(slashes), dtype=bool)
            starts[1:] = slashes[1:] != slashes[:-1] + 1
            run_start = slashes[np.maximum.accumulate(np.where(starts, np.arange(len(slashes)), 0))]
            last = np.searchsorted(slashes, quotes) - 1  # the last backslash before each quote
            at = last.clip(0)
            touching = (last >= 0) & (slashes[at] == quotes - 1)
            run = np.where(touching, quotes - run_start[at], run)
            run = run + np.where(touching & (run_start[at] == 0), self.backslashes, 0)
        return run % 2 == 1


def json_depth(text: str) -> int:
    """How deeply a JSON text nests ({"a": 1} is 1), without parsing it."""
    _, _, depth = _JsonScan().block(text.encode("utf-8", "surrogatepass"))
    return int(depth.max()) if len(depth) else 0


class _JsonElements:
    """The values inside the container that opens at the start of a JSON byte stream (an
    array's records, or an object's members), one at a time, as (offset of the value in the
    stream, its bytes, its size, its nesting); a value longer than ``cap`` bytes comes with only
    its first bytes. After the container closes, ``more`` says whether anything but blanks
    follows it (JSON Lines), when ``look_after`` asks."""

    def __init__(self, blocks: Iterator[bytes], cap: int, source: str, look_after: bool = True):
        self.blocks, self.cap, self.source, self.look_after = blocks, cap, source, look_after
        self.more = False

    def __iter__(self) -> Iterator[tuple[int, bytes, int, int]]:
        scan, kept = _JsonScan(), _Kept(self.cap)
        offset = ordinal = nesting = start_at = 0
        inside = closed = False
        for data in self.blocks:
            if closed:  # only blanks may follow the container
                self.more = bool(data.strip())
                if self.more:
                    break
                continue
            pos, kind, depth = scan.block(data)
            # the container's own brackets (depth 1 after it opens, 0 after it closes) and
            # its commas cut it into values; the deepest bracket between two cuts is a value's
            bound = np.flatnonzero(np.where(kind == _CLOSE, depth == 0, depth == 1))
            levels = np.append(np.where(kind == _OPEN, depth, 0), 0)
            deepest = np.maximum.reduceat(levels, np.concatenate(([0], bound + 1))) - 1
            start = 0
            for j, k in enumerate(bound.tolist()):
                at = int(pos[k])
                if inside:
                    kept.add(data[start:at])
                    nesting = max(nesting, int(deepest[j]))
                    text, size = kept.take()
                    if kind[k] != _CLOSE or ordinal or text.strip():  # not the inside of []
                        ordinal += 1
                        yield start_at, text, size, nesting
                    nesting = 0
                if kind[k] == _CLOSE:
                    closed = True
                    self.more = self.look_after and bool(data[at + 1 :].strip())
                    break
                inside, start, start_at = True, at + 1, offset + at + 1
            else:
                if inside:
                    kept.add(data[start:])
                    nesting = max(nesting, int(deepest[-1]))
            if closed and (self.more or not self.look_after):
                break
            offset += len(data)
        if not closed:
            raise InputFileError(
                f"{self.source}: not valid JSON: the file ends before its outer "
                f"array or object closes (after {ordinal} values): a bracket or a quote "
                "is not closed, or the file is cut short."
            )


class _Kept:
    """The bytes of one value as they arrive: whole up to ``cap``, only the first beyond."""

    def __init__(self, cap: int):
        self.cap, self.parts, self.kept, self.size = cap, [], 0, 0

    def add(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.size > self.cap:
            piece = piece[: max(0, _HEAD - self.kept)]
        if piece:
            self.parts.append(piece)
            self.kept += len(piece)

    def take(self) -> tuple[bytes, int]:
        out = b"".join(self.parts), self.size
        self.parts, self.kept, self.size = [], 0, 0
        return out


def _json_blocks(path: Path, fmt: SourceFormat, source: str, limits: Limits, skip: int = 0):
    """The file as UTF-8 (or byte-compatible) blocks, without a BOM, from byte ``skip`` on."""
    max_bytes = limits.max_file_mb << 20
    if _byte_lines(fmt.encoding):
        stream = open_binary(path, source, max_bytes)
        decode = None
    else:  # e.g. UTF-16: scanned as UTF-8
        stream = open_text(path, fmt.encoding, source, max_bytes)
        decode = "utf-8"
    first = True
    with stream:
        while data := stream.read(_JSON_BLOCK):
            if decode:
                data = data.encode(decode, "surrogatepass")
            if first and data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8) :]
            first = False
            if skip >= len(data):
                skip -= len(data)
                continue
            data, skip = data[skip:], 0
            yield data


def _element_encoding(fmt: SourceFormat) -> str:
    utf8 = fmt.encoding in ("utf-8", "utf-8-sig") or not _byte_lines(fmt.encoding)
    return "utf-8" if utf8 else fmt.encoding


def _json_item(
    data: bytes, size: int, nesting: int, encoding: str, limits: Limits
) -> tuple[str, Any]:
    """(raw text, record) of one record of a JSON document: parsed, or why it is not."""
    text = data.strip()
    if size > limits.max_line_kb << 10:
        head = text[:_HEAD].decode(encoding, "ignore")
        return cut_line(head, size), _Invalid(too_long(limits, "record"), "line_too_long")
    raw = text.decode(encoding)
    if not raw:
        return raw, _Blank()
    if nesting > limits.max_json_depth:
        return raw, _nested(limits)
    try:
        return raw, _DECODER.decode(raw)
    except json.JSONDecodeError as err:
        where = (
            f"line {err.lineno}, column {err.colno}" if err.lineno > 1 else f"column {err.colno}"
        )
        return raw, _Invalid(f"invalid JSON: {err.msg} ({where})")
    except RecursionError:
        return raw, _nested(limits)


_RECORD_LIST = re.compile(rb'\s*"(?:[^"\\]|\\.)*"\s*:\s*(\[)\s*\{', re.S)  # "ventas": [{


def read_json(
    path: Path, fmt: SourceFormat, contract: Contract, source: str, batch_size: int
) -> Iterator[pd.DataFrame]:
    """A JSON array of records, an object wrapping one, or JSON Lines (detected by content).
    Documents are streamed record by record (never loaded whole)."""
    limits = contract.limits
    with open_text(path, fmt.encoding, source, limits.max_file_mb << 20) as stream:
        text_head = stream.read(65536)
    stripped = text_head.lstrip("\ufeff \t\r\n")
    items: Iterator[tuple[int, str, Any]] | None = None
    if stripped.startswith("["):
        fmt.kind = "json"
        fmt.notes.append("json array")
        items = _json_array(path, fmt, source, limits)
    elif stripped.startswith("{"):
        # One object, an object wrapping an array of records, or JSON Lines: the object's
        # members say which (read without holding any of them whole).
        members = _JsonElements(
            _json_blocks(path, fmt, source, limits), limits.max_line_kb << 10, source
        )
        lists = [
            at + m.start(1) for at, text, _, _ in members if (m := _RECORD_LIST.match(text[:_HEAD]))
        ]
        if not members.more:
            fmt.kind = "json"
            if len(lists) == 1:
                fmt.notes.append("json object with an array of records")
                items = _json_array(path, fmt, source, limits, skip=lists[0])
            else:
                fmt.notes.append("json object")
                items = _json_document(path, fmt, source, limits)
    if items is None:
        fmt.kind = "jsonl"
        items = _json_lines(path, fmt, source, limits)
    return _json_records(items, fmt, contract, batch_size)


def _json_array(
    path: Path, fmt: SourceFormat, source: str, limits: Limits, skip: int = 0
) -> Iterator[tuple[int, str, Any]]:
    """The records of the array that starts at byte ``skip``, one at a time."""
    elements = _JsonElements(
        _json_blocks(path, fmt, source, limits, skip),
        limits.max_line_kb << 10,
        source,
        look_after=skip == 0,
    )
    encoding, ordinal = _element_encoding(fmt), 0
    for ordinal, (_, data, size, nesting) in enumerate(elements, 1):
        yield ordinal, *_json_item(data, size, nesting, encoding, limits)
    if elements.more:
        raise InputFileError(
            f"{source}: not valid JSON: there is more after the end of the array "
            f"(after record {ordinal})."
        )


def _json_document(
    path: Path, fmt: SourceFormat, source: str, limits: Limits
) -> Iterator[tuple[int, str, Any]]:
    """A document that is one record."""
    scan, kept, nesting = _JsonScan(), _Kept(limits.max_line_kb << 10), 0
    for data in _json_blocks(path, fmt, source, limits):
        _, _, depth = scan.block(data)
        nesting = max(nesting, int(depth.max()) if len(depth) else 0)
        kept.add(data)
    yield 1, *_json_item(*kept.take(), nesting, _element_encoding(fmt), limits)


def _json_lines(
    path: Path, fmt: SourceFormat, source: str, limits: Limits
) -> Iterator[tuple[int, str, Any]]:
    cap, depth = limits.max_line_kb << 10, limits.max_json_depth
    with open_text(path, fmt.encoding, source, limits.max_file_mb << 20) as stream:
        lines, line_no = _PhysicalLines(stream, cap), 0
        while True:
            text, size = lines.read()
            if not text:
                return
            line_no += 1
            if size:
                yield line_no, cut_line(text, size), _Invalid(too_long(limits), "line_too_long")
                continue
            text = text.rstrip("\r\n")
            if not text.strip():
                record: Any = _Blank()
            elif text.count("{") + text.count("[") > depth and json_depth(text) > depth:
                record = _nested(limits)  # before json.loads would recurse into it
            else:
                try:
                    record = _DECODER.decode(text)
                except json.JSONDecodeError as err:
                    record = _Invalid(f"invalid JSON: {err.msg} (column {err.colno})")
                except RecursionError:
                    record = _nested(limits)
            yield line_no, text, record


def _json_records(
    items: Iterator[tuple[int, str, Any]], fmt: SourceFormat, contract: Contract, batch_size: int
) -> Iterator[pd.DataFrame]:
    mapping: dict[str, str | None] = {}  # record key -> column (None: an extra attribute)
    plans: dict[tuple[str, ...], tuple[list[str | None], bool]] = {}  # per set of keys
    odd_keys: set[str] = set()  # keys with a control character
    rows: list[dict[str, Any]] = []
    batch_size = min(batch_size, _JSON_BATCH)
    for line_no, raw, record in items:
        if isinstance(record, _Blank):
            rows.append({"source_line": line_no, "blank": True})
        elif isinstance(record, _Invalid) or not isinstance(record, dict):
            if not isinstance(record, _Invalid):
                record = _Invalid("invalid JSON: not an object")
            rows.append(
                {
                    "source_line": line_no,
                    "raw_record": raw,
                    "parse_error": record.error,
                    "parse_rule": record.rule,
                }
            )
        else:
            flat = _flatten(record)
            keys = tuple(flat)
            if (plan := plans.get(keys)) is None:
                plan = plans[keys] = _json_plan(keys, mapping, odd_keys, fmt, contract)
            targets, has_extra = plan
            row: dict[str, Any] = {"source_line": line_no, "raw_record": raw}
            if has_extra:
                extra = {}
                for key, target, value in zip(keys, targets, flat.values(), strict=True):
                    if target is None:
                        extra[key] = value
                    else:
                        row[target] = value
                row["extra_attributes"] = json.dumps(extra, ensure_ascii=False)
            else:
                row.update(zip(targets, flat.values(), strict=True))
            if _CONTROL.search("\n".join(filter(None, flat.values()))) or (
                odd_keys and not odd_keys.isdisjoint(keys)
            ):
                row["control_fields"] = ", ".join(
                    mapping[k] or printable(k)
                    for k, v in flat.items()
                    if k in odd_keys or (v and _CONTROL.search(v))
                )
            rows.append(row)
        if len(rows) >= batch_size:
            yield pd.DataFrame(rows)
            rows = []
    fmt.headers = list(mapping)
    if rows:
        yield pd.DataFrame(rows)


def _json_plan(
    keys: tuple[str, ...],
    mapping: dict[str, str | None],
    odd_keys: set[str],
    fmt: SourceFormat,
    contract: Contract,
) -> tuple[list[str | None], bool]:
    """Where each key of a record goes (a column, or None: extra_attributes), decided once
    per key: the first key of a column takes it, a later one for the same column is extra."""
    for key in keys:
        if key in mapping:
            continue
        mapping[key] = canonical = contract.canonical(key)
        if _CONTROL.search(key):
            odd_keys.add(key)
        if canonical is None:
            fmt.extra_columns.append(key)
        elif canonical in fmt.mapping.values():  # two keys for one column
            mapping[key] = None
            fmt.extra_columns.append(key)
        else:
            fmt.mapping[key] = canonical
    targets = [mapping[k] for k in keys]
    return targets, None in targets


# --------------------------------------------------------------------------- one file


# What the reader parses when a file is given by itself (a .txt is read as delimited text)
SUPPORTED = {".csv", ".tsv", ".txt", ".json", ".jsonl", ".ndjson"}
# What a folder delivers (each also .gz): a .txt beside the sales files is a note, not sales
FOLDER_SUFFIXES = {".csv", ".tsv", ".json", ".jsonl", ".ndjson"}


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
    max_bytes = contract.limits.max_file_mb << 20
    if fmt.compression is None and path.stat().st_size > max_bytes:
        raise InputFileError(too_big(source, max_bytes))
    fmt.encoding = detect_encoding(path, contract.parsing.encodings, source, max_bytes)
    if suffix in {".json", ".jsonl", ".ndjson"}:
        return fmt, read_json(path, fmt, contract, source, batch_size)
    return fmt, read_csv(path, fmt, contract, source, batch_size)


# --------------------------------------------------------------------------- values


# Explicit characters, no \s, \d and no \u escapes: that keeps pandas on Arrow's RE2 engine,
# and digits are ASCII digits (Python's \d is any script's: '１２３' would pass for 123).
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
        v.str.contains(r",(?:[0-9]{1,2}|[0-9]{4,})$", regex=True).any()
        or v.str.contains(r"\.[0-9]{3}\.", regex=True).any()
    )
    point_decimal = (
        v.str.contains(r"\.(?:[0-9]{1,2}|[0-9]{4,})$", regex=True).any()
        or v.str.contains(r",[0-9]{3},", regex=True).any()
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
        plain = values.str.fullmatch(r"-?[0-9]+(?:\.[0-9]+)?").fillna(False).astype(bool)
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
    pattern = rf"^[+-]?(?:[0-9]{{1,3}}(?:{t}[0-9]{{3}})+|[0-9]+)?(?:{d}[0-9]+)?$"
    cleaned = strip_amount(values)
    valid = cleaned.str.fullmatch(pattern).fillna(False) & cleaned.str.contains(
        r"[0-9]", regex=True
    )
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


_SLASHED = re.compile(
    r"^([0-9]{1,2})[/.-]([0-9]{1,2})[/.-]([0-9]{4})(?:[ T]([0-9]{1,2}:[0-9]{2}(?::[0-9]{2})?))?$"
)
_ISO = re.compile(
    r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}"
    r"(?:[ T][0-9]{1,2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?$"
)


def detect_date_format(values: pd.Series, day_first: bool) -> tuple[str, str | None]:
    """'iso', 'dd/mm/yyyy' or 'mm/dd/yyyy' from the data: a first part above 12 proves day
    first, a second part above 12 proves month first. Returns (format, note)."""
    v = values.dropna().str.strip()
    v = v[~v.str.match(r"[0-9]{4}").fillna(False)]  # ISO dates say nothing about day and month
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
