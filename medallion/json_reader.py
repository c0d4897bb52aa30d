"""Reading a JSON file: an array of records, an object wrapping one, or JSON Lines (detected
by content), streamed record by record and never loaded whole. Each record is flattened onto
the contract's columns (other keys are kept as extra attributes), with its line or ordinal
number and its exact text.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medallion.contract import Contract, Limits
from medallion.formats import (
    CONTROL_RE,
    KEPT_HEAD,
    InputFileError,
    PhysicalLines,
    SourceFormat,
    byte_lines,
    cut_line,
    open_binary,
    open_text,
    printable,
    too_long,
)


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
            piece = piece[: max(0, KEPT_HEAD - self.kept)]
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
    if byte_lines(fmt.encoding):
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
    utf8 = fmt.encoding in ("utf-8", "utf-8-sig") or not byte_lines(fmt.encoding)
    return "utf-8" if utf8 else fmt.encoding


def _json_item(
    data: bytes, size: int, nesting: int, encoding: str, limits: Limits
) -> tuple[str, Any]:
    """(raw text, record) of one record of a JSON document: parsed, or why it is not."""
    text = data.strip()
    if size > limits.max_line_kb << 10:
        head = text[:KEPT_HEAD].decode(encoding, "ignore")
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
            at + m.start(1)
            for at, text, _, _ in members
            if (m := _RECORD_LIST.match(text[:KEPT_HEAD]))
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
        lines, line_no = PhysicalLines(stream, cap), 0
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
            if CONTROL_RE.search("\n".join(filter(None, flat.values()))) or (
                odd_keys and not odd_keys.isdisjoint(keys)
            ):
                row["control_fields"] = ", ".join(
                    mapping[k] or printable(k)
                    for k, v in flat.items()
                    if k in odd_keys or (v and CONTROL_RE.search(v))
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
        if CONTROL_RE.search(key):
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
