"""`create_app`'s routes share one `ErrorBody` response field per status code (app._Route,
helper-307): FastAPI built a pydantic TypeAdapter for each route's error responses, a third of
the time of every coordinator start. The OpenAPI document must not change."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.routing import APIRoute

from coordinator.service import ServiceConfig, create_app
from coordinator.service import app as app_module
from protocol.messages import ErrorBody


def _openapi(db: Path) -> dict[str, object]:
    app = create_app(ServiceConfig(db_path=str(db)))
    try:
        return app.openapi()
    finally:
        app.state.store.close()


def test_the_openapi_document_is_the_one_of_plain_routes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the document of the shared fields
    shared = _openapi(tmp_path / "a.db")
    # Execute: the same app with FastAPI's own route class (a field per route and response)
    monkeypatch.setattr(app_module, "_Route", APIRoute)
    plain = _openapi(tmp_path / "b.db")
    # Assert
    assert shared == plain
    assert "ErrorBody" in shared["components"]["schemas"]  # type: ignore[index]


def test_error_fields_are_shared_across_routes_and_apps(tmp_path: Path) -> None:
    # Execute: two apps
    apps = [create_app(ServiceConfig(db_path=str(tmp_path / f"{i}.db"))) for i in range(2)]
    try:
        # Assert: every ErrorBody response of every route is the one field of its status
        seen = 0
        for app in apps:
            for route in app.routes:
                if not isinstance(route, APIRoute):
                    continue
                for code, response in route.responses.items():
                    if response.get("model") is ErrorBody:
                        assert route.response_fields[code] is app_module._error_field(code)
                        seen += 1
        assert seen > 100  # _ERRORS is nine a route on every device and admin route
    finally:
        for app in apps:
            app.state.store.close()
