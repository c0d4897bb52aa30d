"""No secret in any artifact of a run: executed notebooks (and their HTML), Airflow's logs and
metadata, the services' logs. Secrets live only in the owner-only files made to hold them."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from medallion.settings import LOCAL_DIR, OUTPUTS_DIR
from tests.reliability.conftest import Outcome, PipelineRun
from tests.reliability.test_faults import LINES, delivery, published

pytestmark = pytest.mark.reliability
# Files made to hold secrets: owner-only, and nothing else may contain one.
SECRET_STORES = {"secrets.json", "connections.json", "security.toml", "tls.pem"}
NOT_ARTIFACTS = {".dat", ".idx", ".vif"}  # object data of the embedded S3 (the files' bytes)


def secret_values() -> list[bytes]:
    values = json.loads((LOCAL_DIR / "secrets.json").read_text()).values()
    out = []
    for value in map(str, values):
        if "-----BEGIN" in value:  # a PEM: look for each line of its body
            out += [line.encode() for line in value.splitlines() if len(line) >= 40]
        elif len(value) >= 12:
            out.append(value.encode())
    return out


def artifacts() -> list[Path]:
    roots = [OUTPUTS_DIR, LOCAL_DIR / "airflow", LOCAL_DIR / "seaweedfs"]
    files = [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]
    files += [p for p in LOCAL_DIR.iterdir() if p.is_file()]
    files += list((LOCAL_DIR / "postgres").glob("*.log"))
    return [p for p in files if p.name not in SECRET_STORES and p.suffix not in NOT_ARTIFACTS]


def test_no_secret_in_any_artifact_of_a_run(db, tmp_path, report):
    folder, sales = delivery(tmp_path, "SECRETS")
    code, output = PipelineRun(folder).wait()
    assert code == 0, output[-3000:]
    row = published(db, "secret scan after a run", "published", "SECRETS",
                    PipelineRun.run_id(output), sales)  # fmt: skip
    secrets = secret_values()
    assert len(secrets) >= 5
    files = artifacts()
    assert any(p.suffix == ".ipynb" for p in files) and any(p.suffix == ".log" for p in files)
    assert any(p.suffix == ".html" for p in files) and OUTPUTS_DIR / "index.html" in files
    leaks = [
        f"{path}: secret #{i}"
        for path in files
        for i, secret in enumerate(secrets)
        if secret in path.read_bytes()
    ]
    assert leaks == []
    for store in LOCAL_DIR.rglob("*"):
        if store.name in SECRET_STORES:
            assert stat.S_IMODE(store.stat().st_mode) == 0o600, store
    report.add(Outcome(row.scenario, f"no secret in {len(files)} files", LINES,
                       row.in_staging, 0, row.duplicated))  # fmt: skip
