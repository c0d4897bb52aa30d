"""What every delivered file shares before it is read as CSV or JSON: what was detected
about it (SourceFormat), why it cannot be read (InputFileError), its bytes and text (gzip,
encoding, physical lines, size caps), its headers and delimiter, the file types that are read,
and the control characters that no sales value has.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from medallion.contract import Contract, Limits

csv.field_size_limit(256 * 1024 * 1024)  # a 1 MB description is data, not an error

GZIP_MAGIC = b"\x1f\x8b"
_BLOCK = 1 << 20
KEPT_HEAD = 1024  # what is kept of a line longer than limits.max_line_kb (its first characters)
# C0 control characters but tab, LF and CR, and DEL: no sales value has them, and PostgreSQL's
# COPY refuses NUL in text. As bytes (a file's first block) and as a pattern (RE2 and Python).
CONTROL_BYTES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
CONTROL_RE = re.compile(CONTROL)

# What the reader parses when a file is given by itself (a .txt is read as delimited text)
SUPPORTED = {".csv", ".tsv", ".txt", ".json", ".jsonl", ".ndjson"}
# What a folder delivers (each also .gz): a .txt beside the sales files is a note, not sales
FOLDER_SUFFIXES = {".csv", ".tsv", ".json", ".jsonl", ".ndjson"}


class InputFileError(ValueError):
    """A delivered file that cannot be read as sales lines; the message says why, for a person."""


def printable(text: str) -> str:
    """A name for a message: control characters as escapes (\\x00), the rest as it is."""
    return CONTROL_RE.sub(lambda m: repr(m.group())[1:-1], text)


def cut_line(head: str, size: int) -> str:
    """The raw text kept of a line too long to keep: its first characters and a marker."""
    return f"{head[:KEPT_HEAD]} … [cut: the line has {size:,} bytes]"


def too_long(limits: Limits, what: str = "line") -> str:
    return f"{what} longer than {limits.max_line_kb:,} KB (limits.max_line_kb)"


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


def utf8_valid(data: bytes) -> bool:
    """Whether ``data`` is well-formed UTF-8 (as Python's strict decoder has it: no surrogates,
    no overlong forms), checked by Arrow's validator, several times faster than decoding."""
    import numpy as np  # here: the command line reads this module's formats without them
    import pyarrow as pa

    text = pa.LargeStringArray.from_buffers(
        1, pa.py_buffer(np.array([0, len(data)], dtype=np.int64)), pa.py_buffer(data)
    )
    try:
        text.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _utf8_whole(path: Path, source: str, max_bytes: int | None) -> bool:
    """True when the whole file is well-formed UTF-8, checked block by block by Arrow; False
    when it is not, or may not be (the exact decoder then says where it fails). Blocks are cut
    after their last newline, which is never part of a longer character."""
    carry = b""
    with open_binary(path, source, max_bytes) as fh:
        while block := fh.read(_BLOCK):
            block = carry + block
            cut = block.rfind(b"\n") + 1
            if cut == 0 and len(block) > 4 * _BLOCK:  # no line ends: leave it to the decoder
                return False
            block, carry = block[:cut], block[cut:]
            if not utf8_valid(block):
                return False
    return utf8_valid(carry)


def _decodes(path: Path, encoding: str, source: str, max_bytes: int | None) -> int | None:
    """None when the whole file decodes in ``encoding``, else the offset of the first bad byte."""
    if encoding == "utf-8" and _utf8_whole(path, source, max_bytes):
        return None
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


class PhysicalLines:
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
        return body[:KEPT_HEAD], size


def byte_lines(encoding: str) -> bool:
    """Encodings where a line ends at byte 0x0A and ASCII is ASCII (UTF-8, cp1252, latin-1):
    blocks can be cut at newlines in bytes, and Arrow can parse their UTF-8 text."""
    try:
        return 'a;,\t|"\r\n'.encode(encoding).lstrip(codecs.BOM_UTF8) == b'a;,\t|"\r\n'
    except (LookupError, UnicodeError):
        return False


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
