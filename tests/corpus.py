"""A corpus of real-world input files, each with its expected outcome.

Files are generated (small, deterministic) so that every byte-level quirk is explicit here:
encodings, delimiters, date and number formats, JSON shapes, compression, every rule, and files
that cannot be read at all. ``python -m tests.corpus DIR`` writes them to a folder to look at.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HEADERS_EN = [
    "Row ID",
    "Order ID",
    "Order Date",
    "Ship Date",
    "Ship Mode",
    "Customer ID",
    "Customer Name",
    "Segment",
    "Country",
    "City",
    "State",
    "Postal Code",
    "Region",
    "Product ID",
    "Category",
    "Sub-Category",
    "Product Name",
    "Sales",
    "Quantity",
    "Discount",
    "Profit",
]
HEADERS_ES = [
    "ID Fila",
    "ID Pedido",
    "Fecha Pedido",
    "Fecha Envío",
    "Modo Envío",
    "ID Cliente",
    "Cliente",
    "Segmento",
    "País",
    "Ciudad",
    "Provincia",
    "Código Postal",
    "Región",
    "ID Producto",
    "Categoría",
    "Subcategoría",
    "Producto",
    "Ventas",
    "Cantidad",
    "Descuento",
    "Beneficio",
]
FIELDS = [
    "row_id",
    "order_id",
    "order_date",
    "ship_date",
    "ship_mode",
    "customer_id",
    "customer_name",
    "segment",
    "country",
    "city",
    "state",
    "postal_code",
    "region",
    "product_id",
    "category",
    "sub_category",
    "product_name",
    "sales",
    "quantity",
    "discount",
    "profit",
]


def lines(n: int = 8, start: int = 1) -> list[dict[str, str]]:
    """n valid sales lines with Spanish text, leading-zero postal codes and 4-decimal amounts."""
    rng = random.Random(start)
    out = []
    for i in range(start, start + n):
        day = 13 + i % 15  # > 12: tells day from month in dd/mm and mm/dd files
        out.append(
            {
                "row_id": str(i),
                "order_id": f"ES-2024-{100 + i // 2}",
                "order_date": f"2024-03-{day:02d}",
                "ship_date": f"2024-03-{day + 1:02d}",
                "ship_mode": "Estándar",
                "customer_id": f"CL-{i % 3}",
                "customer_name": ["Núñez Peña", "Begoña Ibáñez", "José Muñoz"][i % 3],
                "segment": "Consumo",
                "country": "España",
                "city": "Barcelona",
                "state": "Cataluña",
                "postal_code": "08001",
                "region": "Noreste",
                "product_id": f"MUE-SI-{i:04d}",
                "category": "Muebles",
                "sub_category": "Sillas",
                "product_name": f"Silla ergonómica «Señorío» {i}",
                "sales": f"{rng.randint(1, 3000)}.{rng.randint(0, 9999):04d}",
                "quantity": str(rng.randint(1, 9)),
                "discount": "0.2",
                "profit": f"-{rng.randint(0, 99)}.{rng.randint(0, 999):03d}",
            }
        )
    return out


def render_csv(
    rows: list[dict],
    headers=HEADERS_EN,
    delimiter=",",
    encoding="utf-8",
    date=None,
    decimal=".",
    newline="\n",
    bom=False,
    extra_rows=(),
) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator=newline)
    writer.writerow(headers)
    for row in rows:
        values = dict(row)
        if date:
            for c in ("order_date", "ship_date"):
                y, m, d = values[c].split("-") if values[c].count("-") == 2 else (None,) * 3
                if y:
                    values[c] = date.format(y=y, m=m, d=d)
        if decimal == ",":
            for c in ("sales", "discount", "profit"):
                values[c] = values[c].replace(".", ",")
        writer.writerow([values[f] for f in FIELDS])
    text = buf.getvalue() + "".join(extra_rows)
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode(encoding)


def as_json_record(row: dict, headers=HEADERS_ES, numbers=True) -> dict:
    record = {}
    for header, f in zip(headers, FIELDS, strict=True):
        value = row[f]
        if numbers and f in {"sales", "discount", "profit", "quantity"} and value:
            value = json.loads(value) if value.lstrip("-").replace(".", "", 1).isdigit() else value
        record[header] = value if value != "" else None
    return record


def render_json(rows: list[dict], shape: str = "array") -> bytes:
    records = [as_json_record(r) for r in rows]
    if shape == "lines":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    if shape == "wrapped":
        return json.dumps(
            {"exportado": "2024-04-01", "ventas": records}, ensure_ascii=False, indent=2
        ).encode()
    return json.dumps(records, ensure_ascii=False, indent=2).encode()


def with_bad(field_name: str, value: str, n: int = 8) -> list[dict]:
    rows = lines(n)
    bad = dict(lines(1, start=n + 1)[0])
    bad[field_name] = value
    return rows + [bad]


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], bytes]
    silver: int | None = None  # rows expected in silver
    quarantined: int = 0
    duplicates: int = 0
    reasons: tuple[str, ...] = ()  # expected reject_reason values (sorted)
    fails: str | None = None  # regex of the expected error message
    detected: dict = field(default_factory=dict)  # expected SourceFormat.describe() values
    check: Callable | None = None  # predicate on the silver rows (a list of dicts)

    @property
    def outcome(self) -> str:
        if self.fails:
            return f"falla: {self.fails}"
        parts = [f"{self.silver} a silver"]
        if self.quarantined:
            parts.append(f"{self.quarantined} en cuarentena ({'; '.join(self.reasons)})")
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicadas")
        return ", ".join(parts)


def _sales(rows):
    return [r["sales"] for r in rows]


def _spanish_excel() -> bytes:
    return render_csv(lines(), HEADERS_ES, ";", "cp1252", "{d}/{m}/{y}", ",", "\r\n")


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _unbalanced() -> bytes:
    rows = lines(8)
    text = render_csv(rows).decode()
    head, *body = text.splitlines(keepends=True)
    broken = body[3].replace("Silla", '"Silla', 1)  # a quote that never closes
    return (head + "".join(body[:3]) + broken + "".join(body[4:])).encode()


def _one_mb_field() -> bytes:
    rows = lines(8)
    rows[0] = dict(rows[0], product_name="x" * (1 << 20))
    return render_csv(rows)


def _formulas() -> bytes:
    rows = lines(8)
    rows[0] = dict(rows[0], product_name="=SUM(A1:A9)", customer_name="+cmd|' /C calc'!A0")
    rows[1] = dict(rows[1], product_name='@HYPERLINK("http://x")', customer_name="-2+3")
    return render_csv(rows)


def _check_formulas(rows) -> bool:
    names = {r["product_name"] for r in rows} | {r["customer_name"] for r in rows}
    return {"=SUM(A1:A9)", "+cmd|' /C calc'!A0", '@HYPERLINK("http://x")', "-2+3"} <= names


def _check_dates(expected_first: str):
    return lambda rows: str(rows[0]["order_date"]) == expected_first


def _ambiguous_dates() -> bytes:
    rows = [dict(r, order_date="2024-03-02", ship_date="2024-03-04") for r in lines()]
    return render_csv(rows, delimiter=";", date="{d}/{m}/{y}")


CASES: list[Case] = [
    # encodings
    Case("utf8.csv", lambda: render_csv(lines()), 8, detected={"encoding": "utf-8"}),
    Case(
        "utf8_bom.csv", lambda: render_csv(lines(), bom=True), 8, detected={"encoding": "utf-8-sig"}
    ),
    Case(
        "excel_es_cp1252.csv",
        _spanish_excel,
        8,
        detected={"encoding": "cp1252", "delimiter": ";", "decimal": ",", "dates": "dd/mm/yyyy"},
        check=lambda rows: (
            [r["customer_name"] for r in rows][:3] == ["Begoña Ibáñez", "José Muñoz", "Núñez Peña"]
        ),
    ),
    Case(
        "latin1_semicolon.csv",
        lambda: render_csv(lines(), HEADERS_ES, ";", "latin-1", decimal=","),
        8,
        detected={"delimiter": ";", "decimal": ","},
    ),
    # delimiters
    Case("tab.tsv", lambda: render_csv(lines(), delimiter="\t"), 8, detected={"delimiter": "tab"}),
    Case("pipe.txt", lambda: render_csv(lines(), delimiter="|"), 8, detected={"delimiter": "|"}),
    Case(
        "semicolon_decimal_comma.csv",
        lambda: render_csv(lines(), delimiter=";", decimal=","),
        8,
        detected={"delimiter": ";", "decimal": ","},
    ),
    # dates
    Case(
        "dates_us_mmddyyyy.csv",
        lambda: render_csv(lines(), date="{m}/{d}/{y}"),
        8,
        detected={"dates": "mm/dd/yyyy"},
        check=_check_dates("2024-03-14"),
    ),
    Case(
        "dates_ddmmyyyy.csv",
        lambda: render_csv(lines(), date="{d}/{m}/{y}"),
        8,
        detected={"dates": "dd/mm/yyyy"},
        check=_check_dates("2024-03-14"),
    ),
    Case(
        "dates_ambiguous_contract_day_first.csv",
        _ambiguous_dates,
        8,
        detected={"dates": "dd/mm/yyyy"},
        check=_check_dates("2024-03-02"),
    ),
    Case(
        "dates_with_time.csv",
        lambda: render_csv(lines(), date="{y}-{m}-{d}T10:15:00"),
        8,
        detected={"dates": "iso"},
    ),
    Case(
        "dates_ddmmyyyy_with_time.csv",
        lambda: render_csv(lines(), date="{d}/{m}/{y} 10:15"),
        8,
        detected={"dates": "dd/mm/yyyy"},
    ),
    # numbers
    Case(
        "thousands_separator.csv",
        lambda: render_csv([dict(r, sales="1,234.5678") for r in lines()]),
        8,
        detected={"decimal": "."},
        check=lambda rows: str(rows[0]["sales"]) == "1234.5678",
    ),
    # JSON shapes and compression
    Case("array.json", lambda: render_json(lines()), 8, detected={"format": "json"}),
    Case("lines.jsonl", lambda: render_json(lines(), "lines"), 8, detected={"format": "jsonl"}),
    Case("wrapped_object.json", lambda: render_json(lines(), "wrapped"), 8),
    Case(
        "nested.json",
        lambda: json.dumps(
            [
                {
                    "order": {"id": r["order_id"], "date": r["order_date"]},
                    "customer": {"id": r["customer_id"], "name": r["customer_name"]},
                    "product": {"id": r["product_id"]},
                    "sales": r["sales"],
                    "quantity": int(r["quantity"]),
                    "row_id": int(r["row_id"]),
                }
                for r in lines()
            ]
        ).encode(),
        8,
    ),
    Case("gzip.csv.gz", lambda: _gzip(render_csv(lines())), 8, detected={"format": "csv+gzip"}),
    Case("gzip.jsonl.gz", lambda: _gzip(render_json(lines(), "lines")), 8),
    # one file per rule: 8 good lines and 1 bad
    Case(
        "rule_missing_required.csv",
        lambda: render_csv(with_bad("customer_id", "")),
        8,
        1,
        reasons=("missing customer_id",),
    ),
    Case(
        "rule_invalid_date.csv",
        lambda: render_csv(with_bad("order_date", "2024-02-30")),
        8,
        1,
        reasons=("invalid date in order_date",),
    ),
    Case(
        "rule_ship_before_order.csv",
        lambda: render_csv(with_bad("ship_date", "2024-01-01")),
        8,
        1,
        reasons=("ship_date before order_date",),
    ),
    Case(
        "rule_not_a_number.csv",
        lambda: render_csv(with_bad("sales", "12a")),
        8,
        1,
        reasons=("sales is not a number",),
    ),
    Case(
        "rule_too_many_decimals.csv",
        lambda: render_csv(with_bad("sales", "1.23456")),
        8,
        1,
        reasons=("sales has more than 4 decimal places",),
    ),
    Case(
        "rule_quantity_not_integer.csv",
        lambda: render_csv(with_bad("quantity", "2.5")),
        8,
        1,
        reasons=("quantity is not an integer",),
    ),
    Case(
        "rule_quantity_not_positive.csv",
        lambda: render_csv(with_bad("quantity", "0")),
        8,
        1,
        reasons=("quantity is not > 0",),
    ),
    Case(
        "rule_sales_negative.csv",
        lambda: render_csv(with_bad("sales", "-5")),
        8,
        1,
        reasons=("sales is negative",),
    ),
    Case(
        "rule_discount_out_of_range.csv",
        lambda: render_csv(with_bad("discount", "1.5")),
        8,
        1,
        reasons=("discount outside [0, 1]",),
    ),
    Case(
        "rule_profit_above_sales_warn.csv",
        lambda: render_csv(with_bad("profit", "99999")),
        9,
        check=lambda rows: sum(bool(r["dq_warnings"]) for r in rows) == 1,
    ),
    # structure
    Case(
        "too_many_and_too_few_fields.csv",
        lambda: render_csv(
            lines(),
            extra_rows=[
                "9,ES-9,2024-03-13,2024-03-14,x,CL-1,y,z,E,B,C,08001,N,P-9,M,S,N,1,1,0,1,sobra\n",
                "10,ES-10,2024-03-13\n",
            ],
        ),
        8,
        2,
        reasons=(
            "wrong number of fields: expected 21, found 22",
            "wrong number of fields: expected 21, found 3",
        ),
    ),
    Case(
        "unbalanced_quotes.csv",
        _unbalanced,
        7,
        1,
        reasons=("wrong number of fields: expected 21, found 16",),
    ),
    Case("exact_duplicates.csv", lambda: render_csv(lines() + lines(2)), 8, duplicates=2),
    Case("blank_lines.csv", lambda: render_csv(lines()).replace(b"\n", b"\n\n", 3), 8),
    Case(
        "invalid_json_line.jsonl",
        lambda: render_json(lines(), "lines") + b'{"ID Pedido": "ES-1", oops\n',
        8,
        1,
        reasons=("invalid JSON: Expecting property name enclosed in double quotes (column 23)",),
    ),
    Case(
        "one_mb_field.csv",
        _one_mb_field,
        8,
        check=lambda rows: max(len(r["product_name"]) for r in rows) == 1 << 20,
    ),
    Case("formula_text.csv", _formulas, 8, check=_check_formulas),
    # files that cannot be loaded
    Case("empty.csv", lambda: b"", fails="the file is empty"),
    Case("header_only.csv", lambda: render_csv([]), fails="header but no sales lines"),
    Case(
        "binary_garbage.csv",
        lambda: random.Random(1).randbytes(4096),
        fails="the file is binary",
    ),
    Case(
        "duplicate_headers.csv",
        lambda: render_csv(lines()).replace(b"Profit", b"Sales", 1),
        fails="'Sales' and 'Sales' both mean 'sales'",
    ),
    Case(
        "missing_required_column.csv",
        lambda: render_csv(lines()).replace(b"Product ID", b"Articulo", 1),
        fails=r"required column\(s\) \['product_id'\] not found",
    ),
    Case(
        "wrong_columns.csv",
        lambda: b"fecha,importe,nota\n2024-01-01,10,x\n",
        fails=r"required column\(s\) \['order_id', 'customer_id', 'product_id', 'quantity'\]",
    ),
    Case(
        "invalid_record_in_array.json",
        lambda: render_json(lines())[:-2] + b',\n  {"ID Pedido": 1,,}\n]',
        8,
        1,
        reasons=("invalid JSON: Expecting property name enclosed in double quotes (column 17)",),
    ),
    Case("not_json.json", lambda: b'[{"ID Pedido": 1}, {"ID Pedido": ', fails="not valid JSON"),
    Case(
        "too_many_rejects.csv",
        lambda: render_csv(lines(4) + [dict(r, customer_id="") for r in lines(4, 5)]),
        fails=r"4 of 8 lines \(50%\) were rejected, above the contract's max_reject_share",
    ),
]


# --------------------------------------------------------------------------- hostile input
# Files made to break things (found by doing so): each odd value must cost its line, never the
# file. Good lines carry row ids 1..silver, so a test can tell that exactly they reached silver.

DEEP = "[" * 10_000 + "]" * 10_000  # json.loads recursed into it: RecursionError
LONG = "x" * (3 << 20)  # above the contract's max_line_kb (2048 KB)


def _extra_column(n: int, bad_value: str) -> bytes:
    """A CSV with an unmapped column (kept in extra_attributes); the last line's is bad."""
    head, *body = render_csv(lines(n + 1)).decode().splitlines()
    values = ["Luis"] * n + [bad_value]
    body = [f"{line},{value}" for line, value in zip(body, values, strict=True)]
    return ("\n".join([f"{head},Vendedor", *body]) + "\n").encode()


def _jsonl_with(record: str, n: int = 8) -> bytes:
    return render_json(lines(n), "lines") + record.encode() + b"\n"


def _array_with(record: str, n: int = 8) -> bytes:
    return render_json(lines(n))[:-2] + b",\n  " + record.encode() + b"\n]"


def _bad_record(**values: str) -> str:
    record = as_json_record(lines(1, start=9)[0])
    return json.dumps(record | values, ensure_ascii=False)


def _tabbed() -> bytes:
    rows = lines(8)
    rows[0] = dict(rows[0], product_name="Silla\tergonómica")  # a tab is text, not a control
    bad = lines(2, start=9)
    bad[0]["product_name"] = "Silla\x01"
    bad[1]["city"] = "Barce\x7flona"
    return render_csv(rows + bad)


def _truncated_gzip() -> bytes:
    data = _gzip(render_csv(lines(2000)))
    return data[: len(data) // 2]


def _damaged_gzip() -> bytes:
    data = bytearray(_gzip(render_csv(lines(2000))))
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # zeros over the deflate stream
    return bytes(data)


HOSTILE: list[Case] = [
    Case(
        "nul_after_8kb.csv",
        lambda: render_csv(with_bad("customer_name", "Ana\x00Díaz", n=60)),
        60,
        1,
        reasons=("control character in customer_name",),
    ),
    Case(
        "nul_in_extra_column.csv",
        lambda: _extra_column(8, "Lu\x00is"),
        8,
        1,
        reasons=("control character in Vendedor",),
    ),
    Case(
        "control_characters.csv",
        _tabbed,
        8,
        2,
        reasons=("control character in city", "control character in product_name"),
        check=lambda rows: "Silla\tergonómica" in {r["product_name"] for r in rows},
    ),
    Case(
        "nul_escaped_in_json.jsonl",
        lambda: _jsonl_with(_bad_record(Cliente="Ana\u0000", Vendedor="x\u0001")),
        8,
        1,
        reasons=("control character in customer_name, Vendedor",),
    ),
    Case(
        "fullwidth_digits.csv",
        lambda: render_csv(with_bad("sales", "１２３")),
        8,
        1,
        reasons=("sales has non-ASCII digits",),
    ),
    Case(
        "arabic_indic_quantity.csv",
        lambda: render_csv(with_bad("quantity", "٣")),
        8,
        1,
        reasons=("quantity has non-ASCII digits",),
    ),
    Case(
        "amount_beyond_precision.csv",
        lambda: render_csv(
            [dict(r, sales="99999999999999.9999") for r in lines(1)]  # 14 digits: fits
            + lines(7, start=2)
            + [dict(lines(1, start=9)[0], sales="100000000000000")]  # 10^14: 15 digits
        ),
        8,
        1,
        reasons=("sales has more than 14 integer digits",),
        check=lambda rows: str(rows[0]["sales"]) == "99999999999999.9999",
    ),
    Case(
        "quantity_beyond_int64.csv",
        lambda: render_csv(
            [dict(r, quantity="9223372036854775807") for r in lines(1)]  # bigint's largest
            + lines(7, start=2)
            + [dict(lines(1, start=9)[0], quantity="99999999999999999999")]
        ),
        8,
        1,
        reasons=("quantity is beyond the 64-bit integer range",),
        check=lambda rows: rows[0]["quantity"] == 9223372036854775807,
    ),
    Case(
        "nested_10000_deep.jsonl",
        lambda: _jsonl_with(f'{{"ID Pedido": "ES-9", "x": {DEEP}}}'),
        8,
        1,
        reasons=("JSON nested deeper than 32 levels (limits.max_json_depth)",),
    ),
    Case(
        "nested_10000_deep.json",
        lambda: _array_with(f'{{"ID Pedido": "ES-9", "x": {DEEP}}}'),
        8,
        1,
        reasons=("JSON nested deeper than 32 levels (limits.max_json_depth)",),
    ),
    Case(
        "line_of_3mb.csv.gz",
        lambda: _gzip(render_csv(with_bad("product_name", LONG))),
        8,
        1,
        reasons=("line longer than 2,048 KB (limits.max_line_kb)",),
    ),
    Case(
        "line_of_3mb.jsonl",
        lambda: _jsonl_with(_bad_record(Producto=LONG)),
        8,
        1,
        reasons=("line longer than 2,048 KB (limits.max_line_kb)",),
    ),
    Case(
        "record_of_3mb.json",
        lambda: _array_with(_bad_record(Producto=LONG)),
        8,
        1,
        reasons=("record longer than 2,048 KB (limits.max_line_kb)",),
    ),
    Case("truncated.csv.gz", _truncated_gzip, fails="the gzip file is truncated"),
    Case("damaged.csv.gz", _damaged_gzip, fails="the gzip file is damaged"),
]


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "corpus")
    out.mkdir(parents=True, exist_ok=True)
    for case in CASES + HOSTILE:
        (out / case.name).write_bytes(case.build())
        print(f"{case.name:45} {case.outcome}")
