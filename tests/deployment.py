"""A local Airflow deployment for the tests, driven as a user drives one: `make airflow`,
`airflow connections add`, the REST API v2, `make airflow-stop`.

Each test module gets its own deployment (home, metadata database, ports) and its own
warehouse database, reached only through connections created with `airflow connections add`;
the user's `make airflow` and warehouse are never touched.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from medallion import deploy, services, storage, warehouse
from medallion.settings import LOCAL_DIR, PROJECT_ROOT, env_var_name, load_params

DAG = "medallion_ventas"
# The connection ids the tests' runs use: defined only in Airflow's metadata database
S3_CONN, PG_CONN = "ventas_s3_cli", "ventas_pg_cli"


def free_port() -> int:
    """A port free on 127.0.0.1 whose next port is free too (the scheduler's health check)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 65000 and services.port_free(port + 1):
            return port


@dataclass
class LocalAirflow:
    dep: deploy.Deployment
    env: dict[str, str]
    warehouse_db: str
    start_seconds: float = 0.0
    engine: Any = None

    def make(self, *targets: str, **variables: str) -> subprocess.CompletedProcess:
        args = [
            "make",
            "--no-print-directory",
            *targets,
            *(f"{k}={v}" for k, v in variables.items()),
        ]
        proc = subprocess.run(
            args, cwd=PROJECT_ROOT, env=self.env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    def airflow_cli(self, *args: str) -> str:
        """The airflow CLI against this deployment, as the README shows it:
        eval "$(python -m medallion.deploy env)" && airflow ..."""
        venv = PROJECT_ROOT / ".venv" / "bin"
        command = f'eval "$({venv}/python -m medallion.deploy env)" && {venv}/airflow "$@"'
        proc = subprocess.run(
            ["bash", "-c", command, "airflow", *args],
            cwd=PROJECT_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc.stdout

    def api(self, method: str, path: str, body=None):
        return deploy.api(self.dep, method, path, body, token=deploy.token(self.dep))

    def trigger(self, **conf) -> str:
        """POST /api/v2/dags/medallion_ventas/dagRuns with this test's connections."""
        conf = {"minio_conn_id": S3_CONN, "postgres_conn_id": PG_CONN} | conf
        run = self.api("POST", f"/api/v2/dags/{DAG}/dagRuns", {"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def wait(self, run_id: str, timeout: float = 600) -> str:
        """GET the run until it ends; its final state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.api("GET", f"/api/v2/dags/{DAG}/dagRuns/{quote(run_id, safe='')}")["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(2)
        raise TimeoutError(f"run {run_id} did not end in {timeout} s")

    def task_instances(self, run_id: str) -> list[dict]:
        path = f"/api/v2/dags/{DAG}/dagRuns/{quote(run_id, safe='')}/taskInstances?limit=100"
        return self.api("GET", path)["task_instances"]

    def task_log(self, run_id: str, task_id: str, map_index: int = -1, try_number: int = 1) -> str:
        path = (
            f"/api/v2/dags/{DAG}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/logs/"
            f"{try_number}?map_index={map_index}&full_content=true"
        )
        return json.dumps(self.api("GET", path)["content"], ensure_ascii=False)

    def dep_status(self) -> dict:
        """`make airflow-status`: the executor and each process's state."""
        out = self.make("airflow-status").stdout
        return json.loads(out[out.index("{") :])

    def component_environments(self) -> dict[str, dict[str, str]]:
        """The environment of each running component process (Linux /proc); a process that
        renamed itself (setproctitle: the api-server) no longer shows it and is left out."""
        pids = json.loads(self.dep.state_file.read_text())["pids"]
        out = {}
        for name, pid in pids.items():
            raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if env := dict(v.decode().split("=", 1) for v in raw if b"=" in v):
                out[name] = env
        return out


def start_local_airflow(name: str, **make_variables: str) -> LocalAirflow:
    """`make airflow` in a deployment of its own, and a fresh warehouse database for it
    reachable only through connections added with `airflow connections add`."""
    home = LOCAL_DIR / f"test-{name}"
    dep = deploy.Deployment(
        home=str(home),
        api_port=str(free_port()),
        database=f"airflow_{name}",
        redis_port=str(free_port()),
    )
    stale = deploy.Deployment(home=str(home))
    deploy.stop(stale)  # a deployment a killed test session left behind
    services.use_services()
    _drop_database(dep.database)
    # a user's shell: no AIRFLOW_CONN_* (the embedded connections go to the metadata)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env |= {
        "MEDALLION_AIRFLOW_HOME": dep.home,
        "AIRFLOW_API_PORT": dep.api_port,
        "MEDALLION_AIRFLOW_DB": dep.database,
        "MEDALLION_REDIS_PORT": dep.redis_port,
        "AIRFLOW_ADMIN_PASSWORD": services.secret("airflow_admin_password") + "-test",
    }
    os.environ["AIRFLOW_ADMIN_PASSWORD"] = env["AIRFLOW_ADMIN_PASSWORD"]  # for deploy.token
    local = LocalAirflow(dep, env, warehouse_db=f"medallion_{name}")
    started = time.monotonic()
    local.make("airflow", **make_variables)
    local.start_seconds = round(time.monotonic() - started, 1)
    _add_connections(local)
    return local


def _drop_database(name: str) -> None:
    conn = services.admin_connection()
    with conn.cursor() as cur:
        cur.execute(f'drop database if exists "{name}" with (force)')
    conn.close()


def _add_connections(local: LocalAirflow) -> None:
    """The tests' warehouse and S3 as connections created with `airflow connections add`."""
    db = warehouse.fresh_database("postgres_default", local.warehouse_db)
    s3 = services.connection_env()[env_var_name("minio_default")]
    local.airflow_cli("connections", "add", S3_CONN, "--conn-json", s3)
    local.airflow_cli("connections", "add", PG_CONN, "--conn-json", db.as_json())
    eng = warehouse.engine_for(db)
    warehouse.apply_sql(eng)
    params = load_params("local")
    storage.ensure_buckets(
        storage.s3_client("minio_default"),
        [params["bronze_bucket"], params["silver_bucket"], params["gold_bucket"]],
    )
    local.engine = eng


def stop_local_airflow(local: LocalAirflow) -> None:
    local.make("airflow-stop")
    local.engine.dispose()
