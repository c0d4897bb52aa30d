"""The in-process execution API built for the Task SDK's version only (medallion.execution_api)."""

from __future__ import annotations

from typing import Any

import pytest
from airflow.api_fastapi.execution_api import versions
from airflow.api_fastapi.execution_api.app import create_task_execution_api_app
from airflow.api_fastapi.execution_api.routes import execution_api_router
from airflow.sdk.api.datamodels import _generated as sdk_models
from fastapi.openapi.utils import get_openapi

from medallion import execution_api


@pytest.fixture
def bundle(monkeypatch: pytest.MonkeyPatch):
    """Airflow's version bundle and the routes of its router, put back after the test."""
    monkeypatch.setattr(versions, "bundle", versions.bundle)
    monkeypatch.setattr(execution_api_router, "routes", list(execution_api_router.routes))
    return versions.bundle


def _openapi_by_version(app: Any) -> dict[str, dict]:
    """Each version's OpenAPI document (paths, methods, request and response schemas)."""
    app._cadwyn_initialize()  # what cadwyn does at the first request
    return {
        str(version): get_openapi(title="execution", version=str(version), routes=router.routes)
        for version, router in app.router.versioned_routers.items()
    }


def test_the_sdk_version_is_served_as_the_whole_api_serves_it(bundle):
    routes_before = list(execution_api_router.routes)
    whole = _openapi_by_version(create_task_execution_api_app())

    assert execution_api.serve_sdk_version_only()
    only = _openapi_by_version(create_task_execution_api_app())

    sdk = sdk_models.API_VERSION
    assert list(only) == [sdk]
    assert len(whole) > 2
    assert only[sdk] == whole[sdk]
    assert only[sdk]["paths"]  # a real document, not an empty one
    assert len(execution_api_router.routes) < len(routes_before)  # older routes were there


def test_an_sdk_of_an_older_version_keeps_the_whole_api(bundle, monkeypatch):
    monkeypatch.setattr(sdk_models, "API_VERSION", bundle.versions[1].value)
    routes = list(execution_api_router.routes)

    assert not execution_api.serve_sdk_version_only()
    assert versions.bundle is bundle
    assert execution_api_router.routes == routes


def test_serving_twice_changes_nothing_more(bundle):
    assert execution_api.serve_sdk_version_only()
    once = versions.bundle
    assert execution_api.serve_sdk_version_only()
    assert versions.bundle is once
