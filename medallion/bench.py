"""`make bench`: the pipeline at scale against the machine's ceiling and the naive way.

    python -m medallion.bench --rows 1000000

On the same data and services it measures:
* ours: `make run INPUT=<file>` end to end (its command: start-up, services' check, SQL
  objects, the DAG and its summary), and per step the wall time and the peak RSS of the
  step's kernel (audit.step_metrics), rows/s and MB/s;
* the fixed cost of a run: the same command on a 100-line file of new lines, after the big
  load;
* the ceiling: `psql \\copy` of the same fact rows from CSV into an unindexed copy of the
  transit table (unlogged like it);
* the naive way (the seed's): whole file in memory with pandas, default `to_sql`, on a slice
  (scaled to the full size and labelled so);
* an incremental run: a 10k-line delivery onto the warehouse that now holds the big load (5k
  of its lines changed, 5k new: sample.write_increment);
* the peer: dlt (https://dlthub.com) on the same two files into the same database (schema
  dlt_peer), from a venv of its own (requirements-bench.txt, made on first use); `--no-peer`
  skips it. See medallion/bench_dlt.py for how it is set up.
It works in a database of its own, `medallion_bench`, created empty at the start: "ours" is a
first load (every line inserted), and the user's warehouse is never touched. Results are printed
as a table and kept in .local/bench/bench-<rows>.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from sqlalchemy import Engine, text

from medallion import sample, services, storage, warehouse
from medallion.gold import gold_key
from medallion.settings import (
    LOCAL_DIR,
    PROJECT_ROOT,
    Connection,
    env_var_name,
    get_connection,
    load_params,
)

BENCH_DIR = LOCAL_DIR / "bench"
BENCH_DATABASE = "medallion_bench"
NAIVE_SLICE = 100_000
GENERATED_DIR = PROJECT_ROOT / "data" / "generated"
INCREMENT = {"changed": 5_000, "new": 5_000}  # the second delivery, onto the big file's lines

# The peer: dlt in a venv of its own, run by path (it imports only dlt, pyarrow and stdlib)
PEER_REQUIREMENTS = PROJECT_ROOT / "requirements-bench.txt"
PEER_VENV = BENCH_DIR / "dlt-venv"
PEER_SCRIPT = Path(__file__).with_name("bench_dlt.py")
PEER_DATASET = "dlt_peer"  # its schema in the bench database (and dlt_peer_staging)
# dlt's fastest settings here (medallion/bench_dlt.py --help). Measured on 1M lines, 2 vCPUs,
# best of 3-6 runs of the whole process: 20, 4, 2 or 1 load workers 7.6, 7.9, 8.4, 7.9 s (no
# difference beyond this machine's noise); one file per table instead of 100k-row files 7.7 s;
# 250k- or 1M-line chunks 9.1, 8.6 s; 2 normalize workers 9.0 s; the csv loader format 19.9 s
# (its normalize step rewrites the Arrow tables as CSV, 13 s). Declaring the staged rows unique
# by key (--trust-keys: dlt skips its de-duplication) gave 6.0 s; not used, as ours
# de-duplicates a delivery's repeated keys too.
PEER_SETTINGS = {
    "chunk-rows": 100_000,
    "file-format": "parquet",
    "load-workers": 20,
    "file-max-items": 100_000,
}


def _generated(rows: int, seed: int, bad_every: int = 1000) -> Path:
    path = GENERATED_DIR / f"ventas_{rows}.csv"
    if seed != 7:
        path = path.with_name(f"ventas_{rows}_seed{seed}.csv")
    if not path.exists():
        written = sample.write_generated(rows, path.parent, seed=seed, bad_every=bad_every)
        written.rename(path)
    return path


def _increment(rows: int) -> Path:
    """The second delivery onto `_generated(rows, seed=7)`: 5k of its lines changed, 5k new."""
    path = GENERATED_DIR / f"ventas_{rows}_increment_{INCREMENT['changed']}_{INCREMENT['new']}.csv"
    if not path.exists():
        sample.write_increment(rows, GENERATED_DIR, seed=7, bad_every=1000, **INCREMENT)
    return path


def _expected(path: Path) -> dict:
    """The generator's account of a generated file (data/generated.expected.json)."""
    accounts = GENERATED_DIR.parent / f"{GENERATED_DIR.name}.expected.json"
    return json.loads(accounts.read_text()).get(path.name, {}) if accounts.exists() else {}


def _run(input_path: Path, label: str) -> dict:
    """The command of `make run INPUT=<file>`, as a user runs it: its own start-up, the
    services' check and the SQL objects' included. What it printed: .local/bench/run-<label>.log."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "medallion.cli", "run", "--input", str(input_path)],
        cwd=PROJECT_ROOT,
        env=os.environ,  # the bench's database
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wall_seconds = round(time.monotonic() - started, 1)
    log = BENCH_DIR / f"run-{label}.log"
    log.write_text(proc.stdout)
    run_id = re.search(r"^run_id:\s+(\S+)", proc.stdout, re.M)
    if proc.returncode or run_id is None:
        raise RuntimeError(f"bench run {label} failed (exit {proc.returncode}): see {log}")
    return {"run_id": run_id.group(1), "wall_seconds": wall_seconds}


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
    import pyarrow as pa
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
        # the rows as the load sends them: each line names its file by key
        sources = warehouse.register_sources(eng, run_id)
        schema = warehouse.with_source_keys(
            pa.RecordBatch.from_pylist([], schema=fact.schema_arrow), sources
        ).schema
        with pacsv.CSVWriter(csv_path, schema, write_options=options) as writer:
            for batch in fact.iter_batches(batch_size=100_000):
                writer.write_batch(warehouse.with_source_keys(batch, sources))
        rows, columns = fact.metadata.num_rows, ", ".join(schema.names)
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


def peer_python() -> Path:
    """The python of the peer's venv: made with `python -m venv` and requirements-bench.txt on
    first use, and made anew when that file changes (a stamp keeps the text it was made from)."""
    python = PEER_VENV / "bin" / "python"
    stamp = PEER_VENV / ".requirements-bench.txt"
    wanted = PEER_REQUIREMENTS.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"making the peer's venv ({PEER_VENV}, {PEER_REQUIREMENTS.name}) ...", flush=True)
    shutil.rmtree(PEER_VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        + ["-r", str(PEER_REQUIREMENTS)],
        check=True,
    )
    stamp.write_text(wanted)
    return python


def _postgres_uri(conn: Connection) -> str:
    """A libpq URI for dlt (DESTINATION__POSTGRES__CREDENTIALS): handed to the child through
    its environment, never printed."""
    query = urlencode({k: v for k, v in conn.extra.items() if k == "sslmode"})
    return (
        f"postgresql://{quote(conn.login or '', safe='')}:{quote(conn.password or '', safe='')}"
        f"@{conn.host}:{conn.port or 5432}/{quote(conn.schema or 'postgres', safe='')}"
        + (f"?{query}" if query else "")
    )


def _peer_run(python: Path, path: Path, conn: Connection, label: str) -> dict:
    """One load by the peer in a process of its own; its wall time is the process's (Python
    start and dlt's imports included, as ours includes the DAG's start-up)."""
    # only what a process needs, plus dlt's credentials: none of our AIRFLOW_CONN_* secrets
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ") if k in os.environ}
    env |= {
        "DLT_DATA_DIR": str(BENCH_DIR / "dlt-data"),  # no global ~/.dlt config or secrets
        "DESTINATION__POSTGRES__CREDENTIALS": _postgres_uri(conn),
    }
    args = [f"--{name}={value}" for name, value in PEER_SETTINGS.items()]
    started = time.monotonic()
    done = subprocess.run(
        [str(python), str(PEER_SCRIPT), str(path), "--pipelines-dir", str(BENCH_DIR / "dlt")]
        + ["--dataset", PEER_DATASET, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=BENCH_DIR,
    )
    seconds = time.monotonic() - started
    log = BENCH_DIR / f"dlt-{label}.log"
    services.write_private(log, done.stderr)  # dlt's log (private: a driver may echo a URI)
    if done.returncode:
        raise RuntimeError(f"the peer (dlt) failed on {path.name}: see {log}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall_seconds": round(seconds, 1), **measured}


def peer(eng: Engine, conn: Connection, big: Path, increment: Path, ours_runs: list[str]) -> dict:
    """dlt on the big file from a fresh state (its schemas and pipeline folder dropped), then
    on the increment; then both warehouses' fact rows counted in SQL against the generator's
    account of the valid lines (reported, not enforced)."""
    python = peer_python()
    shutil.rmtree(BENCH_DIR / "dlt", ignore_errors=True)
    with warehouse.transaction(eng) as c:
        for schema in (PEER_DATASET, f"{PEER_DATASET}_staging"):
            c.exec_driver_sql(f'drop schema if exists "{schema}" cascade')
    print("peer: dlt, full load ...", flush=True)
    full = _peer_run(python, big, conn, "full")
    print("peer: dlt, 10k increment ...", flush=True)
    inc = _peer_run(python, increment, conn, "increment")
    with eng.connect() as c:
        dlt_rows, dlt_sales = c.execute(
            text(f'select count(*), sum(sales) from "{PEER_DATASET}".fact_ventas')  # noqa: S608 - fixed name
        ).one()
        ours_rows, ours_sales = c.execute(
            text(
                "select count(*), sum(sales) from staging.fact_operaciones_ventas "
                "where source_key in (select source_key from staging.fact_sources "
                "where run_id = any(:runs))"
            ),
            {"runs": ours_runs},
        ).one()
    valid, new = _expected(big).get("valid"), _expected(increment).get("new")
    return {
        "full_seconds": full["wall_seconds"],
        "increment_seconds": inc["wall_seconds"],
        "full": full,
        "increment": inc,
        "fact_rows": dlt_rows,
        "ours_fact_rows": ours_rows,
        "expected_fact_rows": valid + new if valid is not None and new is not None else None,
        "same_sales_total": dlt_sales == ours_sales,
        "settings": full["settings"],
        "versions": full["versions"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-peer", action="store_true", help="do not run the peer (dlt)")
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
    delta = _increment(args.rows)
    mb = big.stat().st_size / 1e6

    print("naive (pandas read_csv + default to_sql) ...", flush=True)
    slow = naive(big, args.rows)
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
    # after the first load, so that it is one (into an empty fact): the 100 lines as a delivery
    # of new sales onto the big warehouse, as a daily run on running services
    print("fixed cost (100 new lines onto the big warehouse) ...", flush=True)
    fixed = _run(tiny, "fixed")
    print("incremental (10k lines onto the big warehouse: 5k changed, 5k new) ...", flush=True)
    incremental = _run(delta, "incremental")
    incremental["fact_merge"] = _fact_merge(eng, incremental["run_id"])
    peers = {}
    if not args.no_peer:
        conn = get_connection(params["postgres_conn_id"])
        runs = [ours["run_id"], incremental["run_id"]]
        peers["dlt"] = peer(eng, conn, big, delta, runs)

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
        "peer": peers,
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
    print(
        f"\nfixed cost of a run (100 new lines onto the warehouse, start-up included): "
        f"{r['fixed']['wall_seconds']} s"
    )
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
    inc = r["incremental"]
    merged = inc.get("fact_merge") or {}
    how = (
        f" ({merged['inserted']:,} fact lines inserted, {merged['updated']:,} updated)"
        if merged.get("inserted") is not None
        else ""
    )
    print(f"incremental 10k-line delivery onto the warehouse: {inc['wall_seconds']} s{how}")
    print(
        f"ratios: load / ceiling = {r['ratios']['load_vs_copy_ceiling']}x speed; "
        f"ours vs naive = {r['ratios']['ours_vs_naive_speedup']}x faster"
    )
    if r.get("peer", {}).get("dlt"):
        print_peer(r["peer"]["dlt"], o["wall_seconds"], inc["wall_seconds"])


def print_peer(d: dict, ours_full: float, ours_increment: float) -> None:
    """The peer's lines of the table: dlt's times against ours, and whether they loaded the
    same fact lines."""
    s, v = d["settings"], d["versions"]
    formats = sorted(set(d["full"].get("loaded_as", {}).values())) or ["?"]
    print(
        f"\npeer: dlt {v['dlt']} (pyarrow {v['pyarrow']} CSV reader, {s['chunk_rows']:,}-line "
        f"Arrow chunks, loaded from {'/'.join(formats)} files of {s['file_max_items']:,} rows"
        f"{' through ADBC' if formats == ['parquet'] else ''}, merge delete-insert on the keys, "
        f"{s['load_workers']} load workers); times are whole runs: ours the command of "
        "`make run INPUT=`, dlt its process"
    )
    for label, ours, theirs in (
        ("full load", ours_full, d["full_seconds"]),
        ("10k increment", ours_increment, d["increment_seconds"]),
    ):
        print(f"{label}: ours {ours} s, dlt {theirs} s, ours/dlt {ours / theirs:.1f}x")
    full, inc = d["full"], d["increment"]
    print(
        f"dlt inside its process: full {full['seconds']} s (extract {full['phases']['extract']}, "
        f"normalize {full['phases']['normalize']}, load {full['phases']['load']}), peak RSS "
        f"{full['peak_rss_mb']} MB; increment {inc['seconds']} s; lines left out by its "
        f"checks: {full['rejected']:,}"
    )
    expected = d["expected_fact_rows"]
    same = "the same" if d["same_sales_total"] else "DIFFERENT"
    print(
        f"fact rows after both: ours {d['ours_fact_rows']:,}, dlt {d['fact_rows']:,}, "
        f"expected {f'{expected:,}' if expected is not None else '?'} (the valid lines of the "
        f"file plus the new ones of the increment); sales total {same}"
    )


if __name__ == "__main__":
    main()
