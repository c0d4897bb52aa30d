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
    """The outcome of the rules on one chunk."""

    chunk: pd.DataFrame  # typed values (dates, canonical decimal text, Int64 quantities)
    reasons: pd.Series  # '; '-joined messages of drop/fail rules ('' = row passes)
    warnings: pd.Series  # '; '-joined messages of warn rules
    counts: dict[str, Counter] = field(default_factory=dict)  # severity -> rule -> rows
    first_line: dict[str, int] = field(default_factory=dict)  # rule -> first source line


def _strings(chunk: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    for col in columns:
        values = chunk[col] if col in chunk else pd.Series(None, index=chunk.index)
        s = values.astype("string").str.strip()
        chunk[col] = s.mask(s == "")
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
    reasons = parse_error.astype("string").fillna("")
    warnings = pd.Series("", index=chunk.index, dtype="string")
    verdict = Verdict(chunk, reasons, warnings, {s: Counter() for s in ("warn", "drop", "fail")})
    if structural.any():  # the reader names the structural rule of each line it could not read
        rules = chunk["parse_rule"] if "parse_rule" in chunk else pd.Series(None, index=chunk.index)
        rules = rules.where(structural).fillna("wrong_field_count").where(structural)
        for rule in rules.dropna().unique():
            _count(verdict, contract.severity(rule), rule, rules == rule, chunk)

    warned = []
    for rule, message, mask in _checks(chunk, contract, fmt, structural):
        mask = mask.fillna(False).astype(bool) & ~structural
        if not mask.any():
            continue
        severity = contract.severity(rule)
        if severity == "warn":
            warned.append((rule, message, mask))
            continue
        _count(verdict, severity, rule, mask, chunk)
        verdict.reasons = _append(verdict.reasons, mask, message)
    kept = verdict.reasons == ""
    for rule, message, mask in warned:  # a warning counts on the rows that are kept
        if (mask & kept).any():
            _count(verdict, "warn", rule, mask & kept, chunk)
            verdict.warnings = _append(verdict.warnings, mask & kept, message)
    return verdict


def _append(messages: pd.Series, mask: pd.Series, message: str) -> pd.Series:
    current = messages[mask]  # only the rows that fail the rule (few) are touched
    messages = messages.copy()
    messages[mask] = (current + "; " + message).mask(current == "", message)
    return messages


def _count(verdict: Verdict, severity: str, rule: str, mask: pd.Series, chunk: pd.DataFrame):
    verdict.counts[severity][rule] += int(mask.sum())
    first = int(chunk.loc[mask, "source_line"].min())
    verdict.first_line[rule] = min(first, verdict.first_line.get(rule, first))
