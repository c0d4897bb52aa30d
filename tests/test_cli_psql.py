"""`make psql`: psql on the warehouse with the pipeline's connection, the password never on a
command line."""

import os
import re
import subprocess
import sys

import pytest

from medallion import cli
from medallion.settings import PROJECT_ROOT, get_connection


def psql(*args: str) -> subprocess.CompletedProcess:
    """`python -m medallion.cli psql ...` as `make psql` runs it (against the tests' services:
    their AIRFLOW_CONN_* variables are in this environment)."""
    return subprocess.run(
        [sys.executable, "-m", "medallion.cli", "psql", *args],
        cwd=PROJECT_ROOT,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_psql_runs_a_statement_as_the_pipeline_role(db, secrets_in_use):
    conn = get_connection("postgres_default")
    proc = psql("-c", "select current_user")
    assert proc.returncode == 0, proc.stderr
    assert conn.login in proc.stdout
    # `make psql SQL=...` passes its psql arguments after --
    proc = psql("--params-env", "local", "--", "-At", "-c", "select current_database()")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == conn.schema
    for secret in secrets_in_use:
        assert secret not in proc.stdout + proc.stderr


def test_the_password_goes_to_psql_in_its_environment_not_its_arguments(db, monkeypatch):
    called = {}

    def execvpe(file, args, env):
        called.update(file=file, args=args, env=env)

    monkeypatch.setattr(os, "execvpe", execvpe)
    assert cli.main(["psql", "--", "-c", "select 1"]) == 0
    conn = get_connection("postgres_default")
    assert called["args"][1:] == ["-c", "select 1"]
    assert not any(conn.password in arg for arg in called["args"])
    assert called["env"]["PGPASSWORD"] == conn.password
    assert (called["env"]["PGUSER"], called["env"]["PGDATABASE"]) == (conn.login, conn.schema)


@pytest.mark.pure
def test_no_psql_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "psql_binary", lambda: None)
    assert cli.main(["psql"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no psql found") and err.count("\n") == 1


def test_the_readme_queries_run(db, tmp_path):
    """The example queries of the README's "Consultar el almacén", as written."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("## Consultar el almacén", 1)[1].split("\n## ", 1)[0]
    queries = re.search(r"```sql\n(.*?)```", section, re.S).group(1)
    assert queries.count("staging.vw_operaciones_ventas") == 3
    script = tmp_path / "consultas.sql"
    script.write_text(queries)
    proc = psql("--", "-v", "ON_ERROR_STOP=1", "-f", str(script))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("rows)") + proc.stdout.count("row)") == 3
