"""Object-store plumbing: temporary folders (no server) and the manifests between steps."""

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from medallion import storage, transit


@pytest.mark.pure  # no service: runs without starting any
def test_work_dirs_of_dead_processes_are_removed_and_live_ones_kept():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    root = Path(tempfile.gettempdir())
    orphan = root / f"{storage.TEMP_PREFIX}{gone.pid}-left-by-a-killed-kernel"
    (orphan / "part.parquet").parent.mkdir(parents=True, exist_ok=True)
    (orphan / "part.parquet").write_bytes(b"half written")
    with storage.work_dir() as mine:
        assert Path(mine).name.startswith(f"{storage.TEMP_PREFIX}{os.getpid()}-")
        assert not orphan.exists()
        with storage.work_dir():  # a second one of the same process keeps the first
            assert Path(mine).exists()


def test_a_step_run_before_the_one_it_reads_names_the_notebook_to_run_first(s3, db, params):
    """Notebooks 02, 03 and 04 (and the merge's reload) run for a run id whose earlier step
    never ran: a MissingStep that names the notebook to run first, never S3's NoSuchKey."""
    run = f"test_storage__{uuid.uuid4().hex[:8]}"
    bronze, silver, gold = params["bronze_bucket"], params["silver_bucket"], params["gold_bucket"]
    first = "run the {step} notebook \\({notebook}\\) for this run id first"
    early = [  # (what the notebook calls, the step it needs)
        (lambda: storage.file_manifests(s3, bronze, run, "bronze", "ventas.csv"), "bronze"),  # 02
        (lambda: storage.file_manifests(s3, bronze, run, "bronze"), "bronze"),  # 02, whole run
        (lambda: storage.file_manifests(s3, silver, run, "silver"), "silver"),  # 03
        (lambda: transit.gold_manifest(s3, gold, run), "gold"),  # 04
        (lambda: transit.load_gold(db, s3, gold, run), "gold"),  # 04, the merge's reload
    ]
    for call, step in early:
        notebook = storage.STEP_NOTEBOOKS[step]
        with pytest.raises(storage.MissingStep, match=first.format(step=step, notebook=notebook)):
            call()
    with pytest.raises(storage.MissingStep, match=f"run '{run}' in s3://{gold}"):
        transit.gold_manifest(s3, gold, run)
    # a bucket that does not exist yet (a fresh store) is the same answer
    with pytest.raises(storage.MissingStep, match="01_bronze_ingest"):
        storage.file_manifests(s3, f"no-such-bucket-{uuid.uuid4().hex[:8]}", run, "bronze")
    with pytest.raises(storage.MissingStep, match="03_gold_model"):
        storage.get_manifest(s3, f"no-such-bucket-{uuid.uuid4().hex[:8]}", run, "gold")

    storage.put_json(s3, gold, storage.manifest_key(run, "gold"), {"run_id": run})
    assert transit.gold_manifest(s3, gold, run) == {"run_id": run}
    s3.remove_object(gold, storage.manifest_key(run, "gold"))


def test_parquet_objects_carry_the_range_of_dates_and_amounts_not_of_text(s3, params):
    import datetime as dt
    from decimal import Decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "customer_id": pa.array(["C2", "C1"]),
            "order_date": pa.array([dt.date(2024, 3, 1), dt.date(2024, 1, 5)]),
            "sales": pa.array([Decimal("1.5"), Decimal("-2")], pa.decimal128(18, 4)),
        }
    )
    key = f"tests/statistics-{uuid.uuid4()}.parquet"
    with storage.ParquetUpload(s3, params["silver_bucket"], key, table.schema) as out:
        out.write(table)
    with storage.downloaded(s3, params["silver_bucket"], key) as path:
        group = pq.ParquetFile(path).metadata.row_group(0)
    s3.remove_object(params["silver_bucket"], key)
    ranges = {group.column(i).path_in_schema: group.column(i).statistics for i in range(3)}
    assert (ranges["order_date"].min, ranges["order_date"].max) == (
        dt.date(2024, 1, 5),
        dt.date(2024, 3, 1),
    )
    assert ranges["sales"].has_min_max
    assert ranges["customer_id"] is None or not ranges["customer_id"].has_min_max
