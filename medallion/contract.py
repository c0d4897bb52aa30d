"""The sales-line contract (``params/contract.yaml``): canonical columns, header synonyms, types."""

from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from medallion.settings import PARAMS_DIR

if TYPE_CHECKING:  # pyarrow is imported where a schema is built: the command line needs none
    import pyarrow as pa

DECIMAL_PRECISION = 18
COLUMN_TYPES = ("string", "date", "integer", "decimal")


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # one of COLUMN_TYPES
    required: bool = False
    scale: int = 0
    synonyms: tuple[str, ...] = ()

    @property
    def arrow_type(self) -> pa.DataType:
        import pyarrow as pa

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
    max_line_kb: int = 2048  # one line (CSV) or record (JSON): larger is quarantined
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
        import pyarrow as pa

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

    def dictionary_columns(self, schema: pa.Schema) -> list[str]:
        """The columns of ``schema`` worth a Parquet dictionary: all but those with a value of
        each line's own (its keys, line number, raw text) and the amounts. Measured on 1M
        lines: silver's encoding 1.18 s -> 0.95 s of CPU, 39 MB -> 30 MB; gold's fact 0.78 s ->
        0.57 s, 33 MB -> 23 MB (issue 12)."""
        own = {"line_key", "source_line", "raw_record", self.source_id}
        own |= {c.name for c in self.columns.values() if c.type == "decimal"}
        return [name for name in schema.names if name not in own]

    @cached_property
    def quarantine_schema(self) -> pa.Schema:
        import pyarrow as pa

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


# --------------------------------------------------------------------------- loading
# The file is validated whole by the models below; they are internal (the rest of the code uses
# the dataclasses above) and take their defaults from them. Strict, because YAML already gives
# native types (a quoted "yes" is not a bool, "25" is not a number); closed, because a misspelt
# key would otherwise be silently ignored.


class ContractError(ValueError):
    """The contract file is not valid: every problem, one per line, each with its YAML line."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _between(low: float, high: float) -> AfterValidator:
    def check(value: float) -> float:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return AfterValidator(check)


def _positive(value: int) -> int:
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _known_encoding(name: str) -> str:
    try:
        codecs.lookup(name)
    except LookupError:
        raise ValueError("not an encoding Python knows (codecs.lookup)") from None
    return name


def _one_character(delimiter: str) -> str:
    # Read as formats.detect_delimiter reads it: '\t' written as backslash + t is the tab.
    try:
        one = len(delimiter.encode().decode("unicode_escape")) == 1
    except UnicodeDecodeError:
        one = False
    if not one:
        raise ValueError(r"must be one ASCII character or an escape such as '\t'")
    return delimiter


def _not_empty(columns: dict) -> dict:
    if not columns:
        raise ValueError("must name at least one column")
    return columns


class _ColumnSpec(_Spec):
    type: Literal[COLUMN_TYPES] = "string"
    required: bool = False
    scale: Annotated[int, _between(0, DECIMAL_PRECISION - 1)] = 0
    synonyms: list[str] = []

    @field_validator("scale")
    @classmethod
    def _only_decimals_have_a_scale(cls, scale: int, info: ValidationInfo) -> int:
        kind = info.data.get("type", "decimal")  # no type here: it failed, and says so itself
        if kind != "decimal":
            raise ValueError(f"only a decimal column has a scale (this one is {kind})")
        return scale


class _ParsingSpec(_Spec):
    encodings: list[Annotated[str, AfterValidator(_known_encoding)]] = list(Parsing.encodings)
    delimiters: list[Annotated[str, AfterValidator(_one_character)]] = list(Parsing.delimiters)
    day_first: bool = Parsing.day_first
    decimal_separator: Literal[".", ","] = Parsing.decimal_separator


class _LineKeySpec(_Spec):
    source_id: str | None = Contract.source_id


class _LimitsSpec(_Spec):
    max_file_mb: Annotated[int, AfterValidator(_positive)] = Limits.max_file_mb
    max_line_kb: Annotated[int, AfterValidator(_positive)] = Limits.max_line_kb
    max_json_depth: Annotated[int, AfterValidator(_positive)] = Limits.max_json_depth


class _ContractSpec(_Spec):
    version: int | None = None
    parsing: _ParsingSpec = _ParsingSpec()
    line_key: _LineKeySpec = _LineKeySpec()
    max_reject_share: Annotated[float, _between(0, 1)] = Contract.max_reject_share
    rules: dict[Literal[RULES], Literal[SEVERITIES]] = {}
    limits: _LimitsSpec = _LimitsSpec()
    columns: Annotated[dict[str, _ColumnSpec], AfterValidator(_not_empty)]

    @field_validator("parsing", "line_key", "rules", "limits", mode="before")
    @classmethod
    def _empty_section_means_defaults(cls, value: object) -> object:
        return {} if value is None else value


def _cross_problems(spec: _ContractSpec) -> list[tuple[tuple, str]]:
    """What no single key can know: the line key is a column; no header names two columns."""
    problems = []
    source_id = spec.line_key.source_id
    if source_id is not None and source_id not in spec.columns:
        problems.append((("line_key", "source_id"), f"not a column of the contract: {source_id!r}"))
    owner: dict[str, str] = {}
    for name, col in spec.columns.items():
        for i, alias in enumerate((name, *col.synonyms)):
            first = owner.setdefault(normalize_header(alias), name)
            if first != name:
                loc = ("columns", name, *(("synonyms", i - 1) if i else ()))
                problems.append((loc, f"{alias!r} is already a header of column {first!r}"))
    return problems


def _duplicate_keys(node: yaml.Node | None, loc: tuple = ()):
    """(line, loc, message) for every key written twice (YAML would keep the last silently)."""
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*loc, i))
    elif isinstance(node, yaml.MappingNode):
        first: dict = {}
        for key, value in node.value:
            earlier = first.setdefault(key.value, key) if isinstance(key, yaml.ScalarNode) else key
            if earlier is not key:
                line = earlier.start_mark.line + 1
                yield key.start_mark.line + 1, (*loc, key.value), f"repeats the key of line {line}"
            yield from _duplicate_keys(value, (*loc, key.value))


def _line(root: yaml.Node | None, loc: tuple) -> int | None:
    """The line of the deepest key (or list item) of ``loc`` found in the YAML node tree."""
    node, line = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = [(k, v) for k, v in node.value if k.value == str(part)]
            if not found:
                break
            key, node = found[-1]  # of a repeated key, YAML keeps the last
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and part in range(len(node.value)):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _known_keys(loc: tuple) -> list[str]:
    model = _ContractSpec
    for part in loc[:-1]:  # down to the model that has the unknown key
        model = (
            get_args(model)[1] if get_origin(model) is dict else model.model_fields[part].annotation
        )
    return list(model.model_fields)


def _message(error: dict) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown key (known: {', '.join(_known_keys(error['loc']))})"
    if kind == "missing":
        return "missing (it is required)"
    if kind == "value_error":
        text = str(error["ctx"]["error"])
    else:
        text = error["msg"].replace("Input should be", "must be")
        text = re.sub(r"a valid dictionary( or instance of \w+)?", "a mapping", text)
        if "[key]" in error["loc"]:  # e.g. a rule that does not exist
            text = f"unknown key; {text}"
    got = repr(error["input"])
    return f"{text}, got {got if len(got) <= 60 else got[:57] + '...'}"


def _format(shown: str, line: int | None, loc: tuple, message: str) -> str:
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return f"{shown}{f', line {line}' if line else ''}{f' ({key})' if key else ''}: {message}"


def _contract(spec: _ContractSpec) -> Contract:
    return Contract(
        columns={
            name: Column(name, c.type, c.required, c.scale, tuple(c.synonyms))
            for name, c in spec.columns.items()
        },
        rules=dict(spec.rules),
        parsing=Parsing(
            encodings=tuple(spec.parsing.encodings),
            delimiters=tuple(spec.parsing.delimiters),
            day_first=spec.parsing.day_first,
            decimal_separator=spec.parsing.decimal_separator,
        ),
        max_reject_share=float(spec.max_reject_share),
        source_id=spec.line_key.source_id,
        limits=Limits(**spec.limits.model_dump()),
    )


def load_contract(path: str | Path | None = None) -> Contract:
    """The contract at ``path`` (default ``params/contract.yaml``), validated whole. A bad file
    raises ContractError naming every problem, one per line: file, YAML line, key path, what."""
    path = Path(path) if path else PARAMS_DIR / "contract.yaml"
    try:
        shown = str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        shown = str(path)
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        what = getattr(exc, "problem", None) or exc
        raise ContractError(_format(shown, line, (), f"not valid YAML: {what}")) from None
    problems = list(_duplicate_keys(root))
    try:
        spec = _ContractSpec.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            loc = tuple(p for p in error["loc"] if p != "[key]")  # a bad key: at the key
            problems.append((_line(root, loc), loc, _message(error)))
    else:
        problems += [(_line(root, loc), loc, msg) for loc, msg in _cross_problems(spec)]
    if problems:
        problems.sort(key=lambda p: p[0] or 0)
        raise ContractError("\n".join(_format(shown, *p) for p in problems))
    return _contract(spec)
