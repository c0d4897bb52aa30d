"""Real services for the tests, never the developer's: embedded S3 and PostgreSQL of the test
sessions' own (root ``.local/test``, ports 18533 and 25349: buckets, database and Airflow homes
apart from what `make run` uses), or the ones named by AIRFLOW_CONN_MINIO_DEFAULT /
AIRFLOW_CONN_POSTGRES_DEFAULT. Started once, before the first test that needs them; a session
of pure tests starts none.

Tests get a fresh database (``medallion_test``) so that exact counts hold; the connection
variables are set before any notebook kernel starts, so nbval's kernels use them too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Set before the medallion modules read them; `make reliability` sets its own.
os.environ.setdefault("MEDALLION_LOCAL_DIR", str(Path(__file__).parents[1] / ".local" / "test"))
os.environ.setdefault(
    "MEDALLION_OUTPUTS_DIR", os.path.join(os.environ["MEDALLION_LOCAL_DIR"], "outputs")
)
os.environ.setdefault("MEDALLION_S3_PORT", "18533")
os.environ.setdefault("MEDALLION_PG_PORT", "25349")

import pytest

from medallion import services, storage, warehouse
from medallion.settings import env_var_name, get_connection, load_params

# A session of its own (e.g. a second checkout, a helper) can take another database name.
TEST_DATABASE = os.environ.get("MEDALLION_TEST_DATABASE", "medallion_test")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pure: needs no service (the session starts none)")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items) -> None:
    """Start the services once, before the first test, unless every selected test is pure
    (`pytest tests/test_contract.py` starts no server)."""
    if config.option.collectonly or os.environ.get("MEDALLION_TEST_SERVICES_READY"):
        return
    if items and all(item.get_closest_marker("pure") for item in items):
        return
    start_services()


def start_services() -> None:
    """The services of the session, a fresh database, the buckets and sql/; the connection
    variables are set before any notebook kernel starts, so nbval's kernels use them too."""
    global _EMBEDDED
    used = services.use_services()  # 'embedded (S3: started, PostgreSQL: reused)'
    _EMBEDDED = used.startswith("embedded") and "started" in used
    test_db = warehouse.fresh_database("postgres_default", TEST_DATABASE)
    os.environ[env_var_name("postgres_default")] = test_db.as_json()
    params = load_params("local")
    storage.ensure_buckets(
        storage.s3_client("minio_default"),
        [params["bronze_bucket"], params["silver_bucket"], params["gold_bucket"]],
    )
    warehouse.apply_sql(warehouse.engine("postgres_default"))
    if services.is_embedded(test_db):  # the analysts' grants on what sql/ made (sql/roles/)
        services.prepare_database(TEST_DATABASE)
    os.environ["MEDALLION_TEST_SERVICES_READY"] = "1"


# The session started embedded services of its own (another session's are left running)
_EMBEDDED = False


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A test session leaves nothing running: its embedded services stop with it."""
    if _EMBEDDED:
        services.stop()


@pytest.fixture(scope="session")
def params() -> dict:
    return load_params("local")


@pytest.fixture(scope="session")
def s3():
    return storage.s3_client("minio_default")


@pytest.fixture(scope="session")
def db():
    eng = warehouse.engine("postgres_default")
    yield eng
    eng.dispose()


@pytest.fixture
def empty_warehouse():
    """A warehouse of its own whose fact is empty (the shared one holds other tests' lines)."""
    name = f"{get_connection('postgres_default').schema}_empty"
    eng = warehouse.engine_for(warehouse.fresh_database("postgres_default", name))
    warehouse.apply_sql(eng)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def secrets_in_use() -> list[str]:
    """The passwords of the connections the tests use (to prove no output contains them)."""
    values = [get_connection("minio_default").password, get_connection("postgres_default").password]
    return [v for v in values if v]


@pytest.fixture
def sample_expected() -> dict:
    from medallion.settings import PROJECT_ROOT

    return json.loads((PROJECT_ROOT / "data" / "sample.expected.json").read_text())
