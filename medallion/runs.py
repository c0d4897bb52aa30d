"""Run plumbing: a run's notebook parameters, its outputs folder, running the DAG, its summary."""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from medallion import ledger, report, storage, warehouse
from medallion.settings import (
    DAG_ID,
    KERNEL_NAME,
    OUTPUTS_DIR,
    load_params,
    resolve_path,
    run_slug,
)

log = logging.getLogger(__name__)


# Params of the DAG that override the parameter set's values for one run
OVERRIDABLE = ("input_path", "minio_conn_id", "postgres_conn_id")


def prepare_run(
    run_id: str, params_env: str | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The parameters every notebook of this run gets, and the folder for its executed copies."""
    parameters = parameter_set(params_env, overrides)
    parameters["input_path"] = str(resolve_path(parameters["input_path"]))
    parameters["run_id"] = run_id
    output_dir = OUTPUTS_DIR / run_slug(run_id)
    output_dir.mkdir(parents=True, exist_ok=True)  # papermill does not create it
    return {"notebook_parameters": parameters, "output_dir": str(output_dir)}


def parameter_set(
    params_env: str | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A committed parameter set with the run's overrides (input, connection ids)."""
    parameters = load_params(params_env or "local")
    parameters.update({k: v for k, v in (overrides or {}).items() if k in OVERRIDABLE and v})
    return parameters


def discover(run: dict[str, Any], reprocess: bool = False) -> list[dict[str, Any]]:
    """The run's input file by file, as the ledger decided; a file to process carries the
    arguments of its two notebooks (bronze and silver), named after it."""
    parameters = run["notebook_parameters"]
    found = ledger.discover(
        warehouse.engine(parameters["postgres_conn_id"]),
        Path(parameters["input_path"]),
        parameters["run_id"],
        reprocess,
    )
    return [
        {**asdict(d), "notebooks": _file_notebooks(run, d) if d.to_process else None} for d in found
    ]


def _file_notebooks(run: dict[str, Any], delivery: ledger.Delivery) -> dict[str, Any]:
    parameters = {**run["notebook_parameters"], "input_path": delivery.path}
    hashed = {"sha256": delivery.sha256, "identity": delivery.identity}  # not hashed twice
    return {
        "bronze_nb": str(_notebook_path(run, "bronze", delivery.file_name)),
        "silver_nb": str(_notebook_path(run, "silver", delivery.file_name)),
        "bronze_parameters": {**parameters, "input_hashed": hashed},
        "silver_parameters": {**parameters, "source_file": delivery.file_name},
    }


def _notebook_path(run: dict[str, Any], step: str, file_name: str) -> Path:
    """``outputs/<run>/01_bronze_ingest__ventas.csv.ipynb``: one executed copy per file."""
    notebook = storage.STEP_NOTEBOOKS[step]
    return Path(run["output_dir"]) / f"{notebook}__{run_slug(file_name)}.ipynb"


FAILED_STATES = {"failed", "upstream_failed"}


def finish_run(
    run: dict[str, Any], deliveries: list[dict[str, Any]], task_states: dict[str, str]
) -> dict[str, Any]:
    """Close the run's files in the ledger: a file is loaded when its lines reached silver
    (its silver manifest, which is what gold read) and the run was published; otherwise it
    failed, with the reason its notebooks or the failed tasks give."""
    parameters = run["notebook_parameters"]
    run_id = parameters["run_id"]
    eng = warehouse.engine(parameters["postgres_conn_id"])
    s3 = storage.s3_client(parameters["minio_conn_id"])
    published = _published(eng, run_id)
    failed_tasks = sorted(t for t, state in task_states.items() if state in FAILED_STATES)
    outcome: dict[tuple[str, str], str | None] = {}
    for d in (d for d in deliveries if d["notebooks"]):
        outcome[(d["file_name"], d["sha256"])] = _file_failure(s3, run, d, published, failed_tasks)
    ledger.record_outcome(eng, run_id, outcome)
    failures = [f"{name}: {reason}" for (name, _), reason in outcome.items() if reason]
    skipped = [d["file_name"] for d in deliveries if not d["notebooks"]]
    message = (
        f"{len(failures)} of {len(outcome)} new file(s) failed:\n- " + "\n- ".join(failures)
        if failures
        else f"{len(outcome)} new file(s) loaded, {len(skipped)} skipped"
    )
    return {
        "loaded": len(outcome) - len(failures),
        "failed": len(failures),
        "skipped": len(skipped),
        "message": message,
    }


def close_run(
    run_id: str,
    started_at: datetime | None,
    run: dict[str, Any] | None,
    deliveries: list[dict[str, Any]] | None,
    task_states: dict[str, str],
    connect: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The end of every run, whatever came before: its files closed in the ledger (after
    ``connect`` resolved the run's connections), then its record in ``outputs/<run>/``
    (``run.json``, each executed notebook as HTML) and the runs' index. ``failed`` > 0 when a
    file or a task failed; ``message`` says which and why. The record is written even when the
    ledger cannot be closed; a problem with the record itself is logged, never raised."""
    failed_tasks = sorted(t for t, state in task_states.items() if state == "failed")
    result: dict[str, Any] = {"loaded": 0, "failed": 0, "skipped": 0, "message": ""}
    try:
        if run is None or deliveries is None:
            result.update(failed=1, message="The run stopped before its files were known.")
        else:
            if connect is not None:
                connect(run["notebook_parameters"])
            result = finish_run(run, deliveries, task_states)
        if failed_tasks:
            tasks = "failed: " + ", ".join(failed_tasks)
            result.update(
                failed=result["failed"] or len(failed_tasks),
                message=f"{result['message']}\n{tasks}" if result["failed"] else tasks,
            )
    except Exception as err:  # the ledger could not be closed: the record says so, and why
        result.update(failed=result["failed"] or 1, message=f"{type(err).__name__}: {err}")
        _write_record(run_id, started_at, run, failed_tasks, result)
        raise
    _write_record(run_id, started_at, run, failed_tasks, result)
    return result


def _write_record(
    run_id: str,
    started_at: datetime | None,
    run: dict[str, Any] | None,
    failed_tasks: list[str],
    result: dict[str, Any],
) -> None:
    """``run.json``, the notebooks' HTML and the index. What cannot be had (the warehouse is
    down, a notebook cannot be rendered) is left out and the record says what and why."""
    output_dir = report.run_dir(run_id)
    finished = datetime.now(UTC)
    record: dict[str, Any] = {
        "run_id": run_id,
        "started_at": (started_at or finished).isoformat(timespec="seconds"),
        "finished_at": finished.isoformat(timespec="seconds"),
        "duration_s": round((finished - started_at).total_seconds(), 1) if started_at else None,
        "status": "failed" if result["failed"] else "success",
        "message": result["message"],
        "failed": _failed_tasks(output_dir, failed_tasks),
        "record_errors": [],
    }
    if run is not None:
        try:
            record.update(_counts(run["notebook_parameters"]["postgres_conn_id"], run_id))
        except Exception as err:  # noqa: BLE001 - the record is written anyway
            record["record_errors"].append(f"counts: {type(err).__name__}: {err}")
    try:
        report.render_run(output_dir)
    except Exception as err:  # noqa: BLE001 - a notebook that cannot be rendered stays .ipynb
        record["record_errors"].append(f"html: {type(err).__name__}: {err}")
    try:
        report.write_record(output_dir, record)
        report.build_index(output_dir.parent)
        if run is not None and not record["record_errors"]:  # what it cost (make bench)
            conn_id = run["notebook_parameters"]["postgres_conn_id"]
            warehouse.log_metrics(warehouse.engine(conn_id), run_id, "record", finished)
    except Exception:  # the run's outcome stands; the record's problem goes to the task log
        log.exception("The record of run %s is incomplete (make report rebuilds it)", run_id)


def _failed_tasks(output_dir: Path, failed_tasks: list[str]) -> list[dict[str, Any]]:
    """Each task instance that failed in this attempt of the run, with its message: as its
    failure callback recorded it (older entries of a cleared and re-run task are left out),
    else the error its notebook stopped on."""
    recorded = {
        report.task_key(f["task"], f.get("map_index", -1)): f for f in report.failures(output_dir)
    }
    failed = []
    for key in failed_tasks:
        entry = dict(recorded.get(key) or {"task": key, "file": None, "message": report.NO_MESSAGE})
        if entry["message"] == report.NO_MESSAGE:  # e.g. a task killed from outside
            error = notebook_error_of(output_dir, entry["task"], entry.get("file"))
            entry["message"] = error or report.NO_MESSAGE
        failed.append(entry)
    return failed


def _counts(conn_id: str, run_id: str) -> dict[str, Any]:
    """The run's files, lines and merge counts, from the warehouse."""
    import pandas as pd

    from medallion import results

    eng = warehouse.engine(conn_id)
    files = results.run_files(eng, run_id)
    processed = files[files.lines_in.notna()]
    columns = ("lines_in", "silver", "quarantined", "duplicates")
    return {
        "files": [
            {
                "file": f["file_name"],
                "decision": f["decision"],
                "status": _delivery_status(eng, run_id, f["file_name"]),
                **{c: None if pd.isna(f[c]) else int(f[c]) for c in columns},
            }
            for f in files.astype(object).to_dict("records")
        ],
        "totals": {c: int(processed[c].sum()) for c in columns},
        "merge": [
            {k: m[k] for k in ("table", "inserted", "updated", "unchanged")}
            for m in results.merge_counts(eng, run_id).to_dict("records")
        ],
    }


def _delivery_status(eng, run_id: str, file_name: str) -> str | None:
    with eng.connect() as conn:
        return conn.execute(
            text("select status from audit.deliveries where run_id = :r and file_name = :f"),
            {"r": run_id, "f": file_name},
        ).scalar_one_or_none()


def notebook_error_of(output_dir: Path, task_id: str, file_name: str | None = None) -> str | None:
    """The error of a failed notebook task's executed copy (``files.02_silver_clean`` and its
    file -> ``02_silver_clean__<file>.ipynb``), if it stopped on one."""
    name = task_id.rsplit(".", 1)[-1]
    pattern = f"{name}__{run_slug(file_name)}.ipynb" if file_name else f"{name}*.ipynb"
    for path in sorted(output_dir.glob(pattern)):
        if error := notebook_error(path):
            return error
    return None


def _published(eng, run_id: str) -> bool:
    with eng.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "select count(*) from audit.run_log where run_id = :r "
                    "and step = 'publish' and status = 'success'"
                ),
                {"r": run_id},
            ).scalar()
        )


def _file_failure(
    s3, run: dict[str, Any], d: dict[str, Any], published: bool, failed_tasks: list[str]
) -> str | None:
    """None when the file was loaded, else why not. The notebooks' errors are read first: they
    are local files, so a run that failed because S3 was down still says why."""
    parameters = run["notebook_parameters"]
    run_id = parameters["run_id"]
    for step in ("bronze", "silver"):
        error = notebook_error(_notebook_path(run, step, d["file_name"]))
        if error:
            return error
    silver_key = storage.manifest_key(run_id, "silver", d["file_name"])
    try:
        reached_silver = storage.object_exists(s3, parameters["silver_bucket"], silver_key)
    except Exception as err:  # noqa: BLE001 - the object store is down: the file is not loaded
        return f"its silver output could not be checked: {type(err).__name__}: {err}"
    if not reached_silver:
        return "its bronze or silver step did not finish"
    bronze = storage.get_json(
        s3, parameters["bronze_bucket"], storage.manifest_key(run_id, "bronze", d["file_name"])
    )
    if bronze["sha256"] != d["sha256"]:
        return "the file changed while the run read it; the next run takes the new content"
    if not published:
        after_silver = [t for t in failed_tasks if not t.startswith("files.")]
        return "the run was not published (failed: " + (", ".join(after_silver) or "?") + ")"
    return None


def _start_first_kernel(conf: dict[str, Any]) -> None:
    """Start the first notebook's kernel, to boot on the other core while Airflow parses the
    DAG and starts its execution API, with the connections the run's tasks will resolve (if
    they turn out different, the notebook starts a kernel of its own). A parameter set or a
    connection that cannot be resolved is left for the DAG's tasks to report."""
    from medallion.kernels import POOL
    from medallion.operators import use_connections

    try:
        use_connections(parameter_set(conf.get("params_env"), conf))
    except Exception:  # noqa: BLE001 - the DAG's own tasks say what is wrong
        log.debug("first kernel not started ahead", exc_info=True)
        return
    POOL.start_next(KERNEL_NAME)


def _load_for_the_record() -> None:
    """Import what the run's record and the command's summary read the warehouse with (pandas,
    through ``medallion.results``), which nothing else in this process loads: done while the
    notebooks run, when this process mostly waits for their kernels, instead of at the end of
    every run (0.8 s of a 100-line run's record_run, measured)."""
    import medallion.results  # noqa: F401


def _dag_test(conf: dict[str, Any], result_file: Path) -> int:
    """The DAG's process (``medallion.dag_process``): parse the DAG folder, then, once the
    command says so, run one DagRun and write the result."""
    from airflow.sdk import timezone
    from airflow.utils.cli import get_bagged_dag

    from medallion.dag_process import environment_from_command, told_to_run
    from medallion.execution_api import serve_sdk_version_only
    from medallion.kernels import POOL, use_warm_kernels

    if not environment_from_command():  # the services' connections, from the command
        return 3
    use_warm_kernels()  # the tasks run one after the other here: kernels start ahead
    serve_sdk_version_only()  # the in-process API serves only what our tasks ask for
    report.render_ahead()  # and each notebook is rendered while the next one runs
    try:
        _start_first_kernel(conf)
        dag = get_bagged_dag(bundle_names=None, dag_id=DAG_ID)
        gc.freeze()  # what the imports and the parse made lives on: never collected again
        gc.enable()  # (disabled until here by medallion.dag_process)
        if not told_to_run():  # the command applies its bootstrap meanwhile
            return 3
        threading.Thread(target=_load_for_the_record, name="load-ahead", daemon=True).start()
        dag_run = dag.test(logical_date=timezone.utcnow(), run_conf=conf)
    finally:
        report.stop_rendering_ahead()
        POOL.release()  # the files of the kernel started for no next notebook (no atexit)
    state = str(getattr(dag_run.state, "value", dag_run.state))
    result = {"run_id": dag_run.run_id, "state": state, **_command_summary(conf, dag_run.run_id)}
    result_file.write_text(json.dumps(result))
    return 0 if state == "success" else 1


def _command_summary(conf: dict[str, Any], run_id: str) -> dict[str, Any]:
    """``{"summary": ...}`` for the command that started the run (`make run`), computed here,
    where pandas is loaded already; empty if it cannot be (the command computes it itself)."""
    if "params_env" not in conf:
        return {}
    try:
        conn_id = parameter_set(conf["params_env"], conf)["postgres_conn_id"]
        run_summary = summary(warehouse.engine(conn_id), run_id)
        json.dumps(run_summary)
    except Exception:  # noqa: BLE001 - the command computes it itself
        log.warning("no summary of run %s here", run_id, exc_info=True)
        return {}
    return {"summary": run_summary}


def notebook_error(path: Path) -> str | None:
    """The error an executed notebook stopped on ('<ename>: <evalue>'), if any."""
    try:
        cells = json.loads(path.read_text()).get("cells", [])
    except (OSError, ValueError):  # none, or cut short by a killed process
        return None
    for cell in cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"{output['ename']}: {output['evalue']}"
    return None


def notebook_errors(output_dir: Path) -> list[str]:
    """The error each executed notebook of a run stopped on, as '<notebook>: <error>'."""
    errors = ((path.stem, notebook_error(path)) for path in sorted(output_dir.glob("*.ipynb")))
    return [f"{name}: {error}" for name, error in errors if error]


def summary(eng, run_id: str) -> dict[str, Any]:
    """What a run did: lines read and quarantined (run log), rows in staging and the view."""
    from medallion import results

    with eng.connect() as conn:
        silver = conn.execute(
            text("""select coalesce(sum(lines_in), 0)::bigint, coalesce(sum(rows_out), 0)::bigint,
                           coalesce(sum(rows_quarantined), 0)::bigint, count(*),
                           coalesce(sum(rows_duplicate), 0)::bigint
                    from audit.run_log where run_id = :r and step = 'silver'"""),
            {"r": run_id},
        ).one()
        publish = conn.execute(
            text("select details from audit.run_log where run_id = :r and step = 'publish'"),
            {"r": run_id},
        ).scalar_one_or_none()
        merges = conn.execute(
            text("""select source, rows_out, details from audit.run_log
                    where run_id = :r and step = 'merge' order by source"""),
            {"r": run_id},
        ).all()
        deliveries = conn.execute(
            text("""select r.source, r.status, r.details ->> 'note', d.status, d.message
                    from audit.run_log as r
                    left join audit.deliveries as d
                      on d.file_name = r.source and d.sha256 = r.details ->> 'sha256'
                    where r.run_id = :r and r.step = 'discover' order by r.source"""),
            {"r": run_id},
        ).all()
    return {
        "run_id": run_id,
        "deliveries": [
            {"file": f, "decision": decision, "note": note, "status": status, "message": msg}
            for f, decision, note, status, msg in deliveries
        ],
        "files": silver[3],
        "lines_read": silver[0],
        "rows_to_silver": silver[1],
        "rows_quarantined": silver[2],
        "duplicates_dropped": silver[4],
        "merge": {source: details for source, _, details in merges},
        "publish": publish,
        "staging_rows": results.recorded_staging_rows(eng, run_id)
        or {t: int(n) for t, n in results.staging_rows(eng).itertuples(index=False)},
        "outputs": str(OUTPUTS_DIR / run_slug(run_id)),
    }


def main(argv: list[str]) -> None:
    """The DAG's process (``python -m medallion.dag_process <conf> <result file>``)."""
    code = _dag_test(json.loads(argv[0]), Path(argv[1]))
    # The result is written: skip the interpreter's teardown of Airflow (about 3 s measured
    # on a 100-line run, a seventh of the fixed cost of a run).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
