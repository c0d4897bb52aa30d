"""A file's values as it writes them: its value format (decimal separator and date format,
detected once per file from its first chunk of records) and the parsers that turn its amounts
and dates into canonical text and dates.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from medallion.contract import Contract
from medallion.formats import SourceFormat


@dataclass(frozen=True)
class ValueFormat:
    """How a file writes numbers and dates (detected once per file)."""

    decimal_separator: str = "."
    date_format: str = "iso"


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
    """``dates`` of pandas values, as datetime64 (unparseable -> NaT)."""
    days = dates(arrow_text(values), date_format).cast(pa.timestamp("us"))
    out = days.to_numpy(zero_copy_only=False)
    return pd.Series(out, index=values.index, dtype="datetime64[us]")


# Arrow reads a plain ISO day of these years by itself; other values take the slower path
_FIRST_DAY = pa.scalar(datetime.date(1900, 1, 1), pa.date32())
_LAST_DAY = pa.scalar(datetime.date(2199, 12, 31), pa.date32())
_DATE_SLICE = 8192  # Arrow's strict date cast fails a whole slice on one odd value
_NO_DATE = pa.scalar(None, pa.date32())


def dates(text: pa.Array, date_format: str) -> pa.Array:
    """Dates in the file's format (date32; unparseable -> missing); ISO 8601 is always
    accepted. A plain ISO day ('yyyy-mm-dd', a real day of 1900-2199) is read by Arrow alone;
    the other values (other forms, impossible days, far years) by pandas, on their rows only."""
    parts = [_iso_days(text.slice(i, _DATE_SLICE)) for i in range(0, len(text), _DATE_SLICE)]
    days = pa.concat_arrays(parts) if parts else pa.array([], pa.date32())
    plain = pc.and_(pc.greater_equal(days, _FIRST_DAY), pc.less_equal(days, _LAST_DAY))
    plain = pc.fill_null(plain, False)
    days = pc.if_else(plain, days, _NO_DATE)
    odd = pc.fill_null(pc.and_(pc.is_valid(text), pc.invert(plain)), False)
    if pc.any(odd).as_py():
        parsed = _other_dates(text_series(text.filter(odd)), date_format)
        parsed = pa.array(parsed.to_numpy(), from_pandas=True).cast(pa.date32())
        days = pc.replace_with_mask(days, odd, parsed)
    return days


def _iso_days(text: pa.Array) -> pa.Array:
    """date32 of the values that are exactly 'yyyy-mm-dd' with a real day, else missing."""
    try:  # Arrow's date32 cast: length 10, digits, '-' at 4 and 7, a real day; else it raises
        return text.cast(pa.date32())
    except pa.ArrowInvalid:
        pass
    # lenient strptime (2024-02-30 -> 2024-03-01, 2024-1-5 -> 2024-01-05), then kept only where
    # formatting the date gives back the text: exactly the canonical, real dates
    days = pc.cast(pc.strptime(text, "%Y-%m-%d", "s", error_is_null=True), pa.date32(), safe=False)
    same = pc.fill_null(pc.equal(pc.cast(days, text.type), text), False)
    return pc.if_else(same, days, _NO_DATE)


def _other_dates(values: pd.Series, date_format: str) -> pd.Series:
    """The values that are not plain ISO days, by pandas: ISO 8601 with a time or a zone, and
    day/month/year in the file's order. Unparseable -> NaT."""
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us]")
    v = values.str.strip()
    iso = v.str.fullmatch(_ISO.pattern).fillna(False)
    if iso.any():
        out[iso[iso].index] = pd.to_datetime(
            v[iso].str.slice(0, 10), format="%Y-%m-%d", errors="coerce"
        )
    parts = v[~iso].str.extract(_SLASHED)
    ok = parts[0].notna()
    if ok.any():
        p = parts[ok]
        day, month = (p[0], p[1]) if date_format == "dd/mm/yyyy" else (p[1], p[0])
        text = p[2] + "-" + month.str.zfill(2) + "-" + day.str.zfill(2)
        out[p.index] = pd.to_datetime(text, format="%Y-%m-%d", errors="coerce")
    return out


def arrow_text(values: pd.Series) -> pa.Array:
    """A column's values as Arrow text (large_string, as pandas' Arrow strings hold)."""
    text = pa.array(values.astype("string"), from_pandas=True)
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    return text.cast(pa.large_string())


def text_series(text: pa.Array) -> pd.Series:
    """Arrow text as a pandas string Series, without a copy."""
    return pd.Series(pd.arrays.ArrowStringArray(text), dtype="string")


def detect_value_format(chunk: pd.DataFrame, contract: Contract, fmt: SourceFormat) -> ValueFormat:
    """Decimal separator and date format of a file, from its first chunk."""

    def values_of(kind: str, *more: str) -> pd.Series:
        names = [c.name for c in contract.columns.values() if c.type == kind] + list(more)
        parts = [chunk[c].astype("string").str.strip() for c in names if c in chunk]
        return pd.concat(parts, ignore_index=True) if parts else pd.Series([], dtype="string")

    decimal, thousands, note = detect_decimal(
        values_of("decimal", "quantity"), contract.parsing.decimal_separator
    )
    date_format, date_note = detect_date_format(values_of("date"), contract.parsing.day_first)
    fmt.decimal_separator, fmt.thousands_separator, fmt.date_format = (
        decimal,
        thousands,
        date_format,
    )
    fmt.notes += [n for n in (note, date_note) if n]
    return ValueFormat(decimal_separator=decimal, date_format=date_format)
