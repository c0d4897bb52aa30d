"""The contract's rules, run on every row of a chunk at once.

Each check yields (rule, message, mask). A row is reported with every rule it fails, not just
the first; what happens to it depends on the rule's severity in the contract (warn, drop, fail).
A value that could not be stored as it is (a control character, digits of another script, more
digits than the column holds) fails a rule of its own: it never reaches a cast that would fail
the whole file.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from medallion.contract import Contract
from medallion.values import ValueFormat, normalize_amount, parse_dates

_INTEGER = r"[+]?[0-9]+"  # ASCII digits only (see values: no \d)
_INT64_MAX = 2**63 - 1


@dataclass
class Verdict:
    """The outcome of the rules on one chunk. Every rule looks at its own row only, so the
    verdict of a subset of the rows (``subset``) is the subset of the verdict."""

    chunk: pd.DataFrame  # typed values (dates, canonical decimal text, Int64 quantities)
    reasons: pd.Series  # '; '-joined messages of drop/fail rules ('' = row passes)
    warnings: pd.Series  # '; '-joined messages of warn rules
    hits: list[tuple[str, str, np.ndarray]] = field(default_factory=list)  # severity, rule, rows
    lines: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # source lines

    def subset(self, keep: np.ndarray) -> Verdict:
        """The verdict of the rows where ``keep`` is True (e.g. without exact duplicates)."""
        return Verdict(
            self.chunk[keep],
            self.reasons[keep],
            self.warnings[keep],
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


def _strings(chunk: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Values as trimmed text, '' as missing: trimmed by Arrow (utf8_trim_whitespace, as
    pandas' str.strip on Arrow strings), without a pandas copy per step."""
    empty = pa.scalar(None, pa.large_string())
    for col in columns:
        values = chunk[col] if col in chunk else pd.Series(None, index=chunk.index)
        text = values.astype("string").array.__arrow_array__()
        trimmed = pc.utf8_trim_whitespace(text)
        trimmed = pc.if_else(pc.equal(trimmed, ""), empty, trimmed.cast(pa.large_string()))
        chunk[col] = pd.Series(pd.arrays.ArrowStringArray(trimmed), index=chunk.index)
    return chunk


def _checks(chunk: pd.DataFrame, contract: Contract, fmt: ValueFormat, structural: pd.Series):
    """Yield (rule, message, mask) for every rule; also converts the chunk's values in place."""
    if "control_fields" in chunk:  # found by the reader, in the raw line or the record's values
        fields = chunk["control_fields"]
        for names in fields.dropna().unique():
            yield "control_character", f"control character in {names}", fields == names

    for name in contract.required:
        yield "missing_required", f"missing {name}", chunk[name].isna() & ~structural

    dates = {}
    for col in (c for c in contract.columns.values() if c.type == "date"):
        dates[col.name] = parse_dates(chunk[col.name], fmt.date_format)
        yield (
            "invalid_date",
            f"invalid date in {col.name}",
            (chunk[col.name].notna() & dates[col.name].isna()),
        )
        chunk[col.name] = dates[col.name]  # datetime64; written to silver as date32
    if {"order_date", "ship_date"} <= dates.keys():
        yield (
            "ship_before_order",
            "ship_date before order_date",
            (dates["ship_date"] < dates["order_date"]),
        )

    numbers = {}
    for col in (c for c in contract.columns.values() if c.type == "decimal"):
        text, valid = normalize_amount(chunk[col.name], fmt.decimal_separator)
        foreign = _foreign_digits(chunk[col.name], chunk[col.name].notna() & ~valid)
        yield "non_ascii_digits", f"{col.name} has non-ASCII digits", foreign
        yield (
            "not_a_number",
            f"{col.name} is not a number",
            chunk[col.name].notna() & ~valid & ~foreign,
        )
        point = text.str.find(".")  # canonical text: at most one point
        length = text.str.len()
        decimals = (length - point - 1).where(point >= 0, 0).fillna(0)
        yield (
            "too_many_decimals",
            f"{col.name} has more than {col.scale} decimal places",
            (decimals > col.scale),
        )
        digits = col.arrow_type.precision - col.scale
        too_big = _more_integer_digits(text, length, digits)
        yield "amount_out_of_range", f"{col.name} has more than {digits} integer digits", too_big
        chunk[col.name] = text.where((decimals <= col.scale) & ~too_big)
        numbers[col.name] = _to_float(text)

    qty_text, qty_valid = normalize_amount(chunk["quantity"], fmt.decimal_separator)
    present = chunk["quantity"].notna()
    foreign = _foreign_digits(chunk["quantity"], present & ~qty_valid)
    yield "non_ascii_digits", "quantity has non-ASCII digits", foreign
    not_int = present & ~foreign & ~qty_text.str.fullmatch(_INTEGER).fillna(False)
    yield "quantity_not_integer", "quantity is not an integer", not_int
    integer = qty_text.where(~not_int & ~foreign)
    too_big = _beyond_int64(integer)
    yield "integer_out_of_range", "quantity is beyond the 64-bit integer range", too_big
    qty = _to_int64(integer.where(~too_big))  # exact: never through float
    yield "quantity_not_positive", "quantity is not > 0", qty.notna() & (qty <= 0)
    chunk["quantity"] = qty

    if "sales" in numbers:
        yield "sales_negative", "sales is negative", numbers["sales"] < 0
    if "discount" in numbers:
        d = numbers["discount"]
        yield "discount_out_of_range", "discount outside [0, 1]", (d < 0) | (d > 1)
    if {"profit", "sales"} <= numbers.keys():
        yield "profit_above_sales", "profit above sales", numbers["profit"] > numbers["sales"]


def _foreign_digits(values: pd.Series, suspects: pd.Series) -> pd.Series:
    """Where a value that is not a number has digits of another script ('１２３', '٣'):
    looked at in Python, on the few rows that failed the ASCII patterns only."""
    rows = suspects.to_numpy(dtype=bool, na_value=False)
    out = np.zeros(len(values), dtype=bool)
    if rows.any():
        out[rows] = [
            any(c.isdecimal() and not c.isascii() for c in v) for v in values[rows].astype(str)
        ]
    return pd.Series(out, index=values.index)


def _more_integer_digits(text: pd.Series, length: pd.Series, digits: int) -> pd.Series:
    """Canonical amounts with more than ``digits`` digits before the point (leading zeros
    do not count): decimal(18, 4) holds 14, and Arrow's cast would fail the whole chunk."""
    out = (length > digits).fillna(False).astype(bool)  # a cheap bound: few are that long
    if out.any():
        whole = text[out].str.split(".").str[0].str.lstrip("-").str.lstrip("0")
        out[out] = whole.str.len() > digits
    return out


def _beyond_int64(text: pd.Series) -> pd.Series:
    """Canonical integers outside a bigint (at most 19 digits can fit: only those are parsed)."""
    out = (text.str.len() > 18).fillna(False).astype(bool)
    if out.any():
        out[out] = [abs(int(v)) > _INT64_MAX for v in text[out]]
    return out


def _to_int64(text: pd.Series) -> pd.Series:
    """Canonical integer text (validated and in range, or missing) as Int64, cast by Arrow."""
    values = pc.cast(pa.array(text, type=pa.string(), from_pandas=True), pa.int64())
    # by position: the chunk's index need not start at 0 (a Series would be aligned by label)
    as_int = values.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get).array
    return pd.Series(as_int, index=text.index)


def _to_float(text: pd.Series) -> pd.Series:
    """Canonical number text (validated, or missing) as float64 for the range rules, cast by
    Arrow; the exact values stay in the text."""
    values = pc.cast(pa.array(text, type=pa.string(), from_pandas=True), pa.float64())
    return pd.Series(values.to_numpy(zero_copy_only=False), index=text.index)


def apply_rules(chunk: pd.DataFrame, contract: Contract, fmt: ValueFormat) -> Verdict:
    """Run every rule on every row of a chunk of raw text values."""
    chunk = _strings(chunk, list(contract.columns))
    parse_error = (
        chunk["parse_error"] if "parse_error" in chunk else pd.Series(None, index=chunk.index)
    )
    structural = parse_error.notna()
    n = len(chunk)
    reasons = parse_error.astype(object).where(structural, "").to_numpy(dtype=object, copy=True)
    lines = chunk["source_line"].to_numpy()
    hits: list[tuple[str, str, np.ndarray]] = []
    if structural.any():  # the reader names the structural rule of each line it could not read
        rules = chunk["parse_rule"] if "parse_rule" in chunk else pd.Series(None, index=chunk.index)
        rules = rules.where(structural).fillna("wrong_field_count").where(structural)
        for rule in rules.dropna().unique():
            mask = (rules == rule).to_numpy(dtype=bool, na_value=False)
            hits.append((contract.severity(rule), rule, mask))

    value_rows = ~structural.to_numpy(dtype=bool)
    failed, warned = [], []
    for rule, message, mask in _checks(chunk, contract, fmt, structural):
        mask = pd.Series(mask).to_numpy(dtype=bool, na_value=False) & value_rows
        if not mask.any():
            continue
        severity = contract.severity(rule)
        if severity == "warn":
            warned.append((rule, message, mask))
            continue
        hits.append((severity, rule, mask))
        failed.append((message, mask))
    _join(reasons, failed)
    kept = reasons == ""
    warnings = np.full(n, "", dtype=object)
    for rule, message, mask in warned:  # a warning counts on the rows that are kept
        if (mask & kept).any():
            hits.append(("warn", rule, mask & kept))
            _join(warnings, [(message, mask & kept)])
    return Verdict(
        chunk,
        pd.Series(reasons, index=chunk.index, dtype="string"),
        pd.Series(warnings, index=chunk.index, dtype="string"),
        hits,
        lines,
    )


def _join(messages: np.ndarray, failed: list[tuple[str, np.ndarray]]) -> None:
    """Append each rule's message, in rule order and '; '-joined, to the rows it failed:
    only those rows (few) are touched, once."""
    for message, mask in failed:
        for i in np.flatnonzero(mask):
            messages[i] = f"{messages[i]}; {message}" if messages[i] else message
