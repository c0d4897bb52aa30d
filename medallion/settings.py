"""Settings and connections: one place that knows where things are and how to reach them.

Notebooks receive connection *ids* (``minio_default``, ``postgres_default``), never secrets.
Inside Airflow, the task process resolves those ids with Airflow itself (environment, metadata
database or secrets backend: ``medallion.operators``) and hands them to the notebook's kernel
as ``AIRFLOW_CONN_<ID>`` variables in Airflow's JSON form. Here, in the kernel or outside
Airflow (JupyterLab, papermill by hand), an id resolves from, in this order:

1. the ``AIRFLOW_CONN_<ID>`` environment variable (a URI or Airflow's JSON form);
2. the connections file written by the embedded services (``.local/connections.json``), so a
   notebook opened in JupyterLab finds the services that ``make run`` started.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(os.environ.get("MEDALLION_HOME", Path(__file__).resolve().parents[1]))
LOCAL_DIR = Path(os.environ.get("MEDALLION_LOCAL_DIR", PROJECT_ROOT / ".local"))
CONNECTIONS_FILE = LOCAL_DIR / "connections.json"
PARAMS_DIR = PROJECT_ROOT / "params"
SQL_DIR = PROJECT_ROOT / "sql"
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
KERNEL_NAME = "python3"  # the Jupyter kernel every notebook runs on
DAG_ID = "medallion_ventas"
OUTPUTS_DIR = Path(os.environ.get("MEDALLION_OUTPUTS_DIR", PROJECT_ROOT / "outputs"))

# Each gold table and its transit table in PostgreSQL (public.bulk_*), dimensions first: the
# Python side of the list (sql/023 staging.transit_tables() is the SQL side).
TRANSIT_TABLES = {
    "dim_inventario": "bulk_dim_inventario",
    "dim_cliente": "bulk_dim_cliente",
    "fact_operaciones_ventas": "bulk_fact_operaciones_ventas",
}

# Limits of every pipeline session in the warehouse (notebooks, Python and SQL tasks): a lock
# that someone else holds fails the statement after lock_timeout, naming the holder, instead of
# hanging a run for ever; no statement outlives a task's execution_timeout.
WAREHOUSE_SESSION = {
    "lock_timeout": "2min",
    "statement_timeout": "1h",
    "idle_in_transaction_session_timeout": "15min",
}


class ConnectionNotFound(LookupError):
    """No credentials could be found for a connection id."""


@dataclass(frozen=True)
class Connection:
    """The fields of an Airflow connection that the pipeline reads (Airflow's names)."""

    conn_id: str
    conn_type: str | None
    host: str | None = None
    port: int | None = None
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    schema: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_airflow(cls, conn: Any) -> Connection:
        """From an Airflow ``Connection`` (``BaseHook.get_connection``, ``Connection.from_uri``)."""
        return cls(
            conn_id=conn.conn_id,
            conn_type=conn.conn_type,
            host=conn.host,
            port=conn.port,
            login=conn.login,
            password=conn.password,
            schema=conn.schema,
            extra=dict(conn.extra_dejson),
        )

    @classmethod
    def from_json(cls, conn_id: str, value: str) -> Connection:
        """Airflow's JSON form of a connection (``Connection.as_json()``): the fields by name.
        Decoded as Airflow's ``Connection.from_json`` does, without importing Airflow (2 s in
        every notebook kernel); tests/test_settings.py holds the two to the same result."""
        data = json.loads(value)
        extra = data.get("extra") or {}
        conn_type = data.get("conn_type")
        port = data.get("port")
        return cls(
            conn_id=conn_id,
            conn_type=_normalize_conn_type(conn_type) if conn_type else None,
            host=data.get("host"),
            port=int(port) if port else None,
            login=data.get("login"),
            password=data.get("password"),
            schema=data.get("schema"),
            extra=json.loads(extra) if isinstance(extra, str) else dict(extra),
        )

    def as_json(self) -> str:
        """Airflow's JSON form (what an ``AIRFLOW_CONN_*`` variable or ``--conn-json`` takes)."""
        fields = {
            "conn_type": self.conn_type,
            "host": self.host,
            "port": self.port,
            "login": self.login,
            "password": self.password,
            "schema": self.schema,
            "extra": self.extra,
        }
        return json.dumps({k: v for k, v in fields.items() if v not in (None, "", {})})


def _normalize_conn_type(conn_type: str) -> str:
    """As Airflow's Connection: ``postgresql`` is ``postgres``, ``-`` becomes ``_``."""
    return "postgres" if conn_type == "postgresql" else conn_type.replace("-", "_")


def parse_connection(conn_id: str, value: str) -> Connection:
    """An ``AIRFLOW_CONN_*`` value: Airflow's JSON form, or a URI parsed by Airflow's own
    ``Connection.from_uri`` (imported only then)."""
    value = value.strip()
    if value.startswith("{"):
        return Connection.from_json(conn_id, value)
    from airflow.sdk.definitions.connection import Connection as AirflowConnection

    return Connection.from_airflow(AirflowConnection.from_uri(value, conn_id=conn_id))


def env_var_name(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def get_connection(conn_id: str) -> Connection:
    """Resolve a connection id to credentials (environment first, then embedded services)."""
    value = os.environ.get(env_var_name(conn_id))
    if value is None and CONNECTIONS_FILE.exists():
        value = json.loads(CONNECTIONS_FILE.read_text()).get(env_var_name(conn_id))
    if value is None:
        raise ConnectionNotFound(
            f"No connection '{conn_id}': set {env_var_name(conn_id)} or start the embedded "
            "services with `make services`."
        )
    return parse_connection(conn_id, value)


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """Relative paths in parameters are relative to the project root, whatever the cwd."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


def load_params(env: str = "local") -> dict[str, Any]:
    """The committed notebook parameter set for an environment (``params/<env>.yaml``)."""
    path = PARAMS_DIR / f"{env}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PARAMS_DIR.glob("*.yaml") if p.stem != "contract")
        raise FileNotFoundError(f"Unknown parameter set '{env}': expected one of {known}")
    return yaml.safe_load(path.read_text()) or {}


def run_slug(run_id: str) -> str:
    """A run id made safe for object keys and folder names (Airflow ids contain ':' and '+');
    never '.', '..' or hidden: ``outputs/<slug>`` stays inside ``outputs/``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", run_id).strip("-.") or "run"
