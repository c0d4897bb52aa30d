"""The command line (medallion.cli) beyond its subcommands' own tests."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.pure  # no service: runs without starting any

HEAVY = ["pandas", "numpy", "pyarrow", "airflow", "papermill", "sqlalchemy", "minio"]


def test_the_command_line_starts_without_the_data_libraries():
    # `make run` starts a process of its own for the DAG, which loads them; loading them in the
    # command as well cost every run about 0.4 s before the DAG's process started. The
    # warehouse's and the object store's clients are loaded after the DAG's process started,
    # while it imports Airflow (medallion.dag_process)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import json, sys, medallion.cli; print(json.dumps([m for m in {HEAVY!r} "
            "if m in sys.modules]))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out.splitlines()[-1]) == []
