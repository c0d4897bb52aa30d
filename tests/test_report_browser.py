"""The run record as a person sees it: ``outputs/index.html`` and the result notebook's HTML in
a real browser (headless Chromium, Debian's own: no browser download), with this run's figures,
the charts drawn, nothing logged as an error and nothing fetched from the network. The
screenshots stay under the tests' folder (``.local/test/screenshots/``) for a person to look at.
"""

import re
from pathlib import Path

import pytest

from medallion import warehouse
from medallion.settings import (
    LOCAL_DIR,
    OUTPUTS_DIR,
    PROJECT_ROOT,
    env_var_name,
    get_connection,
    run_slug,
)
from tests.test_e2e import run_pipeline

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
# Headless on a closed network: nothing of Chromium's own may phone home (updates, sync, QUIC).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = LOCAL_DIR / "screenshots"
TIMEOUT_MS = 15_000
MIN_CHARTS = 4  # by month, by region and segment, top 10, new/updated lines by month
# The index's columns of the run's lines, by header, and the sample's totals they show
COLUMNS = {
    "líneas leídas": "lines",
    "silver": "valid",
    "cuarentena": "quarantined",
    "duplicadas": "duplicates",
}
MERGE_LINE = re.compile(r"^(\w+): \+([\d.]+) nuevas, ([\d.]+) actualizadas, ([\d.]+) sin cambios$")
FACT_TABLE = "fact_operaciones_ventas"
# Every check the publish gate records, named where it is defined (sql/049)
GATE_CHECKS = re.findall(
    r"gate_check\('([^']+)'", (PROJECT_ROOT / "sql" / "049_sp_publish_gate.sql").read_text()
)


def thousands(n: int) -> str:
    """A count as the index writes it: 3302 -> 3.302."""
    return f"{n:,}".replace(",", ".")


@pytest.fixture
def totals(sample_expected) -> dict[str, int]:
    """The sample's lines read, to silver, quarantined and duplicated, over its files."""
    return {k: sum(f[k] for f in sample_expected.values()) for k in COLUMNS.values()}


@pytest.fixture(scope="module", autouse=True)
def chromium() -> Path:
    """Debian's Chromium, before anything else runs: a missing browser fails, never skips."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: these tests open the run record in Debian's Chromium "
            "(`make test` installs it; or `sudo apt-get install chromium`)"
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def run_id(chromium) -> str:
    """The sample through the whole DAG, in a warehouse of this module's own: every file is
    new there, whatever ran before in the session, so the run inserts lines (the chart of new
    lines is drawn) and its merge counts are known."""
    own = warehouse.fresh_database(
        "postgres_default", f"{get_connection('postgres_default').schema}_browser"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(env_var_name("postgres_default"), own.as_json())
        return run_pipeline()


@pytest.fixture(scope="module")
def run_folder(run_id) -> Path:
    folder = OUTPUTS_DIR / run_slug(run_id)
    assert (folder / "05_resultado.html").exists(), sorted(p.name for p in folder.iterdir())
    return folder


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), headless=True,
                                     args=CHROMIUM_ARGS)  # fmt: skip
        yield browser
        browser.close()


class Watched:
    """A page and what the browser reported while it was open."""

    def __init__(self, page):
        self.page = page
        self.console: list[str] = []  # console messages of type error or warning
        self.errors: list[str] = []  # uncaught exceptions of the page's scripts
        self.failed: list[str] = []  # requests that did not complete
        self.requests: list[str] = []  # every URL the page asked for
        page.on("console", self._console)
        page.on("pageerror", lambda err: self.errors.append(str(err)))
        page.on("requestfailed", lambda r: self.failed.append(f"{r.url}: {r.failure}"))
        page.on("request", lambda r: self.requests.append(r.url))

    def _console(self, msg) -> None:
        if msg.type in ("error", "warning"):
            self.console.append(f"{msg.type}: {msg.text} ({msg.location.get('url')})")

    def assert_clean(self) -> None:
        """Nothing logged as an error or warning, nothing failed, nothing off this machine."""
        assert self.console == []
        assert self.errors == []
        assert self.failed == []
        remote = [u for u in self.requests if not u.startswith(("file://", "data:"))]
        assert remote == [], "the page must be self-contained"


@pytest.fixture
def watched(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    # A request off the machine fails at once (and is reported) instead of waiting for the
    # closed network's timeout.
    context.route(re.compile(r"^(https?|wss?)://"), lambda route: route.abort())
    yield Watched(context.new_page())
    context.close()


def screenshot(page, name: str) -> Path:
    """A full-page PNG under the tests' folder; it must show something, not a blank page."""
    from PIL import Image

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    path.unlink(missing_ok=True)
    page.screenshot(path=str(path), full_page=True)
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        low, high = image.convert("L").getextrema()
    assert width >= 800 and height >= 300, (width, height)
    assert high - low > 100, f"{path} is blank"
    assert path.stat().st_size > 20_000
    return path


def test_index_shows_the_run_and_links_its_result(watched, run_id, run_folder, totals):
    page = watched.page
    page.goto((OUTPUTS_DIR / "index.html").as_uri(), wait_until="load")
    row = page.locator(f'table#runs tr.run[data-run-id="{run_id}"]')
    assert row.count() == 1, f"the index has no row for {run_id}"
    assert row.get_attribute("data-status") == "success"

    headers = [h.strip() for h in page.locator("table#runs thead th").all_inner_texts()]
    cells = [c.strip() for c in row.locator(":scope > td").all_inner_texts()]
    shown = {key: cells[headers.index(header)] for header, key in COLUMNS.items()}
    assert shown == {key: thousands(n) for key, n in totals.items()}

    merged = {}
    for line in row.locator("ul.merge li").all_inner_texts():
        match = MERGE_LINE.match(line.strip())
        assert match, f"merge counts as written: {line!r}"
        merged[match[1]] = match.groups()[1:]
    assert set(merged) == set(warehouse.TRANSIT_TABLES)
    # A warehouse of its own: every valid line of the sample is new
    assert merged[FACT_TABLE] == (thousands(totals["valid"]), "0", "0")

    link = row.locator("a.result")
    assert link.get_attribute("href") == f"{run_folder.name}/05_resultado.html"
    screenshot(page, "index")

    link.click()
    page.wait_for_load_state("load")
    assert page.url == (run_folder / "05_resultado.html").as_uri()
    assert "05 · Resultado" in page.locator("h1").first.inner_text()
    watched.assert_clean()  # both pages


def test_result_notebook_has_the_runs_figures_and_its_charts(
    watched, run_folder, sample_expected, totals
):
    page = watched.page
    page.goto((run_folder / "05_resultado.html").as_uri(), wait_until="load")
    assert page.title()
    assert "05 · Resultado" in page.locator("h1").first.inner_text()
    text = page.locator("body").inner_text()

    # Each file of the sample with its lines read, to silver, quarantined and duplicated
    assert re.search(r"file_name\s+decision\s+lines_in\s+silver\s+quarantined\s+duplicates", text)
    for name, f in sample_expected.items():
        counts = r"\s+".join(str(f[k]) for k in COLUMNS.values())
        assert re.search(rf"{re.escape(name)}\s+new\s+{counts}\n", text), name

    # The merge's counts per staging table (the DataFrame's HTML table); every line is new
    merge = page.locator("table.dataframe", has_text="unchanged")
    assert merge.count() == 1
    merge_text = merge.inner_text()
    assert all(f"staging.{t}" in merge_text for t in warehouse.TRANSIT_TABLES), merge_text
    assert re.search(rf"staging\.{FACT_TABLE}\s+{totals['valid']}\s+0\s+0\s", merge_text)

    # Every check of the publish gate, passed, as the printed table shows them
    assert GATE_CHECKS, "no check found in sql/049_sp_publish_gate.sql"
    assert re.search(r"check\s+expected\s+found\s+passed", text)
    missing = [c for c in GATE_CHECKS if not re.search(rf"{re.escape(c)}\s+\S+\s+\S+\s+True", text)]
    assert missing == []
    valid = totals["valid"]
    assert re.search(rf"lines silver -> transit\s+{valid}\s+{valid}\s+True", text)

    # The charts: embedded PNGs the browser decoded
    charts = page.locator('img[src^="data:image/png;base64,"]')
    assert charts.count() >= MIN_CHARTS
    sizes = charts.evaluate_all("imgs => imgs.map(i => [i.complete, i.naturalWidth])")
    assert all(complete and width > 0 for complete, width in sizes), sizes
    assert page.locator("img").count() == charts.count()  # no image from elsewhere

    screenshot(page, "05_resultado")
    watched.assert_clean()
