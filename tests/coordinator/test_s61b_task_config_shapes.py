"""A task config whose `codec` or `downlink` is not a JSON object is 422 `validation` naming the
field, never a 500 (helper s61b's mutation hunt on protocol/messages.py): `CodecParams`'s own
check of `error_feedback` (`_omit_none_schema`) runs before pydantic's and looks into the value
only when it is an object. Through ASGI: the refusal comes before the route runs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.service import ServiceConfig
from coordinator.service.app import create_app
from protocol.messages import to_json
from protocol.names import Reason

from .test_service_support import ADMIN, task_config


def _create(tmp_path: Path, **over: Any) -> httpx.Response:
    """POST /v1/admin/tasks with `task_config()`'s JSON, `over` replacing its fields."""
    app = create_app(ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN))
    body = json.dumps({**to_json(task_config()), **over}).encode()

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://plume") as client:
            headers = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
            return await client.post("/v1/admin/tasks", content=body, headers=headers)

    return asyncio.run(post())


@pytest.mark.parametrize("field", ["codec", "downlink"])
@pytest.mark.parametrize("value", [[], ["error_feedback"], "error_feedback", 5, None, True])
def test_a_codec_that_is_no_object_is_422_naming_the_field(
    tmp_path: Path, field: str, value: Any
) -> None:
    # Execute
    r = _create(tmp_path, **{field: value})
    # Assert
    assert r.status_code == 422, r.text
    assert r.json() == {
        "reason": Reason.VALIDATION,
        "detail": f"body.{field}: Input should be a dictionary or an instance of CodecParams",
    }


@pytest.mark.parametrize("value", [0, 1, "no", "true", [], {}])
def test_a_codec_error_feedback_that_is_no_boolean_is_422(tmp_path: Path, value: Any) -> None:
    # Execute
    r = _create(tmp_path, codec={"error_feedback": value})
    # Assert: pydantic's lax mode would read 0, 1, "no" or "true" as a boolean
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == Reason.VALIDATION
    assert f"error_feedback: expected a boolean or null, got {value!r}" in r.json()["detail"]
