"""The whole DAG on the committed sample, twice, against the real services (`make run`'s path)."""

import json
import os
import re
import sqlite3
import subprocess
import sys
from collections import Counter
from contextlib import closing
from decimal import Decimal

import pytest
from sqlalchemy import text

from medallion import storage
from medallion.settings import LOCAL_DIR, OUTPUTS_DIR, PROJECT_ROOT, run_slug

pytestmark = pytest.mark.e2e

TABLES = {
    "staging.dim_inventario": "inventario_key",
    "staging.dim_cliente": "cliente_key",
    "staging.fact_operaciones_ventas": "line_key",
    "staging.vw_operaciones_ventas": "line_key",
}


def run_pipeline(*args: str) -> str:
    """`python -m medallion.cli run` as `make run` calls it; returns the run id it printed."""
    return re.search(r"^run_id:\s+(\S+)", run_pipeline_output(*args), re.M).group(1)


def run_pipeline_output(*args: str) -> str:
    """What `python -m medallion.cli run` printed; the run must succeed."""
    proc = subprocess.run(
        [sys.executable, "-m", "medallion.cli", "run", *args],
        cwd=PROJECT_ROOT,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def snapshot(db) -> dict[str, tuple[int, str]]:
    """Row count and a hash of every row (all columns, timestamps included) per table."""
    out = {}
    with db.connect() as conn:
        for table, key in TABLES.items():
            out[table] = tuple(
                conn.execute(
                    text(
                        "select count(*), "
                        f"md5(coalesce(string_agg(t::text, '|' order by {key}), '')) "
                        f"from {table} as t"
                    )
                ).one()
            )
    return out


@pytest.fixture(scope="module")
def first_run_output(db) -> tuple[str, dict]:
    """What the command printed, and what the DAG's process handed it (its result file)."""
    output = run_pipeline_output()
    return output, json.loads((LOCAL_DIR / "airflow" / "last_run.result.json").read_text())


@pytest.fixture(scope="module")
def first_run(first_run_output, db):
    run_id = re.search(r"^run_id:\s+(\S+)", first_run_output[0], re.M).group(1)
    return run_id, snapshot(db)


def test_the_summary_printed_is_the_warehouse_s(first_run, first_run_output, db):
    # the DAG's process computes it (it has pandas loaded); the command only prints it
    from contextlib import redirect_stdout
    from io import StringIO

    from medallion import cli, runs

    output, handed_over = first_run_output
    expected = runs.summary(db, first_run[0])
    assert handed_over["summary"] == json.loads(json.dumps(expected))
    printed = StringIO()
    with redirect_stdout(printed):
        cli.print_summary(expected)
    assert "líneas leídas" in printed.getvalue()
    assert printed.getvalue() in output


def test_the_summary_shows_the_staging_counts_the_result_notebook_recorded(
    first_run, first_run_output, db
):
    from medallion import results

    recorded = results.recorded_staging_rows(db, first_run[0])
    counted = {t: int(n) for t, n in results.staging_rows(db).itertuples(index=False)}
    assert recorded == counted  # counted once, by notebook 05
    assert first_run_output[1]["summary"]["staging_rows"] == recorded


@pytest.fixture(scope="module")
def expected():
    import json

    files = json.loads((PROJECT_ROOT / "data" / "sample.expected.json").read_text())
    reasons: Counter = Counter()
    for f in files.values():
        reasons.update(f["by_reason"])
    return {
        "lines": sum(f["lines"] for f in files.values()),
        "valid": sum(f["valid"] for f in files.values()),
        "quarantined": sum(f["quarantined"] for f in files.values()),
        "duplicates": sum(f["duplicates"] for f in files.values()),
        "sales": sum(Decimal(f["sales"]) for f in files.values()),
        "customers": len(set().union(*(f["customers"] for f in files.values()))),
        "products": len(set().union(*(f["products"] for f in files.values()))),
        "by_reason": dict(reasons),
    }


def test_staging_holds_one_fact_row_per_valid_line(
    first_run, expected, sample_expected, db, s3, params
):
    """Counted on the run's own line keys (its silver objects) and the sample's own ids: rows
    other tests put in the same database do not change it, whatever ran before."""
    run_id, _ = first_run
    manifests = storage.file_manifests(s3, params["silver_bucket"], run_id, "silver")
    keys = [
        key
        for m in manifests
        for obj in m["objects"]
        for key in storage.read_parquet(s3, params["silver_bucket"], obj)["line_key"].to_pylist()
    ]
    customers = sorted(set().union(*(f["customers"] for f in sample_expected.values())))
    products = sorted(set().union(*(f["products"] for f in sample_expected.values())))
    with db.connect() as conn:

        def scalar(sql: str, **values):
            return conn.execute(text(sql), values).scalar()

        in_keys = "line_key = any(:keys)"
        facts = scalar(f"select count(*) from staging.fact_operaciones_ventas where {in_keys}",
                       keys=keys)  # fmt: skip
        in_view = scalar(f"select count(*) from staging.vw_operaciones_ventas where {in_keys}",
                         keys=keys)  # fmt: skip
        total = scalar(f"select sum(sales) from staging.fact_operaciones_ventas where {in_keys}",
                       keys=keys)  # fmt: skip
        orphans = scalar(
            "select count(*) from staging.fact_operaciones_ventas "
            f"where {in_keys} and (cliente_key = -1 or inventario_key = -1)",
            keys=keys,
        )
        dim_customers = scalar(
            "select count(*) from staging.dim_cliente where customer_id = any(:ids)", ids=customers
        )
        dim_products = scalar(
            "select count(*) from staging.dim_inventario where product_id = any(:ids)", ids=products
        )
    assert len(keys) == len(set(keys)) == expected["valid"]
    assert facts == in_view == expected["valid"]
    assert (dim_customers, dim_products) == (expected["customers"], expected["products"])
    assert total == expected["sales"]  # exact decimals: sums reconcile with the source
    assert orphans == 0


def test_run_log_accounts_for_every_line(first_run, expected, db):
    run_id, _ = first_run
    with db.connect() as conn:
        lines_in, rows_out, quarantined, duplicates = conn.execute(
            text(
                "select sum(lines_in), sum(rows_out), sum(rows_quarantined), sum(rows_duplicate) "
                "from audit.run_log where run_id = :r and step = 'silver'"
            ),
            {"r": run_id},
        ).one()
    assert lines_in == expected["lines"]
    assert (rows_out, quarantined, duplicates) == (
        expected["valid"],
        expected["quarantined"],
        expected["duplicates"],
    )


def files_by_detail(db, run_id: str, step: str, detail: str) -> list[tuple[str, int]]:
    """(value of ``details ->> detail``, files) of a step of the run, from audit.run_log."""
    with db.connect() as conn:
        return conn.execute(
            text(
                "select details ->> :d, count(*) from audit.run_log "
                "where run_id = :r and step = :s group by 1"
            ),
            {"d": detail, "r": run_id, "s": step},
        ).all()


def test_silver_read_the_delivered_files_in_place_not_downloaded_back(first_run, db):
    run_id, _ = first_run
    assert files_by_detail(db, run_id, "silver", "read_from") == [("local file", 2)]


def test_bronze_took_each_file_s_hash_from_discovery_not_reading_it_twice(first_run, db):
    run_id, _ = first_run
    assert files_by_detail(db, run_id, "bronze", "hashed_by") == [("discovery", 2)]


def test_quarantine_names_the_reason_of_every_bad_line(first_run, expected, s3, params):
    run_id, _ = first_run
    manifests = storage.file_manifests(s3, params["silver_bucket"], run_id, "silver")
    reasons: Counter = Counter()
    for key in (k for m in manifests for k in m["quarantine"]):
        rows = storage.read_parquet(s3, params["silver_bucket"], key).to_pylist()
        assert all(r["source_line"] and r["raw_record"] and r["source_object"] for r in rows)
        reasons.update(re.sub(r": expected.*", "", r["reject_reason"]) for r in rows)
    assert dict(reasons) == expected["by_reason"]


def test_second_run_finds_nothing_new_and_changes_nothing(first_run, db):
    _, before = first_run
    proc = run_pipeline_output()
    assert "archivos nuevos:       0 de 2" in proc
    assert proc.count("ya cargado, se omite") == 2
    run_id = re.search(r"^run_id:\s+(\S+)", proc, re.M).group(1)
    assert snapshot(db) == before
    with db.connect() as conn:
        steps = dict(
            conn.execute(
                text("select step, count(*) from audit.run_log where run_id = :r group by step"),
                {"r": run_id},
            ).all()
        )
    assert steps == {"discover": 2}  # nothing read, merged or published again
    # the steps that need files were skipped at once: no pass of `dags test` found nothing to
    # run and waited (it waited a second per step, six in all)
    assert "No tasks to run" not in (LOCAL_DIR / "airflow" / "last_run.log").read_text()
    with closing(sqlite3.connect(LOCAL_DIR / "airflow" / "airflow.db")) as airflow_db:
        files = airflow_db.execute(
            "select value from xcom where run_id = ? and task_id = 'file_tasks'", (run_id,)
        ).fetchall()
    assert files == [("[]",)]  # what the file steps, if cleared, expand over: no file


def test_executed_notebooks_are_kept_without_secrets(first_run, secrets_in_use):
    run_id, _ = first_run
    folder = OUTPUTS_DIR / run_slug(run_id)
    notebooks = sorted(p.name for p in folder.glob("*.ipynb"))
    assert notebooks == [  # one copy per delivered file of the per-file steps
        "01_bronze_ingest__ventas_2024_h1.csv.ipynb",
        "01_bronze_ingest__ventas_2024_h2.json.ipynb",
        "02_silver_clean__ventas_2024_h1.csv.ipynb",
        "02_silver_clean__ventas_2024_h2.json.ipynb",
        "03_gold_model.ipynb",
        "04_load_postgres.ipynb",
        "05_resultado.ipynb",
    ]
    # each one also as HTML beside it, self-contained (nothing loaded from elsewhere)
    for name in notebooks:
        html = (folder / name).with_suffix(".html").read_text()
        assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"https?://", html), name
    assert secrets_in_use, "the tests must know the passwords they use"
    record = [
        *OUTPUTS_DIR.rglob("*.ipynb"),
        *OUTPUTS_DIR.rglob("*.html"),
        *OUTPUTS_DIR.rglob("*.json"),
    ]
    assert OUTPUTS_DIR / "index.html" in record and folder / "run.json" in record
    for path in record:
        content = path.read_text()
        for secret in secrets_in_use:
            assert secret not in content, f"{path} contains a password"


def test_the_run_record_lists_the_run_with_its_counts(first_run, expected):
    from medallion import report

    run_id, _ = first_run
    record = json.loads((OUTPUTS_DIR / run_slug(run_id) / "run.json").read_text())
    assert record["status"] == "success" and record["failed"] == []
    assert record["totals"] == {
        "lines_in": expected["lines"],
        "silver": expected["valid"],
        "quarantined": expected["quarantined"],
        "duplicates": expected["duplicates"],
    }
    assert {f["file"]: (f["decision"], f["status"]) for f in record["files"]} == {
        "ventas_2024_h1.csv": ("new", "loaded"),
        "ventas_2024_h2.json": ("new", "loaded"),
    }
    merged = {m["table"]: m for m in record["merge"]}
    fact = merged["staging.fact_operaciones_ventas"]
    assert fact["inserted"] + fact["updated"] + fact["unchanged"] == expected["valid"]
    listed = {r["run_id"]: r for r in report.runs(OUTPUTS_DIR)}
    assert [n["name"] for n in listed[run_id]["notebooks"]][-1] == "05_resultado"
    index = (OUTPUTS_DIR / "index.html").read_text()
    assert f'data-run-id="{run_id}" data-status="success"' in index
    assert f'href="{run_slug(run_id)}/05_resultado.html"' in index


def test_a_file_that_breaks_the_contract_fails_alone_and_clearly(tmp_path, db, first_run):
    from tests.corpus import CASES, render_csv
    from tests.test_airflow import sales_lines

    folder = tmp_path / "entrega"
    folder.mkdir()
    (folder / "ventas_buenas.csv").write_bytes(render_csv(sales_lines("E2E", 10)))
    for case in CASES:
        if case.name in {"header_only.csv", "too_many_rejects.csv"}:
            (folder / case.name).write_bytes(case.build())
    before = snapshot(db)
    proc = subprocess.run(
        [sys.executable, "-m", "medallion.cli", "run", "--input", str(folder)],
        cwd=PROJECT_ROOT,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode != 0
    assert "header_only.csv: the file has a header but no sales lines" in proc.stderr
    assert re.search(r"too_many_rejects\.csv: 4 of 8 lines \(50%\) were rejected", proc.stderr)
    assert "Traceback" not in proc.stderr
    assert re.search(r"files.02_silver_clean \[header_only.csv\]\s+failed", proc.stdout)
    run_id = re.search(r"run (manual__\S+)\)", proc.stderr).group(1)
    with db.connect() as conn:
        statuses = dict(
            conn.execute(
                text(
                    "select regexp_replace(source, '.*/', ''), status from audit.run_log "
                    "where run_id = :r and step = 'silver'"
                ),
                {"r": run_id},
            ).all()
        )
        ledger = dict(
            conn.execute(
                text("select file_name, status from audit.deliveries where run_id = :r"),
                {"r": run_id},
            ).all()
        )
    assert statuses == {
        "ventas_buenas.csv": "success",
        "header_only.csv": "failed",
        "too_many_rejects.csv": "failed",
    }
    assert ledger == {
        "ventas_buenas.csv": "loaded",
        "header_only.csv": "failed",
        "too_many_rejects.csv": "failed",
    }
    # the good file was published; nothing of the bad ones
    after = snapshot(db)
    fact = "staging.fact_operaciones_ventas"
    assert after[fact][0] == before[fact][0] + 10
    # the run is in the record as failed, with each failed task and why
    record = json.loads((OUTPUTS_DIR / run_slug(run_id) / "run.json").read_text())
    assert record["status"] == "failed"
    why = {(f["task"], f["file"]): f["message"] for f in record["failed"]}
    assert (
        "the file has a header but no sales lines"
        in why[("files.02_silver_clean", "header_only.csv")]
    )
    assert (
        "4 of 8 lines (50%) were rejected" in why[("files.02_silver_clean", "too_many_rejects.csv")]
    )
    index = (OUTPUTS_DIR / "index.html").read_text()
    assert f'data-run-id="{run_id}" data-status="failed"' in index
    assert "header_only.csv: the file has a header but no sales lines" in index
