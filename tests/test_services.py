"""Least privilege of the embedded services, checked against the real ones.

PostgreSQL: the pipeline's connection is its own role, which may not become a superuser, make
roles or databases, or touch the server's files; it owns the warehouse; an analyst reads the
sales view and nothing else; a database of an older version (everything owned by the superuser)
is handed over and sql/ then runs as the pipeline. SeaweedFS: only the S3 port answers without
credentials (and wants the keys); master, volume, filer and admin refuse listing, reading,
writing and deleting to anyone without our certificate, over HTTP, HTTPS and gRPC. Starting the
services widens no folder outside .local/, and a taken port is named with the variable to change.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from importlib.util import find_spec
from pathlib import Path

import psutil
import psycopg2
import pytest
from psycopg2 import sql

from medallion import services, storage, warehouse
from medallion.settings import PROJECT_ROOT, Connection, get_connection

TEST_DATABASE = os.environ.get("MEDALLION_TEST_DATABASE", "medallion_test")
INSUFFICIENT_PRIVILEGE = "42501"


def embedded_only():
    conn = get_connection("postgres_default")  # whatever its user: the superuser must fail
    if conn.host not in ("127.0.0.1", "localhost") or conn.port != services.PG_PORT:
        pytest.skip("AIRFLOW_CONN_POSTGRES_DEFAULT points at a server of the user's own")


def connect(conn: Connection, dbname: str | None = None):
    raw = psycopg2.connect(
        host=conn.host,
        port=conn.port,
        user=conn.login,
        password=conn.password,
        dbname=dbname or conn.schema,
    )
    raw.autocommit = True  # CREATE DATABASE would fail in a transaction for another reason
    return raw


def refused_sqlstate(raw, statement: str) -> str | None:
    """The SQLSTATE of the error the statement raises; when it succeeds (the test fails), what
    it did is undone as far as it can be."""
    with raw.cursor() as cur:
        try:
            cur.execute(statement)
        except psycopg2.Error as err:
            return err.pgcode
    undo_intrusions()
    return None


def undo_intrusions() -> None:
    admin = services.admin_connection()
    with admin.cursor() as cur:
        cur.execute("drop database if exists medallion_intruder")
        cur.execute("drop role if exists medallion_intruder")
    admin.close()
    test_db = get_connection("postgres_default").schema
    admin = services.admin_connection(test_db)
    with admin.cursor() as cur:
        cur.execute("drop table if exists staging.intruder, public.intruder")
        cur.execute("delete from staging.dim_inventario where product_id = 'intruder'")
    admin.close()
    services.prepare_database(test_db)  # the roles' attributes and memberships right again
    Path("/tmp/medallion_intruder.csv").unlink(missing_ok=True)


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def pipeline():
    embedded_only()
    raw = connect(get_connection("postgres_default"))
    yield raw
    raw.close()


def test_pipeline_connection_is_its_own_role_without_privileges(pipeline):
    with pipeline.cursor() as cur:
        cur.execute(
            "select current_user, rolsuper, rolcreatedb, rolcreaterole, rolreplication, "
            "rolbypassrls from pg_roles where rolname = current_user"
        )
        user, *flags = cur.fetchone()
    assert user == services.PIPELINE_ROLE != services.PG_USER
    assert flags == [False] * 5, f"{user}: superuser, createdb, createrole, replication, bypassrls"


@pytest.mark.parametrize(
    "statement",
    [
        "create role medallion_intruder login",
        "create database medallion_intruder",
        "alter role current_user superuser",
        "set role postgres",
        f"grant pg_read_server_files to {services.PIPELINE_ROLE}",
        "select pg_read_file('/etc/passwd')",
        "select pg_ls_dir('/')",
        "copy (select 1) to '/tmp/medallion_intruder.csv'",
        "copy (select 1) to program 'id'",
    ],
)
def test_pipeline_may_not(pipeline, statement):
    assert refused_sqlstate(pipeline, statement) == INSUFFICIENT_PRIVILEGE, statement


def objects_not_owned_by(raw, role: str) -> list[str]:
    with raw.cursor() as cur:
        cur.execute(
            """
            select 'database ' || datname from pg_database
            where datname = current_database() and datdba <> to_regrole(%(role)s)
            union all
            select 'schema ' || nspname from pg_namespace
            where nspname in ('staging', 'audit') and nspowner <> to_regrole(%(role)s)
            union all
            select c.relkind::text || ' ' || c.oid::regclass::text from pg_class as c
            join pg_namespace as n on n.oid = c.relnamespace
            where n.nspname in ('staging', 'audit', 'public') and c.relkind in ('r', 'v', 'p')
              and c.relowner <> to_regrole(%(role)s)
            union all
            select 'routine ' || p.oid::regprocedure::text from pg_proc as p
            join pg_namespace as n on n.oid = p.pronamespace
            where n.nspname in ('staging', 'audit', 'public') and p.proowner <> to_regrole(%(role)s)
            """,
            {"role": role},
        )
        return [row[0] for row in cur.fetchall()]


def test_pipeline_owns_the_warehouse(pipeline):
    with pipeline.cursor() as cur:
        cur.execute("select count(*) from pg_class where relname = 'bulk_fact_operaciones_ventas'")
        assert cur.fetchone()[0] == 1, "sql/ was not applied to the test database"
    assert objects_not_owned_by(pipeline, services.PIPELINE_ROLE) == []


@pytest.fixture(scope="module")
def analyst():
    """An analyst's own login, granted the read-only group, on the test database."""
    embedded_only()
    name, password = f"analista_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    admin = services.admin_connection()
    with admin.cursor() as cur:
        cur.execute(
            sql.SQL("create role {} login password %s in role {}").format(
                sql.Identifier(name), sql.Identifier(services.ANALYST_ROLE)
            ),
            (password,),
        )
    conn = get_connection("postgres_default")
    raw = psycopg2.connect(
        host=conn.host, port=conn.port, user=name, password=password, dbname=conn.schema
    )
    raw.autocommit = True
    yield raw
    raw.close()
    admin.close()
    admin = services.admin_connection(conn.schema)
    with admin.cursor() as cur:  # what a failing test let it make goes first
        cur.execute(sql.SQL("drop owned by {}").format(sql.Identifier(name)))
        cur.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))
    admin.close()


def test_analyst_reads_the_sales_view(analyst):
    with analyst.cursor() as cur:
        cur.execute("select count(*), sum(sales) from staging.vw_operaciones_ventas")
        assert cur.fetchone()[0] >= 0


@pytest.mark.parametrize(
    "statement",
    [
        "select * from staging.fact_operaciones_ventas limit 1",
        "select * from staging.dim_cliente limit 1",
        "select * from public.bulk_fact_operaciones_ventas limit 1",
        "select * from audit.run_log limit 1",
        "insert into staging.dim_inventario (product_id) values ('intruder')",
        "delete from staging.fact_operaciones_ventas",
        "create table staging.intruder (id int)",
        "create table public.intruder (id int)",
        "create temporary table intruder (id int)",
        "call staging.sp_publish_gate('intruder')",
    ],
)
def test_analyst_may_not(analyst, statement):
    assert refused_sqlstate(analyst, statement) == INSUFFICIENT_PRIVILEGE, statement


def test_database_of_an_older_version_is_handed_to_the_pipeline():
    """An older version made the warehouse as the superuser: everything in it was the
    superuser's. prepare_database hands it over, and sql/ then runs as the pipeline (create or
    replace, drop ... if exists, alter table ... set unlogged on every file)."""
    embedded_only()
    name = f"{TEST_DATABASE}_older"
    admin = services.admin_connection()
    with admin.cursor() as cur:
        cur.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        cur.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    pipeline_conn = get_connection("postgres_default")
    superuser = Connection(
        conn_id="superuser",
        conn_type="postgres",
        host=pipeline_conn.host,
        port=pipeline_conn.port,
        login=services.PG_USER,
        password=services.secret("pg_password"),
        schema=name,
    )
    try:
        eng = warehouse.engine_for(superuser)
        warehouse.apply_sql(eng)
        eng.dispose()
        older = connect(superuser)
        assert objects_not_owned_by(older, services.PG_USER) == []  # all the superuser's
        older.close()

        services.prepare_database(name)

        as_pipeline = connect(pipeline_conn, name)
        assert objects_not_owned_by(as_pipeline, services.PIPELINE_ROLE) == []
        with as_pipeline.cursor() as cur:  # every file again, as the pipeline
            cur.execute("delete from audit.schema_migrations")
        eng = warehouse.engine_for(replace(pipeline_conn, schema=name))
        applied = warehouse.apply_sql(eng)
        eng.dispose()
        assert "020_bulk_dim_inventario.sql" in applied
        assert "050_vw_operaciones_ventas.sql" in applied
        as_pipeline.close()
    finally:
        with admin.cursor() as cur:
            cur.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )
        admin.close()


def test_sql_roles_hold_no_password():
    files = sorted(services.ROLES_DIR.glob("[0-9][0-9][0-9]_*.sql"))
    assert files, f"no SQL in {services.ROLES_DIR}"
    for path in files:
        code = re.sub(r"--[^\n]*", "", path.read_text())
        assert "password" not in code.lower(), f"{path.name} sets a password"


# --------------------------------------------------------------------------- SeaweedFS


def test_s3_api_with_keys(s3):
    bucket = f"test-services-{secrets.token_hex(4)}"
    s3.make_bucket(bucket)
    try:
        s3.put_object(bucket, "a/x.txt", io.BytesIO(b"hola"), 4)
        assert s3.get_object(bucket, "a/x.txt").read() == b"hola"
        assert [o.object_name for o in s3.list_objects(bucket, recursive=True)] == ["a/x.txt"]
        s3.remove_object(bucket, "a/x.txt")
        assert list(s3.list_objects(bucket, recursive=True)) == []
    finally:
        s3.remove_bucket(bucket)


def test_s3_api_refuses_wrong_keys():
    conn = get_connection("minio_default")
    wrong = replace(conn, password=conn.password + "x")
    with pytest.raises(Exception, match="SignatureDoesNotMatch|InvalidAccessKeyId|AccessDenied"):
        storage.s3_client(wrong).list_buckets()


def embedded_s3_only():
    endpoint = get_connection("minio_default").extra.get("endpoint_url", "")
    if endpoint != f"http://127.0.0.1:{services.S3_PORT}":
        pytest.skip("AIRFLOW_CONN_MINIO_DEFAULT points at an S3 server of the user's own")


@pytest.fixture(scope="module")
def stored_object(s3):
    """An object put through S3, which the other ports must not reveal, change or delete."""
    embedded_s3_only()
    bucket = f"test-services-{secrets.token_hex(4)}"
    s3.make_bucket(bucket)
    s3.put_object(bucket, "secreto.txt", io.BytesIO(b"secreto"), 7)
    yield bucket, "secreto.txt"
    for obj in s3.list_objects(bucket, recursive=True):
        s3.remove_object(bucket, obj.object_name)
    s3.remove_bucket(bucket)


def attempt(method: str, url: str, data: bytes | None = None, context=None) -> int | str:
    """The HTTP status, or the name of the error that stopped the request."""
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (OSError, http.client.HTTPException, ssl.SSLError) as err:
        return type(err).__name__


def no_certificate() -> ssl.SSLContext:
    """HTTPS as anyone would try it: the server's certificate accepted, none of our own."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def our_certificate() -> ssl.SSLContext:
    context = no_certificate()
    context.load_cert_chain(services.PATHS.s3_tls)
    return context


SERVERS = {name: services.S3_PORT + offset for name, offset in services._WEED_SERVERS.items()}


def requests_anyone_could_try(bucket: str, key: str) -> list[tuple[str, str, str, bytes | None]]:
    """(server, method, path, body): list, read, write and delete on every internal port."""
    fid = "3,01637037d6"  # volume 3, any needle: the server must refuse before looking
    return [
        ("master", "GET", "/dir/status", None),
        ("master", "GET", "/vol/status", None),
        ("master", "GET", "/dir/assign", None),
        ("master", "GET", f"/col/delete?collection={bucket}", None),
        ("volume", "GET", "/status", None),
        ("volume", "GET", f"/{fid}", None),
        ("volume", "POST", f"/{fid}", b"intruso"),
        ("volume", "DELETE", f"/{fid}", None),
        ("filer", "GET", f"/buckets/{bucket}/", None),
        ("filer", "GET", f"/buckets/{bucket}/{key}", None),
        ("filer", "PUT", f"/buckets/{bucket}/intruso.txt", b"intruso"),
        ("filer", "DELETE", f"/buckets/{bucket}/{key}", None),
        ("admin", "GET", "/", None),
        ("admin", "GET", "/api/s3/buckets", None),
        ("admin", "GET", f"/object-store/buckets/{bucket}", None),
    ]


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_internal_ports_refuse_without_credentials(s3, stored_object, scheme):
    bucket, key = stored_object
    context = no_certificate() if scheme == "https" else None
    answered = {}
    for server, method, path, body in requests_anyone_could_try(bucket, key):
        url = f"{scheme}://127.0.0.1:{SERVERS[server]}{path}"
        outcome = attempt(method, url, body, context)
        if isinstance(outcome, int) and outcome < 400:
            answered[f"{method} {server}{path}"] = outcome
    assert not answered, f"answered without credentials over {scheme}: {answered}"
    # and nothing changed behind S3's back
    assert [o.object_name for o in s3.list_objects(bucket, recursive=True)] == [key]
    assert s3.get_object(bucket, key).read() == b"secreto"


def test_internal_ports_answer_our_certificate_only_as_far_as_tokens_allow(stored_object):
    """The refusals above are the credentials', not a dead port's: with our certificate the
    master answers, and the volume server still wants a signed token to write."""
    assert attempt("GET", f"https://127.0.0.1:{SERVERS['master']}/", None, our_certificate()) == 200
    url = f"https://127.0.0.1:{SERVERS['volume']}/3,01637037d6"
    assert attempt("POST", url, b"intruso", our_certificate()) == 401


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def grpc_first_frame(port: int, context: ssl.SSLContext | None) -> bytes | str:
    """What a gRPC (HTTP/2) server answers to a client's preface: its SETTINGS frame header, or
    the name of the error that ended the attempt."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            sock = context.wrap_socket(raw) if context else raw
            sock.sendall(HTTP2_PREFACE)
            return sock.recv(9)
    except (OSError, ssl.SSLError) as err:
        return type(err).__name__


def is_settings_frame(answer: bytes | str) -> bool:
    return isinstance(answer, bytes) and len(answer) == 9 and answer[3] == 0x04


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_grpc_ports_refuse_without_our_certificate(stored_object, server):
    port = SERVERS[server] + services.GRPC_OFFSET
    h2 = no_certificate()
    h2.set_alpn_protocols(["h2"])
    assert not is_settings_frame(grpc_first_frame(port, None)), f"{server}: plaintext gRPC"
    assert not is_settings_frame(grpc_first_frame(port, h2)), f"{server}: TLS without a cert"
    ours = our_certificate()
    ours.set_alpn_protocols(["h2"])
    assert is_settings_frame(grpc_first_frame(port, ours)), f"{server}: not a gRPC server?"


def test_local_sockets_and_secret_files_are_private(stored_object):
    sockets = [
        p
        for p in Path("/tmp").glob("seaweedfs-*.sock")
        if int(re.search(r"-(\d+)\.sock$", p.name)[1]) in services.s3_ports().values()
    ]
    assert sockets, "SeaweedFS' Unix sockets in /tmp were not found"
    files = [
        services.PATHS.secrets_file,
        services.PATHS.s3_tls,
        services.PATHS.s3_security,
        services.CONNECTIONS_FILE,
    ]
    wide = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in sockets + files}
    wide = {p: mode for p, mode in wide.items() if int(mode, 8) & 0o077}
    assert not wide, f"readable or usable by other users: {wide}"


def test_write_private_never_widens(tmp_path):
    path = tmp_path / "secret.json"
    path.write_text("old")
    path.chmod(0o644)
    before = path.stat().st_ino
    services.write_private(path, "new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_ino != before, "rewritten in place: readable by others meanwhile"
    assert [p.name for p in tmp_path.iterdir()] == ["secret.json"]


# --------------------------------------------------------------------------- start-up


def free_s3_base() -> int:
    """An S3 port whose derived ports and gRPC twins are all free (and, like the defaults, below
    the ports the system hands out to outgoing connections)."""
    for base in range(20100, 21700, 17):
        ports = [base + offset for offset in services._WEED_SERVERS.values()]
        if all(services.port_free(p) for p in ports + [p + services.GRPC_OFFSET for p in ports]):
            return base
    raise RuntimeError("no free range of ports for a second SeaweedFS")


def free_port() -> int:
    return next(port for port in range(26100, 27000, 7) if services.port_free(port))


def services_cli(local: Path, s3_port: int, pg_port: int, action: str, wait: bool = True):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW_CONN_", "MEDALLION_TEST_", "MEDALLION_S3_", "MEDALLION_PG_"))
    }
    env |= {
        "MEDALLION_LOCAL_DIR": str(local),
        "MEDALLION_S3_PORT": str(s3_port),
        "MEDALLION_PG_PORT": str(pg_port),
    }
    command = [sys.executable, "-m", "medallion.cli", "services", action]
    if not wait:  # started, not waited for
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        return subprocess.Popen(command, env=env, text=True, cwd=PROJECT_ROOT, **pipes)
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=240, cwd=PROJECT_ROOT
    )


def stop_and_remove(local: Path, s3_port: int, pg_port: int):
    """Stop a test's own services and remove what they leave outside ``local``."""
    stopped = services_cli(local, s3_port, pg_port, "stop")
    link = local / "postgres"
    if link.is_symlink():  # as root: the data went under PG_RUNTIME_ROOT
        shutil.rmtree(link.resolve(), ignore_errors=True)
    for port in services.s3_ports(s3_port).values():
        for left in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):  # weed leaves some
            left.unlink(missing_ok=True)
    return stopped


def modes(paths) -> dict[str, str]:
    return {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths}


def test_starting_services_widens_no_folder_outside_local(tmp_path):
    """A project folder of mode 700 (and every folder above it, and above PostgreSQL's binaries)
    keeps its mode: as root, pgserver's own helper used to add o+rx to all of them."""
    project = tmp_path / "proyecto"
    project.mkdir()
    project.chmod(0o700)
    local = project / ".local"
    pgserver = Path(find_spec("pgserver").submodule_search_locations[0])
    watched = [project, *project.parents, *pgserver.parents, PROJECT_ROOT]
    before = modes(watched)
    s3_port, pg_port = free_s3_base(), free_port()
    started = services_cli(local, s3_port, pg_port, "start")
    try:
        assert started.returncode == 0, started.stderr
        assert json.loads(started.stdout) == {"s3": "started", "postgres": "started"}
        assert modes(watched) == before
    finally:
        stopped = stop_and_remove(local, s3_port, pg_port)
    assert stopped.returncode == 0, stopped.stderr


def test_services_started_on_other_ports_are_moved_to_the_configured_ones(tmp_path):
    """Ports changed (by the user, or by an upgrade's defaults) while the services run: the next
    start stops them and starts them on the new ports, never a second server on the same data."""
    local = tmp_path / ".local"
    old_s3, old_pg = free_s3_base(), free_port()
    first = services_cli(local, old_s3, old_pg, "start")
    assert first.returncode == 0, first.stderr
    old_weed = int((local / "seaweedfs.pid").read_text())
    new_s3 = next(
        base
        for base in range(old_s3 + 17, 21700, 17)
        if all(services.port_free(p) for p in services.s3_ports(base).values())
    )
    new_pg = next(p for p in range(old_pg + 7, 27000, 7) if services.port_free(p))
    try:
        second = services_cli(local, new_s3, new_pg, "start")
        assert second.returncode == 0, second.stderr
        assert json.loads(second.stdout) == {"s3": "started", "postgres": "started"}
        assert not services.pid_alive(old_weed)
        assert services._port_open(new_s3) and services._port_open(new_pg)
        assert not services._port_open(old_s3) and not services._port_open(old_pg)
    finally:
        stopped = stop_and_remove(local, new_s3, new_pg)
        if services.pid_alive(old_weed):  # the move failed: the first one is left
            os.killpg(old_weed, signal.SIGKILL)
        stop_and_remove(local, old_s3, old_pg)
    assert stopped.returncode == 0, stopped.stderr


def test_two_starts_at_once_start_one_server_of_each(tmp_path):
    """The second waits for the first, then reuses what it started."""
    local = tmp_path / ".local"
    s3_port, pg_port = free_s3_base(), free_port()
    both = [services_cli(local, s3_port, pg_port, "start", wait=False) for _ in range(2)]
    try:
        outcomes = sorted(json.loads(proc.communicate(timeout=240)[0])["s3"] for proc in both)
        assert outcomes == ["reused", "started"]
        weeds = [p for p in psutil.process_iter(["cmdline"]) if f"-dir={local}" in " ".join(
            p.info["cmdline"] or [])]  # fmt: skip
        assert len(weeds) == 1
    finally:
        stop_and_remove(local, s3_port, pg_port)


def test_a_pid_file_naming_another_program_leaves_it_alone(tmp_path):
    """After a reboot a pid file may name an unrelated process: start, status and stop neither
    stop it nor take it for our server."""
    local = tmp_path / ".local"
    (local / "seaweedfs").mkdir(parents=True)
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    (local / "seaweedfs.pid").write_text(str(other.pid))
    s3_port, pg_port = free_s3_base(), free_port()
    try:
        assert json.loads(services_cli(local, s3_port, pg_port, "status").stdout)["s3"] == (
            "stopped"
        )
        stopped = services_cli(local, s3_port, pg_port, "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert other.poll() is None, "stop signalled another program"
        (local / "seaweedfs.pid").write_text(str(other.pid))
        started = services_cli(local, s3_port, pg_port, "start")
        assert started.returncode == 0, started.stderr
        assert json.loads(started.stdout)["s3"] == "started"
        assert other.poll() is None, "start signalled another program"
    finally:
        other.kill()
        stop_and_remove(local, s3_port, pg_port)


def test_a_taken_derived_port_is_named(tmp_path):
    s3_port = free_s3_base()
    filer_grpc = s3_port + services._WEED_SERVERS["filer"] + services.GRPC_OFFSET
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", filer_grpc))
        squatter.listen()
        result = services_cli(tmp_path / ".local", s3_port, free_port(), "start")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"Port {filer_grpc} " in result.stderr and "MEDALLION_S3_PORT" in result.stderr
    assert not (tmp_path / ".local" / "seaweedfs.pid").exists(), "SeaweedFS was started anyway"
    assert "outgoing connections" not in result.stderr  # a port of ours, not the system's range


def test_a_taken_port_among_the_outgoing_ones_says_so():
    """A port the system may give any client's socket is named as such, with the highest value
    of the variable whose ports (all of them, up to the highest derived one) lie below."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))  # the system picks from its outgoing range
        port = squatter.getsockname()[1]
        with pytest.raises(services.ServiceError) as error:
            # the taken one first: the other may be held too, by anyone, at this moment
            services._check_ports({"its gRPC": port, "S3": port - 100}, "MEDALLION_S3_PORT")
    ephemeral = services.ephemeral_ports()
    assert port in ephemeral
    assert f"Port {port} " in str(error.value)
    assert f"set MEDALLION_S3_PORT below {ephemeral.start - 100}" in str(error.value)


@pytest.mark.pure
def test_every_port_of_ours_is_below_the_outgoing_ones():
    """Defaults, tests and the fault suite: a port in the system's outgoing range can be held by
    any client for a while (a start of SeaweedFS in CI failed on one)."""
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    conftest = (PROJECT_ROOT / "tests" / "conftest.py").read_text()
    chosen = {
        "default": (services.DEFAULT_S3_PORT, services.DEFAULT_PG_PORT),
        "make reliability": tuple(
            int(re.search(rf"{var}=(\d+)", makefile)[1])
            for var in ("MEDALLION_S3_PORT", "MEDALLION_PG_PORT")
        ),
        "make test": tuple(
            int(re.search(rf'"{var}", "(\d+)"', conftest)[1])
            for var in ("MEDALLION_S3_PORT", "MEDALLION_PG_PORT")
        ),
    }
    for where, (s3_port, pg_port) in chosen.items():
        ports = [*services.s3_ports(s3_port).values(), pg_port]
        assert max(ports) < services.LINUX_EPHEMERAL_PORTS.start, (where, ports)
