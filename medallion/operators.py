"""The DAG's task-side plumbing: connections resolved by Airflow, and the notebook operator.

Connections: a task resolves the connection ids it was given with Airflow itself
(``BaseHook.get_connection``: environment variables, the metadata database, a secrets backend)
in the task process, and hands them on as ``AIRFLOW_CONN_<ID>`` variables in Airflow's JSON
form: to its own process (Python tasks) or to the notebook's kernel (which cannot ask Airflow
itself, apache/airflow#56364). Notebook parameters keep only the ids.

Notebooks: papermill's operator, plus one distinction Airflow needs. A file that breaks the
data contract fails the same way on every retry, so retrying it only delays the message. Such
errors (InputFileError, FileRejected) fail the task at once, with the notebook's own message;
anything else (a service that blinked) keeps the DAG's retries.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from airflow.providers.papermill.operators.papermill import PapermillOperator
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowFailException
from papermill.exceptions import PapermillExecutionError

from medallion.settings import env_var_name

DATA_ERRORS = {"InputFileError", "FileRejected"}


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


class NotebookOperator(PapermillOperator):
    """Run a notebook with papermill; its output goes to the task log as it runs."""

    def __init__(self, *, log_output: bool = True, **kwargs):
        super().__init__(log_output=log_output, **kwargs)

    def execute(self, context):
        connections = connection_environment(connection_ids(self.parameters or {}))
        try:
            with environment(connections):
                return super().execute(context)
        except PapermillExecutionError as err:
            if err.ename in DATA_ERRORS:
                raise AirflowFailException(f"{err.ename}: {err.evalue}") from err
            raise
