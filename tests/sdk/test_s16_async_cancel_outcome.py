"""A request let go on `cancel=` that ends some other way than cancelled: an answer is kept (as
one that came first), an error is retrieved (no "Task exception was never retrieved")."""

from __future__ import annotations

import asyncio
import gc
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdk import AsyncClient
from sdk import client as sdk_client


async def _slow(request: httpx.Request) -> httpx.Response:
    await asyncio.sleep(5.0)
    return httpx.Response(200, json={})


def _mod(kind: str) -> Any:
    async def mod(request: httpx.Request, nxt: Any) -> httpx.Response:
        try:
            response: httpx.Response = await nxt(request)
            return response
        except asyncio.CancelledError:
            if kind == "answer":
                return httpx.Response(201, json={}, request=request)
            raise httpx.ReadError("converted", request=request) from None

    return mod


async def _send(tmp_path: Path, kind: str) -> Any:
    cancel = threading.Event()
    client = AsyncClient(
        "http://c", app_dir=str(tmp_path / kind), transport=httpx.MockTransport(_slow),
        mods=(_mod(kind),), retries=0,
    )  # fmt: skip
    asyncio.get_running_loop().call_later(0.1, cancel.set)
    try:
        with sdk_client._async_cancel_scope(cancel):
            return await client._send(client._core.register_exchange())
    finally:
        await client.aclose()


def test_an_answer_that_ends_the_let_go_request_is_kept(tmp_path: Path) -> None:
    response = asyncio.run(_send(tmp_path, "answer"))
    assert response.status_code == 201


def test_an_error_that_ends_the_let_go_request_is_retrieved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(sdk_client._Stop):
        asyncio.run(_send(tmp_path, "error"))
    gc.collect()
    assert "never retrieved" not in caplog.text
