"""A file's values as it writes them: its value format (decimal separator and date format,
detected once per file from its first chunk of records) and the parsers that turn its amounts
and dates into canonical text and dates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
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
    """Dates in the file's format; ISO 8601 is always accepted. Unparseable -> NaT."""
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us]")
    days, plain = _plain_iso_days(values)
    if plain.all():
        out[:] = days.astype("datetime64[D]").astype("datetime64[us]")
        return out
    if plain.any():
        out[plain] = days[plain].astype("datetime64[D]").astype("datetime64[us]")
    v = values[~plain].str.strip()
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


def _plain_iso_days(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The common case computed by Arrow and numpy: 'yyyy-mm-dd' with a real day of a year
    from 1900 to 2199, as days since 1970, and where a value is such a date. The others
    (other forms, impossible days, far years) take pandas' slower path."""
    text = pa.chunked_array(
        pa.array(values.astype("string"), type=pa.string(), from_pandas=True)
    ).combine_chunks()
    shape = pc.match_substring_regex(text, r"^(19|2[01])[0-9]{2}-[0-9]{2}-[0-9]{2}$")
    shape = shape.fill_null(False)
    plain = shape.to_numpy(zero_copy_only=False)
    text = pc.if_else(shape, text, pa.scalar("1970-01-01"))
    y, m, d = (
        pc.cast(pc.utf8_slice_codeunits(text, a, b), pa.int64()).to_numpy()
        for a, b in ((0, 4), (5, 7), (8, 10))
    )
    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    month_days = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
    valid = (m >= 1) & (m <= 12) & (d >= 1)
    valid &= d <= month_days[np.clip(m, 0, 12)] + ((m == 2) & leap)
    # days from the civil date (Howard Hinnant's algorithm), exact for these years
    yy = y - (m <= 2)
    era = yy // 400
    yoe = yy - era * 400
    doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468, plain & valid


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
