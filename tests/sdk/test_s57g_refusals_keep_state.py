"""docs/devices.md's error table, rows with no test of their own before: the client's own
`ModelTooLargeError` (`status` 0) in a round, with a model and a residual held ("no request made
for the model ... the device trained and sent nothing, the residual and the models held are as
before ... and by `fetch_model` and `fetch_current`"), and a redirect, which the client does not
follow (`ClientError` `bad_response` naming where it pointed), for every kind of request."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from sdk import AsyncClient, Client, ModelTooLargeError
from sdk.client import ClientError
from sdk.device_store import DeviceStore

from .test_client import RECEIPT, SPEC, _assignment
from .test_client_hostile_server import (
    Sleeps,
    _app_files,
    _app_with_state,
    _data,
    _train_answer,
    snapshot_answer,
)
from .test_client_secure import ShiftTrainer

LIMIT = SPEC.dense_bytes - 4  # one parameter short of the task's model


def _held_state(root: Path) -> dict[str, bytes]:
    """Task 1's model at version 3 and its residual held, no upload pending; the files."""
    _app_with_state(root)
    with DeviceStore(root) as store:
        store.clear_pending()
    return _app_files(root)


def _check_in_only(seen: list[str]) -> Any:
    """Answers a check-in with a "train" assignment of task 1 (a coordinator from before
    `max_model_bytes`: it assigns the task whatever the device declared); records each path."""

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/v1/checkin":
            return httpx.Response(200, content=_train_answer())
        return httpx.Response(500, json={"reason": "x", "detail": "no request expected here"})

    return reply


@pytest.mark.parametrize("call", ["train_round", "fetch_model", "fetch_current", "participate"])
def test_a_model_over_max_model_bytes_keeps_the_held_model_and_residual(
    tmp_path: Path, call: str
) -> None:
    # Prepare
    files = _held_state(tmp_path)
    seen: list[str] = []
    transport = httpx.MockTransport(_check_in_only(seen))
    x, y = _data()
    # Execute
    with Client(
        "http://coord", str(tmp_path), transport=transport, max_model_bytes=LIMIT, sleep=Sleeps()
    ) as c:
        with pytest.raises(ModelTooLargeError) as info:
            if call == "train_round":
                c.train_round(_assignment(), ShiftTrainer(0.01), x, y)
            elif call == "fetch_model":
                c.fetch_model(_assignment())
            elif call == "fetch_current":
                c.fetch_current(1, SPEC)
            else:
                c.participate(ShiftTrainer(0.01), x, y, task_id=1, max_wait_s=5)
    # Assert: the client's own refusal, before any request for the model; nothing changed
    err = info.value
    assert (err.status, err.reason) == (0, "model_too_large")
    assert (err.task_id, err.declared, err.limit) == (1, SPEC.dense_bytes, LIMIT)
    assert seen == (["/v1/checkin"] if call == "participate" else [])
    assert _app_files(tmp_path) == files


def test_the_async_client_keeps_them_too(tmp_path: Path) -> None:
    # Prepare
    files = _held_state(tmp_path)
    seen: list[str] = []
    x, y = _data()

    async def run() -> None:
        transport = httpx.MockTransport(_check_in_only(seen))
        async with AsyncClient(
            "http://coord", str(tmp_path), transport=transport, max_model_bytes=LIMIT
        ) as c:
            await c.participate(ShiftTrainer(0.01), x, y, task_id=1, max_wait_s=5)

    # Execute
    with pytest.raises(ModelTooLargeError) as info:
        asyncio.run(run())
    # Assert
    assert (info.value.status, info.value.declared) == (0, SPEC.dense_bytes)
    assert seen == ["/v1/checkin"]
    assert _app_files(tmp_path) == files


# -- redirects ---------------------------------------------------------------------------------


def _redirecting(at: str, status: int, seen: list[str]) -> Any:
    """A server that answers the request to path `at` with a redirect to another host, and
    the rest as the coordinator would (the check-in with task 1's assignment, the download
    with a model, the upload with its receipt); records each request's host and path."""

    def reply(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        seen.append(f"{request.url.host}{path}")
        if path == at:
            return httpx.Response(status, headers={"location": "https://elsewhere.example/x"})
        if path == "/v1/checkin":
            return httpx.Response(200, content=_train_answer())
        if path == "/v1/tasks/1/model":
            return snapshot_answer(np.zeros(SPEC.size, np.float32), 4)
        return httpx.Response(200, content=json.dumps(RECEIPT).encode())

    return reply


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("at", ["/v1/checkin", "/v1/tasks/1/model", "/v1/rounds/5/updates"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_redirect_is_a_bad_response_and_not_followed(
    tmp_path: Path, status: int, at: str, kind: str
) -> None:
    # Prepare: a device holding a model and a residual; one of its requests is redirected
    # (a captive portal, a proxy, a moved server): following it would send the device's
    # signed request, and its update, to another host
    _held_state(tmp_path)
    seen: list[str] = []
    handler = _redirecting(at, status, seen)
    x, y = _data()

    async def run_async() -> None:
        async with AsyncClient(
            "http://coord", str(tmp_path), transport=httpx.MockTransport(handler), retries=0
        ) as c:
            if at == "/v1/checkin":
                await c.check_in(1)
            else:
                await c.train_round(_assignment(), ShiftTrainer(0.01), x, y)

    # Execute
    with pytest.raises(ClientError) as info:
        if kind == "async":
            asyncio.run(run_async())
        else:
            transport = httpx.MockTransport(handler)
            with Client("http://coord", str(tmp_path), transport=transport, retries=0) as c:
                if at == "/v1/checkin":
                    c.check_in(1)
                else:
                    c.train_round(_assignment(), ShiftTrainer(0.01), x, y)
    # Assert: one request to the path redirected, none elsewhere; the error names the target
    err = info.value
    assert (err.status, err.reason) == (status, "bad_response")
    assert "redirect to 'https://elsewhere.example/x', not followed" in err.detail
    assert seen[-1] == f"coord{at}" and seen.count(f"coord{at}") == 1
    assert all(s.startswith("coord/") for s in seen)
    # ... and an upload redirected stays pending, as an upload with no receipt does
    pending = DeviceStore(tmp_path).load_pending()
    assert (pending is not None) == (at == "/v1/rounds/5/updates")
