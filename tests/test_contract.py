import pyarrow as pa
import pytest

from medallion.contract import load_contract, normalize_header


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
