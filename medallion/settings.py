"""Settings and connections: one place that knows where things are and how to reach them.

Notebooks receive connection *ids* (``minio_default``, ``postgres_default``), never secrets.
Credentials are resolved here, in this order:

1. the ``AIRFLOW_CONN_<ID>`` environment variable (Airflow's own convention: a URI or JSON);
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
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml

PROJECT_ROOT = Path(os.environ.get("MEDALLION_HOME", Path(__file__).resolve().parents[1]))
LOCAL_DIR = Path(os.environ.get("MEDALLION_LOCAL_DIR", PROJECT_ROOT / ".local"))
CONNECTIONS_FILE = LOCAL_DIR / "connections.json"
PARAMS_DIR = PROJECT_ROOT / "params"
SQL_DIR = PROJECT_ROOT / "sql"
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
OUTPUTS_DIR = Path(os.environ.get("MEDALLION_OUTPUTS_DIR", PROJECT_ROOT / "outputs"))

# URI schemes that Airflow maps onto another connection type.
_SCHEME_ALIASES = {"postgresql": "postgres", "s3": "aws"}


class ConnectionNotFound(LookupError):
    """No credentials could be found for a connection id."""


@dataclass(frozen=True)
class Connection:
    """The subset of an Airflow connection that the pipeline uses."""

    conn_id: str
    conn_type: str
    host: str | None = None
    port: int | None = None
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    schema: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_uri(cls, conn_id: str, uri: str) -> Connection:
        parts = urlsplit(uri)
        scheme = parts.scheme.replace("-", "_")
        extra = dict(parse_qsl(parts.query))
        if "__extra__" in extra:
            extra = json.loads(extra["__extra__"])
        return cls(
            conn_id=conn_id,
            conn_type=_SCHEME_ALIASES.get(scheme, scheme),
            host=unquote(parts.hostname) if parts.hostname else None,
            port=parts.port,
            login=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            schema=unquote(parts.path.lstrip("/")) or None,
            extra=extra,
        )

    @classmethod
    def from_json(cls, conn_id: str, text: str) -> Connection:
        data = json.loads(text)
        extra = data.get("extra") or {}
        if isinstance(extra, str):
            extra = json.loads(extra) if extra else {}
        port = data.get("port")
        return cls(
            conn_id=conn_id,
            conn_type=_SCHEME_ALIASES.get(data.get("conn_type", ""), data.get("conn_type", "")),
            host=data.get("host"),
            port=int(port) if port not in (None, "") else None,
            login=data.get("login"),
            password=data.get("password"),
            schema=data.get("schema"),
            extra=extra,
        )


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
    value = value.strip()
    if value.startswith("{"):
        return Connection.from_json(conn_id, value)
    return Connection.from_uri(conn_id, value)


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
    """A run id made safe for object keys and folder names (Airflow ids contain ':' and '+')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", run_id).strip("-") or "run"
