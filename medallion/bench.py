"""`make bench`: the pipeline at scale against the machine's ceiling and the naive way.

    python -m medallion.bench --rows 1000000

On the same data and services it measures:
* ours: `make run INPUT=<file>` end to end (the DAG, start-up included), and per step the wall
  time and the peak RSS of the step's kernel (audit.step_metrics), rows/s and MB/s;
* the fixed cost of a run: the same DAG on a 100-line file;
* the ceiling: `psql \\copy` of the same fact rows from CSV into an unindexed copy of the
  transit table (unlogged like it);
* the naive way (the seed's): whole file in memory with pandas, default `to_sql`, on a slice
  (scaled to the full size and labelled so);
* an incremental run: a 10k-line delivery onto the warehouse that now holds the big load.
It works in a database of its own, `medallion_bench`, created empty at the start: "ours" is a
first load (every line inserted), and the user's warehouse is never touched. Results are printed
as a table and kept in .local/bench/bench-<rows>.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from medallion import sample, services, storage, warehouse
from medallion.gold import gold_key
from medallion.runs import airflow_env, run_dag
from medallion.settings import (
    LOCAL_DIR,
    PROJECT_ROOT,
    env_var_name,
    get_connection,
    load_params,
)

BENCH_DIR = LOCAL_DIR / "bench"
BENCH_DATABASE = "medallion_bench"
NAIVE_SLICE = 100_000


def _generated(rows: int, seed: int, bad_every: int = 1000) -> Path:
    path = PROJECT_ROOT / "data" / "generated" / f"ventas_{rows}.csv"
    if seed != 7:
        path = path.with_name(f"ventas_{rows}_seed{seed}.csv")
    if not path.exists():
        written = sample.write_generated(rows, path.parent, seed=seed, bad_every=bad_every)
        written.rename(path)
    return path


def _run(input_path: Path, label: str) -> dict:
    started = time.monotonic()
    result = run_dag(
        {"input_path": str(input_path)}, airflow_env(), BENCH_DIR / f"airflow-{label}.log"
    )
    if result["state"] != "success":
        raise RuntimeError(f"bench run {label} failed: see {BENCH_DIR}/airflow-{label}.log")
    return {"run_id": result["run_id"], "wall_seconds": round(time.monotonic() - started, 1)}


def _steps(eng, run_id: str) -> list[dict]:
    with eng.connect() as conn:
        return [
            dict(r._mapping)
            for r in conn.execute(
                text(
                    "select step, wall_seconds::float, peak_rss_mb::float from audit.step_metrics "
                    "where run_id = :r order by recorded_at"
                ),
                {"r": run_id},
            )
        ]


def _merge_seconds(eng, run_id: str) -> dict[str, float]:
    with eng.connect() as conn:
        rows = conn.execute(
            text(
                "select step, extract(epoch from max(finished_at) - min(started_at))::float "
                "from audit.run_log where run_id = :r and step in ('merge', 'publish') "
                "group by step"
            ),
            {"r": run_id},
        ).all()
    return {step: round(seconds, 1) for step, seconds in rows}


def _fact_merge(eng, run_id: str) -> dict:
    """Inserted / updated / unchanged fact lines of a run: says whether the lines were new to
    the warehouse (a first load) or already there (a re-run)."""
    with eng.connect() as conn:
        details = conn.execute(
            text(
                "select details from audit.run_log where run_id = :r and step = 'merge' "
                "and source = 'staging.fact_operaciones_ventas'"
            ),
            {"r": run_id},
        ).scalar_one_or_none()
    return {k: (details or {}).get(k) for k in ("inserted", "updated", "unchanged")}


def _psql() -> str:
    from medallion.cli import psql_binary

    return psql_binary() or "psql"


def ceiling(eng, run_id: str, params: dict) -> dict:
    """`psql \\copy` of this run's gold fact rows, from CSV, into an unindexed table."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    s3 = storage.s3_client(params["minio_conn_id"])
    with tempfile.TemporaryDirectory() as tmp:
        s3.fget_object(
            params["gold_bucket"],
            gold_key("fact_operaciones_ventas", run_id),
            f"{tmp}/fact.parquet",
        )
        fact = pq.ParquetFile(f"{tmp}/fact.parquet")  # streamed: 10M rows never in memory
        csv_path = Path(tmp) / "fact.csv"
        options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
        with pacsv.CSVWriter(csv_path, fact.schema_arrow, write_options=options) as writer:
            for batch in fact.iter_batches(batch_size=100_000):
                writer.write_batch(batch)
        rows, columns = fact.metadata.num_rows, ", ".join(fact.schema_arrow.names)
        with warehouse.transaction(eng) as conn:
            conn.exec_driver_sql("create schema if not exists bench")
            conn.exec_driver_sql("drop table if exists bench.copy_ceiling")
            persistence = conn.exec_driver_sql(  # unlogged like the transit table, if it is
                "select case relpersistence when 'u' then 'unlogged' else '' end from pg_class "
                "where oid = 'public.bulk_fact_operaciones_ventas'::regclass"
            ).scalar_one()
            conn.exec_driver_sql(
                f"create {persistence} table bench.copy_ceiling as "
                "select * from public.bulk_fact_operaciones_ventas with no data"
            )
        conn_info = get_connection(params["postgres_conn_id"])
        env = {**os.environ, "PGPASSWORD": conn_info.password or ""}
        started = time.monotonic()
        subprocess.run(
            [
                _psql(),
                "-h",
                conn_info.host,
                "-p",
                str(conn_info.port or 5432),
                "-U",
                conn_info.login,
                "-d",
                conn_info.schema,
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                f"\\copy bench.copy_ceiling ({columns}) from '{csv_path}' with (format csv)",
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        seconds = time.monotonic() - started
        mb = csv_path.stat().st_size / 1e6
    with warehouse.transaction(eng) as conn:
        conn.exec_driver_sql("drop table bench.copy_ceiling")
    return {
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "mb": round(mb, 1),
    }


NAIVE = r"""
import json, resource, sys, time
import pandas as pd
from medallion import warehouse
path, rows = sys.argv[1], int(sys.argv[2])
started = time.monotonic()
# the whole (slice of the) file in memory; bad lines skipped, as tutorial pipelines do
frame = pd.read_csv(path, nrows=rows, on_bad_lines="skip")
frame.to_sql("naive_ventas", warehouse.engine(), schema="bench", if_exists="replace",
             index=False)                        # default to_sql: INSERTs
print(json.dumps({"seconds": time.monotonic() - started,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def naive(path: Path, rows: int) -> dict:
    """The seed's way on a slice of the file, scaled linearly to the full size."""
    part = min(rows, NAIVE_SLICE)
    with warehouse.transaction(warehouse.engine()) as conn:
        conn.exec_driver_sql("create schema if not exists bench")
    out = subprocess.run(
        [sys.executable, "-c", NAIVE, str(path), str(part)],
        capture_output=True,
        text=True,
        check=True,
    )
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    with warehouse.transaction(warehouse.engine()) as conn:
        conn.exec_driver_sql("drop table if exists bench.naive_ventas")
    scale = rows / part
    return {
        "slice_rows": part,
        "slice_seconds": round(measured["seconds"], 1),
        "seconds": round(measured["seconds"] * scale, 1),
        "scaled": scale != 1,
        "slice_peak_rss_mb": round(measured["peak_rss_mb"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    services.use_services()
    # An empty warehouse of its own: "ours" is a first load of the lines (every fact inserted),
    # and the user's warehouse is never touched.
    bench_db = warehouse.fresh_database("postgres_default", BENCH_DATABASE)
    os.environ[env_var_name("postgres_default")] = bench_db.as_json()
    params = load_params("local")
    from medallion.cli import bootstrap

    bootstrap("local")
    eng = warehouse.engine(params["postgres_conn_id"])

    print(f"generating {args.rows:,} lines ...", flush=True)
    big = _generated(args.rows, seed=7)
    tiny = _generated(100, seed=11, bad_every=0)
    delta = _generated(10_000, seed=13, bad_every=0)
    mb = big.stat().st_size / 1e6

    print("naive (pandas read_csv + default to_sql) ...", flush=True)
    slow = naive(big, args.rows)
    print("fixed cost (100 lines) ...", flush=True)
    fixed = _run(tiny, "fixed")
    print("ours ...", flush=True)
    ours = _run(big, "ours")
    steps = _steps(eng, ours["run_id"])
    steps += [
        {"step": step, "wall_seconds": s, "peak_rss_mb": None}
        for step, s in _merge_seconds(eng, ours["run_id"]).items()
    ]
    ours["fact_merge"] = _fact_merge(eng, ours["run_id"])
    print("ceiling (psql \\copy) ...", flush=True)
    copy = ceiling(eng, ours["run_id"], params)
    print("incremental (10k lines onto the big warehouse) ...", flush=True)
    incremental = _run(delta, "incremental")

    load = next(s for s in steps if s["step"] == "load")
    results = {
        "rows": args.rows,
        "file_mb": round(mb, 1),
        "fixed": fixed,
        "ours": ours,
        "steps": steps,
        "ceiling": copy,
        "naive": slow,
        "incremental": incremental,
        "bench_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "ratios": {
            "load_vs_copy_ceiling": round((copy["seconds"] / load["wall_seconds"]), 2),
            "ours_vs_naive_speedup": round(slow["seconds"] / ours["wall_seconds"], 2),
        },
    }
    (BENCH_DIR / f"bench-{args.rows}.json").write_text(json.dumps(results, indent=2))
    print_table(results)


def print_table(r: dict) -> None:
    rows = r["rows"]
    print(f"\n== make bench: {rows:,} lines, {r['file_mb']} MB CSV ==")
    print(f"{'step':<12}{'wall s':>9}{'lines/s':>12}{'MB/s':>8}{'peak RSS MB':>13}")
    for s in r["steps"]:
        rate = rows / s["wall_seconds"] if s["wall_seconds"] else 0
        mbps = (
            f"{r['file_mb'] / s['wall_seconds']:.1f}" if s["step"] in ("bronze", "silver") else ""
        )
        rss = f"{s['peak_rss_mb']:.0f}" if s["peak_rss_mb"] else ""
        print(f"{s['step']:<12}{s['wall_seconds']:>9.1f}{rate:>12,.0f}{mbps:>8}{rss:>13}")
    o, n, c = r["ours"], r["naive"], r["ceiling"]
    print(f"{'total (DAG)':<12}{o['wall_seconds']:>9.1f}{rows / o['wall_seconds']:>12,.0f}")
    merged = o.get("fact_merge") or {}
    if merged.get("inserted") is not None:
        print(
            f"fact lines merged: {merged['inserted']:,} inserted, {merged['updated']:,} updated, "
            f"{merged['unchanged']:,} unchanged (already in the warehouse)"
        )
    print(f"\nfixed cost of a run (100 lines, start-up included): {r['fixed']['wall_seconds']} s")
    print(
        f"ceiling, psql \\copy of {c['rows']:,} fact rows: {c['seconds']} s "
        f"({c['rows_per_s']:,} rows/s)"
    )
    label = (
        f"scaled x{rows / n['slice_rows']:.0f} from {n['slice_rows']:,} lines"
        if n["scaled"]
        else "measured"
    )
    print(
        f"naive (read_csv + default to_sql): {n['seconds']} s ({label}; "
        f"peak RSS {n['slice_peak_rss_mb']} MB on the slice)"
    )
    print(f"incremental 10k-line delivery onto the warehouse: {r['incremental']['wall_seconds']} s")
    print(
        f"ratios: load / ceiling = {r['ratios']['load_vs_copy_ceiling']}x speed; "
        f"ours vs naive = {r['ratios']['ours_vs_naive_speedup']}x faster"
    )


if __name__ == "__main__":
    main()
