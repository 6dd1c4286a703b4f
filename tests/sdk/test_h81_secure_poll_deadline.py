"""`HttpSecureDevice.download` ends its polling at `timeout_s`: a pause between polls (up to
10 x `poll_s`, from the stage's `Retry-After`) is cut at the deadline. It slept the whole pause,
ending up to 10 x `poll_s` late (the first two tests failed). Time is a fake clock: `_tick`
(the SDK's steady clock) and the device's `time.sleep` both read and advance it."""

from __future__ import annotations

import types
from typing import Any

import httpx
import pytest

import sdk.client as client_mod
import sdk.secure as secure_mod
from protocol.secagg import SecAggPath, Stage
from sdk.secure import HttpSecureDevice, SecureParticipant
from tests._clock import SleepClock

URL = SecAggPath.STAGE.format(round_id=3, stage=Stage.ADVERTISE_KEYS)


class Clock(SleepClock):
    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, seconds
        super().sleep(seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(client_mod, "_tick", c.tick)
    fake_time = types.SimpleNamespace(**{**vars(secure_mod.time), "sleep": c.sleep})
    monkeypatch.setattr(secure_mod, "time", fake_time)
    return c


def _device(
    clock: Clock, opens_at: float, retry_after: str = "10"
) -> tuple[HttpSecureDevice, list[float]]:
    """A device whose stage stays open (425, `Retry-After`) until the clock reads `opens_at`;
    the clock times of its polls are kept."""
    polls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        polls.append(clock.now)
        if clock.now < opens_at:
            return httpx.Response(
                425, json={"reason": "too_early"}, headers={"retry-after": retry_after}
            )
        return httpx.Response(200, content=b"directory")

    http = httpx.Client(base_url="http://stage", transport=httpx.MockTransport(handler))
    return HttpSecureDevice(http, "dev-0", SecureParticipant(4), poll_s=0.2), polls


def test_a_stage_that_never_opens_gives_up_at_timeout_s(clock: Clock) -> None:
    # Prepare: Retry-After 10 s, clamped to 10 x poll_s = 2 s, against a 0.5 s timeout
    device, polls = _device(clock, opens_at=float("inf"))
    # Execute
    body = device.download(3, Stage.ADVERTISE_KEYS, timeout_s=0.5)
    # Assert: left behind, with the last wait ending at the deadline, not 1.5 s after it
    assert body is None
    assert clock.now == pytest.approx(0.5), clock.sleeps
    assert polls == pytest.approx([0.0, 0.5])


def test_a_stage_that_opens_at_the_deadline_is_read_then(clock: Clock) -> None:
    # Prepare
    device, polls = _device(clock, opens_at=0.5)
    # Execute
    body = device.download(3, Stage.ADVERTISE_KEYS, timeout_s=0.5)
    # Assert: the last poll came at the deadline and read the download
    assert body == b"directory"
    assert polls == pytest.approx([0.0, 0.5])


def test_pauses_inside_the_timeout_are_unchanged(clock: Clock) -> None:
    # Prepare: Retry-After 0.3 s, the stage opening after 0.85 s, a 60 s timeout
    device, polls = _device(clock, opens_at=0.85, retry_after="0.3")
    # Execute
    body = device.download(3, Stage.ADVERTISE_KEYS, timeout_s=60.0)
    # Assert: polled every 0.3 s as the server asked
    assert body == b"directory"
    assert polls == pytest.approx([0.0, 0.3, 0.6, 0.9])


@pytest.mark.parametrize("timeout_s", [0.0, -1.0])
def test_no_time_left_means_one_poll(clock: Clock, timeout_s: float) -> None:
    device, polls = _device(clock, opens_at=float("inf"))
    assert device.download(3, Stage.ADVERTISE_KEYS, timeout_s=timeout_s) is None
    assert polls == [0.0] and clock.sleeps == []


def test_timeouts_are_kept_through_run_round(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    # A left-behind device (the first stage never opens) returns False at its timeout_s
    device, polls = _device(clock, opens_at=float("inf"))
    session: Any = types.SimpleNamespace(advertise=lambda: b"keys")
    monkeypatch.setattr(device, "join", lambda round_id, params: session)
    monkeypatch.setattr(device, "upload", lambda round_id, stage, body: None)
    assert device.run_round(3, None, None, 1, None, timeout_s=0.7) is False  # type: ignore[arg-type]
    assert clock.now == pytest.approx(0.7)
