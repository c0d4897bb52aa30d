"""Silver's fast paths give what the plain ones give: rules on several threads, the Arrow
date path, the sorted fingerprint set, the split by slices, Arrow's UTF-8 check."""

import codecs
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from medallion import csv_reader, formats, sample, silver
from medallion.contract import load_contract
from medallion.fingerprints import Fingerprints
from medallion.values import _ISO, _SLASHED, parse_dates


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A generated delivery with every kind of bad line, plus exact duplicates and blank lines
    spread over many chunks."""
    path = sample.write_generated(3_000, tmp_path_factory.mktemp("gen"), bad_every=37)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines + lines[1:200:7] + ["\n"] + lines[500:520]), encoding="utf-8")
    return path


def test_rules_on_several_threads_change_nothing(generated):
    contract = replace(load_contract(), max_reject_share=1.0)
    runs = [
        silver.clean_local(generated, contract, run_id="t", batch_size=97, workers=w)
        for w in (1, 2, 3)
    ]
    (report, good, bad), *others = runs
    assert report.quarantined and report.duplicates and report.blank_lines
    assert report.lines_in == report.rows_out + report.quarantined + report.duplicates
    for other_report, other_good, other_bad in others:
        assert other_good.equals(good) and other_bad.equals(bad)
        assert other_report.as_row() == report.as_row()
        assert other_report.rule_rows() == report.rule_rows()
    # and the chunk size does not matter either
    one_chunk = silver.clean_local(generated, contract, run_id="t", batch_size=100_000)
    assert one_chunk[1].equals(good) and one_chunk[2].equals(bad)
    assert one_chunk[0].rule_rows() == report.rule_rows()


@pytest.mark.parametrize("twist", ["plain", "quoted-line-end", "long-line"])
def test_a_file_read_in_small_blocks_gives_what_one_block_gives(
    generated, tmp_path, monkeypatch, twist
):
    """The file in blocks of about 16 lines gives what it gives in one block: the same silver
    and quarantine rows, line numbers included. Also when a block in the middle has a quoted
    field that goes on to the next line (the line-by-line reader takes the rest from that
    block on) or a line longer than the cap, cut inside a block or across blocks (both keep
    the line's first characters)."""
    contract = replace(load_contract(), max_reject_share=1.0)
    contract = replace(contract, limits=replace(contract.limits, max_line_kb=1))
    lines = generated.read_text(encoding="utf-8").splitlines(keepends=True)
    middle = len(lines) // 2
    if twist == "quoted-line-end":  # a customer name over two lines, as Excel quotes it
        fields = lines[middle].split(",")
        fields[6] = '"Ana\nDiaz"'
        lines[middle] = ",".join(fields)
    elif twist == "long-line":
        lines[middle] = lines[middle].rstrip("\n") + "x" * 20_000 + "\n"  # over blocks too
    path = tmp_path / f"{twist}.csv"
    path.write_text("".join(lines), encoding="utf-8")

    whole = silver.clean_local(path, contract, run_id="t", batch_size=100)
    monkeypatch.setattr(csv_reader, "_CSV_BLOCK", 4_096)  # about 16 lines
    blocks = silver.clean_local(path, contract, run_id="t", batch_size=100)

    (report, good, bad), (block_report, block_good, block_bad) = whole, blocks
    assert report.lines_in + report.blank_lines == len(lines) - 1 and report.quarantined
    assert block_good.equals(good)
    by_line = [("source_line", "ascending"), ("reject_reason", "ascending")]
    assert block_bad.sort_by(by_line).equals(bad.sort_by(by_line))  # a block's bad lines last
    assert block_report.as_row() == report.as_row()


def _pandas_dates(values: pd.Series, date_format: str) -> pd.Series:
    """The reference: every value through pandas (the path before the fast one)."""
    v = values.str.strip()
    out = pd.Series(pd.NaT, index=v.index, dtype="datetime64[us]")
    iso = v.str.fullmatch(_ISO.pattern).fillna(False)
    out[iso] = pd.to_datetime(v[iso].str.slice(0, 10), format="%Y-%m-%d", errors="coerce")
    parts = v[~iso].str.extract(_SLASHED)
    p = parts[parts[0].notna()]
    day, month = (p[0], p[1]) if date_format == "dd/mm/yyyy" else (p[1], p[0])
    text = p[2] + "-" + month.str.zfill(2) + "-" + day.str.zfill(2)
    out[p.index] = pd.to_datetime(text, format="%Y-%m-%d", errors="coerce")
    return out


@pytest.mark.parametrize("date_format", ["dd/mm/yyyy", "mm/dd/yyyy"])
def test_fast_dates_are_pandas_dates(date_format):
    odd = [
        "2023-02-29", "2024-02-30", "1900-02-29", "2000-02-29", "1899-12-31", "2200-01-01",
        " 2024-01-05", "2024-1-5", "05/01/2024", None, "", "2024-13-01", "2024-00-10",
        "2024-01-00", "2024-01-32", "2024-01-05T10:00", "0001-01-01", "9999-12-31",
        "２０２４-01-01",
    ]  # fmt: skip
    days = pd.date_range("1900-01-01", "2199-12-31").strftime("%Y-%m-%d").tolist()
    values = pd.Series(odd + days, dtype=pd.StringDtype("pyarrow"))
    assert parse_dates(values, date_format).equals(_pandas_dates(values, date_format))


@pytest.mark.parametrize("bits", [64, 128])
@pytest.mark.parametrize("spread", ["small", "full"])  # full: the bitmap's slots differ
def test_fingerprints_remember_like_a_set(bits, spread):
    rng = np.random.default_rng(3)
    pool = np.arange(8, dtype=np.uint64)
    if spread == "full":
        pool = rng.integers(0, 2**64 - 1, 8, dtype=np.uint64, endpoint=True)
        pool[:2] = pool[2] ^ np.uint64(1), pool[2] ^ np.uint64(1 << 63)  # one slot, two slots
    for _ in range(200):
        prints, seen = Fingerprints(max_run=int(rng.integers(1, 50))), set()
        for _ in range(int(rng.integers(1, 6))):
            n = int(rng.integers(0, 40))
            hi = pool[rng.integers(0, 8, n)]
            lo = rng.integers(0, 3, n).astype(np.uint64) if bits == 128 else None
            keys = list(zip(hi, lo if lo is not None else [0] * n, strict=True))
            expected = []
            for key in keys:
                expected.append(key in seen)
                seen.add(key)
            assert prints.add(hi, lo).tolist() == expected
        assert len(prints) == len(seen)


@pytest.mark.pure
def test_rows_dropped_by_slices_are_rows_filtered():
    rng = np.random.default_rng(5)
    for n in (0, 1, 2, 7, 40, 2_000):
        table = pa.table({"i": np.arange(n), "s": [f"v{i}" for i in range(n)]})
        for share in (0.0, 0.01, 0.3, 0.9, 1.0):  # few runs (slices) and many (filter)
            drop = rng.random(n) < share
            kept = silver.without_rows(table, drop)
            assert kept.equals(table.filter(pa.array(~drop, pa.bool_())))


def _decoder_says(data: bytes) -> int | None:
    """The reference: Python's incremental UTF-8 decoder over the whole file."""
    try:
        codecs.decode(data, "utf-8")
    except UnicodeDecodeError as err:
        return err.start
    return None


@pytest.mark.pure
def test_utf8_checked_by_arrow_is_utf8_decoded(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "_BLOCK", 8)  # characters and lines cut by blocks
    good = "a,ñ,€\n𝄞x,\u00e9\n".encode()
    bad = [b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x81", b"\xff"]
    cases = [good, good * 9, good.replace(b"\n", b""), b"x" * 80, good[:-3]]
    cases += [good * 3 + b + good for b in bad] + [good * 5 + b for b in bad]
    for i, data in enumerate(cases):
        path = tmp_path / f"{i}.csv"
        path.write_bytes(data)
        assert formats._decodes(path, "utf-8", "t", None) == _decoder_says(data), data
        assert formats.utf8_valid(data) == (_decoder_says(data) is None)
