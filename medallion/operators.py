"""The DAG's task-side plumbing: connections resolved by Airflow, and the notebook operator.

Connections: a task resolves the connection ids it was given with Airflow itself
(``BaseHook.get_connection``: environment variables, the metadata database, a secrets backend)
in the task process, and hands them on as ``AIRFLOW_CONN_<ID>`` variables in Airflow's JSON
form: to its own process (Python tasks) or to the notebook's kernel (which cannot ask Airflow
itself, apache/airflow#56364). Notebook parameters keep only the ids.

Notebooks: papermill's operator, plus one distinction Airflow needs. A file that breaks the
data contract fails the same way on every retry, so retrying it only delays the message. Such
errors (InputFileError, FileRejected) fail the task at once, with the notebook's own message;
anything else (a service that blinked, or a manifest not there: an object store that restarted
may answer NoSuchKey for a while) keeps the DAG's retries.

Publishing: one SQL task merges the run into staging and runs the publish gate in the same
transaction, then removes the run's transit rows. When the merge refuses the run because
PostgreSQL lost its transit rows (crash recovery empties the UNLOGGED transit tables), the task
reloads them from gold and merges again, so a retry after a restart recovers by itself; a
failed gate check fails the task at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.providers.papermill.operators.papermill import PapermillOperator
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowFailException
from papermill.exceptions import PapermillExecutionError
from papermill.translators import PythonTranslator, papermill_translators

from medallion import report
from medallion.settings import TRANSIT_TABLES, WAREHOUSE_SESSION, env_var_name

DATA_ERRORS = {"InputFileError", "FileRejected"}
# Publishing a run: the merge and the publish gate in one transaction; after the commit the
# run's transit rows go, and VACUUM gives their space back at once (so that the next run does
# not scan millions of dead rows).
PUBLISH_SQL = [
    "call staging.sp_merge_operaciones_ventas(%(run_id)s, %(scd_type)s)",
    "call staging.sp_clear_transit(%(run_id)s)",
    "vacuum " + ", ".join(f"public.{t}" for t in TRANSIT_TABLES.values()),
]
GATE_FAILED = "MDG01"  # SQLSTATE of a failed publish-gate check (sql/049)
TRANSIT_INCOMPLETE = "MDT01"  # the run's transit rows fall short of its load (sql/048)


def connection_ids(parameters: Mapping[str, object]) -> list[str]:
    """The connection ids among a parameter set's values (keys ending in ``_conn_id``)."""
    return sorted({str(v) for k, v in parameters.items() if k.endswith("_conn_id") and v})


def connection_environment(conn_ids: Iterable[str]) -> dict[str, str]:
    """``AIRFLOW_CONN_*`` values for connection ids, resolved by Airflow in this task."""
    return {env_var_name(c): BaseHook.get_connection(c).as_json() for c in conn_ids}


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block (a kernel started inside it
    inherits them), then restore what was there."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def use_connections(parameters: Mapping[str, object]) -> None:
    """For a Python task: resolve the parameter set's connections into this task process."""
    os.environ.update(connection_environment(connection_ids(parameters)))


class PlainPythonParameters(PythonTranslator):
    """papermill's Python translator without black: the parameters cell as papermill writes
    it when black is not installed. It is (papermill[all], through the Airflow provider), and
    importing it took 0.5 s in each process that runs a notebook, for plain assignments."""

    @classmethod
    def codify(cls, parameters, comment="Parameters"):
        return super(PythonTranslator, cls).codify(parameters, comment)


papermill_translators.register("python", PlainPythonParameters)


class NotebookOperator(PapermillOperator):
    """Run a notebook with papermill; its output goes to the task log as it runs."""

    def __init__(self, *, log_output: bool = True, **kwargs):
        super().__init__(log_output=log_output, **kwargs)

    def execute(self, context):
        from medallion.kernels import use_unix_sockets

        use_unix_sockets()  # the kernel on Unix sockets: no port two tasks can both pick
        connections = connection_environment(connection_ids(self.parameters or {}))
        try:
            with environment(connections):
                executed = super().execute(context)
        except PapermillExecutionError as err:
            if err.ename in DATA_ERRORS:
                raise AirflowFailException(f"{err.ename}: {err.evalue}") from err
            raise
        report.notebook_executed(Path(self.output_nb.url))
        return executed


def sqlstate(err: BaseException) -> str | None:
    """The SQLSTATE of a database error (psycopg 3 or psycopg2), if it carries one."""
    return getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)


class PublishOperator(SQLExecuteQueryOperator):
    """Merge a run into staging and publish it: the session limits, then ``sql`` (the merge,
    which runs the publish gate in its own transaction, and what follows the commit).

    ``run_parameters`` are the run's notebook parameters (connection ids, gold bucket, run id):
    transit tables that lost rows since notebook 04 loaded them are reloaded from gold when
    the merge refuses the run for it, and the run is merged again.
    """

    template_fields = (*SQLExecuteQueryOperator.template_fields, "run_parameters")

    def __init__(self, *, run_parameters: dict | str, sql: list[str] = PUBLISH_SQL, **kwargs):
        limits = [f"set {name} = '{value}'" for name, value in WAREHOUSE_SESSION.items()]
        super().__init__(sql=[*limits, *sql], autocommit=True, **kwargs)
        self.run_parameters = run_parameters

    def execute(self, context):
        from medallion import transit

        use_connections(self.run_parameters)
        try:
            return self._publish(context)
        except Exception as err:
            if sqlstate(err) != TRANSIT_INCOMPLETE:
                raise
            # the merge checked the run's transit rows first and refused (nothing was merged):
            # a PostgreSQL restart since notebook 04 emptied them. Checked there, not also
            # here before it: counting a large run's rows takes a second per 10M.
            reloaded = transit.reload_missing(self.run_parameters)
            self.log.warning("Reloaded from gold before the merge: %s", reloaded)
        return self._publish(context)

    def _publish(self, context):
        from medallion import warehouse

        try:
            return super().execute(context)
        except Exception as err:
            state = sqlstate(err)
            if state == GATE_FAILED:
                raise AirflowFailException(str(err).strip()) from err
            if state in warehouse.LOCK_ERRORS:
                holders = warehouse.lock_holders(
                    warehouse.engine(self.run_parameters["postgres_conn_id"])
                )
                raise RuntimeError(
                    f"{warehouse.LOCK_ERRORS[state]} "
                    f"({WAREHOUSE_SESSION[warehouse.LOCK_ERRORS[state]]}) reached: "
                    f"{str(err).strip()}\nLocks on the pipeline's tables now:\n{holders}"
                ) from err
            raise
