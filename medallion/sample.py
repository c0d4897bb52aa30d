"""Deterministic generator of realistic sales lines (Spanish-speaking markets).

The same arguments always give the same bytes. Each bad line breaks exactly one rule of the
contract, and the generator writes what it injected to ``<folder>.expected.json`` (beside the
folder, which stays a delivery of sales files only), so tests
compare the pipeline with the generator's own account, not with hard-coded numbers.

    python -m medallion.sample --rows 1000000 --out data/generated      # make sample ROWS=...
    python -m medallion.sample --committed                               # data/sample/
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import random
import unicodedata
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

from medallion.settings import PROJECT_ROOT

CSV_HEADERS = {  # Superstore-style English headers
    "row_id": "Row ID",
    "order_id": "Order ID",
    "order_date": "Order Date",
    "ship_date": "Ship Date",
    "ship_mode": "Ship Mode",
    "customer_id": "Customer ID",
    "customer_name": "Customer Name",
    "segment": "Segment",
    "country": "Country",
    "city": "City",
    "state": "State",
    "postal_code": "Postal Code",
    "region": "Region",
    "product_id": "Product ID",
    "category": "Category",
    "sub_category": "Sub-Category",
    "product_name": "Product Name",
    "sales": "Sales",
    "quantity": "Quantity",
    "discount": "Discount",
    "profit": "Profit",
}
JSON_KEYS = {  # Spanish keys, as a Latin American ERP would export them
    "row_id": "ID Fila",
    "order_id": "ID Pedido",
    "order_date": "Fecha Pedido",
    "ship_date": "Fecha Envío",
    "ship_mode": "Modo Envío",
    "customer_id": "ID Cliente",
    "customer_name": "Cliente",
    "segment": "Segmento",
    "country": "País",
    "city": "Ciudad",
    "state": "Estado",
    "postal_code": "Código Postal",
    "region": "Región",
    "product_id": "ID Producto",
    "category": "Categoría",
    "sub_category": "Subcategoría",
    "product_name": "Producto",
    "sales": "Ventas",
    "quantity": "Cantidad",
    "discount": "Descuento",
    "profit": "Beneficio",
}

COUNTRY_CODES = {
    "España": "ES",
    "México": "MX",
    "Colombia": "CO",
    "Argentina": "AR",
    "Chile": "CL",
    "Perú": "PE",
}
PLACES = [  # country, city, state, postal code, region
    ("España", "Madrid", "Comunidad de Madrid", "28001", "Centro"),
    ("España", "Barcelona", "Cataluña", "08001", "Noreste"),
    ("España", "Valencia", "Comunitat Valenciana", "46001", "Este"),
    ("España", "Sevilla", "Andalucía", "41001", "Sur"),
    ("España", "Bilbao", "País Vasco", "48001", "Norte"),
    ("México", "Ciudad de México", "CDMX", "06000", "Centro"),
    ("México", "Guadalajara", "Jalisco", "44100", "Occidente"),
    ("México", "Monterrey", "Nuevo León", "64000", "Noreste"),
    ("Colombia", "Bogotá", "Cundinamarca", "110111", "Andina"),
    ("Colombia", "Medellín", "Antioquia", "050001", "Andina"),
    ("Argentina", "Buenos Aires", "Buenos Aires", "C1002", "Pampeana"),
    ("Argentina", "Córdoba", "Córdoba", "X5000", "Centro"),
    ("Chile", "Santiago", "Región Metropolitana", "8320000", "Centro"),
    ("Perú", "Lima", "Lima", "15001", "Costa"),
]
SEGMENTS = ["Consumo", "Corporativo", "Oficina en casa"]
SHIP_MODES = [
    ("Estándar", 4, 7),
    ("Segunda clase", 2, 5),
    ("Primera clase", 1, 3),
    ("Mismo día", 0, 0),
]
CATALOG = {
    ("Muebles", "MUE"): {
        "Sillas": (60, 600),
        "Mesas": (120, 1500),
        "Estanterías": (50, 900),
        "Accesorios de mobiliario": (5, 120),
    },
    ("Material de oficina", "OFI"): {
        "Papel": (3, 40),
        "Carpetas": (2, 25),
        "Bolígrafos": (1, 30),
        "Almacenaje": (10, 300),
    },
    ("Tecnología", "TEC"): {
        "Teléfonos": (40, 1200),
        "Accesorios": (8, 250),
        "Fotocopiadoras": (300, 4000),
        "Máquinas": (150, 3500),
    },
}
BRANDS = ["Acme", "Ibérica", "Andes", "Pampa", "Azteca", "Caribe", "Sierra", "Atlántica"]
FIRST = [
    "María",
    "José",
    "Lucía",
    "Carlos",
    "Ana",
    "Javier",
    "Sofía",
    "Miguel",
    "Valentina",
    "Diego",
    "Camila",
    "Andrés",
    "Paula",
    "Fernando",
    "Gabriela",
    "Raúl",
    "Elena",
    "Tomás",
]
LAST = [
    "García",
    "Martínez",
    "López",
    "Sánchez",
    "Pérez",
    "Gómez",
    "Fernández",
    "Díaz",
    "Rodríguez",
    "Torres",
    "Ramírez",
    "Flores",
    "Castillo",
    "Vargas",
    "Núñez",
    "Ortega",
]

# The rules a bad line can break, and how many of each the committed sample carries.
BAD_RULES = [
    "missing order_id",
    "missing order_date",
    "missing customer_id",
    "missing product_id",
    "missing quantity",
    "missing sales",
    "invalid date in order_date",
    "ship_date before order_date",
    "quantity is not > 0",
    "quantity is not an integer",
    "sales is negative",
    "discount outside [0, 1]",
    "wrong number of fields",
]
JSON_BAD_RULES = [r for r in BAD_RULES if r != "wrong number of fields"]


def _money(value: Decimal) -> str:
    """Delivered like an ERP export: up to 4 decimals, no trailing zeros (957.5775, 22.368)."""
    text = format(value.quantize(Decimal("0.0001")).normalize(), "f")
    return "0" if text in {"-0", ""} else text


class Generator:
    def __init__(self, seed: int = 42, customers: int = 800, products: int = 1200):
        self.rng = random.Random(seed)
        rng = self.rng
        self.customers = [
            (
                f"CL-{10000 + i}",
                f"{rng.choice(FIRST)} {rng.choice(LAST)} {rng.choice(LAST)}",
                rng.choice(SEGMENTS),
                rng.choice(PLACES),
            )
            for i in range(customers)
        ]
        self.products = []
        for i in range(products):
            (category, code), subs = rng.choice(list(CATALOG.items()))
            sub = rng.choice(list(subs))
            low, high = subs[sub]
            price = Decimal(rng.randint(low * 100, high * 100)) / 100
            model = f"{rng.choice('ABCDEFGHKLMNPRSTVX')}-{rng.randint(10, 999)}"
            name = f"{sub} {rng.choice(BRANDS)} {model}"
            sub_code = (
                unicodedata.normalize("NFKD", sub).encode("ascii", "ignore")[:2].decode().upper()
            )
            self.products.append((f"{code}-{sub_code}-{10000000 + i}", category, sub, name, price))

    def lines(
        self,
        rows: int,
        first_row_id: int = 1,
        start: dt.date = dt.date(2024, 1, 1),
        days: int = 365,
    ) -> Iterator[dict[str, str]]:
        """Valid sales lines grouped in orders of 1 to 5 lines."""
        rng, row_id, order_no = self.rng, first_row_id, 0
        while row_id < first_row_id + rows:
            order_no += 1
            customer_id, name, segment, home = rng.choice(self.customers)
            place = home if rng.random() < 0.8 else rng.choice(PLACES)  # ship-to varies
            order_date = start + dt.timedelta(days=rng.randrange(days))
            mode, low, high = rng.choice(SHIP_MODES)
            ship_date = order_date + dt.timedelta(days=rng.randint(low, high))
            order_id = f"{COUNTRY_CODES[place[0]]}-{order_date.year}-{first_row_id + order_no:07d}"
            for _ in range(min(rng.randint(1, 5), first_row_id + rows - row_id)):
                product_id, category, sub, pname, price = rng.choice(self.products)
                quantity = rng.randint(1, 9)
                discount = rng.choice(
                    [Decimal(0)] * 6
                    + [Decimal("0.1"), Decimal("0.2"), Decimal("0.15"), Decimal("0.45")]
                )
                sales = price * quantity * (1 - discount)
                margin = Decimal(rng.randint(-40, 45)) / 100
                yield {
                    "row_id": str(row_id),
                    "order_id": order_id,
                    "order_date": order_date.isoformat(),
                    "ship_date": ship_date.isoformat(),
                    "ship_mode": mode,
                    "customer_id": customer_id,
                    "customer_name": name,
                    "segment": segment,
                    "country": place[0],
                    "city": place[1],
                    "state": place[2],
                    "postal_code": place[3],
                    "region": place[4],
                    "product_id": product_id,
                    "category": category,
                    "sub_category": sub,
                    "product_name": pname,
                    "sales": _money(sales),
                    "quantity": str(quantity),
                    "discount": _money(discount),
                    "profit": _money(sales * margin),
                }
                row_id += 1


def break_rule(line: dict[str, str], rule: str) -> dict[str, str]:
    """A copy of a valid line that breaks exactly one rule."""
    bad = dict(line)
    if rule.startswith("missing "):
        bad[rule.removeprefix("missing ")] = ""
    elif rule == "invalid date in order_date":
        bad["order_date"] = "2024-02-30"
    elif rule == "ship_date before order_date":
        bad["ship_date"] = (
            dt.date.fromisoformat(line["order_date"]) - dt.timedelta(days=3)
        ).isoformat()
    elif rule == "quantity is not > 0":
        bad["quantity"] = "0"
    elif rule == "quantity is not an integer":
        bad["quantity"] = "2.5"
    elif rule == "sales is negative":
        bad["sales"] = "-" + line["sales"]
    elif rule == "discount outside [0, 1]":
        bad["discount"] = "1.5"
    elif rule != "wrong number of fields":
        raise ValueError(f"unknown rule {rule}")
    return bad


class Expected:
    """What the generator put in a file, for tests to compare with."""

    def __init__(self) -> None:
        self.lines = 0
        self.duplicates = 0
        self.rejected: Counter = Counter()
        self.customers: set[str] = set()
        self.products: set[str] = set()
        self.sales = Decimal(0)

    def add(self, line: dict[str, str], rule: str | None) -> None:
        self.lines += 1
        if rule == "exact duplicate":
            self.duplicates += 1
        elif rule:
            self.rejected[rule] += 1
        else:
            self.customers.add(line["customer_id"])
            self.products.add(line["product_id"])
            self.sales += Decimal(line["sales"])

    def as_dict(self) -> dict:
        return {
            "lines": self.lines,
            "valid": self.lines - sum(self.rejected.values()) - self.duplicates,
            "duplicates": self.duplicates,
            "quarantined": sum(self.rejected.values()),
            "by_reason": dict(sorted(self.rejected.items())),
            "sales": str(self.sales),
            "customers": sorted(self.customers),
            "products": sorted(self.products),
        }


def _with_bad_lines(
    lines: Iterator[dict[str, str]], rules: list[str], every: int
) -> Iterator[tuple[dict[str, str], str | None]]:
    """Every `every`-th line breaks the next rule in turn (0: no bad lines)."""
    for i, line in enumerate(lines, 1):
        rule = rules[(i // every - 1) % len(rules)] if every and i % every == 0 else None
        yield (break_rule(line, rule) if rule else line), rule


def _with_duplicates(
    lines: Iterator[tuple[dict[str, str], str | None]], every: int
) -> Iterator[tuple[dict[str, str], str | None]]:
    """Every `every`-th line is delivered twice (an export that repeats a line)."""
    for i, (line, rule) in enumerate(lines, 1):
        yield line, rule
        if every and i % every == 0 and rule is None:
            yield line, "exact duplicate"


def write_csv(
    path: Path, lines: Iterator[tuple[dict[str, str], str | None]], expected: Expected
) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_HEADERS.values())
        for line, rule in lines:
            values = [line[c] for c in CSV_HEADERS]
            if rule == "wrong number of fields":
                values = values + ["sobrante"] if expected.rejected[rule] % 2 == 0 else values[:-3]
            writer.writerow(values)
            expected.add(line, rule)


def _json_value(column: str, value: str):
    if value == "":
        return None
    if column in {"sales", "discount", "profit", "quantity"}:
        try:
            return json.loads(value)  # a JSON number (kept as delivered text by the reader)
        except json.JSONDecodeError:
            return value
    return value


def write_json(
    path: Path,
    lines: Iterator[tuple[dict[str, str], str | None]],
    expected: Expected,
    json_lines: bool = False,
) -> None:
    with path.open("w", encoding="utf-8") as fh:
        fh.write("" if json_lines else "[\n")
        for i, (line, rule) in enumerate(lines):
            record = {JSON_KEYS[c]: _json_value(c, v) for c, v in line.items()}
            text = json.dumps(record, ensure_ascii=False)
            fh.write(text + "\n" if json_lines else ("" if i == 0 else ",\n") + "  " + text)
            expected.add(line, rule)
        fh.write("" if json_lines else "\n]\n")


def write_committed_sample(out: Path = PROJECT_ROOT / "data" / "sample") -> dict:
    """The committed sample: 2,400 CSV lines (plus 2 repeated) and 900 JSON records, with bad
    lines of each rule."""
    out.mkdir(parents=True, exist_ok=True)
    gen = Generator(seed=2024, customers=300, products=400)
    files = {}
    csv_expected = Expected()
    write_csv(
        out / "ventas_2024_h1.csv",
        _with_duplicates(
            _with_bad_lines(gen.lines(2400, 1, dt.date(2024, 1, 1), 181), BAD_RULES, 92), 1000
        ),
        csv_expected,
    )
    files["ventas_2024_h1.csv"] = csv_expected.as_dict()
    json_expected = Expected()
    write_json(
        out / "ventas_2024_h2.json",
        _with_bad_lines(gen.lines(900, 2401, dt.date(2024, 7, 1), 184), JSON_BAD_RULES, 75),
        json_expected,
    )
    files["ventas_2024_h2.json"] = json_expected.as_dict()
    (out.parent / f"{out.name}.expected.json").write_text(
        json.dumps(files, indent=1, ensure_ascii=False) + "\n"
    )
    return files


def write_generated(
    rows: int, out: Path, seed: int = 7, bad_every: int = 1000, fmt: str = "csv"
) -> Path:
    """A large file for benchmarks: one bad line per `bad_every` lines, every rule in turn."""
    out.mkdir(parents=True, exist_ok=True)
    gen = Generator(
        seed=seed, customers=max(100, rows // 20), products=max(100, min(rows // 10, 50_000))
    )
    expected = Expected()
    rules = BAD_RULES if fmt == "csv" else JSON_BAD_RULES
    # Row ids (the line key) and order ids far from the committed sample's, so that a
    # generated delivery never overwrites the sample's lines in the warehouse.
    lines = _with_bad_lines(gen.lines(rows, first_row_id=10_000_000 * seed), rules, bad_every)
    path = out / f"ventas_{rows}.{'csv' if fmt == 'csv' else 'jsonl'}"
    if fmt == "csv":
        write_csv(path, lines, expected)
    else:
        write_json(path, lines, expected, json_lines=True)
    summary = expected.as_dict()
    summary["customers"], summary["products"] = len(summary["customers"]), len(summary["products"])
    # beside the folder, not in it: the folder is a delivery, and this file is not sales
    expected_file = out.parent / f"{out.name}.expected.json"
    accounts = json.loads(expected_file.read_text()) if expected_file.exists() else {}
    accounts[path.name] = summary
    expected_file.write_text(json.dumps(accounts, indent=1, sort_keys=True) + "\n")
    return path


def _changed(line: dict[str, str]) -> dict[str, str]:
    """The same line (same row id) delivered again with another quantity, and the amounts that
    go with it."""
    quantity = int(line["quantity"])
    new_quantity = quantity % 9 + 1  # 1..9, never the old one
    factor = Decimal(new_quantity) / Decimal(quantity)
    return {
        **line,
        "quantity": str(new_quantity),
        "sales": _money(Decimal(line["sales"]) * factor),
        "profit": _money(Decimal(line["profit"]) * factor),
    }


def write_increment(
    rows: int,
    out: Path,
    seed: int = 7,
    bad_every: int = 1000,
    changed: int = 5_000,
    new: int = 5_000,
) -> Path:
    """A second delivery onto the file of ``write_generated(rows, seed=seed, bad_every=...)``:
    ``changed`` of its valid lines again (same row ids, spread over the file) with another
    quantity and the amounts that go with it, then ``new`` lines whose row ids follow the file's
    last one. No bad lines. The generator is replayed, not the file read, so the same
    arguments always give the same bytes."""
    out.mkdir(parents=True, exist_ok=True)
    gen = Generator(
        seed=seed, customers=max(100, rows // 20), products=max(100, min(rows // 10, 50_000))
    )
    first_row_id = 10_000_000 * seed
    step = max(1, rows // changed)
    picked = []
    for i, (line, rule) in enumerate(
        _with_bad_lines(gen.lines(rows, first_row_id=first_row_id), BAD_RULES, bad_every)
    ):
        if rule is None and i % step == step // 2 and len(picked) < changed:
            picked.append(_changed(line))
    # the generator goes on where the file ended: new orders, new row ids
    fresh = gen.lines(new, first_row_id=first_row_id + rows)
    lines = ((line, None) for line in [*picked, *fresh])
    path = out / f"ventas_{rows}_increment_{changed}_{new}.csv"
    expected = Expected()
    write_csv(path, lines, expected)
    summary = expected.as_dict()
    summary["customers"], summary["products"] = len(summary["customers"]), len(summary["products"])
    summary["changed"], summary["new"] = len(picked), expected.lines - len(picked)
    expected_file = out.parent / f"{out.name}.expected.json"
    accounts = json.loads(expected_file.read_text()) if expected_file.exists() else {}
    accounts[path.name] = summary
    expected_file.write_text(json.dumps(accounts, indent=1, sort_keys=True) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "data" / "generated")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--bad-every", type=int, default=1000, help="one bad line every N (0: none)"
    )
    parser.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    parser.add_argument("--committed", action="store_true", help="rewrite data/sample/")
    args = parser.parse_args()
    if args.committed:
        files = write_committed_sample()
        for name, exp in files.items():
            print(f"{name}: {exp['lines']} lines, {exp['quarantined']} bad")
        return
    path = write_generated(args.rows, args.out, args.seed, args.bad_every, args.format)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
