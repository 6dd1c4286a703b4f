"""Every bound of the SDK is measured on CLOCK_BOOTTIME where the platform has it.

time.monotonic (CLOCK_MONOTONIC on Linux) stops while the device is suspended, so a phone that
slept through its wait found `max_wait_s`, a round's deadline or a response's budget as far
off as before it slept: it went on checking in, or polling a round that had ended, for as long
as it had slept. The SDK now reads one clock, `sdk.client._tick`, which is CLOCK_BOOTTIME where
the platform has it (it counts the sleep), else time.monotonic. A suspend is simulated here
by a CLOCK_BOOTTIME (time.clock_gettime, patched) that jumps while the device "sleeps"."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import types
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest

import sdk.client as client_mod
from protocol.secagg import Stage
from sdk import AsyncClient, Client

from .test_client import SPEC
from .test_h61_inflight import secure_task
from .test_h64_secure_deadline import LIMIT, Stalling

BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)
needs_boottime = pytest.mark.skipif(BOOTTIME is None, reason="no CLOCK_BOOTTIME here")


class Suspends:
    """A device that is suspended for `seconds` each time it sleeps: CLOCK_BOOTTIME and the
    wall clock jump by that much, CLOCK_MONOTONIC does not move."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
        assert BOOTTIME is not None
        self.seconds = seconds
        self.slept = 0.0
        self.sleeps = 0
        real = time.clock_gettime

        def clock_gettime(clock_id: int) -> float:
            return real(clock_id) + (self.slept if clock_id == BOOTTIME else 0.0)

        monkeypatch.setattr(time, "clock_gettime", clock_gettime)

        async def asleep(seconds: float) -> None:
            self.sleep(seconds)
            await asyncio.sleep(0)

        patched = types.SimpleNamespace(**{**vars(asyncio), "sleep": asleep})
        monkeypatch.setattr(client_mod, "asyncio", patched)

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.slept += self.seconds

    def wall(self) -> float:
        return time.time() + self.slept


class Waiting:
    """A coordinator whose check-ins answer "wait 100 s", then 404 after `limit` of them."""

    def __init__(self, limit: int = 3) -> None:
        self.limit = limit
        self.check_ins = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/checkin", request.url.path
        self.check_ins += 1
        if self.check_ins > self.limit:
            return httpx.Response(404, json={"reason": "not_found", "detail": "enough"})
        body = {"action": "wait", "retry_after_s": 100.0}
        return httpx.Response(200, content=json.dumps(body).encode())


class _Trainer:
    def train(self, *args: object, **kw: object) -> object:
        raise AssertionError("never assigned")


@needs_boottime
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_max_wait_s_counts_the_time_the_device_slept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # Prepare: told to wait 100 s, the device is suspended 700 s in that wait; max_wait_s 600
    device = Suspends(monkeypatch, 700.0)
    handler = Waiting()
    x, y = np.zeros((1, 4), np.float32), np.zeros(1, np.int64)

    # Execute
    if kind == "sync":
        with Client(
            "http://c", str(tmp_path), transport=httpx.MockTransport(handler),
            sleep=device.sleep, clock=device.wall,
        ) as c:  # fmt: skip
            got = c.participate(_Trainer(), x, y, max_wait_s=600.0)  # type: ignore[arg-type]
    else:

        async def go() -> object:
            async with AsyncClient(
                "http://c", str(tmp_path), transport=httpx.MockTransport(handler),
                clock=device.wall,
            ) as c:  # fmt: skip
                return await c.participate(_Trainer(), x, y, max_wait_s=600.0)  # type: ignore[arg-type]

        got = asyncio.run(go())

    # Assert: the wait is over once it wakes; no second check-in. Before, the 700 s asleep
    # did not count: it checked in again (until the 404 raised ClientError)
    assert got is None
    assert handler.check_ins == 1 and device.sleeps == 1


@needs_boottime
def test_a_secure_round_deadline_counts_the_time_the_device_slept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the round is due in 60 s; its advertise-keys poll is answered 503 for ever, and
    # each wait before a retry suspends the device 30 s
    device = Suspends(monkeypatch, 30.0)
    handler = Stalling("GET", f"/stages/{Stage.ADVERTISE_KEYS}")
    a = replace(secure_task(1, 101), deadline_unix=device.wall() + 60.0)
    delta = np.full(SPEC.size, 0.05, np.float32)

    # Execute
    with Client(
        "http://c", str(tmp_path), transport=httpx.MockTransport(handler), retries=1000,
        sleep=device.sleep, clock=device.wall,
    ) as c:  # fmt: skip
        report = c.secure_round(a, lambda p: (delta, 8, 0.0))

    # Assert: given up after the waits that reach the deadline. Before, the sleeps did not
    # count: it polled on (LIMIT 503s, then the 404 raised ClientError)
    assert not report.completed
    assert "deadline" in report.detail, report.detail
    assert handler.stalled <= 2 < LIMIT


# -- the clock itself ---------------------------------------------------------------------------


@needs_boottime
def test_the_clock_is_clock_boottime_where_there_is_one() -> None:
    assert BOOTTIME is not None
    before = time.clock_gettime(BOOTTIME)
    tick = client_mod._tick()
    after = time.clock_gettime(BOOTTIME)
    assert before <= tick <= after


def test_without_clock_boottime_the_clock_is_time_monotonic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(time, "CLOCK_BOOTTIME", raising=False)
    assert client_mod._boot_clock() is time.monotonic


@needs_boottime
def test_a_refused_clock_boottime_falls_back_to_time_monotonic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A kernel or sandbox that refuses the clock id (EINVAL) at the first read
    def refuse(clock_id: int) -> float:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(time, "clock_gettime", refuse)
    assert client_mod._boot_clock() is time.monotonic


def test_nothing_in_the_sdk_reads_time_monotonic_directly() -> None:
    # One clock for every bound: a direct time.monotonic() would stop while the phone sleeps
    for module in (client_mod, sys.modules["sdk.secure"]):
        source = Path(module.__file__ or "").read_text()
        code = [line for line in source.splitlines() if not line.lstrip().startswith("#")]
        assert not [line for line in code if "time.monotonic()" in line], module.__name__
