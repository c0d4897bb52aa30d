"""nbval runs the notebooks in order with their default parameters (run id ``lab``). In the DAG
the run is merged and published between notebooks 04 and 05 (task ``merge_staging``): here the
same step runs before notebook 05's first cell."""

from __future__ import annotations

import pytest

from medallion.notebooks import publish_before

_prepared: set = set()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.path not in _prepared:
        _prepared.add(item.path)
        publish_before(item.path)
