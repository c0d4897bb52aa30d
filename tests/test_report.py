"""The run record's pieces on their own: notebooks as self-contained HTML, the index of run
folders (with or without their run.json), the failures the tasks recorded. The DAG's use of
them is covered end to end (test_e2e, test_report_browser)."""

from __future__ import annotations

import base64
import contextlib
import json
import multiprocessing
import re
import signal
import subprocess
import sys

import nbformat
import psutil
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from medallion import report

pytestmark = pytest.mark.pure

PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
    )
).decode()


def executed_notebook(path, error: str | None = None):
    cell = new_code_cell("plot()")
    cell.outputs = [new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"})]
    if error:
        cell.outputs.append(new_output("error", ename="FileRejected", evalue=error, traceback=[]))
    nbformat.write(new_notebook(cells=[cell]), path)
    return path


def test_a_notebook_becomes_html_that_loads_nothing_from_elsewhere(tmp_path):
    html = report.render_notebook(executed_notebook(tmp_path / "05_resultado.ipynb"))
    page = html.read_text()
    assert html.name == "05_resultado.html"
    assert f"data:image/png;base64,{PNG}" in page
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"https?://", page)


def test_only_missing_or_older_html_is_rendered_again(tmp_path):
    executed_notebook(tmp_path / "01_bronze_ingest__a.csv.ipynb")
    executed_notebook(tmp_path / "03_gold_model.ipynb")
    assert len(report.render_run(tmp_path)) == 2
    assert report.render_run(tmp_path) == []


def test_a_notebook_is_rendered_as_soon_as_its_task_has_run_it_when_rendering_ahead(
    tmp_path, monkeypatch
):
    first = executed_notebook(tmp_path / "01_bronze_ingest__a.csv.ipynb")
    report.notebook_executed(first)  # not rendering ahead (a real Airflow): left to render_run
    assert not first.with_suffix(".html").exists()
    monkeypatch.setattr(report, "_ahead", None)
    report.render_ahead()  # make run: its tasks share one process
    report.notebook_executed(first)
    gold = executed_notebook(tmp_path / "03_gold_model.ipynb")
    report.notebook_executed(gold)
    assert report.render_run(tmp_path) == []  # both were rendered ahead, and waited for
    assert first.with_suffix(".html").exists() and gold.with_suffix(".html").exists()
    report.stop_rendering_ahead()


def test_rendering_ahead_happens_in_another_process(tmp_path):
    """nbconvert holds the GIL: rendered in the process that runs the tasks, it delays them."""
    executed_notebook(tmp_path / "03_gold_model.ipynb")
    script = (
        "import sys; from pathlib import Path; from medallion import report\n"
        "report.render_ahead()\n"
        f"report.notebook_executed(Path({str(tmp_path / '03_gold_model.ipynb')!r}))\n"
        f"print(report.render_run(Path({str(tmp_path)!r})), 'nbconvert' in sys.modules)\n"
        "report.stop_rendering_ahead()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "False"]  # rendered ahead, and not by this process
    assert (tmp_path / "03_gold_model.html").exists()


def test_the_renderer_ends_when_the_process_that_started_it_is_killed(tmp_path):
    notebook = executed_notebook(tmp_path / "03_gold_model.ipynb")
    script = (
        "import os, signal; from pathlib import Path; from medallion import report\n"
        "report.render_ahead()\n"
        f"report.notebook_executed(Path({str(notebook)!r}))\n"
        "report._rendering[0].result()\n"
        "print(*report._ahead._processes, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # it notices its parent's end at once; the minute only bounds a failure of this test
    with contextlib.suppress(psutil.NoSuchProcess):  # gone already
        psutil.Process(int(killed.stdout.split()[0])).wait(timeout=60)


def test_a_renderer_that_cannot_start_leaves_the_notebook_to_the_end(tmp_path, monkeypatch):
    def no_process(self):
        raise BlockingIOError("fork: resource temporarily unavailable")

    monkeypatch.setattr(multiprocessing.get_context("spawn").Process, "start", no_process)
    monkeypatch.setattr(report, "_ahead", None)
    report.render_ahead()
    gold = executed_notebook(tmp_path / "03_gold_model.ipynb")
    report.notebook_executed(gold)  # the task that ran it does not fail
    assert report.render_run(tmp_path) == [gold.with_suffix(".html")]
    report.stop_rendering_ahead()


def test_a_notebook_whose_renderer_died_is_rendered_at_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "_ahead", None)
    report.render_ahead()
    first = executed_notebook(tmp_path / "01_bronze_ingest__a.csv.ipynb")
    report.notebook_executed(first)
    report.render_run(tmp_path)  # the renderer's process is running now
    first.with_suffix(".html").unlink()
    for process in list(report._ahead._processes.values()):
        process.kill()
        process.join()
    gold = executed_notebook(tmp_path / "03_gold_model.ipynb")
    report.notebook_executed(gold)  # the task that ran it does not fail
    assert sorted(p.name for p in report.render_run(tmp_path)) == [
        "01_bronze_ingest__a.csv.html",
        "03_gold_model.html",
    ]
    report.stop_rendering_ahead()


def test_the_index_lists_runs_newest_first_with_or_without_their_record(tmp_path):
    done, cut_short = tmp_path / "manual__2", tmp_path / "manual__1"
    for folder in (done, cut_short):
        folder.mkdir()
        executed_notebook(folder / "04_load_postgres.ipynb")
        report.render_run(folder)
    report.write_record(
        done,
        {
            "run_id": "manual__2",
            "started_at": "2099-01-01T00:00:00+00:00",
            "duration_s": 75.2,
            "status": "failed",
            "message": "1 of 1 new file(s) failed",
            "failed": [{"task": "files.02_silver_clean", "file": "a.csv", "message": "<b>bad</b>"}],
            "totals": {"lines_in": 1234567, "silver": 0, "quarantined": 1234567, "duplicates": 0},
        },
    )
    (tmp_path / "not_a_run").mkdir()  # no notebook, no record: not listed
    listed = report.runs(tmp_path)
    assert [r["run_id"] for r in listed] == ["manual__2", "manual__1"]
    assert listed[1]["status"] == "unknown"
    assert listed[1]["notebooks"] == [
        {"name": "04_load_postgres", "html": "manual__1/04_load_postgres.html"}
    ]
    page = report.build_index(tmp_path).read_text()
    assert page.index('data-run-id="manual__2"') < page.index('data-run-id="manual__1"')
    assert "1 min 15 s" in page and "1.234.567" in page
    assert "&lt;b&gt;bad&lt;/b&gt;" in page  # messages are text, never markup


def test_failures_keep_the_last_message_of_each_task_instance(tmp_path):
    lines = [
        {"task": "merge_staging", "map_index": -1, "message": "first"},
        {"task": "files.02_silver_clean", "map_index": 0, "file": "a.csv", "message": "a"},
        {"task": "files.02_silver_clean", "map_index": 1, "file": "b.csv", "message": "b"},
        {"task": "merge_staging", "map_index": -1, "message": "after a clear"},
    ]
    text = "".join(json.dumps(x) + "\n" for x in lines) + '{"task": "cut sho'  # a killed writer
    (tmp_path / report.FAILURES).write_text(text)
    assert {report.task_key(f["task"], f["map_index"]): f["message"]
            for f in report.failures(tmp_path)} == {
        "merge_staging": "after a clear",
        "files.02_silver_clean_0": "a",
        "files.02_silver_clean_1": "b",
    }  # fmt: skip


def test_a_notebook_error_is_recorded_by_its_own_line_not_its_traceback():
    from papermill.exceptions import PapermillExecutionError

    error = PapermillExecutionError(
        cell_index=3, exec_count=3, source="x", ename="KeyError", evalue="'sales'",
        traceback=["Traceback (most recent call last):"] + ["  frame"] * 500,
    )  # fmt: skip
    assert report._message(error) == "KeyError: 'sales'"
    assert report._message(RuntimeError("S3 down")) == "RuntimeError: S3 down"
    assert report._message(None) == report.NO_MESSAGE


def test_only_the_task_instances_failed_now_are_in_the_record(tmp_path):
    """A cleared and re-run task that now succeeds leaves its old failure out; a failure the
    callback could not record (a killed task) is told by its notebook's error."""
    from medallion.runs import _failed_tasks

    lines = [
        {"task": "merge_staging", "map_index": -1, "message": "lock timeout"},  # then succeeded
        {"task": "files.02_silver_clean", "map_index": 1, "file": "b.csv", "message": "bad b"},
    ]
    (tmp_path / report.FAILURES).write_text("".join(json.dumps(x) + "\n" for x in lines))
    executed_notebook(tmp_path / "03_gold_model.ipynb", error="no silver rows")
    failed = _failed_tasks(tmp_path, ["03_gold_model", "files.02_silver_clean_1"])
    assert [(f["task"], f["message"]) for f in failed] == [
        ("03_gold_model", "FileRejected: no silver rows"),
        ("files.02_silver_clean", "bad b"),
    ]


def test_a_record_that_cannot_be_read_does_not_break_the_index(tmp_path):
    folder = tmp_path / "manual__3"
    folder.mkdir()
    (folder / report.RUN_RECORD).write_text('{"run_id": "manual__3", "sta')  # cut short
    (folder / report.FAILURES).write_text("not json\n")
    page = report.build_index(tmp_path).read_text()
    assert 'data-run-id="manual__3" data-status="unknown"' in page
