"""Every corpus file through bronze and silver on the real S3 server, with its expected outcome."""

import re

import pytest

from medallion import bronze, silver, storage
from medallion.contract import load_contract
from tests.corpus import CASES, HEADERS_ES, lines, render_csv, render_json

CONTRACT = load_contract()


def test_corpus_is_large_enough():
    assert len(CASES) >= 25
    assert len({c.name for c in CASES}) == len(CASES)


def deliver(s3, params, tmp_path, name: str, data: bytes):
    """Write the file, ingest it to bronze, and return (delivery, a call that cleans it)."""
    path = tmp_path / name
    path.write_bytes(data)
    delivery = bronze.ingest_file(s3, params["bronze_bucket"], path)
    return delivery, lambda: silver.clean_file(
        s3,
        params["bronze_bucket"],
        delivery.key,
        params["silver_bucket"],
        "corpus",
        CONTRACT,
        batch_size=4,
    )


def run_silver(s3, params, tmp_path, name: str, data: bytes):
    delivery, clean = deliver(s3, params, tmp_path, name, data)
    report = clean()
    rows = (
        storage.read_parquet(s3, params["silver_bucket"], report.silver_key).to_pylist()
        if report.silver_key
        else []
    )
    rejects = (
        storage.read_parquet(s3, params["silver_bucket"], report.quarantine_key).to_pylist()
        if report.quarantine_key
        else []
    )
    return delivery, report, rows, rejects


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_file(case, s3, params, tmp_path):
    if case.fails:
        delivery, clean = deliver(s3, params, tmp_path, case.name, case.build())
        with pytest.raises(silver.InputFileError, match=case.fails) as err:
            clean()
        assert case.name in str(err.value)  # the message names the file
        for key in silver.silver_keys(delivery.key, "corpus"):  # nothing of it reached silver
            assert not storage.object_exists(s3, params["silver_bucket"], key)
        return
    _, report, rows, rejects = run_silver(s3, params, tmp_path, case.name, case.build())
    assert (report.rows_out, report.quarantined, report.duplicates) == (
        case.silver,
        case.quarantined,
        case.duplicates,
    ), report.as_row()
    assert report.lines_in == report.rows_out + report.quarantined + report.duplicates
    assert len(rows) == case.silver
    assert sorted(r["reject_reason"] for r in rejects) == sorted(case.reasons)
    assert all(r["raw_record"] and r["source_line"] and r["run_id"] for r in rejects)
    described = report.format.describe()
    assert {k: described[k] for k in case.detected} == case.detected
    if case.check:
        assert case.check(rows) is True
    for row in rows:
        assert row["postal_code"] in {None, "08001"}  # ids and postal codes stay text


def test_unbalanced_quote_costs_one_line_not_the_rest_of_the_file(s3, params, tmp_path):
    case = next(c for c in CASES if c.name == "unbalanced_quotes.csv")
    _, _, rows, rejects = run_silver(s3, params, tmp_path, case.name, case.build())
    assert [r["source_line"] for r in rejects] == [5]
    assert sorted(int(r["row_id"]) for r in rows) == [1, 2, 3, 5, 6, 7, 8]


def comparable(rows):
    drop = {"source_object", "source_line", "run_id", "extra_attributes"}
    return sorted(
        ({k: v for k, v in r.items() if k not in drop} for r in rows), key=lambda r: r["line_key"]
    )


def test_spanish_excel_export_json_array_and_json_lines_give_the_same_silver_rows(
    s3, params, tmp_path
):
    excel = render_csv(lines(), HEADERS_ES, ";", "cp1252", "{d}/{m}/{y}", ",", "\r\n")
    assert b";" in excel and b"\r\n" in excel and "ñ".encode("cp1252") in excel
    _, r1, excel_rows, _ = run_silver(s3, params, tmp_path, "ventas_excel.csv", excel)
    _, r2, array_rows, _ = run_silver(s3, params, tmp_path, "ventas.json", render_json(lines()))
    _, r3, jsonl_rows, _ = run_silver(
        s3, params, tmp_path, "ventas.jsonl", render_json(lines(), "lines")
    )
    assert (
        r1.format.encoding,
        r1.format.delimiter,
        r1.format.decimal_separator,
        r1.format.date_format,
    ) == ("cp1252", ";", ",", "dd/mm/yyyy")
    assert len(excel_rows) == 8
    assert comparable(excel_rows) == comparable(array_rows) == comparable(jsonl_rows)
    # to the last delivered decimal
    assert [str(r["sales"]) for r in comparable(excel_rows)] == [
        f"{float(x['sales']):.4f}" for x in sorted(lines(), key=lambda x: x["row_id"])
    ]


def test_exact_decimal_is_kept(s3, params, tmp_path):
    rows = [dict(r, sales="957.5775") for r in lines()]
    _, _, silver_rows, _ = run_silver(s3, params, tmp_path, "exact.csv", render_csv(rows))
    assert {str(r["sales"]) for r in silver_rows} == {"957.5775"}


def test_failure_message_is_for_a_person(tmp_path):
    path = tmp_path / "garbage.csv"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(silver.InputFileError) as err:
        silver.clean_local(path, CONTRACT)
    assert re.search(r"garbage\.csv: the file is binary", str(err.value))
