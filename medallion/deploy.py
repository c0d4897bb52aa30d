"""``make airflow``: a real Airflow on this machine, shaped like the compose deployment.

The same components as docker-compose.yml (api-server, scheduler, dag-processor, triggerer;
with ``--executor CeleryExecutor`` also Redis and Celery workers) run as background processes
on 127.0.0.1, with the settings compose uses (``params/airflow.env``), the metadata in a
database of its own on the embedded PostgreSQL, the pipeline's connections stored in that
metadata (as ``airflow connections add`` stores them; ``AIRFLOW_CONN_*`` variables set by the
user pass through and win), and the admin login printed.

    python -m medallion.deploy start [--executor CeleryExecutor --workers 2]
    python -m medallion.deploy stop | status
    eval "$(python -m medallion.deploy env)"   # then the airflow CLI talks to it
    python -m medallion.deploy import-connections [--overwrite]   # compose's airflow-init

Environment: ``AIRFLOW_API_PORT`` (8080; the scheduler's health check takes the next port),
``AIRFLOW_ADMIN_PASSWORD`` (else generated once, in .local/secrets.json),
``MEDALLION_AIRFLOW_HOME`` (.local/airflow-server), ``MEDALLION_AIRFLOW_DB`` (airflow: the
metadata database and its role), ``MEDALLION_REDIS_PORT`` (16379, CeleryExecutor only).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medallion import services
from medallion.services import pid_alive, port_free
from medallion.settings import DAG_ID, LOCAL_DIR, PARAMS_DIR, PROJECT_ROOT, env_var_name

SHARED_SETTINGS = PARAMS_DIR / "airflow.env"
PIPELINE_CONNECTIONS = ("minio_default", "postgres_default")
# In the environment of every process a deployment starts (kernels and task processes
# inherit it), and of no other: `stop` finds them all by it.
MARKER = "MEDALLION_DEPLOYMENT"


def _env(name: str, default: str) -> Any:
    return field(default_factory=lambda: os.environ.get(name, default))


@dataclass(frozen=True)
class Deployment:
    """Where one local Airflow keeps its state and listens."""

    home: str = _env("MEDALLION_AIRFLOW_HOME", str(LOCAL_DIR / "airflow-server"))
    api_port: str = _env("AIRFLOW_API_PORT", "8080")
    database: str = _env("MEDALLION_AIRFLOW_DB", "airflow")
    redis_port: str = _env("MEDALLION_REDIS_PORT", "16379")

    @property
    def root(self) -> Path:
        return Path(self.home)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def health_port(self) -> int:
        return int(self.api_port) + 1

    @property
    def state_file(self) -> Path:
        return self.root / "deployment.json"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"


def shared_settings() -> dict[str, str]:
    """The Airflow settings compose and this deployment share (``params/airflow.env``)."""
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(SHARED_SETTINGS).items() if v is not None}


def admin_password() -> str:
    return os.environ.get("AIRFLOW_ADMIN_PASSWORD") or services.secret("airflow_admin_password")


def _user_connections() -> set[str]:
    """The pipeline's ``AIRFLOW_CONN_*`` variables the user set (external services)."""
    return {env_var_name(c) for c in PIPELINE_CONNECTIONS if os.environ.get(env_var_name(c))}


def environment(dep: Deployment, executor: str = "LocalExecutor") -> dict[str, str]:
    """The environment of every component: this process's, plus ``airflow_settings``."""
    return {**os.environ, **airflow_settings(dep, executor)}


def airflow_settings(dep: Deployment, executor: str = "LocalExecutor") -> dict[str, str]:
    """The shared settings plus this deployment's database, addresses, secrets and paths."""
    secret = services.secret
    database = (
        f"{dep.database}:{secret('airflow_db_password')}@127.0.0.1:{services.PG_PORT}/"
        f"{dep.database}"
    )
    return shared_settings() | {
        "AIRFLOW_HOME": dep.home,
        MARKER: dep.home,
        "MEDALLION_HOME": str(PROJECT_ROOT),
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{database}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": dep.api_port,
        "AIRFLOW__API__WORKERS": "1",  # a small machine: one API server process
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{dep.url}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secret("airflow_jwt_secret"),
        "AIRFLOW__API__SECRET_KEY": secret("airflow_api_secret_key"),
        "AIRFLOW__CORE__FERNET_KEY": secret("airflow_fernet_key"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(dep.root / "passwords.json"),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(dep.health_port),
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{dep.redis_port}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{database}",
    }


# Each component's command; log servers are off (they listen on every interface): the
# api-server reads task logs from the shared logs folder.
COMMANDS = {
    "api-server": ["api-server"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}


def _airflow() -> str:
    return str(Path(sys.executable).parent / "airflow")


def _spawn(dep: Deployment, name: str, args: list[str], env: dict[str, str]) -> int:
    """Start a background process in a session of its own, its output to logs/<name>.log."""
    with dep.log(name).open("ab") as log:
        proc = subprocess.Popen(
            args,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=dep.home,
        )
    return proc.pid


def start(dep: Deployment, executor: str = "LocalExecutor", workers: int = 2) -> dict[str, Any]:
    """Start the deployment (or report the one already running) and wait until it is healthy
    and knows the DAG."""
    if (state := running(dep)) is not None:
        return {**state, "reused": True}
    stop(dep)  # what is left of a deployment that lost a process
    ports = [int(dep.api_port), dep.health_port]
    if executor == "CeleryExecutor":
        ports.append(int(dep.redis_port))
    taken = [p for p in ports if not port_free(p)]
    if taken:
        raise RuntimeError(
            f"Ports {taken} on 127.0.0.1 are taken: set AIRFLOW_API_PORT (and "
            "MEDALLION_REDIS_PORT) to free ones, or stop what uses them."
        )
    started = time.monotonic()
    user_connections = _user_connections()
    services.use_services()
    services.ensure_database(dep.database, dep.database, services.secret("airflow_db_password"))
    (dep.root / "logs").mkdir(parents=True, exist_ok=True)
    services.write_private(dep.root / "passwords.json", json.dumps({"admin": admin_password()}))
    env = environment(dep, executor)
    for name in set(services.CONNECTION_VARS) - user_connections:
        env.pop(name, None)  # the embedded connections go to the metadata, not the environment
    _check_call(dep, "db-migrate", [_airflow(), "db", "migrate"], env)
    embedded = {k: v for k, v in services.connection_env().items() if k not in user_connections}
    _check_call(
        dep,
        "import-connections",
        [sys.executable, "-m", "medallion.deploy", "import-connections", "--overwrite"],
        {k: v for k, v in env.items() if not k.startswith("AIRFLOW_CONN_")} | embedded,
    )
    from medallion.cli import bootstrap

    bootstrap("local")
    pids = {name: _spawn(dep, name, [_airflow(), *args], env) for name, args in COMMANDS.items()}
    if executor == "CeleryExecutor":
        pids |= _start_celery(dep, env, workers)
    state = {"url": dep.url, "executor": executor, "pids": pids}
    services.write_private(dep.state_file, json.dumps(state))
    try:
        wait_until_ready(dep)
    except Exception:
        stop(dep)
        raise
    return {**state, "reused": False, "seconds": round(time.monotonic() - started, 1)}


def _check_call(dep: Deployment, name: str, args: list[str], env: dict[str, str]) -> None:
    with dep.log(name).open("w") as log:
        code = subprocess.call(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"{' '.join(args[-2:])} failed (exit {code}); see {dep.log(name)}")


def _start_celery(dep: Deployment, env: dict[str, str], workers: int) -> dict[str, int]:
    """Debian's redis-server as the broker (no persistence), and ``workers`` Celery workers,
    each reporting its own host name to Airflow (on one machine they would all be the same)."""
    redis = shutil.which("redis-server")
    if redis is None:
        raise RuntimeError("CeleryExecutor needs redis-server: apt-get install redis-server")
    pids = {
        "redis": _spawn(
            dep,
            "redis",
            [
                redis,
                "--bind",
                "127.0.0.1",
                "--port",
                dep.redis_port,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dep.home,
            ],
            env,
        )
    }
    for n in range(1, workers + 1):
        name = f"worker{n}"
        worker_env = env | {
            "MEDALLION_WORKER_NAME": name,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "medallion.deploy.worker_hostname",
        }
        args = [
            _airflow(),
            "celery",
            "worker",
            "--skip-serve-logs",
            "--celery-hostname",
            f"{name}@%h",
            "--concurrency",  # one task at a time: a worker's memory is one file's
            "1",
        ]
        pids[name] = _spawn(dep, name, args, worker_env)
    return pids


def worker_hostname() -> str:
    """Airflow's ``hostname_callable`` for a local Celery worker: the machine's name plus the
    worker's, so that a task instance says which worker ran it."""
    name = os.environ.get("MEDALLION_WORKER_NAME")
    return f"{socket.getfqdn()}-{name}" if name else socket.getfqdn()


def api(dep: Deployment, method: str, path: str, body: Any = None, token: str | None = None):
    """One call to the REST API (v2); returns the decoded JSON answer."""
    request = urllib.request.Request(
        f"{dep.url}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def token(dep: Deployment) -> str:
    """A JWT for the admin user (``POST /auth/token``)."""
    answer = api(dep, "POST", "/auth/token", {"username": "admin", "password": admin_password()})
    return answer["access_token"]


def wait_until_ready(dep: Deployment, timeout: float = 240.0) -> None:
    """Until every component reports healthy and the DAG is parsed (a trigger then works)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        dead = [name for name, pid in _state(dep).get("pids", {}).items() if not pid_alive(pid)]
        if dead:
            logs = ", ".join(str(dep.log(n)) for n in dead)
            raise RuntimeError(f"Airflow component(s) {dead} exited; see {logs}")
        try:
            health = api(dep, "GET", "/api/v2/monitor/health")
            last = json.dumps(health)
            if all(part.get("status") == "healthy" for part in health.values()):
                api(dep, "GET", f"/api/v2/dags/{DAG_ID}", token=token(dep))
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
            last = str(err)
        time.sleep(1)
    raise TimeoutError(f"Airflow was not ready in {timeout:.0f} s: {last}; logs in {dep.root}")


def _state(dep: Deployment) -> dict[str, Any]:
    try:
        return json.loads(dep.state_file.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def running(dep: Deployment) -> dict[str, Any] | None:
    """The running deployment's state, if all its processes are alive."""
    state = _state(dep)
    pids = state.get("pids", {})
    return state if pids and all(pid_alive(pid) for pid in pids.values()) else None


def stop(dep: Deployment, grace: float = 15.0) -> str:
    """Stop every process the deployment started: its components (whole process groups),
    then anything left with its marker (task processes, notebook kernels)."""
    pids = _state(dep).get("pids", {})
    for pid in pids.values():
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids.values()):
        time.sleep(0.3)
    for pid in pids.values():
        _signal_group(pid, signal.SIGKILL)  # LocalExecutor's workers ignore SIGTERM
    leftovers = _marked_processes(dep)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    dep.state_file.unlink(missing_ok=True)
    return (
        f"stopped ({len(pids)} components, {len(leftovers)} other processes)"
        if pids
        else ("not running")
    )


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _marked_processes(dep: Deployment) -> list[int]:
    """Processes whose environment carries this deployment's marker (Linux /proc)."""
    marker = f"{MARKER}={dep.home}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return [pid for pid in found if pid not in _ancestors()]


def _ancestors() -> set[int]:
    """This process and its parents (a `make` run from a deployment's shell, say)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def import_connections(overwrite: bool = False) -> list[str]:
    """Store every ``AIRFLOW_CONN_*`` variable of this process's environment as a connection
    in Airflow's metadata database (what ``airflow connections add`` does); an existing one
    is kept unless ``overwrite`` (so edits made in the UI survive compose restarts)."""
    from airflow.models import Connection
    from airflow.utils.session import create_session
    from sqlalchemy import select

    stored = []
    with create_session() as session:
        for name, value in sorted(os.environ.items()):
            if not name.startswith("AIRFLOW_CONN_"):
                continue
            conn_id = name.removeprefix("AIRFLOW_CONN_").lower()
            existing = session.scalar(select(Connection).where(Connection.conn_id == conn_id))
            if existing is not None and not overwrite:
                continue
            if existing is not None:
                session.delete(existing)
                session.flush()
            value = value.strip()
            session.add(
                Connection.from_json(value, conn_id=conn_id)
                if value.startswith("{")
                else Connection(conn_id=conn_id, uri=value)
            )
            stored.append(conn_id)
    return stored


def status(dep: Deployment) -> dict[str, Any]:
    state = _state(dep)
    pids = state.get("pids", {})
    return {
        "url": dep.url,
        "executor": state.get("executor"),
        "processes": {
            name: "running" if pid_alive(pid) else "exited" for name, pid in pids.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medallion.deploy")
    sub = parser.add_subparsers(dest="command", required=True)
    start_cmd = sub.add_parser("start", help="start (or reuse) the local Airflow")
    start_cmd.add_argument(
        "--executor", choices=["LocalExecutor", "CeleryExecutor"], default="LocalExecutor"
    )
    start_cmd.add_argument("--workers", type=int, default=2, help="Celery workers")
    sub.add_parser("stop", help="stop every process it started")
    sub.add_parser("status")
    sub.add_parser("env", help="shell exports to run the airflow CLI against it")
    imports = sub.add_parser("import-connections", help="AIRFLOW_CONN_* -> metadata database")
    imports.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    dep = Deployment()
    if args.command == "start":
        result = start(dep, args.executor, args.workers)
        _print_started(dep, result)
    elif args.command == "stop":
        print(stop(dep))
    elif args.command == "status":
        print(json.dumps(status(dep), indent=2))
    elif args.command == "env":
        executor = _state(dep).get("executor") or "LocalExecutor"
        for name, value in airflow_settings(dep, executor).items():
            if name != MARKER:  # the shell is not one of the deployment's processes
                print(f"export {name}={shlex.quote(value)}")
    else:
        print("connections stored:", ", ".join(import_connections(args.overwrite)) or "none")
    return 0


def _print_started(dep: Deployment, result: dict[str, Any]) -> None:
    how = "ya estaba en marcha" if result["reused"] else f"en marcha en {result['seconds']} s"
    print(f"Airflow ({result['executor']}) {how}: {dep.url}")
    print(f"  usuario: admin   contraseña: {admin_password()}")
    print(f"  entregas: deja los archivos en {PROJECT_ROOT / 'incoming'} y lanza {DAG_ID}")
    print(f"  logs: {dep.root / 'logs'}   parar: make airflow-stop")


if __name__ == "__main__":
    sys.exit(main())
