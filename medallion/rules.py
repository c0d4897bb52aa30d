"""The contract's rules, run on every row of a chunk at once, in Arrow compute.

Each check yields (rule, message, mask). A row is reported with every rule it fails, not just
the first; what happens to it depends on the rule's severity in the contract (warn, drop, fail).
A value that could not be stored as it is (a control character, digits of another script, more
digits than the column holds) fails a rule of its own: it never reaches a cast that would fail
the whole file.

The common value (a plain ISO date, a plain amount, a quantity of ASCII digits) is decided by
Arrow's kernels alone, which release the GIL: a chunk is checked while the next one is read.
Every other value (other date forms, currency symbols, thousands separators, digits of another
script) goes, on its rows only, through the slower parsers; dates and amounts are read by
``medallion.values``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from medallion.contract import Column, Contract
from medallion.values import ValueFormat, arrow_text, dates, normalize_amount, text_series

_INT64_MAX = 2**63 - 1
Check = tuple[str, str, "np.ndarray | pa.Array"]  # rule, message, rows that fail it
_TEXT = pa.large_string()
_NO_TEXT = pa.scalar(None, _TEXT)


@dataclass
class Verdict:
    """The outcome of the rules on one chunk. Every rule looks at its own row only, so the
    verdict of a subset of the rows (``subset``) is the subset of the verdict."""

    # typed values: dates (date32), canonical decimal text, quantities (int64), trimmed text;
    # and the lines' source_line, raw_record and extra_attributes
    table: pa.Table
    reasons: pa.Array  # '; '-joined messages of drop/fail rules ('' = row passes)
    warnings: pa.Array  # '; '-joined messages of warn rules
    hits: list[tuple[str, str, np.ndarray]] = field(default_factory=list)  # severity, rule, rows
    lines: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # source lines

    def subset(self, keep: np.ndarray) -> Verdict:
        """The verdict of the rows where ``keep`` is True (e.g. without exact duplicates)."""
        rows = pa.array(keep)
        return Verdict(
            self.table.filter(rows),
            self.reasons.filter(rows),
            self.warnings.filter(rows),
            [(severity, rule, mask[keep]) for severity, rule, mask in self.hits],
            self.lines[keep],
        )

    def tally(self) -> tuple[dict[str, Counter], dict[str, int]]:
        """(severity -> rule -> rows, rule -> first source line), for the rules with rows."""
        counts: dict[str, Counter] = {s: Counter() for s in ("warn", "drop", "fail")}
        first_line: dict[str, int] = {}
        for severity, rule, mask in self.hits:
            if mask.any():
                counts[severity][rule] += int(mask.sum())
                first = int(self.lines[mask].min())
                first_line[rule] = min(first, first_line.get(rule, first))
        return counts, first_line


def _bools(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numpy mask from an Arrow boolean (missing = False)."""
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False)


def _text(chunk: pd.DataFrame, name: str) -> pa.Array:
    """A column's values as Arrow text (missing if the chunk has no such column)."""
    return arrow_text(chunk[name]) if name in chunk else pa.nulls(len(chunk), _TEXT)


def _trimmed(chunk: pd.DataFrame, name: str) -> pa.Array:
    """Values as trimmed text, '' as missing (utf8_trim_whitespace, as pandas' str.strip on
    Arrow strings): '' becomes missing through a new validity bitmap, the text is not copied
    again."""
    trimmed = pc.utf8_trim_whitespace(_text(chunk, name))
    if trimmed.offset:
        trimmed = pa.concat_arrays([trimmed])  # re-based (the buffers below start at row 0)
    keep = pc.fill_null(pc.greater(pc.binary_length(trimmed), 0), False)  # no bits under nulls
    if keep.offset:
        keep = pa.concat_arrays([keep])
    _, offsets, data = trimmed.buffers()
    return pa.Array.from_buffers(_TEXT, len(trimmed), [keep.buffers()[1], offsets, data])


def _foreign_digits(values: pd.Series) -> np.ndarray:
    """Where a value that is not a number has digits of another script ('１２３', '٣'):
    looked at in Python, on the few rows that failed the ASCII patterns only."""
    return np.array(
        [
            isinstance(v, str) and any(c.isdecimal() and not c.isascii() for c in v)
            for v in values.astype(object)
        ],
        dtype=bool,
    )


def _normalized_amounts(text: pa.Array, decimal: str) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(canonical text, valid, foreign digits) of the few amounts that are not plain, by
    ``values.normalize_amount``; digits of another script are looked for where it failed."""
    values = text_series(text)
    canonical, valid = normalize_amount(values, decimal)
    valid = valid.to_numpy(dtype=bool)
    foreign = np.zeros(len(values), dtype=bool)
    suspects = ~valid & values.notna().to_numpy(dtype=bool)
    if suspects.any():
        foreign[suspects] = _foreign_digits(values[suspects])
    return pa.array(canonical.astype(object), type=_TEXT), valid, foreign


@dataclass
class _AmountColumn:
    text: pa.Array  # canonical text ('1234.50'), missing where not a number
    valid: np.ndarray
    foreign: np.ndarray  # digits of another script
    too_many_decimals: np.ndarray
    too_big: np.ndarray  # more integer digits than the column holds


def _amount_column(text: pa.Array, col: Column, decimal: str) -> _AmountColumn:
    """One column of amounts. One bounded pattern decides the common row (a plain number
    that fits the column's scale and precision); the other present rows are normalized and
    measured on their own."""
    n, digits = len(text), col.arrow_type.precision - col.scale
    point = re.escape(decimal)
    fraction = rf"(?:{point}[0-9]{{1,{col.scale}}})?" if col.scale else ""
    fits = _bools(pc.match_substring_regex(text, rf"^-?[0-9]{{1,{digits}}}{fraction}$"))
    out = _AmountColumn(text, fits.copy(), *(np.zeros(n, dtype=bool) for _ in range(3)))
    if decimal != ".":
        out.text = pc.if_else(pa.array(fits), pc.replace_substring(text, ",", "."), text)
    rest = _bools(pc.is_valid(text)) & ~fits
    if not rest.any():
        return out
    rows = pa.array(rest)
    canonical, valid, foreign = _normalized_amounts(text.filter(rows), decimal)
    length = pc.binary_length(canonical)
    point_at = pc.find_substring(canonical, ".")
    decimals = pc.if_else(
        pc.greater_equal(point_at, 0), pc.subtract(pc.subtract(length, point_at), 1), 0
    )
    out.too_many_decimals[rest] = _bools(pc.greater(decimals, col.scale))
    long = _bools(pc.greater(length, digits))  # a cheap bound: few are that long
    if long.any():  # leading zeros and the sign do not count
        whole = text_series(canonical.filter(pa.array(long))).str.split(".").str[0]
        too_big = np.zeros(len(canonical), dtype=bool)
        too_big[long] = (whole.str.lstrip("-").str.lstrip("0").str.len() > digits).to_numpy(
            dtype=bool
        )
        out.too_big[rest] = too_big
    out.valid[rest], out.foreign[rest] = valid, foreign
    out.text = pc.replace_with_mask(out.text, rows, canonical)
    return out


def _quantity(text: pa.Array, decimal: str) -> tuple[list[Check], pa.Array]:
    """The quantity's checks, and its values as int64 (missing where not a valid integer)."""
    present = _bools(pc.is_valid(text))
    digits_only = _bools(pc.ascii_is_decimal(text))  # the common row: [0-9]+
    other = present & ~digits_only
    is_integer, foreign = digits_only, np.zeros(len(text), dtype=bool)
    if other.any():  # signs, decimals, separators, junk: normalized on those rows only
        rows = pa.array(other)
        canonical, _, other_foreign = _normalized_amounts(text.filter(rows), decimal)
        foreign[other] = other_foreign
        text = pc.replace_with_mask(text, rows, canonical)
        is_integer = digits_only.copy()
        is_integer[other] = _bools(pc.match_substring_regex(canonical, r"^[+]?[0-9]+$"))
    checks: list[Check] = [
        ("non_ascii_digits", "quantity has non-ASCII digits", foreign),
        ("quantity_not_integer", "quantity is not an integer", present & ~foreign & ~is_integer),
    ]
    too_big = _bools(pc.greater(pc.binary_length(text), 18)) & is_integer  # 19 digits can fit
    if too_big.any():
        long = text.filter(pa.array(too_big)).to_pylist()
        too_big[too_big] = [abs(int(v)) > _INT64_MAX for v in long]
    checks.append(("integer_out_of_range", "quantity is beyond the 64-bit integer range", too_big))
    integers = pc.if_else(pa.array(is_integer & ~too_big), text, _NO_TEXT)
    quantity = pc.cast(integers, pa.int64())  # exact: never through float
    checks.append(("quantity_not_positive", "quantity is not > 0", pc.less_equal(quantity, 0)))
    return checks, quantity


def _checks(
    text: dict[str, pa.Array],
    chunk: pd.DataFrame,
    contract: Contract,
    fmt: ValueFormat,
    structural: np.ndarray,
    typed: dict[str, pa.Array],
) -> Iterator[Check]:
    """Yield (rule, message, mask) for every rule, in the order a reason lists them; fills
    ``typed`` with each column's converted values as its rules are checked."""
    if "control_fields" in chunk:  # found by the reader, in the raw line or the record's values
        fields = _text(chunk, "control_fields")
        for names in pc.unique(fields.drop_null()).to_pylist():
            yield "control_character", f"control character in {names}", pc.equal(fields, names)

    records = pa.array(~structural)
    for name in contract.required:
        yield "missing_required", f"missing {name}", pc.and_(pc.is_null(text[name]), records)

    days = {}
    for col in (c for c in contract.columns.values() if c.type == "date"):
        days[col.name] = dates(text[col.name], fmt.date_format)
        invalid = pc.and_(pc.is_valid(text[col.name]), pc.is_null(days[col.name]))
        yield "invalid_date", f"invalid date in {col.name}", invalid
        typed[col.name] = days[col.name]
    if {"order_date", "ship_date"} <= days.keys():
        yield (
            "ship_before_order",
            "ship_date before order_date",
            pc.less(days["ship_date"], days["order_date"]),
        )

    numbers = {}
    for col in (c for c in contract.columns.values() if c.type == "decimal"):
        amount = _amount_column(text[col.name], col, fmt.decimal_separator)
        present = _bools(pc.is_valid(text[col.name]))
        digits = col.arrow_type.precision - col.scale
        yield "non_ascii_digits", f"{col.name} has non-ASCII digits", amount.foreign
        not_a_number = present & ~amount.valid & ~amount.foreign
        yield "not_a_number", f"{col.name} is not a number", not_a_number
        yield (
            "too_many_decimals",
            f"{col.name} has more than {col.scale} decimal places",
            amount.too_many_decimals,
        )
        yield (
            "amount_out_of_range",
            f"{col.name} has more than {digits} integer digits",
            amount.too_big,
        )
        unfit = amount.too_many_decimals | amount.too_big
        typed[col.name] = (
            pc.if_else(pa.array(~unfit), amount.text, _NO_TEXT) if unfit.any() else amount.text
        )
        numbers[col.name] = pc.cast(amount.text, pa.float64())  # for the range rules only

    checks, typed["quantity"] = _quantity(text["quantity"], fmt.decimal_separator)
    yield from checks

    if "sales" in numbers:
        yield "sales_negative", "sales is negative", pc.less(numbers["sales"], 0)
    if "discount" in numbers:
        d = numbers["discount"]
        yield (
            "discount_out_of_range",
            "discount outside [0, 1]",
            pc.or_(pc.less(d, 0), pc.greater(d, 1)),
        )
    if {"profit", "sales"} <= numbers.keys():
        yield (
            "profit_above_sales",
            "profit above sales",
            pc.greater(numbers["profit"], numbers["sales"]),
        )


PASSED_ON = ("source_line", "raw_record", "extra_attributes")  # the reader's, kept as they are


def apply_rules(chunk: pd.DataFrame, contract: Contract, fmt: ValueFormat) -> Verdict:
    """Run every rule on every row of a chunk of raw text values."""
    n = len(chunk)
    parse_error = _text(chunk, "parse_error")
    structural = _bools(pc.is_valid(parse_error))
    text = {name: _trimmed(chunk, name) for name in contract.columns}
    hits: list[tuple[str, str, np.ndarray]] = []
    if structural.any():  # the reader names the structural rule of each line it could not read
        rules = pc.fill_null(_text(chunk, "parse_rule"), "wrong_field_count")
        rules = pc.if_else(pa.array(structural), rules, _NO_TEXT)
        for rule in pc.unique(rules.drop_null()).to_pylist():
            hits.append((contract.severity(rule), rule, _bools(pc.equal(rules, rule))))

    typed: dict[str, pa.Array] = {}
    failed, warned = [], []
    for rule, message, mask in _checks(text, chunk, contract, fmt, structural, typed):
        mask = (mask if isinstance(mask, np.ndarray) else _bools(mask)) & ~structural
        if not mask.any():
            continue
        severity = contract.severity(rule)
        if severity == "warn":
            warned.append((rule, message, mask))
            continue
        hits.append((severity, rule, mask))
        failed.append((message, mask))
    reasons = _joined(parse_error, failed, n)
    kept = _bools(pc.equal(reasons, ""))
    shown = []
    for rule, message, mask in warned:  # a warning counts on the rows that are kept
        if (mask & kept).any():
            hits.append(("warn", rule, mask & kept))
            shown.append((message, mask & kept))
    columns = {name: typed.get(name, text[name]) for name in contract.columns}
    for name in PASSED_ON:
        if name in chunk:
            columns[name] = pa.array(chunk[name], from_pandas=True)
    lines = chunk["source_line"].to_numpy(dtype=np.int64)
    return Verdict(pa.table(columns), reasons, _joined(None, shown, n), hits, lines)


def _joined(base: pa.Array | None, messages: list[tuple[str, np.ndarray]], n: int) -> pa.Array:
    """Per row, ``base`` (if any) and each message whose mask is set, '; '-joined in rule
    order ('' where none). Joined on the flagged rows only: pyarrow 26.0.1's
    binary_join_element_wise(null_handling='skip') drops rows whose inputs are all missing."""
    none = pa.repeat(pa.scalar("", _TEXT), n)
    flagged = np.zeros(n, dtype=bool) if base is None else _bools(pc.is_valid(base))
    for _, mask in messages:
        flagged |= mask
    if not flagged.any():
        return none
    rows = pa.array(flagged)
    parts = [] if base is None else [base.filter(rows)]
    for message, mask in messages:
        parts.append(pc.if_else(pa.array(mask[flagged]), pa.scalar(message, _TEXT), _NO_TEXT))
    if len(parts) > 1:
        joined = pc.binary_join_element_wise(*parts, pa.scalar("; ", _TEXT), null_handling="skip")
    else:
        joined = parts[0]
    return pc.replace_with_mask(none, rows, joined)
