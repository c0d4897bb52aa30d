"""The sales-line contract (``params/contract.yaml``): canonical columns, header synonyms, types."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pyarrow as pa
import yaml

from medallion.settings import PARAMS_DIR

DECIMAL_PRECISION = 18


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # string | date | integer | decimal
    required: bool = False
    scale: int = 0
    synonyms: tuple[str, ...] = ()

    @property
    def arrow_type(self) -> pa.DataType:
        return {
            "string": pa.string(),
            "date": pa.date32(),
            "integer": pa.int64(),
        }.get(self.type) or pa.decimal128(DECIMAL_PRECISION, self.scale)


def normalize_header(text: str) -> str:
    """'Sub-Category' -> 'sub_category', 'Fecha Envío' -> 'fecha_envio'."""
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")


SEVERITIES = ("warn", "drop", "fail")
# Every rule a contract may set a severity for (a misspelt rule is an error, not a no-op).
VALUE_RULES = (
    "missing_required",
    "invalid_date",
    "ship_before_order",
    "not_a_number",
    "too_many_decimals",
    "quantity_not_integer",
    "quantity_not_positive",
    "sales_negative",
    "discount_out_of_range",
    "profit_above_sales",
    "control_character",  # NUL or another control character in a value
    "non_ascii_digits",  # a number written with digits other than 0-9 (e.g. full-width)
    "amount_out_of_range",  # more integer digits than the decimal column holds
    "integer_out_of_range",  # an integer beyond the column's type (bigint)
)
# Structural rules (a line that is not a record) are never "warn".
STRUCTURAL_RULES = ("wrong_field_count", "invalid_json", "nesting_too_deep", "line_too_long")
RULES = VALUE_RULES + STRUCTURAL_RULES


@dataclass(frozen=True)
class Parsing:
    encodings: tuple[str, ...] = ("utf-8", "cp1252", "latin-1")
    delimiters: tuple[str, ...] = (",", ";", "\t", "|")
    day_first: bool = True
    decimal_separator: str = "."


@dataclass(frozen=True)
class Limits:
    """Caps that keep memory bounded on hostile input (``limits:`` in the contract)."""

    max_file_mb: int = 4096  # decompressed size of one delivered file: larger fails the file
    max_line_kb: int = 1024  # one line (CSV) or record (JSON): larger is quarantined
    max_json_depth: int = 32  # nesting of a JSON record: deeper is quarantined


@dataclass(frozen=True)
class Contract:
    columns: dict[str, Column]
    rules: dict[str, str] = field(default_factory=dict)  # rule -> severity
    parsing: Parsing = field(default_factory=Parsing)
    max_reject_share: float = 0.25
    source_id: str | None = "row_id"
    limits: Limits = field(default_factory=Limits)

    def severity(self, rule: str) -> str:
        severity = self.rules.get(rule, "drop")
        return "drop" if rule in STRUCTURAL_RULES and severity == "warn" else severity

    @cached_property
    def synonyms(self) -> dict[str, str]:
        """Normalised header -> canonical column name."""
        out: dict[str, str] = {}
        for col in self.columns.values():
            for alias in (col.name, *col.synonyms):
                out[normalize_header(alias)] = col.name
        return out

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns.values() if c.required]

    def canonical(self, header: str) -> str | None:
        return self.synonyms.get(normalize_header(header))

    @cached_property
    def silver_schema(self) -> pa.Schema:
        fields = [pa.field(c.name, c.arrow_type) for c in self.columns.values()]
        return pa.schema(
            [
                pa.field("line_key", pa.string(), nullable=False),
                *fields,
                pa.field("extra_attributes", pa.string()),
                pa.field("dq_warnings", pa.string()),
                pa.field("source_object", pa.string(), nullable=False),
                pa.field("source_line", pa.int64(), nullable=False),
                pa.field("run_id", pa.string(), nullable=False),
            ]
        )

    @cached_property
    def quarantine_schema(self) -> pa.Schema:
        return pa.schema(
            [
                pa.field("run_id", pa.string()),
                pa.field("source_object", pa.string()),
                pa.field("source_line", pa.int64()),
                pa.field("reject_reason", pa.string()),
                pa.field("raw_record", pa.string()),
                *[pa.field(name, pa.string()) for name in self.columns],
            ]
        )


def load_contract(path: str | Path | None = None) -> Contract:
    path = Path(path) if path else PARAMS_DIR / "contract.yaml"
    spec = yaml.safe_load(path.read_text())
    columns = {
        name: Column(
            name=name,
            type=attrs.get("type", "string"),
            required=bool(attrs.get("required", False)),
            scale=int(attrs.get("scale", 0)),
            synonyms=tuple(attrs.get("synonyms", ())),
        )
        for name, attrs in spec["columns"].items()
    }
    rules = dict(spec.get("rules") or {})
    unknown = {r: s for r, s in rules.items() if s not in SEVERITIES}
    if unknown:
        raise ValueError(f"{path}: rule severities must be one of {SEVERITIES}: {unknown}")
    parsing = spec.get("parsing") or {}
    return Contract(
        columns=columns,
        rules=rules,
        parsing=Parsing(
            encodings=tuple(parsing.get("encodings", Parsing.encodings)),
            delimiters=tuple(parsing.get("delimiters", Parsing.delimiters)),
            day_first=bool(parsing.get("day_first", True)),
            decimal_separator=str(parsing.get("decimal_separator", ".")),
        ),
        max_reject_share=float(spec.get("max_reject_share", 0.25)),
        limits=Limits(**(spec.get("limits") or {})),
        source_id=(spec.get("line_key") or {}).get("source_id", "row_id"),
    )
