"""`participate(..., min_poll_s=S)`: the app's floor on the time between two check-ins.

While a round gathers, the coordinator answers "wait" with its `--poll` (0.25 s by default),
and `participate` obeyed it: one device waiting about 10 s for a cohort made 33 signed
check-ins (a scratch run against a loopback `plume coordinator serve`), which is 2,400 over
the 600 s default wait, a phone's radio awake four times a second. The app had no way to ask for fewer.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from sdk import AsyncClient, Client, TrainResult
from sdk import client as client_mod
from tests._clock import SleepClock


class _NoRound:
    def train(self, params: np.ndarray, x: np.ndarray, y: np.ndarray, **_: object) -> TrainResult:
        raise AssertionError("no round is assigned")


X, Y = np.zeros((2, 3), np.float32), np.zeros(2, np.int64)


def _gathering(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"action": "wait", "retry_after_s": 0.25})


def test_min_poll_s_spaces_the_check_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a coordinator that says "wait 0.25 s" forever, a clock the sleeps advance
    clock = SleepClock(1000.0)
    monkeypatch.setattr(client_mod, "_tick", clock.tick)
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return _gathering(request)

    transport = httpx.MockTransport(handler)
    with Client("http://coord", str(tmp_path), transport=transport, sleep=clock.sleep) as client:
        # Execute
        report = client.participate(_NoRound(), X, Y, max_wait_s=12.0, min_poll_s=5.0)
    # Assert: a check-in every 5 s, not every 0.25 s, within the 12 s
    assert report is None
    assert clock.sleeps == [5.0, 5.0] and len(calls) == 3


def test_the_coordinators_longer_wait_still_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = SleepClock(1000.0)
    monkeypatch.setattr(client_mod, "_tick", clock.tick)

    def slow(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"action": "wait", "retry_after_s": 7.0})

    transport = httpx.MockTransport(slow)
    with Client("http://coord", str(tmp_path), transport=transport, sleep=clock.sleep) as client:
        assert client.participate(_NoRound(), X, Y, max_wait_s=15.0, min_poll_s=2.0) is None
    assert clock.sleeps == [7.0, 7.0]


def test_the_async_client_takes_it_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SleepClock(1000.0)
    monkeypatch.setattr(client_mod, "_tick", clock.tick)

    async def fake_sleep(seconds: float) -> None:
        clock.sleep(seconds)

    monkeypatch.setattr(client_mod.asyncio, "sleep", fake_sleep)

    async def handler(request: httpx.Request) -> httpx.Response:
        return _gathering(request)

    async def run() -> None:
        transport = httpx.MockTransport(handler)
        async with AsyncClient("http://coord", str(tmp_path), transport=transport) as client:
            assert (
                await client.participate(_NoRound(), X, Y, max_wait_s=12.0, min_poll_s=5.0) is None
            )

    asyncio.run(run())
    assert clock.sleeps == [5.0, 5.0]


@pytest.mark.parametrize("bad", [float("nan"), -1.0, float("inf"), 1e300, 7 * 86_400.0 + 1])
def test_a_floor_outside_zero_to_a_week_is_refused(tmp_path: Path, bad: float) -> None:
    transport = httpx.MockTransport(_gathering)
    with Client("http://coord", str(tmp_path), transport=transport) as client:
        with pytest.raises(
            ValueError, match=r"min_poll_s must be seconds from 0 to 604800 \(a week\)"
        ):
            client.participate(_NoRound(), X, Y, max_wait_s=1.0, min_poll_s=bad)
