import json

import pytest

from medallion.settings import Connection, ConnectionNotFound, get_connection, run_slug


def test_uri_connection_is_parsed_like_airflow():
    conn = Connection.from_uri("pg", "postgresql://user:p%40ss@127.0.0.1:5433/ventas")
    assert (conn.conn_type, conn.host, conn.port, conn.login, conn.password, conn.schema) == (
        "postgres",
        "127.0.0.1",
        5433,
        "user",
        "p@ss",
        "ventas",
    )


def test_json_connection_keeps_extra():
    text = json.dumps(
        {
            "conn_type": "aws",
            "login": "k",
            "password": "s",
            "extra": {"endpoint_url": "http://127.0.0.1:9000"},
        }
    )
    conn = Connection.from_json("minio", text)
    assert conn.extra["endpoint_url"] == "http://127.0.0.1:9000"
    assert conn.password == "s"


def test_password_is_not_in_repr():
    conn = Connection.from_uri("pg", "postgresql://user:topsecret@host/db")
    assert "topsecret" not in repr(conn)


def test_environment_variable_wins(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SOME_DB", "postgresql://a:b@h:1/d")
    assert get_connection("some_db").host == "h"


def test_missing_connection_says_what_to_set(monkeypatch, tmp_path):
    monkeypatch.setattr("medallion.settings.CONNECTIONS_FILE", tmp_path / "none.json")
    with pytest.raises(ConnectionNotFound, match="AIRFLOW_CONN_NOPE"):
        get_connection("nope")


def test_run_slug_is_path_safe():
    assert run_slug("manual__2026-11-27T22:04:55.110717+00:00") == (
        "manual__2026-11-27T22-04-55.110717-00-00"
    )
