"""Airflow's execution API, in-process (`make run`): built for the one version our tasks speak.

In the in-process run (``dag.test``) the tasks talk to an execution API that lives in the same
process, through the Task SDK of this very installation. Airflow builds that API with cadwyn
for every version it has ever published (nine), so that older workers keep working against a
newer server; cadwyn generates all of their routers at the first request, about 2.5 s of CPU
on every run, on the way to the first task. Only the newest version (the SDK's) is ever asked
for here, so ``serve_sdk_version_only`` hands Airflow a version bundle of that version alone,
and takes out of this process's router the routes that only older versions have (cadwyn
would otherwise insist on an older version to restore them in: 0.2 s more). The SDK's routes
and schemas are the same as in the full bundle, as they are the head's. A real Airflow (API
server, workers) keeps every version.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def serve_sdk_version_only() -> bool:
    """Build the in-process execution API for the Task SDK's version only. Returns False (and
    changes nothing) if the SDK does not speak the newest version of this Airflow's API, or if
    this Airflow or cadwyn no longer lets the bundle be built so (the API is then built whole:
    slower, never wrong)."""
    from airflow.api_fastapi.execution_api import versions
    from airflow.sdk.api.datamodels._generated import API_VERSION

    bundle = versions.bundle
    if [v.value for v in bundle.versions] == [API_VERSION]:
        return True  # already done in this process
    if bundle.versions[0].value != API_VERSION or bundle.head_version.changes:
        log.info("execution API kept whole: the SDK speaks %s, not its newest version", API_VERSION)
        return False
    try:
        from airflow.api_fastapi.execution_api.routes import execution_api_router
        from cadwyn import HeadVersion, Version, VersionBundle
        from cadwyn.route_generation import _DELETED_ROUTE_TAG

        sdk_only = VersionBundle(HeadVersion(), Version(API_VERSION))
        execution_api_router.routes[:] = [
            route
            for route in execution_api_router.routes
            if _DELETED_ROUTE_TAG not in getattr(route, "tags", ())
        ]
    except Exception:  # noqa: BLE001 - an optimisation: the whole API still serves the run
        log.warning("execution API kept whole: its bundle could not be narrowed", exc_info=True)
        return False
    versions.bundle = sdk_only
    return True
