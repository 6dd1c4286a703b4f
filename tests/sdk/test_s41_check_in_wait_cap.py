"""A check-in's `retry_after_s` is waited as at most a week (`MAX_RETRY_AFTER_S`, the longest
a coordinator answers), helper-332's finding: with `participate(..., max_wait_s=math.inf)` a
coordinator's 1e9 had the device sleep 31 years, and 1e300 raised a raw OverflowError out of
`time.sleep` (and out of `Event.wait` with a cancel event) instead of waiting."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import httpx
import pytest

import sdk.client as client_mod
from protocol import auth
from protocol.messages import MAX_RETRY_AFTER_S
from sdk import AsyncClient, Client
from tests.coordinator.test_service_support import SoftmaxTrainer, local_data

TOLD = [2.5, 604_800.0, 604_801.0, 1e9, 1e300]


class _Slept(Exception):
    """Ends `participate` at its first wait, the wait recorded."""


def _answer(told: float):  # type: ignore[no-untyped-def]
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/devices":
            fields = auth.fields_from_headers(dict(request.headers.items()))
            return httpx.Response(200, json={"device_id": fields.device_id, "created": True})
        return httpx.Response(200, json={"action": "wait", "retry_after_s": told})

    return handler


@pytest.mark.parametrize("told", TOLD)
def test_the_client_waits_at_most_a_week_between_check_ins(tmp_path: Path, told: float) -> None:
    # Prepare: a coordinator that answers every check-in "wait `told` seconds"
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        raise _Slept

    x, y = local_data(0)
    transport = httpx.MockTransport(_answer(told))
    # Execute: an app that waits as long as it takes
    with Client("http://coord", str(tmp_path), transport=transport, sleep=sleep) as client:
        with pytest.raises(_Slept):
            client.participate(SoftmaxTrainer(), x, y, max_wait_s=math.inf)
    # Assert: the wait asked of the sleep, capped
    assert slept == [min(told, MAX_RETRY_AFTER_S)]


@pytest.mark.parametrize("told", TOLD)
def test_the_async_client_waits_at_most_a_week_between_check_ins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, told: float
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        raise _Slept

    monkeypatch.setattr(client_mod.asyncio, "sleep", sleep)
    x, y = local_data(0)

    async def main() -> None:
        async with AsyncClient(
            "http://coord", str(tmp_path), transport=httpx.MockTransport(_answer(told))
        ) as client:
            await client.participate(SoftmaxTrainer(), x, y, max_wait_s=math.inf)

    with pytest.raises(_Slept):
        asyncio.run(main())
    assert slept == [min(told, MAX_RETRY_AFTER_S)]
