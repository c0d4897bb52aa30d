"""Reading a delimited file (CSV, TSV, .txt): its header, then its records chunk by chunk,
each with its line number and raw text. Blocks of whole lines go to Arrow's CSV parser (the
fast path); where a quoted field may span lines, or the encoding is not byte-compatible with
ASCII, the line-by-line reader (the csv module) takes over and resolves it exactly.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from medallion.contract import Contract, Limits
from medallion.formats import (
    CONTROL,
    CONTROL_BYTES,
    CONTROL_RE,
    KEPT_HEAD,
    InputFileError,
    PhysicalLines,
    SourceFormat,
    byte_lines,
    cut_line,
    detect_delimiter,
    map_headers,
    open_binary,
    open_text,
    printable,
    too_long,
    utf8_valid,
)


class _RecordTooLong(Exception):
    """A quoted record that runs on over more than limits.max_line_kb (an unclosed quote)."""


class _LineTap:
    """Feeds lines to csv.reader and remembers them, so a record's raw text can be kept. No line
    is held longer than ``cap`` bytes: a longer one is handed on as an empty line and kept in
    ``long`` (its first characters and size); a record that runs on past the cap stops."""

    def __init__(self, stream: IO[str], cap: int):
        self._lines, self.cap = PhysicalLines(stream, cap), cap
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
    return ", ".join(n for v, n in zip(values, names, strict=True) if v and CONTROL_RE.search(v))


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
        if bad := CONTROL_RE.search(header_lines[0]):
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
    if byte_lines(fmt.encoding) and all(line.endswith("\n") for line in above_data):
        stream.close()
        return _csv_blocks(path, fmt, contract, source, batch_size, first_data_line)
    return _csv_records(stream, tap, fmt, contract, source, batch_size, first_data_line)


# --------------------------------------------------------------------------- CSV, fast path

_CSV_BLOCK = 16 << 20  # bytes handed to Arrow's CSV parser at once


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
                    # its first KEPT_HEAD characters, as a long line inside a block keeps
                    head = block[: KEPT_HEAD * 4].decode(fmt.encoding, "ignore")[:KEPT_HEAD]
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


def odd_quotes(data: bytes) -> bool:
    """Whether a line of ``data`` has an odd number of '"' (a quoted field may go on to the
    next line). Counted by numpy over the bytes, without the GIL: the quotes before each
    line end, then the lines' differences (8x faster than counting per line in Arrow)."""
    if b'"' not in data:  # most blocks have no quote at all
        return False
    text = np.frombuffer(data, dtype=np.uint8)
    quotes = np.flatnonzero(text == ord('"'))
    ends = np.append(np.flatnonzero(text == ord("\n")), len(text))
    before = np.searchsorted(quotes, ends)  # quotes before each line's end
    return bool((np.diff(before, prepend=0) & 1).any())


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
    utf8 = block
    # UTF-8 is checked by Arrow (faster than decoding it); the decoder names what is wrong
    if fmt.encoding not in ("utf-8", "utf-8-sig") or not utf8_valid(block):
        try:
            utf8 = block.decode(fmt.encoding).encode()
        except UnicodeDecodeError as err:
            raise InputFileError(
                f"{source}: not valid {fmt.encoding} text after line {first_line} ({err.reason})."
            ) from err
    # one Arrow string over the UTF-8 bytes as they are (pa.array of the str would encode it
    # again, holding the GIL: most of the reader's time)
    whole = pa.LargeStringArray.from_buffers(
        1, pa.py_buffer(np.array([0, len(utf8)], dtype=np.int64)), pa.py_buffer(utf8)
    )
    lines = pc.list_flatten(pc.split_pattern(whole, "\n"))
    if utf8.endswith(b"\n"):
        lines = lines.slice(0, len(lines) - 1)
    if odd_quotes(utf8):
        return None
    n = len(lines)
    cap = limits.max_line_kb << 10
    long = np.zeros(n, dtype=bool)
    if len(block) > cap:  # only then can a line of the block be longer than the cap
        sizes = pc.binary_length(lines).to_numpy(zero_copy_only=False)
        long = sizes > cap
    long_rows = []
    if long.any():  # Arrow reads them as blank lines; they are reported as too long
        long_rows = [
            _long_row(first_line + int(i), lines[int(i)].as_py()[:KEPT_HEAD], int(sizes[i]), limits)
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
        pa.BufferReader(utf8),  # read in C++, without the GIL or a copy
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
            check_utf8=False,  # the block is valid UTF-8: checked above, or encoded here
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
