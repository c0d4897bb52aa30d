"""Hostile input through bronze and silver (on the real S3 server where the delivery matters,
pure otherwise): every odd value costs its line (quarantined with its own reason, the good lines
of the same file in silver, every line accounted for); a file that is broken as a whole fails
at once with InputFileError naming it; memory does not follow the size of a line."""

import gzip
import json
import subprocess
import sys
from dataclasses import replace
from decimal import Decimal

import pytest

from medallion import bronze, silver, storage
from medallion.contract import Limits, load_contract
from tests.corpus import HOSTILE, lines, render_csv, render_json
from tests.test_corpus import deliver, run_silver

CONTRACT = load_contract()


@pytest.mark.pure
def test_the_contract_quarantines_every_hostile_rule():
    for rule in (
        "control_character",
        "non_ascii_digits",
        "amount_out_of_range",
        "integer_out_of_range",
        "nesting_too_deep",
        "line_too_long",
    ):
        assert CONTRACT.rules.get(rule) == "drop", rule  # written in params/contract.yaml


@pytest.mark.parametrize("case", HOSTILE, ids=[c.name for c in HOSTILE])
def test_hostile_file(case, s3, params, tmp_path):
    if case.fails:
        delivery, clean = deliver(s3, params, tmp_path, case.name, case.build())
        with pytest.raises(silver.InputFileError, match=case.fails) as err:
            clean()
        assert case.name in str(err.value)  # the message names the file
        assert not isinstance(err.value, silver.FileRejected)  # the file, not its lines
        for key in silver.silver_keys(delivery.key, "corpus"):  # nothing of it reached silver
            assert not storage.object_exists(s3, params["silver_bucket"], key)
        return
    _, report, rows, rejects = run_silver(s3, params, tmp_path, case.name, case.build())
    # every line accounted for, and the good lines of the same file reached silver
    assert report.lines_in == report.rows_out + report.quarantined + report.duplicates
    assert (report.rows_out, report.quarantined) == (case.silver, case.quarantined)
    assert sorted(int(r["row_id"]) for r in rows) == list(range(1, case.silver + 1))
    assert sorted(r["reject_reason"] for r in rejects) == sorted(case.reasons)
    assert all(r["raw_record"] and r["source_line"] and r["run_id"] for r in rejects)
    for row in rows:  # nothing PostgreSQL's COPY would refuse
        assert not any("\x00" in str(v) for v in row.values() if v is not None)
    if case.check:
        assert case.check(rows) is True


@pytest.mark.pure
def test_rules_are_counted_by_name_and_every_reason_of_a_line_is_kept(tmp_path):
    text = render_csv(
        lines(8)
        + [dict(lines(1, start=9)[0], customer_id="", sales="１２", quantity="1" * 25)]
        + [dict(lines(1, start=10)[0], product_name="\x00", discount="1" * 20)]
    )
    path = tmp_path / "many.csv"
    path.write_bytes(text)
    report, good, bad = silver.clean_local(path, replace(CONTRACT, max_reject_share=1.0))
    assert good.num_rows == 8
    assert bad.column("reject_reason").to_pylist() == [
        "missing customer_id; sales has non-ASCII digits; "
        "quantity is beyond the 64-bit integer range",
        "control character in product_name; discount has more than 14 integer digits; "
        "discount outside [0, 1]",
    ]
    assert dict(report.rules["drop"]) == {
        "missing_required": 1,
        "non_ascii_digits": 1,
        "integer_out_of_range": 1,
        "control_character": 1,
        "amount_out_of_range": 1,
        "discount_out_of_range": 1,
    }
    assert report.first_line["control_character"] == 11


def test_a_line_too_long_is_kept_cut_with_its_number(s3, params, tmp_path):
    case = next(c for c in HOSTILE if c.name == "line_of_3mb.csv.gz")
    _, report, _, rejects = run_silver(s3, params, tmp_path, case.name, case.build())
    (reject,) = rejects
    assert reject["source_line"] == 10  # header + 8 good lines
    assert reject["raw_record"].startswith("9,ES-2024-104,")
    assert reject["raw_record"].endswith(" bytes]")
    assert len(reject["raw_record"]) < 1100  # its first KB and a marker, not 3 MB
    assert report.rules["drop"] == {"line_too_long": 1}


@pytest.mark.pure
@pytest.mark.parametrize("shape", ["csv", "csv-slow", "jsonl", "json"])
def test_line_cap_holds_in_every_reader(tmp_path, shape):
    """The same 100 KB line under a 64 KB cap, through each reader (CSV blocks, CSV line by
    line after a multi-line quoted field, JSON Lines, JSON array)."""
    contract = replace(CONTRACT, limits=Limits(max_line_kb=64), max_reject_share=1.0)
    rows = lines(8)
    if shape == "csv-slow":
        rows[0] = dict(rows[0], customer_name="Ana\nDíaz")  # forces the line-by-line reader
    long = dict(lines(1, start=9)[0], product_name="y" * 100_000)
    if shape.startswith("csv"):
        data, name = render_csv(rows + [long]), "c.csv"
    else:
        data = render_json(rows + [long], "lines" if shape == "jsonl" else "array")
        name = f"c.{shape}"
    path = tmp_path / name
    path.write_bytes(data)
    report, good, bad = silver.clean_local(path, contract)
    assert good.num_rows == 8
    what = "record" if shape == "json" else "line"
    assert bad.column("reject_reason").to_pylist() == [
        f"{what} longer than 64 KB (limits.max_line_kb)"
    ]
    assert len(bad.column("raw_record")[0].as_py()) < 1100


@pytest.mark.pure
def test_an_unclosed_quote_stops_at_the_line_cap(tmp_path):
    """A quote that never closes cannot swallow more than max_line_kb: its lines are read one by
    one, and the lines after the cap are records again."""
    contract = replace(CONTRACT, limits=Limits(max_line_kb=4), max_reject_share=1.0)
    rows = lines(60)
    text = render_csv(rows).decode()
    head, *body = text.splitlines(keepends=True)
    body[0] = body[0].replace("Silla", '"Silla', 1)
    path = tmp_path / "q.csv"
    path.write_text(head + "".join(body))
    report, good, bad = silver.clean_local(path, contract)
    assert report.lines_in == report.rows_out + report.quarantined + report.duplicates == 60
    assert bad.column("source_line").to_pylist() == [2]
    assert good.num_rows == 59  # the rest of the file is not lost to one quote


@pytest.mark.pure
def test_undecodable_bytes_fail_the_file_naming_it(tmp_path):
    contract = replace(CONTRACT, parsing=replace(CONTRACT.parsing, encodings=("utf-8", "cp1252")))
    data = render_csv(lines(8)).replace("Begoña".encode(), b"Bego\x81a")  # 0x81: not cp1252
    path = tmp_path / "undecodable.csv"
    path.write_bytes(data)
    with pytest.raises(silver.InputFileError, match=r"not text in any encoding") as err:
        silver.clean_local(path, contract)
    assert "undecodable.csv" in str(err.value)
    assert f"at offset {data.index(bytes([0x81])):,} " in str(err.value)
    silver.clean_local(path, CONTRACT)  # latin-1, the committed contract's last resort, reads it


@pytest.mark.pure
@pytest.mark.parametrize("compressed", [True, False], ids=["gzip", "plain"])
def test_a_file_beyond_the_size_cap_fails_naming_it(tmp_path, compressed):
    contract = replace(CONTRACT, limits=Limits(max_file_mb=1))
    data = render_csv(lines(6000))  # ~1.4 MB
    assert len(data) > 1 << 20
    name = "big.csv.gz" if compressed else "big.csv"
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if compressed else data)
    with pytest.raises(silver.InputFileError, match=r"larger than 1 MB.*limits.max_file_mb") as e:
        silver.clean_local(path, contract)
    assert name in str(e.value)


@pytest.mark.pure
@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("ventas_2024 (1).csv", "ventas_2024 (1).csv"),  # an ordinary name is kept as it is
        ("..\\..\\evil.csv", "evil.csv"),
        ("../../evil.csv", "evil.csv"),
        ("ventas\x01\x7f.csv", "ventas__.csv"),
        ("a..b.csv", "a.b.csv"),
        ("..", "file"),
        ("Año Señorío #3?.csv.gz", "Año Señorío _3_.csv.gz"),
        ("x" * 300 + ".csv.gz", "x" * 193 + ".csv.gz"),  # 200 bytes, the suffix kept
    ],
)
def test_safe_object_name(name, safe):
    assert bronze.safe_object_name(name) == safe


def test_a_hostile_file_name_becomes_a_safe_key_and_messages_keep_the_delivered_name(
    s3, params, tmp_path
):
    name = "..\\..\\evil\x01 año.csv"
    path = tmp_path / name
    path.write_bytes(render_csv(lines(8)))
    delivery = bronze.ingest_file(s3, params["bronze_bucket"], path)
    file_part = delivery.key.rsplit("/", 1)[1]
    assert file_part == "evil_ año.csv"
    assert ".." not in delivery.key and "\\" not in delivery.key
    assert bronze.delivered_name(s3, params["bronze_bucket"], delivery.key) == name
    report = silver.clean_file(
        s3, params["bronze_bucket"], delivery.key, params["silver_bucket"], "t", CONTRACT
    )
    assert report.rows_out == 8
    # a file that fails says which delivered file it was
    path.write_bytes(b"")
    empty = bronze.ingest_file(s3, params["bronze_bucket"], path)
    with pytest.raises(silver.InputFileError) as err:
        silver.clean_file(
            s3, params["bronze_bucket"], empty.key, params["silver_bucket"], "t", CONTRACT
        )
    assert "delivered as '..\\..\\evil\\x01 año.csv'" in str(err.value)
    assert str(err.value).endswith("the file is empty.")


_PEAK = """
import json, resource, sys
from pathlib import Path
from medallion import silver
from medallion.contract import load_contract

class Rows:
    rows = 0
    def write(self, table):
        self.rows += table.num_rows

path = Path(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
report = silver.clean_path(path, path.name, load_contract(), "t", 100_000, Rows(), Rows())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_mb": (peak - before) / 1024, "rules": report.rules["drop"]}))
"""


@pytest.mark.pure
@pytest.mark.parametrize("name", ["huge_line.csv.gz", "huge_record.json.gz"])
def test_memory_does_not_follow_a_huge_line(tmp_path, name):
    """A 256 MB line (gzip: 256 KB on disk) took 2.7 GB before; now it is read in blocks."""
    size = 256 << 20
    path = tmp_path / name
    with gzip.open(path, "wb", compresslevel=1) as out:
        if name.endswith(".csv.gz"):
            head, *body = render_csv(lines(8)).split(b"\n")
            out.write(b"\n".join([head, *body[:4]]) + b"\n9,ES-9,")
            for _ in range(size >> 20):
                out.write(b"z" * (1 << 20))
            out.write(b"\n" + b"\n".join(body[4:]))
        else:
            records = [json.dumps(r) for r in json.loads(render_json(lines(8)))]
            out.write(("[" + ",".join(records[:4]) + ',{"Producto": "').encode())
            for _ in range(size >> 20):
                out.write(b"z" * (1 << 20))
            out.write(('"},' + ",".join(records[4:]) + "]").encode())
    run = subprocess.run(
        [sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, check=True
    )
    result = json.loads(run.stdout)
    assert result["rules"] == {"line_too_long": 1}
    assert result["grew_mb"] < 200, result  # blocks of 16 MB, not the 256 MB line


HEADER = (
    "row_id,order_id,order_date,ship_date,customer_id,product_id,sales,quantity,discount,profit"
)


def _row(i: int, sep: str = ",", sales: str = "10.00", discount: str = "0.1") -> str:
    values = [str(i), f"O-{i}", f"2024-01-0{1 + i % 9}", f"2024-01-1{i % 9}", f"C{i}", f"P{i}",
              sales, "2", discount, ""]  # fmt: skip
    return sep.join(values)


@pytest.mark.pure
def test_a_huge_first_line_does_not_decide_the_number_format(tmp_path):
    """A regression: the first chunk was the long line alone, with no values to detect from,
    and a decimal-comma file was read with '.' (amounts x1000)."""
    long_first = _row(1, ";", "1,250", "").replace("P1;", "P" + "x" * (17 << 20) + ";")
    body = [_row(i, ";", "1,250", "0,15" if i % 10 == 0 else "") for i in range(2, 200)]
    path = tmp_path / "coma_decimal.csv"
    path.write_text("\n".join([HEADER.replace(",", ";"), long_first, *body]) + "\n")
    report, rows, rejects = silver.clean_local(path, CONTRACT)
    assert (report.rows_out, report.quarantined) == (198, 1)
    assert set(rows.column("sales").to_pylist()) == {Decimal("1.2500")}
    assert rejects.column("reject_reason").to_pylist()[0].startswith("line longer than")


@pytest.mark.pure
def test_a_crlf_split_by_the_line_cap_is_not_a_line(tmp_path):
    """A regression: a read limit between '\\r' and '\\n' made a phantom blank line and moved
    every later line number by one."""
    contract = replace(CONTRACT, limits=replace(CONTRACT.limits, max_line_kb=1))
    keys = HEADER.split(",")
    records = [json.dumps(dict(zip(keys, _row(i).split(","), strict=True))) for i in range(1, 8)]
    records[1] = records[1].replace('"P2"', '"P2' + "x" * (1025 - len(records[1])) + '"')
    assert len(records[1]) == 1025
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(("\r\n".join(records) + "\r\n").encode())
    report, rows, _ = silver.clean_local(path, contract)
    assert (report.lines_in, report.blank_lines, report.quarantined) == (7, 0, 1)
    assert rows.column("source_line").to_pylist() == [1, 3, 4, 5, 6, 7]


@pytest.mark.pure
def test_bare_carriage_returns_above_the_header_lose_no_line(tmp_path):
    """A regression: the fast reader skipped the lines above the data counting only '\\n'."""
    path = tmp_path / "cr_above.csv"
    path.write_bytes(
        b"\r\r\n" + ("\n".join([HEADER, *(_row(i) for i in range(1, 6))]) + "\n").encode()
    )
    report, rows, _ = silver.clean_local(path, CONTRACT)
    assert (report.lines_in, report.rows_out) == (5, 5)
    assert rows.column("row_id").to_pylist() == ["1", "2", "3", "4", "5"]
