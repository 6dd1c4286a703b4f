"""The wire middleware's JSON body cap, at its edges (helper s61b's mutation hunt on
coordinator/service/wire.py).

A `Content-Length` above the cap is refused 413 `too_large` from the head, before the app runs;
one at the cap is not. Through ASGI, as the app runs behind a server other than uvicorn's h11
(which refuses a `Content-Length` of more than 20 digits itself): a declared length of more
than 4,300 digits, which Python's `int` refuses, was a text/plain 500 from the middleware, not
the 413 every other oversized declaration gets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from coordinator.service import ServiceConfig
from coordinator.service.app import create_app
from protocol.names import Reason

from .test_service_support import ADMIN

CAP = 1000
TOO_LARGE = {"reason": Reason.TOO_LARGE, "detail": f"request body above the {CAP}-byte cap"}


def _post(tmp_path: Path, declared: str | None, body: bytes = b"{}") -> httpx.Response:
    """POST /v1/admin/tasks (with the admin token) through ASGI to an app whose JSON cap is CAP bytes, with
    `Content-Length: declared` whatever the body's size (ASGI passes the header as given), or
    with no `Content-Length` (None): the body streamed in parts of 100 bytes."""
    config = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, json_body_cap=CAP)
    app = create_app(config)

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://plume") as client:
            headers = [("content-type", "application/json"), ("authorization", f"Bearer {ADMIN}")]
            if declared is not None:
                headers.append(("content-length", declared))
                return await client.post("/v1/admin/tasks", content=body, headers=headers)

            async def parts() -> AsyncIterator[bytes]:
                for at in range(0, len(body), 100):
                    yield body[at : at + 100]

            return await client.post("/v1/admin/tasks", content=parts(), headers=headers)

    return asyncio.run(post())


@pytest.mark.parametrize(
    "declared",
    [
        str(CAP + 1),
        "9" * 4301,  # past Python's int digit limit: was a text/plain 500
        "1" + "0" * 5000,
        "0" * 5000 + str(CAP + 1),  # leading zeros: its value counts, not its length
    ],
    ids=["one-over", "4301-nines", "5001-digits", "zeros-then-one-over"],
)
def test_a_declared_length_above_the_cap_is_413_from_the_head(
    tmp_path: Path, declared: str
) -> None:
    # Execute
    r = _post(tmp_path, declared)
    # Assert: the middleware's own refusal, in JSON, closing the connection
    assert r.status_code == 413, r.text
    assert r.json() == TOO_LARGE
    assert r.headers["connection"] == "close"


@pytest.mark.parametrize(
    "declared",
    [str(CAP), "0" * 5000 + str(CAP), "0" * 5000 + "2"],
    ids=["at-cap", "zeros-then-cap", "zeros-then-two"],
)
def test_a_declared_length_at_or_below_the_cap_reaches_the_route(
    tmp_path: Path, declared: str
) -> None:
    # Execute: `{}` is no task config, so the route answers 422 once the middleware lets the
    # request in
    r = _post(tmp_path, declared)
    # Assert
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == Reason.VALIDATION


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "streamed"])
def test_a_body_at_the_cap_is_read_and_one_byte_more_is_413(tmp_path: Path, declared: bool) -> None:
    # Prepare: a body of exactly CAP bytes, and one of CAP + 1, each declaring its own size
    # (refused from the head) or sent without a length (refused as the parts arrive)
    at_cap = b'{"a":"' + b"x" * (CAP - 8) + b'"}'
    assert len(at_cap) == CAP
    over = at_cap[:-2] + b'x"}'
    (tmp_path / "at").mkdir()
    (tmp_path / "over").mkdir()
    # Execute
    r_at = _post(tmp_path / "at", str(len(at_cap)) if declared else None, at_cap)
    r_over = _post(tmp_path / "over", str(len(over)) if declared else None, over)
    # Assert
    assert r_at.status_code == 422 and r_at.json()["reason"] == Reason.VALIDATION
    assert r_over.status_code == 413 and r_over.json() == TOO_LARGE
    # The route's own 413 (read past the cap as the parts arrive) carries the header once
    assert r_over.headers.get_list("connection") == ["close"]
