"""Airflow's execution API, in-process (`make run`): built for the one version our tasks speak.

In the in-process run (``dag.test``) the tasks talk to an execution API that lives in the same
process, through the Task SDK of this very installation. Airflow builds that API with cadwyn
for every version it has ever published (nine), so that older workers keep working against a
newer server; cadwyn generates all of their routers at the first request, about 2.5 s of CPU
on every run, on the way to the first task. Only the newest version (the SDK's) is ever asked
for here, so ``serve_sdk_version_only`` hands Airflow a version bundle of that version alone
(plus an older one that holds the routes only older versions have, which cadwyn insists be
restored somewhere): the SDK's routes and schemas are the same as in the full bundle, as they
are the head's. A real Airflow (API server, workers) keeps every version.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# Where cadwyn's version bundle puts routes that exist only in older versions. Any date older
# than the first version Airflow published.
OLDER_ROUTES_VERSION = "2000-01-01"


def serve_sdk_version_only() -> bool:
    """Build the in-process execution API for the Task SDK's version only. Returns False (and
    changes nothing) if the SDK does not speak the newest version of this Airflow's API, or if
    this Airflow or cadwyn no longer lets the bundle be built so (the API is then built whole:
    slower, never wrong)."""
    from airflow.api_fastapi.execution_api import versions
    from airflow.sdk.api.datamodels._generated import API_VERSION

    bundle = versions.bundle
    if bundle.versions[-1].value == OLDER_ROUTES_VERSION:
        return True  # already done in this process
    if bundle.versions[0].value != API_VERSION or bundle.head_version.changes:
        log.info("execution API kept whole: the SDK speaks %s, not its newest version", API_VERSION)
        return False
    try:
        from cadwyn import HeadVersion, Version, VersionBundle

        versions.bundle = VersionBundle(
            HeadVersion(),
            Version(API_VERSION, _older_routes_change()),
            Version(OLDER_ROUTES_VERSION),
        )
    except Exception:  # noqa: BLE001 - an optimisation: the whole API still serves the run
        log.warning("execution API kept whole: its bundle could not be narrowed", exc_info=True)
        return False
    return True


def _older_routes_change() -> type:
    """A cadwyn version change that restores, below the SDK's version, the routes marked as
    existing only in older versions."""
    from airflow.api_fastapi.execution_api.routes import execution_api_router
    from cadwyn import VersionChange, endpoint
    from cadwyn.route_generation import _DELETED_ROUTE_TAG
    from fastapi.routing import APIRoute

    older = [
        route
        for route in execution_api_router.routes
        if isinstance(route, APIRoute) and _DELETED_ROUTE_TAG in route.tags
    ]
    return type(
        "RoutesOfOlderVersions",
        (VersionChange,),
        {
            "description": "Routes that exist only in older versions of the API.",
            "instructions_to_migrate_to_previous_version": tuple(
                endpoint(route.path, sorted(route.methods)).existed for route in older
            ),
        },
    )
