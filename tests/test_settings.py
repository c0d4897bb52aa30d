import json

import pytest
from airflow.sdk.definitions.connection import Connection as AirflowConnection

from medallion.settings import (
    Connection,
    ConnectionNotFound,
    get_connection,
    parse_connection,
    run_slug,
)

pytestmark = pytest.mark.pure  # no service: runs without starting any

JSON_FORMS = [
    {"conn_type": "aws", "login": "k", "password": "s", "extra": {"endpoint_url": "http://h:9"}},
    {"conn_type": "postgresql", "host": "h", "port": "5433", "login": "u", "schema": "ventas"},
    {"conn_type": "generic-http", "host": "h", "extra": json.dumps({"a": 1})},
    {"conn_type": "postgres", "host": "h", "password": "p@ss:/?", "extra": ""},
]


def fields(conn) -> tuple:
    return (
        conn.conn_type,
        conn.host,
        conn.port,
        conn.login,
        conn.password,
        conn.schema,
        dict(conn.extra_dejson) if hasattr(conn, "extra_dejson") else conn.extra,
    )


@pytest.mark.parametrize("form", JSON_FORMS, ids=lambda f: f["conn_type"])
def test_json_form_reads_as_airflow_reads_it(form):
    value = json.dumps(form)
    assert fields(parse_connection("c", value)) == fields(AirflowConnection.from_json(value, "c"))


def test_uri_is_parsed_by_airflow():
    uri = "postgresql://user:p%40ss@127.0.0.1:5433/ventas?sslmode=require"
    conn = parse_connection("pg", uri)
    assert fields(conn) == fields(AirflowConnection.from_uri(uri, conn_id="pg"))
    assert (conn.conn_type, conn.password, conn.port, conn.extra) == (
        "postgres",
        "p@ss",
        5433,
        {"sslmode": "require"},
    )


def test_as_json_round_trips_through_airflow():
    conn = Connection("pg", "postgres", "h", 5432, "u", "s3cr:t", "db", {"sslmode": "disable"})
    again = AirflowConnection.from_json(conn.as_json(), "pg")
    assert fields(again) == fields(conn)


def test_password_is_not_in_repr():
    conn = parse_connection("pg", '{"conn_type": "postgres", "password": "topsecret"}')
    assert "topsecret" not in repr(conn)


def test_environment_variable_wins(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SOME_DB", '{"conn_type": "postgres", "host": "h"}')
    assert get_connection("some_db").host == "h"


def test_missing_connection_says_what_to_set(monkeypatch, tmp_path):
    monkeypatch.setattr("medallion.settings.CONNECTIONS_FILE", tmp_path / "none.json")
    with pytest.raises(ConnectionNotFound, match="AIRFLOW_CONN_NOPE"):
        get_connection("nope")


def test_run_slug_is_path_safe():
    assert run_slug("manual__2026-11-27T22:04:55.110717+00:00") == (
        "manual__2026-11-27T22-04-55.110717-00-00"
    )


@pytest.mark.parametrize("run_id", ["..", ".", "../../etc", "/..", ".hidden", "..\\.."])
def test_run_slug_never_leaves_its_folder(run_id, tmp_path):
    slug = run_slug(run_id)
    assert (tmp_path / slug).resolve().parent == tmp_path.resolve()
    assert not slug.startswith(".")
