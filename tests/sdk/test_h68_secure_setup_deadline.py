"""A secure round's model download and setup end by the round's deadline, as its stages do.

Before, only the stage uploads and polls carried the round's deadline (e5cd22a): the model
download and the setup request were sent with none, so a coordinator answering them 503 held
the device in retries and backoff long past the round (and a round already past its deadline
still downloaded the model and the plan). Now each ends by the deadline (read against the
coordinator's clock, 93865ec), else the round ends for the device, not completed, with the
request named in `detail`; nothing was trained, and the residual, a held record and a given
participant are as they were.

Against a fake coordinator on a controllable clock: every request and every sleep of the
client advances it, and the SDK's monotonic clock (`sdk.client._tick`, injected) reads it, so
the tests are deterministic and take no real time."""

from __future__ import annotations

import asyncio
import json
import math
import types
from collections.abc import Iterator
from dataclasses import replace
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

import sdk.client as client_mod
from compression import ErrorFeedback
from protocol.messages import to_json
from protocol.names import Header
from sdk import AsyncClient, Client
from sdk.client import SecureRoundReport
from sdk.device_store import AcceptedUpload, DeviceStore
from sdk.secure import SecureParticipant

from .test_client import SPEC
from .test_h61_inflight import SecureFake, secure_task

LIMIT = 60  # 503s before the fake answers 404 (so a client without the bound ends, failing)
SKEW_S = 120.0  # the device's clock runs this far ahead of the coordinator's
RTT_S = 0.01  # each request takes this long on the fake clock


class FakeTime:
    """The coordinator's wall clock and the device's monotonic clock, advanced together."""

    def __init__(self) -> None:
        self.wall = 1_764_000_000.0  # a whole second: the Date header then shows it exactly
        self.mono = 5_000.0

    def advance(self, seconds: float) -> None:
        assert seconds >= 0 and math.isfinite(seconds), seconds
        self.wall += seconds
        self.mono += seconds


class Coordinator:
    """`SecureFake` on a `FakeTime` clock: its check-in assigns secure round 101 of task 1, due
    `deadline_s` from now on its clock, and every answer carries its `Date`. Requests
    `method` to a path ending in `suffix` are answered 503 with Retry-After 1 (LIMIT times,
    then 404). `seen` lists (coordinator time, method, path) of every request."""

    def __init__(self, t: FakeTime, deadline_s: float, method: str, suffix: str) -> None:
        self.t = t
        self.fake = SecureFake()
        self.assignment = replace(secure_task(1, 101), deadline_unix=t.wall + deadline_s)
        self.method, self.suffix = method, suffix
        self.stalled = 0
        self.seen: list[tuple[float, str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((self.t.wall, request.method, request.url.path))
        self.t.advance(RTT_S)
        response = self._answer(request)
        response.headers["date"] = formatdate(self.t.wall, usegmt=True)
        return response

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/checkin":
            body = {"action": "train", "retry_after_s": 0.0, "assignment": to_json(self.assignment)}
            return httpx.Response(200, content=json.dumps(body).encode())
        if request.method == self.method and request.url.path.endswith(self.suffix):
            self.stalled += 1
            if self.stalled > LIMIT:
                return httpx.Response(404, json={"reason": "not_found", "detail": "enough"})
            return httpx.Response(503, content=b"busy", headers={Header.RETRY_AFTER: "1"})
        return self.fake(request)

    def after_check_in(self) -> list[tuple[float, str, str]]:
        return [s for s in self.seen if s[2] != "/v1/checkin"]


@pytest.fixture
def t(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTime]:
    """A fake clock the SDK's bounds and waits read, sync and async."""
    fake = FakeTime()
    monkeypatch.setattr(client_mod, "_tick", lambda: fake.mono, raising=False)
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        fake.advance(seconds)
        await real_sleep(0)

    patched = types.SimpleNamespace(**{**vars(asyncio), "sleep": sleep})
    monkeypatch.setattr(client_mod, "asyncio", patched)
    yield fake


class Update:
    """The round's `update`, noting whether it was called (training)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, params: npt.NDArray[np.float32]) -> tuple[Any, int, float]:
        self.calls += 1
        return np.full(SPEC.size, 0.05, np.float32), 8, 0.0


def _run(
    kind: str,
    t: FakeTime,
    coord: Coordinator,
    root: Path,
    update: Update,
    participant: SecureParticipant | None = None,
) -> SecureRoundReport:
    """Check in (the device's clock SKEW_S fast) and run the assigned secure round."""
    kw: dict[str, Any] = {"retries": 1000, "backoff_s": 0.05, "clock": lambda: t.wall + SKEW_S}
    if kind == "sync":
        with Client(
            "http://coord", str(root), transport=httpx.MockTransport(coord), sleep=t.advance, **kw
        ) as c:
            a = c.check_in(1).assignment
            assert a is not None
            return c.secure_round(a, update, participant=participant)

    async def go() -> SecureRoundReport:
        async with AsyncClient(
            "http://coord", str(root), transport=httpx.MockTransport(coord), **kw
        ) as c:
            a = (await c.check_in(1)).assignment
            assert a is not None
            return await c.secure_round(a, update, participant=participant)

    return asyncio.run(go())


def _held_state(root: Path) -> tuple[npt.NDArray[np.float32], bytes]:
    """Task 1's residual and the frame of the record of round 55, as the app directory holds."""
    store = DeviceStore(root)
    ef = store.load_residual(SPEC.size, 1)
    record = store.load_accepted(55)
    assert ef is not None and record is not None
    return ef.residual.copy(), record.frame


def _hold_state(root: Path) -> None:
    """A residual for task 1 and the record of an earlier round (55) awaiting its outcome."""
    store = DeviceStore(root)
    ef = ErrorFeedback(SPEC.size)
    ef.residual = np.linspace(-0.3, 0.3, SPEC.size).astype(np.float32)
    store.save_residual(ef, 1)
    frame = b"earlier round's frame"
    store.save_accepted(AcceptedUpload(55, frame, SPEC, 1), ef)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_model_download_answered_503_ends_by_the_round_deadline(
    tmp_path: Path, t: FakeTime, kind: str
) -> None:
    # Prepare: the round is due in 10 s (coordinator's clock; the device's reads 120 s ahead);
    # the model download is answered 503, retry in 1 s, for ever
    coord = Coordinator(t, 10.0, "GET", "/model")
    deadline = coord.assignment.deadline_unix
    update = Update()

    # Execute
    report = _run(kind, t, coord, tmp_path, update)

    # Assert: given up by the round's deadline as the coordinator's clock has it (retried until
    # then, not given up at once as the device's fast clock would say), the download named;
    # no setup or stage request, nothing trained. Before, the retries went on past it (LIMIT
    # of them, then the 404 raised ClientError)
    assert not report.completed
    assert report.detail.startswith("model download:"), report.detail
    assert "deadline" in report.detail
    assert report.stages == [] and not report.receipt.accepted
    assert report.num_examples == 0 and math.isnan(report.loss)
    assert update.calls == 0
    sent = coord.after_check_in()
    assert all(path.endswith("/model") for _, _, path in sent), sent
    assert max(when for when, _, _ in sent) <= deadline
    assert 5 <= coord.stalled < LIMIT


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_setup_answered_503_ends_by_the_round_deadline_and_keeps_the_state(
    tmp_path: Path, t: FakeTime, kind: str
) -> None:
    # Prepare: task 1 holds a residual and an earlier round's record; the setup download is
    # answered 503 for ever
    _hold_state(tmp_path)
    held = _held_state(tmp_path)
    coord = Coordinator(t, 10.0, "GET", "/setup")
    deadline = coord.assignment.deadline_unix
    update = Update()

    # Execute
    report = _run(kind, t, coord, tmp_path, update)

    # Assert: given up by the deadline, the setup named; the model downloaded (and kept, as
    # any download), nothing trained, the residual and the record as they were, no record of
    # this round
    assert not report.completed
    assert report.detail.startswith("setup:"), report.detail
    assert report.download_encoding == "snapshot"
    assert report.stages == [] and update.calls == 0
    sent = coord.after_check_in()
    assert not any("/stages/" in path for _, _, path in sent), sent
    assert max(when for when, _, _ in sent) <= deadline
    assert 5 <= coord.stalled < LIMIT
    store = DeviceStore(tmp_path)
    assert store.load_model(1, SPEC.size) is not None
    assert store.load_accepted(101) is None
    residual, frame = _held_state(tmp_path)
    np.testing.assert_array_equal(residual, held[0])
    assert frame == held[1]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_round_past_its_deadline_downloads_nothing(
    tmp_path: Path, t: FakeTime, kind: str
) -> None:
    # Prepare: a coordinator that answers everything at once, but the round's deadline falls
    # before the check-in's answer arrives
    coord = Coordinator(t, RTT_S / 2, "GET", "/never")
    update = Update()

    # Execute
    report = _run(kind, t, coord, tmp_path, update)

    # Assert: no request after the check-in. Before, the model and the setup were downloaded
    # (the round then ended at its first stage)
    assert not report.completed
    assert report.detail.startswith("model download:"), report.detail
    assert coord.after_check_in() == []
    assert update.calls == 0 and report.bytes_down == 0 and report.bytes_up == 0


def test_a_given_participant_is_untouched_by_a_setup_cut_by_the_deadline(
    tmp_path: Path, t: FakeTime
) -> None:
    # Prepare: a simulator's participant with a residual of its own
    participant = SecureParticipant(SPEC.size)
    participant.residual = np.linspace(0.0, 1.0, SPEC.size).astype(np.float32)
    before = participant.residual.copy()
    coord = Coordinator(t, 5.0, "GET", "/setup")

    # Execute
    report = _run("sync", t, coord, tmp_path, Update(), participant=participant)

    # Assert
    assert report.detail.startswith("setup:"), report.detail
    np.testing.assert_array_equal(participant.residual, before)
    assert participant.sent_dense() is None
    assert DeviceStore(tmp_path).load_residual(SPEC.size, 1) is None


def test_a_round_with_time_left_still_completes(tmp_path: Path, t: FakeTime) -> None:
    # Control: the same coordinator, nothing stalled, a deadline far enough: completed
    coord = Coordinator(t, 60.0, "GET", "/never")
    update = Update()
    report = _run("sync", t, coord, tmp_path, update)
    assert report.completed, report.detail
    assert update.calls == 1
