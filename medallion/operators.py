"""The notebook operator of the DAG: papermill's, plus one distinction Airflow needs.

A file that breaks the data contract fails the same way on every retry, so retrying it only
delays the message. Such errors (InputFileError, FileRejected) fail the task at once, with the
notebook's own message; anything else (a service that blinked) keeps the DAG's retries.
"""

from __future__ import annotations

from airflow.providers.papermill.operators.papermill import PapermillOperator
from airflow.sdk.exceptions import AirflowFailException
from papermill.exceptions import PapermillExecutionError

DATA_ERRORS = {"InputFileError", "FileRejected"}


class NotebookOperator(PapermillOperator):
    def execute(self, context):
        try:
            return super().execute(context)
        except PapermillExecutionError as err:
            if err.ename in DATA_ERRORS:
                raise AirflowFailException(f"{err.ename}: {err.evalue}") from err
            raise
