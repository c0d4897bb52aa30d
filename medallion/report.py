"""The run record a person can browse: every executed notebook also as HTML beside it, and
``outputs/index.html``, every run newest first with its status, counts and links.

Each run folder (``outputs/<run>/``) holds the executed notebooks, their HTML, ``run.json``
(the account the DAG's last task writes, failed runs included) and ``failures.jsonl`` (one
line per task that failed, written by the tasks' failure callback).

    python -m medallion.report        # render what is missing, rebuild the index (make report)
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import tempfile
import threading
from concurrent.futures import Future, ProcessPoolExecutor, wait
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import is_undefined

from medallion.settings import OUTPUTS_DIR, run_slug

log = logging.getLogger(__name__)

RUN_RECORD = "run.json"
FAILURES = "failures.jsonl"
INDEX = "index.html"
RESULT_NOTEBOOK = "05_resultado"  # the run's published result, linked first
TEMPLATES = Path(__file__).parent / "templates"
MESSAGE_CHARS = 2000
NO_MESSAGE = "(no message)"
# Errors whose message says it all (the DAG's own "fail now, no retry": the notebook's error)
QUIET_ERRORS = {"AirflowFailException"}
# What the index shows of a run folder without run.json (a run going on, or cut short)
EMPTY_RECORD = {
    "status": "unknown",
    "duration_s": None,
    "message": "",
    "files": [],
    "totals": {},
    "merge": [],
}  # a failure's message in the record: enough to say why, not a traceback


def run_dir(run_id: str) -> Path:
    return OUTPUTS_DIR / run_slug(run_id)


# -- notebooks as HTML ----------------------------------------------------------------------


@cache
def _exporter():
    from nbconvert import HTMLExporter

    return HTMLExporter(
        extra_template_basedirs=[str(TEMPLATES)], template_name="notebook", embed_images=True
    )


def render_notebook(notebook: Path) -> Path:
    """``<notebook>.html`` beside the executed notebook (nbconvert, JupyterLab's look)."""
    html = notebook.with_suffix(".html")
    body, _ = _exporter().from_filename(str(notebook))
    _write_atomic(html, body)
    return html


# In a run whose tasks share one process (`make run`): each notebook rendered as soon as its
# task has run it, while the next notebook runs, instead of all of them by the run's last task.
# Rendering (nbconvert: 0.6 s to import, 0.1-0.2 s a notebook) holds the GIL; in a thread of
# the DAG's process it delayed the tasks (issue 12), so it runs in a process of its own. That
# process starts with the first notebook to render: started with the run, it competed with
# Airflow's start-up and the first kernel's for the two cores.
_ahead: ProcessPoolExecutor | None = None
_rendering: list[Future] = []


# How long the run's last task waits for the notebooks rendered ahead before it renders what
# is still missing itself (a notebook takes well under a second).
RENDER_AHEAD_WAIT_S = 60


def render_ahead() -> None:
    """From now on in this process, ``notebook_executed`` renders the notebook in another
    process (spawned, not forked: the DAG's process has threads, Airflow's and the kernels'),
    which ends with this one."""
    global _ahead  # noqa: PLW0603 - one per process
    _ahead = _ahead or ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"), initializer=_end_with_parent
    )


def _end_with_parent() -> None:
    """In the renderer: end when the process that started it ends, killed ones too."""

    def watch() -> None:
        multiprocessing.parent_process().join()
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def stop_rendering_ahead() -> None:
    """Wait for the notebooks being rendered ahead (at most RENDER_AHEAD_WAIT_S) and let the
    process that renders them end."""
    global _ahead  # noqa: PLW0603 - one per process
    if _ahead is not None:
        pending = wait(_rendering, timeout=RENDER_AHEAD_WAIT_S).not_done
        _ahead.shutdown(wait=not pending, cancel_futures=True)  # a stuck one ends with us
        _ahead = None
        _rendering.clear()


def notebook_executed(notebook: Path) -> None:
    """A task has written its executed notebook: render it now if ``render_ahead`` (else the
    run's last task does, with ``render_run``)."""
    if _ahead is None:
        return
    try:
        _rendering.append(_ahead.submit(render_notebook, notebook))
    except Exception:  # noqa: BLE001 - its process died or did not start: left to render_run
        log.warning("notebook %s left to be rendered at the end of the run", notebook.name,
                    exc_info=True)  # fmt: skip


def render_run(output_dir: Path) -> list[Path]:
    """HTML of every executed notebook of a run that has none yet or an older one (those
    rendered ahead are waited for; one that failed there is rendered here)."""
    wait(_rendering, timeout=RENDER_AHEAD_WAIT_S)
    _rendering.clear()
    rendered = []
    for notebook in sorted(output_dir.glob("*.ipynb")):
        html = notebook.with_suffix(".html")
        if not html.exists() or html.stat().st_mtime < notebook.stat().st_mtime:
            rendered.append(render_notebook(notebook))
    return rendered


# -- what each run did ----------------------------------------------------------------------


def record_failure(context: dict[str, Any]) -> None:
    """``on_failure_callback`` of the DAG's tasks: the failed task and its message, for the run
    record (the last task reads them; a task's log is not a page a person browses)."""
    ti = context["ti"]
    map_index = getattr(ti, "map_index", None)
    map_index = -1 if map_index is None else map_index
    entry = {
        "task": ti.task_id,
        "map_index": map_index,
        "file": getattr(ti, "rendered_map_index", None) if map_index >= 0 else None,
        "message": _message(context.get("exception")),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    folder = run_dir(context["run_id"])
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / FAILURES).open("a", encoding="utf-8") as out:  # one short line per task
        out.write(json.dumps(entry, ensure_ascii=False) + "\n")


def _message(error: BaseException | str | None) -> str:
    if error is None:
        return NO_MESSAGE
    if getattr(error, "ename", None):  # a notebook's error: its own line, not the traceback
        return f"{error.ename}: {error.evalue}"[:MESSAGE_CHARS]
    text = str(error).strip() or type(error).__name__
    name = type(error).__name__
    if isinstance(error, BaseException) and name not in text and name not in QUIET_ERRORS:
        text = f"{type(error).__name__}: {text}"
    return text[:MESSAGE_CHARS]


def failures(output_dir: Path) -> list[dict[str, Any]]:
    """The failed tasks of a run, as their callbacks recorded them (the last of each task
    instance; a line cut short by a killed process is skipped)."""
    path = output_dir / FAILURES
    if not path.exists():
        return []
    latest: dict[str, dict] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        latest[task_key(entry["task"], entry.get("map_index", -1))] = entry
    return list(latest.values())


def task_key(task_id: str, map_index: int = -1) -> str:
    """How Airflow's task states name a task instance: ``<task_id>_<map index>`` if mapped."""
    return task_id if map_index < 0 else f"{task_id}_{map_index}"


def write_record(output_dir: Path, record: dict[str, Any]) -> Path:
    """The run's account (``run.json``) for the index."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / RUN_RECORD
    _write_atomic(path, json.dumps(record, indent=2, ensure_ascii=False, default=str))
    return path


def _write_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one; two writers (two runs, a
    run and `make report`) each write their own temporary file."""
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


# -- the index ------------------------------------------------------------------------------


def runs(outputs_dir: Path = OUTPUTS_DIR) -> list[dict[str, Any]]:
    """Every run folder as the index shows it, newest first. A folder without ``run.json``
    (a run still going, or one whose last task never ran) is listed with what it holds."""
    listed = []
    for folder in (p for p in outputs_dir.iterdir() if p.is_dir()):
        notebooks = sorted(folder.glob("*.ipynb"))
        record_path = folder / RUN_RECORD
        if not notebooks and not record_path.exists() and not (folder / FAILURES).exists():
            continue
        record = _read_record(record_path)
        for key, value in EMPTY_RECORD.items():
            record.setdefault(key, value)
        record.setdefault("run_id", folder.name)
        record.setdefault(
            "started_at",
            datetime.fromtimestamp(folder.stat().st_mtime, UTC).isoformat(timespec="seconds"),
        )
        record.setdefault("failed", failures(folder))
        record["folder"] = folder.name
        record["notebooks"] = [
            {"name": nb.stem, "html": f"{folder.name}/{nb.stem}.html"}
            for nb in notebooks
            if nb.with_suffix(".html").exists()
        ]
        listed.append(record)
    return sorted(listed, key=lambda r: str(r["started_at"]), reverse=True)


def _read_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or unreadable: listed with what the folder holds
        return {}


def build_index(outputs_dir: Path = OUTPUTS_DIR) -> Path:
    """``outputs/index.html``: every run, newest first, with its counts and links."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    from medallion import ledger

    env = Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"])
    )
    env.filters["duration"] = _duration
    env.filters["thousands"] = _thousands
    page = env.get_template("index.html.j2").render(
        runs=runs(outputs_dir),
        built_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        decisions=ledger.DECISIONS_ES,
        statuses=ledger.STATUS_ES,
        result_notebook=RESULT_NOTEBOOK,
    )
    outputs_dir.mkdir(parents=True, exist_ok=True)
    index = outputs_dir / INDEX
    _write_atomic(index, page)
    return index


def _thousands(number: int | None) -> str:
    """1234567 -> '1.234.567' (Spanish grouping); nothing for an unknown count."""
    if number is None or is_undefined(number):
        return ""
    return f"{int(number):,}".replace(",", ".")


def _duration(seconds: float | None) -> str:
    if seconds is None or is_undefined(seconds):
        return ""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def refresh(outputs_dir: Path = OUTPUTS_DIR) -> Path:
    """Render every run's missing HTML and rebuild the index."""
    if outputs_dir.exists():
        for folder in (p for p in outputs_dir.iterdir() if p.is_dir()):
            render_run(folder)
    return build_index(outputs_dir)


def main() -> None:
    index = refresh()
    print(f"historial de ejecuciones: {index}")


if __name__ == "__main__":
    main()
