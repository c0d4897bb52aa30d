"""Keep the committed notebooks' checked outputs in step with the sample (for nbval).

nbval (``--nbval-lax``) compares only the cells marked ``# NBVAL_CHECK_OUTPUT`` with the
outputs stored in the notebook. ``make notebooks`` executes every notebook with its default
parameters and stores the outputs of those cells only; all other outputs are cleared.

In the DAG a run is merged and published between notebooks 04 and 05 (task ``merge_staging``);
run by hand or by nbval, with their default run id, ``publish_before`` does that step.

    python -m medallion.notebooks
"""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from medallion import report
from medallion.settings import NOTEBOOKS_DIR

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"


def publish_before(path: Path) -> None:
    """Publish the notebook's default run (its parameters cell) when the notebook needs it."""
    if path.stem != report.RESULT_NOTEBOOK:  # the one notebook that reads a published run
        return
    import papermill

    from medallion import transit, warehouse

    defaults = {
        name: ast.literal_eval(p["default"])
        for name, p in papermill.inspect_notebook(str(path)).items()
    }
    transit.publish(warehouse.engine(defaults["postgres_conn_id"]), defaults["run_id"])


def refresh(name: str) -> None:
    path = NOTEBOOKS_DIR / f"{name}.ipynb"
    publish_before(path)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(NOTEBOOKS_DIR)}}
    ).execute()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        if CHECK_MARK not in cell.source:
            cell.outputs = []
    nbformat.write(nb, path)


def main() -> None:
    for path in sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb")):
        refresh(path.stem)
        print(f"refreshed {path.name}")


if __name__ == "__main__":
    main()
