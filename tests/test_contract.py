import pyarrow as pa
import pytest

from medallion.contract import (
    ContractError,
    Limits,
    Parsing,
    load_contract,
    normalize_header,
)
from medallion.settings import PARAMS_DIR

pytestmark = pytest.mark.pure  # no service: runs without starting any

COMMITTED = (PARAMS_DIR / "contract.yaml").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def contract():
    return load_contract()


@pytest.mark.parametrize(
    ("header", "canonical"),
    [
        ("Order ID", "order_id"),
        ("order-date", "order_date"),
        ("Sub-Category", "sub_category"),
        ("ID Pedido", "order_id"),
        ("Fecha Pedido", "order_date"),
        ("Fecha Envío", "ship_date"),
        ("Cliente", "customer_name"),
        ("Cantidad", "quantity"),
        ("Ventas", "sales"),
        ("CÓDIGO POSTAL", "postal_code"),
        ("customer_id", "customer_id"),
    ],
)
def test_header_synonyms(contract, header, canonical):
    assert contract.canonical(header) == canonical


def test_unknown_header_is_not_mapped(contract):
    assert contract.canonical("Vendedor") is None


def test_normalize_header_strips_accents_and_punctuation():
    assert normalize_header("  Sub-Categoría ") == "sub_categoria"


def test_silver_schema_types(contract):
    schema = contract.silver_schema
    assert schema.field("sales").type == pa.decimal128(18, 4)
    assert schema.field("postal_code").type == pa.string()
    assert schema.field("order_date").type == pa.date32()
    assert schema.field("quantity").type == pa.int64()


def test_required_columns(contract):
    assert set(contract.required) == {
        "order_id",
        "order_date",
        "customer_id",
        "product_id",
        "quantity",
        "sales",
    }


def test_committed_contract_is_read_as_written(contract):
    assert contract.parsing == Parsing()  # the committed values are the defaults
    assert contract.limits == Limits()
    assert contract.max_reject_share == 0.25
    assert contract.source_id == "row_id"
    assert contract.rules["profit_above_sales"] == "warn"
    assert contract.columns["sales"].scale == 4
    assert contract.columns["quantity"].type == "integer"


# --------------------------------------------------------------------------- validation


def variant(tmp_path, old: str, new: str) -> tuple:
    """The committed contract with ``old`` replaced by ``new``; the line where ``new`` starts."""
    assert COMMITTED.count(old) == 1, f"the committed contract changed: {old!r}"
    text = COMMITTED.replace(old, new)
    path = tmp_path / "contract.yaml"
    path.write_text(text, encoding="utf-8")
    return path, text[: text.index(new)].count("\n") + 1


def problems(path) -> list[str]:
    with pytest.raises(ContractError) as err:
        load_contract(path)
    return str(err.value).splitlines()


def test_the_error_names_file_line_key_and_value(tmp_path):
    path, line = variant(tmp_path, "max_reject_share: 0.25", "max_reject_share: 25")
    [problem] = problems(path)
    assert problem.endswith(
        f"contract.yaml, line {line} (max_reject_share): must be between 0 and 1, got 25"
    )
    assert issubclass(ContractError, ValueError)


@pytest.mark.parametrize(
    ("old", "new", "key", "what"),
    [
        # unknown keys, at every level
        ("max_reject_share: 0.25", "max_reject_shar: 0.25", "max_reject_shar", "unknown key"),
        ("  day_first: true", "  dayfirst: true", "parsing.dayfirst", "unknown key"),
        ("  source_id: row_id", "  source: row_id", "line_key.source", "unknown key"),
        ("  max_line_kb: 2048", "  max_line_mb: 1", "limits.max_line_mb", "unknown key"),
        (
            "quantity:      {type: integer, required: true,",
            "quantity:      {type: integer, requird: true,",
            "columns.quantity.requird",
            "unknown key (known: type, required, scale, synonyms)",
        ),
        # columns
        (
            "postal_code:   {type: string,",
            "postal_code:   {type: float,",
            "columns.postal_code.type",
            "must be 'string', 'date', 'integer' or 'decimal', got 'float'",
        ),
        (
            "row_id:        {type: string,",
            "row_id:        {type: string, scale: 2,",
            "columns.row_id.scale",
            "only a decimal column has a scale",
        ),
        (
            "sales:         {type: decimal, scale: 4,",
            "sales:         {type: decimal, scale: 18,",
            "columns.sales.scale",
            "must be between 0 and 17, got 18",
        ),
        (
            "sales:         {type: decimal, scale: 4,",
            "sales:         {type: decimal, scale: -1,",
            "columns.sales.scale",
            "must be between 0 and 17, got -1",
        ),
        (
            "order_id:      {type: string,  required: true,",
            'order_id:      {type: string,  required: "true",',
            "columns.order_id.required",
            "must be a valid boolean",
        ),
        (
            "segment:       {type: string,  synonyms: [segmento]}",
            "segment:       {type: string,  synonyms: segmento}",
            "columns.segment.synonyms",
            "must be a valid list",
        ),
        (
            "segment:       {type: string,  synonyms: [segmento]}",
            "segment:       {type: string,  synonyms: [segmento, 7]}",
            "columns.segment.synonyms[1]",
            "must be a valid string, got 7",
        ),
        (
            "segment:       {type: string,  synonyms: [segmento]}",
            "segment:       {type: string,  synonyms: [segmento, cliente]}",
            "columns.segment.synonyms[1]",
            "'cliente' is already a header of column 'customer_name'",
        ),
        # rules
        ("  sales_negative: drop", "  sales_negativ: drop", "rules.sales_negativ", "unknown key"),
        (
            "  sales_negative: drop",
            "  sales_negative: ignore",
            "rules.sales_negative",
            "must be 'warn', 'drop' or 'fail', got 'ignore'",
        ),
        # shares and limits
        ("max_reject_share: 0.25", "max_reject_share: -0.1", "max_reject_share", "between 0 and 1"),
        ("max_reject_share: 0.25", 'max_reject_share: "0.25"', "max_reject_share", "number"),
        (
            "  max_file_mb: 4096",
            "  max_file_mb: 0",
            "limits.max_file_mb",
            "must be a positive integer, got 0",
        ),
        (
            "  max_line_kb: 2048",
            "  max_line_kb: 1.5",
            "limits.max_line_kb",
            "must be a valid integer, got 1.5",
        ),
        (
            "  max_json_depth: 32",
            "  max_json_depth: true",
            "limits.max_json_depth",
            "must be a valid integer, got True",
        ),
        # parsing and the line key
        (
            'decimal_separator: "."',
            'decimal_separator: ";"',
            "parsing.decimal_separator",
            "must be '.' or ','",
        ),
        (
            "encodings: [utf-8, cp1252, latin-1]",
            "encodings: [utf-8, cp1252, latin-9x]",
            "parsing.encodings[2]",
            "not an encoding Python knows",
        ),
        (
            'delimiters: [",", ";", "\\t", "|"]',
            'delimiters: [",", ";;", "\\t", "|"]',
            "parsing.delimiters[1]",
            "must be one ASCII character",
        ),
        (
            'delimiters: [",", ";", "\\t", "|"]',
            'delimiters: [",", ";", "\\t", "\\\\"]',
            "parsing.delimiters[3]",
            "must be one ASCII character",
        ),
        ("  source_id: row_id", "  source_id: rowid", "line_key.source_id", "not a column"),
    ],
)
def test_a_bad_contract_names_line_and_key(tmp_path, old, new, key, what):
    path, line = variant(tmp_path, old, new)
    found = problems(path)
    assert len(found) == 1, found
    assert f"contract.yaml, line {line} ({key}): " in found[0]
    assert what in found[0]


def test_a_repeated_key_is_an_error(tmp_path):
    path, line = variant(
        tmp_path, "max_reject_share: 0.25", "max_reject_share: 0.25\nmax_reject_share: 1"
    )
    [problem] = problems(path)
    assert f"line {line + 1} (max_reject_share): repeats the key of line {line}" in problem


def test_every_problem_is_reported_at_once(tmp_path):
    text = (
        COMMITTED.replace("max_reject_share: 0.25", "max_reject_share: 25")
        .replace("  sales_negative: drop", "  sales_negative: ignore")
        .replace("postal_code:   {type: string,", "postal_code:   {type: float,")
    )
    path = tmp_path / "contract.yaml"
    path.write_text(text, encoding="utf-8")
    lines = text.splitlines()
    found = problems(path)
    expected = [
        (lines.index("max_reject_share: 25") + 1, "max_reject_share"),
        (lines.index("  sales_negative: ignore") + 1, "rules.sales_negative"),
        (
            next(i for i, s in enumerate(lines) if "type: float" in s) + 1,
            "columns.postal_code.type",
        ),
    ]
    assert len(found) == len(expected), found
    for problem, (line, key) in zip(found, expected, strict=True):  # in the file's order
        assert f"contract.yaml, line {line} ({key}): " in problem


def test_invalid_yaml_is_a_contract_error(tmp_path):
    path = tmp_path / "contract.yaml"
    path.write_text("columns:\n  order_id: {type: string\n", encoding="utf-8")
    [problem] = problems(path)
    assert "contract.yaml, line 3: not valid YAML" in problem


def test_a_minimal_contract_takes_the_defaults(tmp_path):
    path = tmp_path / "contract.yaml"
    path.write_text(
        "parsing:\n"  # an empty section: its defaults
        "rules:\n"
        "line_key: {source_id: null}\n"
        "max_reject_share: 1\n"
        "limits: {max_json_depth: 8}\n"
        "columns:\n"
        "  amount: {type: decimal, scale: 2}\n",
        encoding="utf-8",
    )
    contract = load_contract(path)
    assert contract.parsing == Parsing()
    assert contract.rules == {}
    assert contract.source_id is None
    assert contract.max_reject_share == 1.0
    assert contract.limits == Limits(max_json_depth=8)
    assert contract.silver_schema.field("amount").type == pa.decimal128(18, 2)


def test_a_delimiter_may_be_written_as_an_escape(tmp_path):
    path, _ = variant(tmp_path, 'delimiters: [",", ";", "\\t", "|"]', "delimiters: ['\\t', ';']")
    assert load_contract(path).parsing.delimiters == ("\\t", ";")
