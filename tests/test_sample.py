"""The committed sample is the generator's output, and it carries bad lines of every rule."""

import json

import pytest

from medallion import sample
from medallion.settings import PROJECT_ROOT

pytestmark = pytest.mark.pure  # no service: runs without starting any


def test_committed_sample_is_reproducible(tmp_path):
    out = tmp_path / "sample"
    sample.write_committed_sample(out)
    committed = PROJECT_ROOT / "data" / "sample"
    for path in committed.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    assert (tmp_path / "sample.expected.json").read_text() == (
        PROJECT_ROOT / "data" / "sample.expected.json"
    ).read_text()


def test_sample_has_bad_lines_of_each_rule():
    files = json.loads((PROJECT_ROOT / "data" / "sample.expected.json").read_text())
    seen = set()
    for f in files.values():
        seen |= set(f["by_reason"])
        assert f["lines"] == f["valid"] + f["quarantined"] + f["duplicates"]
    assert seen == set(sample.BAD_RULES)
    assert sum(f["duplicates"] for f in files.values()) > 0


def test_generated_file_matches_its_expectations(tmp_path):
    path = sample.write_generated(500, tmp_path / "generated", bad_every=50)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # a clean delivery
    expected = json.loads((tmp_path / "generated.expected.json").read_text())[path.name]
    assert expected["lines"] == 500
    assert expected["quarantined"] == 10
    assert sum(1 for _ in path.open()) == 501  # header + lines
