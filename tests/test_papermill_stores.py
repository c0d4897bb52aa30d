"""papermill's remote notebook stores imported on first use (medallion.papermill_stores)."""

import json
import os
import subprocess
import sys
import uuid
from io import BytesIO

import nbformat

from medallion.settings import get_connection

REMOTE_CLIENT_MODULES = [
    *("boto3", "github", "gcsfs", "gcsfs.retry", "azure.storage.blob", "azure.datalake.store"),
    *("papermill.s3", "papermill.abs", "papermill.adl"),
]  # neither imported nor left blocked (None) in sys.modules

IMPORT_AS_A_TASK = f"""
import json, sys
import medallion.operators  # as the DAG file does, in every task's process
import papermill.iorw
print(json.dumps([m for m in {REMOTE_CLIENT_MODULES!r} if m in sys.modules]))
"""

WITHOUT_BOTO3 = """
import json, sys
import medallion.operators
from papermill.exceptions import PapermillOptionalDependencyException
from papermill.iorw import S3
sys.modules["boto3"] = None  # as if papermill[s3] were not installed
try:
    S3()
except PapermillOptionalDependencyException as err:
    print(json.dumps(str(err)))
"""

READ_FROM_S3 = """
import json, sys
import medallion.operators
from papermill.iorw import load_notebook_node
before = "boto3" in sys.modules
nb = load_notebook_node(sys.argv[1])
print(json.dumps([before, "boto3" in sys.modules, nb.cells[0].source]))
"""


def _python(code: str, *args: str, env: dict | None = None) -> list:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, env=env
    ).stdout
    return json.loads(out.splitlines()[-1])


def test_a_task_process_imports_no_remote_store_client():
    assert _python(IMPORT_AS_A_TASK) == []


def test_a_client_that_is_not_installed_gets_papermills_own_message():
    assert "pip install papermill[s3]" in _python(WITHOUT_BOTO3)


def test_an_s3_notebook_is_read_with_its_client_imported_on_first_use(s3, params):
    # papermill reads s3:// through boto3 (BOTO3_ENDPOINT_URL: our S3 server)
    conn = get_connection("minio_default")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("desde S3")])
    bucket, key = params["bronze_bucket"], f"tests/papermill-{uuid.uuid4().hex}.ipynb"
    body = nbformat.writes(notebook).encode()
    s3.put_object(bucket, key, BytesIO(body), len(body))
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": conn.login,
        "AWS_SECRET_ACCESS_KEY": conn.password,
        "AWS_DEFAULT_REGION": "us-east-1",
        "BOTO3_ENDPOINT_URL": conn.extra["endpoint_url"],
    }
    try:
        before, after, source = _python(READ_FROM_S3, f"s3://{bucket}/{key}", env=env)
    finally:
        s3.remove_object(bucket, key)
    assert (before, after, source) == (False, True, "desde S3")
