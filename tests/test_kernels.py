"""Warm kernels (medallion.kernels): each notebook gets a kernel of its own, started ahead,
with the task's environment; real kernels, real papermill."""

import json
import logging
import threading
import time
from contextlib import suppress
from pathlib import Path

import nbformat
import papermill as pm
import psutil
import pytest
from nbclient.exceptions import DeadKernelError
from papermill.engines import NBClientEngine, papermill_engines
from papermill.exceptions import PapermillExecutionError

from medallion import kernels

SHOW = (
    "import json, os\n"
    "print(json.dumps([sorted(k for k in globals() if not k.startswith('_') "
    "and k not in ('In', 'Out', 'exit', 'quit', 'get_ipython', 'open')), "
    "os.environ.get('AIRFLOW_CTX_TASK_ID'), "
    "os.environ.get('MEDALLION_TEST_SETTING'), os.getpid(), "
    "os.environ.get('_AIRFLOW_PARSING_CONTEXT_DAG_ID')]))"
)


def papermills_own_engine() -> None:
    """papermill's default engine again, after a test that replaced it."""
    papermill_engines.register(None, NBClientEngine)
    papermill_engines.register("nbclient", NBClientEngine)


@pytest.fixture
def warm(tmp_path, monkeypatch, caplog):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(SHOW)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, tmp_path / "show.ipynb")
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="medallion.kernels")
    kernels.use_warm_kernels()
    yield tmp_path
    kernels.POOL.close()
    papermills_own_engine()


def run(folder, name: str) -> list:
    pm.execute_notebook(folder / "show.ipynb", folder / f"{name}.ipynb", progress_bar=False)
    text = nbformat.read(folder / f"{name}.ipynb", 4).cells[0].outputs[0]["text"]
    return json.loads(text)


def test_the_next_notebook_gets_a_fresh_warm_kernel_with_its_tasks_variables(
    warm, monkeypatch, caplog
):
    monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", "first")
    names, task, _, first_pid, _ = run(warm, "first")
    assert (names, task) == (["json", "os"], "first")
    monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", "second")
    names, task, _, second_pid, _ = run(warm, "second")
    assert "started ahead (warm)" in caplog.text
    # a kernel of its own (not the first notebook's), nothing of the preload in its namespace,
    # and this task's id, not the one of the task during which it was started
    assert second_pid != first_pid
    assert (names, task) == (["json", "os"], "second")


def test_a_kernel_started_for_another_environment_is_not_used(warm, monkeypatch, caplog):
    monkeypatch.setenv("MEDALLION_TEST_SETTING", "before")
    run(warm, "first")
    monkeypatch.setenv("MEDALLION_TEST_SETTING", "after")  # e.g. another connection
    *_, setting, _, _ = run(warm, "second")
    assert setting == "after"
    assert "started for another environment" in caplog.text


def test_a_kernel_started_before_the_dag_is_parsed_serves_the_first_notebook(
    warm, monkeypatch, caplog
):
    # as medallion.runs does before Airflow parses the DAG, which then sets its parsing
    # context: a variable of the task's, handed over like the task's own
    kernels.POOL.start_next("python3")
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "medallion_ventas")
    monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", "first")
    names, task, _, _, dag_id = run(warm, "first")
    assert "started ahead (warm)" in caplog.text
    assert (names, task, dag_id) == (["json", "os"], "first", "medallion_ventas")


def test_a_notebooks_kernel_is_stopped_once_its_cells_have_returned(warm):
    # stopped in the background (the task does not wait for the kill); close waits for it
    *_, pid, _ = run(warm, "only")
    kernels.POOL.close()
    assert not psutil.pid_exists(pid)


def test_the_kernel_left_over_is_shut_down(warm):
    run(warm, "only")
    ready = [km for km, _ in kernels.POOL._ready.values()]
    assert ready and all(km.is_alive() for km in ready)
    kernels.POOL.close()
    assert not any(km.is_alive() for km in ready)


def test_the_kernel_left_over_loses_its_files_when_released(warm):
    # the DAG's process ends with os._exit: the kernel ends with it, its files go before
    run(warm, "only")
    (km,) = [km for km, _ in kernels.POOL._ready.values()]
    deadline = time.monotonic() + 30
    while len(sockets(km.ip)) < 5 and time.monotonic() < deadline:  # the kernel binds them
        time.sleep(0.1)
    files = [km.connection_file, *sockets(km.ip)]
    assert len(files) == 6 and all(Path(f).exists() for f in files)
    kernels.POOL.release()
    assert not any(Path(f).exists() for f in files)
    assert not kernels.POOL._ready


def test_a_warm_kernel_that_dies_mid_cell_fails_the_notebook_instead_of_hanging(warm):
    """A killed kernel (the fault suite kills notebook 02's) must end the notebook with an
    error that Airflow retries: the client watches the kernel while it waits for output."""
    run(warm, "first")  # the next notebook's kernel is started ahead
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")]
    )
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, warm / "dies.ipynb")
    outcome: list[BaseException | None] = []

    def execute() -> None:
        try:
            pm.execute_notebook(warm / "dies.ipynb", warm / "died.ipynb", progress_bar=False)
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - what it raised is the point
            outcome.append(err)

    worker = threading.Thread(target=execute, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the notebook still waits for a dead kernel"
    assert outcome and isinstance(outcome[0], DeadKernelError | PapermillExecutionError), outcome


def run_cell(folder, name: str, code: str) -> str:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, folder / f"{name}.ipynb")
    pm.execute_notebook(folder / f"{name}.ipynb", folder / f"{name}.out.ipynb", progress_bar=False)
    return nbformat.read(folder / f"{name}.out.ipynb", 4).cells[0].outputs[0]["text"]


PARENT = "import os, sys\nprint(os.getpid(), os.getppid(), 'pandas' in sys.modules)"


def test_the_kernels_are_forked_from_one_zygote_started_by_this_process(warm):
    kernels.POOL.start_next("python3")  # as medallion.runs does for the first notebook
    first = run_cell(warm, "first", PARENT).split()
    second = run_cell(warm, "second", PARENT).split()
    assert first[0] != second[0]  # a kernel of its own per notebook
    assert first[1] == second[1]  # the same parent: the zygote
    zygote = psutil.Process(int(first[1]))
    assert "medallion.zygote" in " ".join(zygote.cmdline())
    assert zygote.parent().pid == psutil.Process().pid
    assert first[2] == second[2] == "True"
    kernels.POOL.close()  # the zygote ends with the pool
    zygote.wait(10)


def test_a_zygotes_kernel_ends_when_the_zygote_is_gone(warm):
    # as when the run's process is killed: nothing of it is left running
    run_cell(warm, "first", PARENT)
    ((km, _),) = kernels.POOL._ready.values()
    assert km.is_alive()
    kernel = psutil.Process(km.provisioner.process.pid)
    zygote = kernel.parent()
    assert "medallion.zygote" in " ".join(zygote.cmdline())
    zygote.kill()
    kernel.wait(10)  # ipykernel's parent watch (about a second)
    assert not km.is_alive()


def test_a_running_code_cell_is_in_the_output_notebook_while_it_runs(warm):
    # what a person (and the fault suite) reads of a notebook still running: saved when each
    # code cell starts, with the cells before it complete, and complete at the end
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# a step"),
            nbformat.v4.new_code_cell("print('read')"),
            nbformat.v4.new_markdown_cell("then a long one"),
            nbformat.v4.new_code_cell("import time\ntime.sleep(3)"),
        ]
    )
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, warm / "long.ipynb")
    output = warm / "long.out.ipynb"
    worker = threading.Thread(
        target=pm.execute_notebook, args=(warm / "long.ipynb", output), daemon=True
    )
    worker.start()

    def statuses() -> list[str]:
        with suppress(FileNotFoundError, json.JSONDecodeError):
            cells = json.loads(output.read_text())["cells"]
            return [c["metadata"]["papermill"]["status"] for c in cells]
        return []

    deadline = time.monotonic() + 30
    while statuses()[-1:] != ["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert statuses() == ["completed", "completed", "completed", "running"]
    worker.join(30)
    assert statuses() == ["completed"] * 4


TRANSPORT = (
    "import json\n"
    "from ipykernel.connect import get_connection_info\n"
    "info = json.loads(get_connection_info())\n"
    "print(json.dumps([info['transport'], info['ip']]))"
)


@pytest.fixture
def unix_sockets():
    kernels.use_unix_sockets()
    yield
    papermills_own_engine()


def sockets(prefix: str) -> list[str]:
    return sorted(str(p) for p in Path(prefix).parent.glob(f"{Path(prefix).name}-*"))


def test_a_notebooks_kernel_talks_over_unix_sockets_of_its_own_removed_after(
    tmp_path, unix_sockets
):
    first = json.loads(run_cell(tmp_path, "first", TRANSPORT))
    second = json.loads(run_cell(tmp_path, "second", TRANSPORT))
    # no TCP port to pick (two tasks that start kernels at once could pick the same one)
    assert (first[0], second[0]) == ("ipc", "ipc")
    assert first[1] != second[1] and Path(first[1]).is_absolute()
    assert sockets(first[1]) == sockets(second[1]) == []  # removed with their kernels


def test_warm_kernels_talk_over_unix_sockets_too(warm):
    kernels.use_unix_sockets()  # the warm engine stays: it is one of ours
    assert papermill_engines.get_engine(None) is kernels.WarmKernelEngine
    for name in ("first", "second"):  # the second one's kernel was started ahead
        assert json.loads(run_cell(warm, name, TRANSPORT))[0] == "ipc"


ARROW_POOL = "import pyarrow as pa\nprint(pa.default_memory_pool().backend_name)"


def test_warm_kernels_allocate_arrow_memory_with_jemalloc(warm):
    assert run_cell(warm, "pool", ARROW_POOL).strip() == "jemalloc"


def test_a_notebooks_own_kernel_allocates_arrow_memory_with_jemalloc(tmp_path):
    # papermill's own engine: a task's process imported medallion, its kernels inherit the choice
    assert run_cell(tmp_path, "pool", ARROW_POOL).strip() == "jemalloc"


# Freed blocks of 8-24 MB reused, not given back to the system and faulted in again (pages)
REUSED_MEMORY = """import resource
def rounds():
    for size in (8, 16, 24):
        block = bytearray(size << 20)
        del block
rounds()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)"""


def test_kernels_forked_from_the_zygote_keep_the_memory_they_freed(warm):
    kernels.POOL.start_next("python3")  # forked: the zygote imported medallion
    assert int(run_cell(warm, "reused", REUSED_MEMORY)) < 100  # 6,143 with glibc's defaults


def test_a_notebooks_own_kernel_keeps_the_memory_it_freed_once_it_imports_medallion(tmp_path):
    code = "import medallion  # as every notebook does first\n" + REUSED_MEMORY
    assert int(run_cell(tmp_path, "reused", code)) < 100
