"""The device reads response bodies under a cap: a hostile server cannot make it buffer more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from sdk import AsyncClient, Client
from sdk.client import MAX_JSON_RESPONSE, MODEL_RESPONSE_SLACK, ClientError

from .test_client import SPEC, _assignment

CHUNK = 64 << 10


class Endless:
    """A body of `total` zero bytes in 64 KiB chunks, counting how many were pulled."""

    def __init__(self, total: int) -> None:
        self.total, self.pulled = total, 0

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(self.total // CHUNK):
            self.pulled += 1
            yield bytes(CHUNK)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self:
            yield chunk


def test_a_check_in_answer_past_the_cap_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    # Prepare: a 1 GiB streamed answer (no Content-Length).
    body = Endless(1 << 30)
    transport = httpx.MockTransport(lambda r: httpx.Response(200, content=body))

    # Execute
    with Client("http://coord", str(tmp_path), transport=transport) as c:
        with pytest.raises(ClientError) as err:
            c.check_in(1)

    # Assert: refused with a reason, and only about the cap was pulled from the server.
    assert err.value.reason == "too_large"
    assert body.pulled <= MAX_JSON_RESPONSE // CHUNK + 1


def test_a_declared_length_past_the_cap_is_refused_before_any_byte(tmp_path: Path) -> None:
    # Prepare
    body = Endless(1 << 30)
    headers = {"content-length": str(1 << 30)}
    transport = httpx.MockTransport(lambda r: httpx.Response(200, content=body, headers=headers))
    # Execute + Assert
    with Client("http://coord", str(tmp_path), transport=transport) as c:
        with pytest.raises(ClientError, match="cap"):
            c.check_in(1)
    assert body.pulled == 0


def test_the_model_cap_follows_the_model_size(tmp_path: Path) -> None:
    # Prepare: a "model" larger than dense fp32 plus the slack.
    cap = SPEC.dense_bytes + MODEL_RESPONSE_SLACK
    body = Endless(cap + 4 * CHUNK)
    transport = httpx.MockTransport(lambda r: httpx.Response(200, content=body))
    # Execute + Assert
    with Client("http://coord", str(tmp_path), transport=transport) as c:
        with pytest.raises(ClientError, match=f"{cap}-byte cap"):
            c.fetch_model(_assignment())
    assert body.pulled <= cap // CHUNK + 1


def test_the_async_client_caps_too(tmp_path: Path) -> None:
    # Prepare
    body = Endless(1 << 30)

    async def run() -> None:
        transport = httpx.MockTransport(lambda r: httpx.Response(200, content=body.__aiter__()))
        async with AsyncClient("http://coord", str(tmp_path), transport=transport) as c:
            await c.check_in(1)

    # Execute + Assert
    with pytest.raises(ClientError, match="too_large|cap"):
        asyncio.run(run())
    assert body.pulled <= MAX_JSON_RESPONSE // CHUNK + 1
