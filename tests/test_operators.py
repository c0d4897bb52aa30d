"""The DAG's task-side plumbing (medallion.operators) that a notebook task relies on."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.pure  # no service: runs without starting any

PARAMETERIZE = r"""
import json, sys
import nbformat
from papermill.parameterize import parameterize_notebook
import medallion.operators  # as the DAG file does, in every task's process

cell = nbformat.v4.new_code_cell('run_id = "lab"', metadata={"tags": ["parameters"]})
nb = nbformat.v4.new_notebook(cells=[cell])
nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Py"}
nb.metadata["papermill"] = {}
nb = parameterize_notebook(nb, {"run_id": "manual__1", "batch_size": 100000})
print(json.dumps([nb.cells[1].source, "black" in sys.modules]))
"""


def test_the_parameters_cell_is_written_without_importing_black():
    # black comes with papermill[all]; importing it cost a notebook task 0.5 s
    out = subprocess.run(
        [sys.executable, "-c", PARAMETERIZE], capture_output=True, text=True, check=True
    ).stdout
    source, black_imported = json.loads(out.splitlines()[-1])
    assert source == '# Parameters\nrun_id = "manual__1"\nbatch_size = 100000\n'
    assert not black_imported
