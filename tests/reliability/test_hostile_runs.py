"""Hostile input through the whole DAG: every bad value ends as a quarantined line with its
reason and the rest of each file is published; a structurally broken file fails its own task
at once (no retries) while the others are published."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import text

from medallion import storage
from medallion.settings import load_params
from tests.corpus import HOSTILE, render_csv
from tests.reliability.conftest import Outcome, PipelineRun
from tests.test_airflow import sales_lines

pytestmark = pytest.mark.reliability
BROKEN = "truncated.csv.gz"
# backslashes are ordinary characters in a Linux file name (a name from Windows)
ODD_NAME = "entrega\\..\\..\\evil ventas.csv"


def test_hostile_values_are_quarantined_with_their_reason_and_the_rest_is_published(
    db, s3, tmp_path, report
):
    folder = tmp_path / "hostile"
    folder.mkdir()
    cases = {c.name: c for c in HOSTILE if not c.fails}
    for case in cases.values():
        (folder / case.name).write_bytes(case.build())
    (folder / BROKEN).write_bytes(next(c for c in HOSTILE if c.name == BROKEN).build())
    (folder / ODD_NAME).write_bytes(render_csv(sales_lines("ODD", 7)))
    code, output = PipelineRun(folder).wait()
    assert code != 0  # the broken file fails the run's record, after the others are published
    run_id = re.search(r"\(run (manual__\S+)\)", output).group(1)
    # the broken file: failed at once (a data error is not retried), named with its reason
    assert re.search(rf"files\.01_bronze_ingest \[{re.escape(BROKEN)}\]\s+failed", output) or (
        re.search(rf"files\.02_silver_clean \[{re.escape(BROKEN)}\]\s+failed", output)
    ), output[-3000:]
    assert not any(BROKEN in line and "up_for_retry" in line for line in output.splitlines())
    assert f"{BROKEN}: " in output and "the gzip file is truncated" in output

    with db.connect() as conn:
        published = conn.execute(
            text("select rows_out from audit.run_log where run_id = :r and step = 'publish'"),
            {"r": run_id},
        ).scalar()
        per_file = {
            source: (lines_in, rows_out, quarantined)
            for source, lines_in, rows_out, quarantined in conn.execute(
                text("select source, lines_in, rows_out, rows_quarantined from audit.run_log "
                     "where run_id = :r and step = 'silver'"),
                {"r": run_id},
            ).all()
        }  # fmt: skip
    assert published is not None, "the good lines of the run were not published"
    for name, case in cases.items():
        (counts,) = [v for source, v in per_file.items() if source.endswith(name)]
        assert counts[1:] == (case.silver, case.quarantined), name
        assert counts[0] == case.silver + case.quarantined + case.duplicates, name
    assert [v for s, v in per_file.items() if "evil" in s] == [(7, 7, 0)]

    params = load_params("local")
    manifests = storage.file_manifests(s3, params["silver_bucket"], run_id, "silver")
    reasons = {
        r["reject_reason"]
        for key in (k for m in manifests for k in m["quarantine"])
        for r in storage.read_parquet(s3, params["silver_bucket"], key).to_pylist()
    }
    for case in cases.values():
        assert set(case.reasons) <= reasons, case.name
    lines_in = sum(v[0] or 0 for v in per_file.values())  # the broken file: none read
    quarantined = sum(v[2] or 0 for v in per_file.values())
    # the corpus' files share row ids: staging holds their distinct line keys
    report.add(Outcome(f"hostile values: {len(cases)} files",
                       f"published; {BROKEN} failed at once",
                       lines_in, published, quarantined, 0))  # fmt: skip
