"""The fault and hostile-input suite (`make reliability`): whole runs against real services,
broken on purpose, each ending in a published run with exact counts, a quarantine with a
reason, or a clear failure.

`make reliability` gives the suite services of its own (its own `.local/` root and ports, set
in the environment before the session starts), because it stops and crashes them; the table of
outcomes is printed at the end and kept in that root as `reliability.json`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from medallion import services
from medallion.settings import LOCAL_DIR, PROJECT_ROOT

pytestmark = pytest.mark.reliability
REPORT = LOCAL_DIR / "reliability.json"


@dataclass
class Outcome:
    scenario: str
    outcome: str
    lines_in: int
    in_staging: int
    quarantined: int
    duplicated: int  # lines of the delivery in staging more than once: always 0


class Report:
    def __init__(self) -> None:
        self.rows: list[Outcome] = []

    def add(self, row: Outcome) -> Outcome:
        self.rows.append(row)
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(json.dumps([asdict(r) for r in self.rows], indent=2))
        return row


_REPORT = Report()


@pytest.fixture(scope="session")
def report() -> Report:
    return _REPORT


def pytest_terminal_summary(terminalreporter) -> None:
    if not _REPORT.rows:
        return
    widths = [34, 44, 9, 11, 12, 10]
    head = ["scenario", "outcome", "lines in", "in staging", "quarantined", "duplicates"]
    terminalreporter.section("reliability")
    terminalreporter.write_line("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    for r in _REPORT.rows:
        cells = [r.scenario, r.outcome, r.lines_in, r.in_staging, r.quarantined, r.duplicated]
        terminalreporter.write_line(
            "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))
        )
    terminalreporter.write_line(f"(kept in {REPORT})")


class PipelineRun:
    """`python -m medallion.cli run --input FOLDER` (what `make run` does), in the background."""

    def __init__(self, folder: Path, *args: str):
        self.log = folder.with_suffix(".log")
        self._out = self.log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "medallion.cli", "run", "--input", str(folder), *args],
            cwd=PROJECT_ROOT,
            env=os.environ,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def wait(self, timeout: float = 900) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        self._out.close()
        return code, self.log.read_text()

    @staticmethod
    def run_id(output: str) -> str:
        return re.search(r"^run_id:\s+(\S+)", output, re.M).group(1)


def wait_for(condition: Callable[[], object], what: str, timeout: float = 300) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.3)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def waiting_on_lock(db, query_like: str) -> bool:
    """A session of the pipeline waits for a lock while running a statement like this."""
    with db.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                    "and query ilike :q and pid <> pg_backend_pid()"
                ),
                {"q": query_like},
            ).scalar_one()
        )


def crash_postgres() -> None:
    """What a power cut does to PostgreSQL: stop without a checkpoint (crash recovery at the
    next start empties every UNLOGGED table), then start it again."""
    subprocess.run(
        [services._pg_bin("pg_ctl"), "-D", str(services.PATHS.pg_data), "-m", "immediate",
         "-w", "stop"],
        check=True, capture_output=True, **services._as_service_user(),
    )  # fmt: skip
    services.start_postgres()
