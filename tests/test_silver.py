"""Bronze -> silver rules on small files, and one file through the real S3 server."""

import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from medallion import bronze, silver, storage
from medallion.contract import load_contract

HEADER = (
    "Row ID,Order ID,Order Date,Ship Date,Customer ID,Customer Name,Postal Code,"
    "Product ID,Sales,Quantity,Discount,Profit"
)
GOOD = "1,ES-1,2024-03-01,2024-03-04,CL-1,Ana Díaz,08001,P-1,957.5775,3,0.2,-383.031"


@pytest.fixture(scope="module")
def contract():
    """The committed contract, without the reject threshold (these files are tiny)."""
    return replace(load_contract(), max_reject_share=1.0)


def clean(tmp_path: Path, name: str, text: str | bytes, contract):
    """Run the silver step on a local file; returns (format, silver rows, quarantined rows)."""
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    report, good, bad = silver.clean_local(path, contract, run_id="t", batch_size=2)
    return report.format, good.to_pylist(), bad.to_pylist()


def test_valid_line_is_typed_exactly(tmp_path, contract):
    _, good, bad = clean(tmp_path, "a.csv", f"{HEADER}\n{GOOD}\n", contract)
    assert bad == []
    (row,) = good
    assert row["sales"] == Decimal("957.5775")
    assert row["profit"] == Decimal("-383.031")
    assert row["postal_code"] == "08001"
    assert row["quantity"] == 3
    assert row["line_key"] == "1"
    assert str(row["order_date"]) == "2024-03-01"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("Order ID", "", "missing order_id"),
        ("Order Date", "", "missing order_date"),
        ("Customer ID", " ", "missing customer_id"),
        ("Product ID", "", "missing product_id"),
        ("Quantity", "", "missing quantity"),
        ("Sales", "", "missing sales"),
        ("Order Date", "2024-02-30", "invalid date in order_date"),
        ("Ship Date", "2024-02-01", "ship_date before order_date"),
        ("Quantity", "0", "quantity is not > 0"),
        ("Quantity", "2.5", "quantity is not an integer"),
        ("Sales", "-1.5", "sales is negative"),
        ("Sales", "1.23456", "sales has more than 4 decimal places"),
        ("Sales", "12a", "sales is not a number"),
        ("Discount", "1.5", "discount outside [0, 1]"),
    ],
)
def test_each_rule_quarantines_with_its_reason(tmp_path, contract, field, value, reason):
    headers = HEADER.split(",")
    values = GOOD.split(",")
    values[0], values[headers.index(field)] = "2", value
    _, good, bad = clean(tmp_path, "r.csv", f"{HEADER}\n{GOOD}\n{','.join(values)}\n", contract)
    assert len(good) == 1 and len(bad) == 1
    assert bad[0]["reject_reason"] == reason
    assert bad[0]["source_line"] == 3


def test_every_failed_rule_is_reported(tmp_path, contract):
    values = GOOD.split(",")
    values[1], values[8] = "", "-3"  # no order id, negative sales
    _, _, bad = clean(tmp_path, "m.csv", f"{HEADER}\n{','.join(values)}\n", contract)
    assert bad[0]["reject_reason"] == "missing order_id; sales is negative"


def test_quarantined_line_shows_its_values_as_silver_types_them(tmp_path, contract):
    """A rejected line's columns are its typed values as text (the raw line is kept beside
    them); a value that could not be typed is missing."""
    values = GOOD.split(",")
    values[0], values[3], values[8], values[9] = "2", "2024-02-30", "+1234.50", " 07 "
    _, _, bad = clean(tmp_path, "t.csv", f"{HEADER}\n{','.join(values)}\n", contract)
    (row,) = bad
    assert row["reject_reason"] == "invalid date in ship_date"
    assert (row["order_date"], row["ship_date"]) == ("2024-03-01", None)
    assert (row["sales"], row["quantity"], row["discount"]) == ("1234.50", "7", "0.2")
    assert row["raw_record"] == ",".join(values)


def test_wrong_field_count_keeps_raw_text(tmp_path, contract):
    too_many, too_few = GOOD + ",extra", ",".join(GOOD.split(",")[:-2])
    _, good, bad = clean(
        tmp_path,
        "w.csv",
        f"{HEADER}\n{too_many}\n{too_few}\n{GOOD.replace('1,', '2,', 1)}\n",
        contract,
    )
    assert len(good) == 1
    assert [b["raw_record"] for b in bad] == [too_many, too_few]
    assert bad[0]["reject_reason"] == "wrong number of fields: expected 12, found 13"
    assert [b["source_line"] for b in bad] == [2, 3]


def test_quoted_multiline_field_counts_from_its_first_line(tmp_path, contract):
    multiline = GOOD.replace("Ana Díaz", '"Ana\nDíaz"')
    second = "2" + GOOD[1:]
    _, good, bad = clean(tmp_path, "q.csv", f"{HEADER}\n{multiline}\n{second}\n", contract)
    assert bad == []
    assert [g["source_line"] for g in good] == [2, 4]
    assert good[0]["customer_name"] == "Ana\nDíaz"


def test_exact_duplicate_lines_are_dropped_and_counted(tmp_path, contract):
    path = tmp_path / "d.csv"
    path.write_text(f"{HEADER}\n{GOOD}\n{GOOD}\n{GOOD}\n")
    report, good, bad = silver.clean_local(path, contract, batch_size=2)
    assert (report.lines_in, report.rows_out, report.quarantined, report.duplicates) == (3, 1, 0, 2)


def test_same_key_different_content_is_a_conflict_and_both_go_on(tmp_path, contract):
    path = tmp_path / "c.csv"
    path.write_text(f"{HEADER}\n{GOOD}\n{GOOD.replace(',3,', ',4,')}\n")
    report, good, _ = silver.clean_local(path, contract)
    assert report.conflicts == 1
    assert good.column("quantity").to_pylist() == [3, 4]  # the later line wins at the merge


def test_line_key_without_row_id_is_order_and_position(tmp_path, contract):
    header = HEADER.replace("Row ID,", "")
    line = GOOD.split(",", 1)[1]
    second = line.replace(",3,", ",5,")  # the same product twice in one order: two lines
    _, good, _ = clean(tmp_path, "k.csv", f"{header}\n{line}\n{second}\n", contract)
    assert [g["line_key"] for g in good] == ["ES-1-1", "ES-1-2"]


def test_semicolon_file_and_extra_columns_are_kept(tmp_path, contract):
    text = f"{HEADER};Vendedor\n".replace(",", ";") + GOOD.replace(",", ";") + ";Luis\n"
    fmt, good, _ = clean(tmp_path, "s.csv", text, contract)
    assert fmt.delimiter == ";"
    assert fmt.extra_columns == ["Vendedor"]
    assert good[0]["extra_attributes"] == '{"Vendedor": "Luis"}'


def test_missing_required_column_fails_clearly(tmp_path, contract):
    with pytest.raises(silver.InputFileError, match=r"required column\(s\) \['sales'\]"):
        clean(tmp_path, "n.csv", HEADER.replace("Sales,", "") + "\n", contract)


def test_empty_file_fails_clearly(tmp_path, contract):
    with pytest.raises(silver.InputFileError, match="empty"):
        clean(tmp_path, "e.csv", "", contract)


def test_json_array_and_lines_give_the_same_rows(tmp_path, contract):
    record = (
        '{"ID Fila": 7, "ID Pedido": "MX-9", "Fecha Pedido": "2024-05-01", '
        '"cliente": {"id": "CL-9", "nombre": "Raúl"}, "ID Cliente": "CL-9", '
        '"ID Producto": "P-9", "Ventas": 957.5775, "Cantidad": 2, "Descuento": 0.15}'
    )
    _, as_array, _ = clean(tmp_path, "a.json", f"[{record}]", contract)
    _, as_lines, _ = clean(
        tmp_path, "a.jsonl", f"{record}\n\n{record.replace(': 7', ': 8')}\n", contract
    )
    assert as_array[0]["sales"] == as_lines[0]["sales"] == Decimal("957.5775")
    assert {k: v for k, v in as_array[0].items() if k not in {"source_object"}} == {
        k: v for k, v in as_lines[0].items() if k not in {"source_object"}
    }
    assert len(as_lines) == 2
    assert "cliente_nombre" in as_array[0]["extra_attributes"]


def test_invalid_json_line_is_quarantined(tmp_path, contract):
    record = (
        '{"ID Pedido": "MX-9", "Fecha Pedido": "2024-05-01", "ID Cliente": "C", '
        '"ID Producto": "P", "Ventas": 1, "Cantidad": 1}'
    )
    _, good, bad = clean(tmp_path, "b.jsonl", f"{record}\n{{oops\n", contract)
    assert len(good) == 1
    assert bad[0]["reject_reason"].startswith("invalid JSON")
    assert bad[0]["raw_record"] == "{oops"


def test_warn_rule_keeps_the_row_and_flags_it(tmp_path, contract):
    line = GOOD.replace("957.5775", "10").replace("-383.031", "12")  # profit above sales
    _, good, bad = clean(tmp_path, "w.csv", f"{HEADER}\n{line}\n", contract)
    assert bad == []
    assert good[0]["dq_warnings"] == "profit above sales"


def test_too_many_rejects_fail_the_file_with_counts(tmp_path):
    bad = GOOD.replace("CL-1", "")
    lines = [GOOD] + [bad.replace("1,ES-1", f"{i},ES-{i}", 1) for i in range(2, 5)]
    path = tmp_path / "many.csv"
    path.write_text(HEADER + "\n" + "\n".join(lines) + "\n")
    with pytest.raises(
        silver.FileRejected,
        match=r"3 of 4 lines \(75%\).*max_reject_share of 25%"
        r".*missing_required: 3 lines \(first at line 3\)",
    ):
        silver.clean_local(path, load_contract())


def test_a_fail_rule_stops_the_file_naming_rule_and_line(tmp_path):
    strict = replace(load_contract(), rules={**load_contract().rules, "sales_negative": "fail"})
    path = tmp_path / "neg.csv"
    path.write_text(
        f"{HEADER}\n{GOOD}\n{GOOD.replace('1,ES-1', '2,ES-2', 1).replace('957.5775', '-1')}\n"
    )
    with pytest.raises(
        silver.FileRejected,
        match=r"rule 'sales_negative' .*failed on 1 of 2 "
        r"lines, first at line 3",
    ):
        silver.clean_local(path, strict)


def test_clean_file_through_s3_conserves_every_line(tmp_path, contract, s3, params):
    rows = [GOOD] + [GOOD.replace("1,ES-1", f"{i},ES-{i}", 1) for i in range(2, 6)]
    rows[2] = rows[2].replace("CL-1", "")
    path = tmp_path / "ventas.csv"
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    delivery = bronze.ingest_file(s3, params["bronze_bucket"], path)
    report = silver.clean_file(
        s3,
        params["bronze_bucket"],
        delivery.key,
        params["silver_bucket"],
        "test-run",
        contract,
        batch_size=2,
    )
    assert (report.lines_in, report.rows_out, report.quarantined) == (5, 4, 1)
    silver_rows = storage.read_parquet(s3, params["silver_bucket"], report.silver_key)
    quarantine = storage.read_parquet(s3, params["silver_bucket"], report.quarantine_key)
    assert silver_rows.num_rows == 4
    assert quarantine.column("reject_reason").to_pylist() == ["missing customer_id"]
    assert quarantine.column("source_line").to_pylist() == [4]


def settled_file(path: Path, text: str) -> Path:
    """``text`` written to ``path``, once its change time is old enough for bronze to vouch
    for the file (bronze.settled)."""
    path.write_text(text)
    while not bronze.settled(bronze.file_identity(path), time.time_ns()):
        time.sleep(0.01)
    return path


DELIVERED = HEADER + "\n" + "\n".join(GOOD.replace("1,ES-1", f"{i},ES-{i}", 1) for i in (1, 2, 3))
CHANGED = DELIVERED.replace("957.5775", "957.5776")  # the same size: only the times tell


def silver_sales(s3, params, report) -> list[Decimal]:
    rows = storage.read_parquet(s3, params["silver_bucket"], report.silver_key)
    return rows.column("sales").to_pylist()


def test_clean_file_reads_the_delivered_file_while_it_is_unchanged(tmp_path, contract, s3, params):
    path = settled_file(tmp_path / "ventas.csv", DELIVERED + "\n")
    delivery = bronze.ingest_file(s3, params["bronze_bucket"], path)
    assert delivery.local == bronze.file_identity(path)
    args = (s3, params["bronze_bucket"], delivery.key, params["silver_bucket"])
    in_place = silver.clean_file(*args, "t-in-place", contract, local=delivery.local)
    downloaded = silver.clean_file(*args, "t-downloaded", contract)
    assert (in_place.read_from, downloaded.read_from) == ("local file", "bronze")
    assert in_place.as_row() == downloaded.as_row()
    tables = [
        storage.read_parquet(s3, params["silver_bucket"], r.silver_key).drop_columns("run_id")
        for r in (in_place, downloaded)
    ]
    assert tables[0].equals(tables[1])


def test_a_delivered_file_changed_after_bronze_is_read_from_bronze(tmp_path, contract, s3, params):
    path = settled_file(tmp_path / "ventas.csv", DELIVERED + "\n")
    delivery = bronze.ingest_file(s3, params["bronze_bucket"], path)
    path.write_text(CHANGED + "\n")
    report = silver.clean_file(
        s3,
        params["bronze_bucket"],
        delivery.key,
        params["silver_bucket"],
        "t-changed",
        contract,
        local=delivery.local,
    )
    assert report.read_from == "bronze"
    assert silver_sales(s3, params, report) == [Decimal("957.5775")] * 3


def test_a_delivered_file_changed_while_silver_reads_it_is_read_again_from_bronze(
    tmp_path, contract, s3, params, monkeypatch
):
    path = settled_file(tmp_path / "ventas.csv", DELIVERED + "\n")
    delivery = bronze.ingest_file(s3, params["bronze_bucket"], path)
    vouched = bronze.unchanged
    checks = []

    def overwritten_once_read(local):  # the second look is after silver has read the file
        checks.append(local)
        if len(checks) == 2:
            path.write_text(CHANGED + "\n")  # a new delivery under the same name, meanwhile
        return vouched(local)

    monkeypatch.setattr(bronze, "unchanged", overwritten_once_read)
    report = silver.clean_file(
        s3,
        params["bronze_bucket"],
        delivery.key,
        params["silver_bucket"],
        "t-overwritten",
        contract,
        local=delivery.local,
    )
    assert len(checks) == 2
    assert report.read_from == "bronze"
    assert silver_sales(s3, params, report) == [Decimal("957.5775")] * 3


def test_amounts_lose_currency_symbols_and_spaces_but_not_digits():
    import pandas as pd

    from medallion.values import normalize_amount

    values = pd.Series(["€ 1.234,50", "1\u00a0234,5", "12,5 EUR", "1.2.3", None], dtype="string")
    text, valid = normalize_amount(values, ",")
    assert text.tolist()[:3] == ["1234.50", "1234.5", "12.5"]
    assert valid.tolist()[:4] == [True, True, True, False]


@pytest.mark.parametrize("batch_size", [7, 100_000])
def test_every_typed_value_is_the_delivered_one_whatever_the_chunking(contract, batch_size):
    """A regression: values converted per chunk must stay on their own line (a chunk's index
    does not start at 0)."""
    import csv

    from medallion.settings import PROJECT_ROOT

    path = PROJECT_ROOT / "data" / "sample" / "ventas_2024_h1.csv"
    with path.open(encoding="utf-8-sig", newline="") as f:
        delivered = {r["Row ID"]: r for r in csv.DictReader(f)}
    _, rows, _ = silver.clean_local(path, contract, batch_size=batch_size)
    assert rows.num_rows > 2000
    for row in rows.select(["row_id", "quantity", "sales"]).to_pylist():
        source = delivered[row["row_id"]]
        assert row["quantity"] == int(source["Quantity"]), row
        assert row["sales"] == Decimal(source["Sales"]), row


@pytest.fixture(scope="module")
def larger_files(tmp_path_factory):
    """Files of more than a megabyte: UTF-8 throughout, UTF-8 but for a cp1252 line near the
    end (the whole file decides its encoding), and gzip."""
    import gzip

    from medallion import sample

    folder = tmp_path_factory.mktemp("larger")
    utf8 = sample.write_generated(6_000, folder / "utf8", bad_every=50).read_bytes()
    assert len(utf8) > 1 << 20
    late = utf8 + GOOD.replace("1,ES-1", "9999999,ES-9", 1).encode("cp1252") + b"\n"
    assert b"\xed" in late  # 'í' of 'Díaz' in cp1252: not UTF-8
    files = {"utf8.csv": utf8, "late_cp1252.csv": late, "gzip.csv.gz": gzip.compress(utf8)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("name", ["utf8.csv", "late_cp1252.csv", "gzip.csv.gz"])
def test_clean_file_through_s3_gives_what_a_local_file_gives(
    larger_files, name, contract, s3, params
):
    path = larger_files / name
    delivery = bronze.ingest_file(s3, params["bronze_bucket"], path)
    report = silver.clean_file(
        s3, params["bronze_bucket"], delivery.key, params["silver_bucket"], "t-larger", contract
    )
    local, good, bad = silver.clean_local(path, contract)
    assert {**report.as_row(), "source_object": None} == {**local.as_row(), "source_object": None}
    source = report.source_object
    assert report.rule_rows() == [{**r, "source_object": source} for r in local.rule_rows()]
    for key, table in ((report.silver_key, good), (report.quarantine_key, bad)):
        stored = storage.read_parquet(s3, params["silver_bucket"], key)
        drop = ["source_object", "run_id"]
        assert stored.drop_columns(drop).equals(table.drop_columns(drop))
