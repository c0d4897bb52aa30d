"""Command line behind the Makefile: services, bootstrap, run, summary, lab, psql.

python -m medallion.cli run [--input PATH] [--params-env local]
python -m medallion.cli services start|stop|status
python -m medallion.cli psql [--params-env local] [-- psql arguments, e.g. -c "select 1"]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from importlib.util import find_spec
from pathlib import Path

# Light imports only up here: `run` starts the DAG's process first, whose start overlaps the
# command's own imports (the heavy ones, in the functions that use them) and its checks.
from medallion import services
from medallion.dag_process import DagProcess, airflow_env
from medallion.settings import (
    LOCAL_DIR,
    OUTPUTS_DIR,
    PROJECT_ROOT,
    Connection,
    get_connection,
    load_params,
    run_slug,
)

use_services = services.use_services
SAMPLE_DIR = PROJECT_ROOT / "data" / "sample"


class ServiceUnavailable(RuntimeError):
    """A service the run needs does not answer: said in one line, without a traceback."""


def bootstrap(params_env: str) -> None:
    """Buckets and SQL objects, both idempotent."""
    from sqlalchemy.exc import OperationalError
    from urllib3.exceptions import HTTPError

    from medallion import storage, warehouse

    params = load_params(params_env)
    s3_id, pg_id = params["minio_conn_id"], params["postgres_conn_id"]
    try:
        storage.ensure_buckets(
            storage.s3_client(s3_id),
            [params["bronze_bucket"], params["silver_bucket"], params["gold_bucket"]],
        )
    except (HTTPError, OSError) as err:
        raise ServiceUnavailable(
            f"El almacén S3 de la conexión {s3_id} no responde: {getattr(err, 'reason', err)}"
        ) from err
    try:
        warehouse.apply_sql(warehouse.engine(pg_id))
    except OperationalError as err:
        raise ServiceUnavailable(
            f"PostgreSQL (conexión {pg_id}) no responde: {str(err.orig).strip()}"
        ) from err


def print_summary(result: dict) -> None:
    from medallion import ledger

    print("\n== medallion_ventas: resumen de la ejecución ==")
    print(f"run_id:                {result['run_id']}")
    new = [d for d in result["deliveries"] if d["decision"] in ledger.TO_PROCESS]
    files = [d for d in result["deliveries"] if d["decision"] != ledger.IGNORED]
    print(f"archivos nuevos:       {len(new)} de {len(files)}")
    for d in result["deliveries"]:
        outcome = ledger.STATUS_ES.get(d["status"], d["status"]) if d in new else ""
        note = f" ({d['note']})" if d["note"] else ""
        decision = ledger.DECISIONS_ES[d["decision"]]
        print(f"  {d['file']:<36} {decision}{note}{' -> ' if outcome else ''}{outcome}")
    if not new:
        return
    print(f"líneas leídas:         {result['lines_read']}")
    print(f"filas a silver:        {result['rows_to_silver']}")
    print(f"filas en cuarentena:   {result['rows_quarantined']}")
    print(f"duplicadas exactas:    {result['duplicates_dropped']}")
    for table, count in result["staging_rows"].items():
        merged = result["merge"].get(table)
        change = (
            f"  (+{merged['inserted']} nuevas, {merged['updated']} actualizadas, "
            f"{merged['unchanged']} sin cambios)"
            if merged
            else ""
        )
        print(f"{table + ':':<40}{count:>8}{change}")
    gate = result.get("publish")
    if gate:
        print(
            f"control de publicación: ok ({gate['staged_line_keys']} líneas, "
            f"ventas {gate['staged_sales']} = silver {gate['silver_sales']})"
        )
    print(f"notebooks ejecutados:  {result['outputs']}")


def cmd_run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    conf = {
        "params_env": args.params_env,
        "input_path": os.path.abspath(args.input),
        "reprocess": args.reprocess,
        "scd_type_cliente": args.scd_type_cliente,
    }
    log_file = LOCAL_DIR / "airflow" / "last_run.log"
    dag = DagProcess(conf, airflow_env(), log_file)  # it starts meanwhile, and waits for run()
    try:
        print(f"servicios: {use_services()}")  # and their connections, in the environment
        dag.use_environment({name: os.environ[name] for name in services.CONNECTION_VARS})
        bootstrap(args.params_env)
    except BaseException:
        dag.cancel()
        raise
    print(f"ejecutando el DAG medallion_ventas (log de Airflow: {log_file}) ...", flush=True)
    result = dag.run(progress=lambda line: print(line, flush=True))
    if not (run_summary := result.get("summary")):
        from medallion import warehouse
        from medallion.runs import summary

        conn_id = load_params(args.params_env)["postgres_conn_id"]
        run_summary = summary(warehouse.engine(conn_id), result["run_id"])
    print_summary(run_summary)
    print_record(result["run_id"])
    if result["state"] != "success":
        print_failure(result["run_id"], run_summary, log_file)
        return 1
    print(f"tiempo total:          {time.monotonic() - started:.1f} s")
    return 0


def print_record(run_id: str) -> None:
    """Where to read the run: its result notebook as HTML, and the history of every run."""
    from medallion import report

    result = report.run_dir(run_id) / f"{report.RESULT_NOTEBOOK}.html"
    if result.exists():
        print(f"resultado:             {result}")
    print(f"historial:             {OUTPUTS_DIR / report.INDEX}")


def print_failure(run_id: str, run_summary: dict, log_file) -> None:
    """Why a run failed: the ledger's reasons per file, else the notebooks' errors, else the
    end of Airflow's log."""
    from medallion.runs import notebook_errors

    outputs = OUTPUTS_DIR / run_slug(run_id)
    print(f"\nEl DAG falló (run {run_id}).", file=sys.stderr)
    reasons = [
        f"{d['file']}: {d['message']}"
        for d in run_summary["deliveries"]
        if d["message"] and d["status"] == "failed"
    ]
    errors = reasons or notebook_errors(outputs)
    if errors:
        print("\n".join(errors), file=sys.stderr)
    else:
        print("".join(log_file.read_text().splitlines(keepends=True)[-40:]), file=sys.stderr)
    print(f"Notebooks ejecutados: {outputs}; log de Airflow: {log_file}", file=sys.stderr)


def cmd_services(args: argparse.Namespace) -> int:
    action = {"start": services.start, "stop": services.stop, "status": services.status}
    try:
        result = action[args.action]()
    except services.ServiceError as err:  # a taken port, an unreachable folder: said in full
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, ensure_ascii=False))
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    print(f"servicios: {use_services()}")
    bootstrap(args.params_env)
    print("buckets y objetos SQL listos")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """Print shell exports of the connections (for `make lab` or a terminal)."""
    use_services()
    for name in services.CONNECTION_VARS:
        print(f"export {name}='{os.environ[name]}'")
    return 0


def psql_binary() -> str | None:
    """The system's psql, else the one bundled with pgserver (the embedded server's own)."""
    found = shutil.which("psql")
    if found:
        return found
    spec = find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / "psql"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    return None


def psql_env(conn: Connection) -> dict[str, str]:
    """libpq's variables for a resolved postgres connection: the password travels in
    PGPASSWORD, never on a command line (where `ps` shows it to every user)."""
    values = {
        "PGHOST": conn.host,
        "PGPORT": str(conn.port) if conn.port else None,
        "PGUSER": conn.login,
        "PGDATABASE": conn.schema or "postgres",  # as warehouse.engine_for
        "PGPASSWORD": conn.password,
        "PGSSLMODE": conn.extra.get("sslmode"),
        "PGOPTIONS": conn.extra.get("options"),
        "PGAPPNAME": "medallion psql",
    }
    return {name: value for name, value in values.items() if value}


def cmd_psql(args: argparse.Namespace, psql_args: list[str]) -> int:
    """Replace this process with psql on the warehouse: the parameter set's postgres
    connection id, resolved as the pipeline resolves it (embedded services or AIRFLOW_CONN_*)."""
    psql = psql_binary()
    if psql is None:
        print(
            "error: no psql found: install PostgreSQL's client (apt-get install postgresql-client)"
            " or the embedded services (make venv)",
            file=sys.stderr,
        )
        return 2
    conn_id = load_params(args.params_env)["postgres_conn_id"]
    configured = all(os.environ.get(name) for name in services.CONNECTION_VARS)
    # the embedded services are started if need be; a running server is taken as it is (a
    # start re-applies sql/, and psql is where one looks when a file of sql/ fails)
    if not configured and services.status()["postgres"] != "running":
        use_services()
    # libpq reads PG* variables: none of the caller's (a PGHOSTADDR, a PGSERVICE) may send the
    # warehouse's password to another server
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env = {**inherited, **psql_env(get_connection(conn_id))}
    sys.stdout.flush()
    os.execvpe(psql, [psql, *psql_args], env)
    return 0  # not reached: psql took over the process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medallion")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the DAG once on the sample or on --input")
    run.add_argument(
        "--input", default=str(SAMPLE_DIR), help="CSV/JSON file or folder (default: the sample)"
    )
    run.add_argument(
        "--reprocess", action="store_true", help="also load files the ledger already has"
    )
    run.add_argument("--params-env", default="local")
    run.add_argument("--scd-type-cliente", type=int, choices=[1, 2], default=1)
    run.set_defaults(func=cmd_run)
    svc = sub.add_parser("services", help="embedded S3 + PostgreSQL")
    svc.add_argument("action", choices=["start", "stop", "status"])
    svc.set_defaults(func=cmd_services)
    boot = sub.add_parser("bootstrap", help="create buckets and apply sql/")
    boot.add_argument("--params-env", default="local")
    boot.set_defaults(func=cmd_bootstrap)
    env = sub.add_parser("env", help="print AIRFLOW_CONN_* exports")
    env.set_defaults(func=cmd_env)
    psql = sub.add_parser(
        "psql",
        help="psql on the warehouse (postgres connection of --params-env); the rest goes to psql",
        allow_abbrev=False,
    )
    psql.add_argument("--params-env", default="local")
    psql.set_defaults(func=cmd_psql)
    args, rest = parser.parse_known_args(argv)
    if args.func is not cmd_psql and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.func is cmd_psql:
            return cmd_psql(args, rest[1:] if rest[:1] == ["--"] else rest)
        return args.func(args)
    except Exception as err:
        from medallion.warehouse import UnsupportedServer  # imported by then, if raised

        if not isinstance(err, (ServiceUnavailable, services.ServiceError, UnsupportedServer)):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
