"""A SecAgg+ round's requests end by the round's deadline (and a stage's polls by
max_stage_wait_s), retries and their backoff included.

Before, each stage upload and poll was sent with no deadline: a server answering 503 (with a
short Retry-After) kept the device retrying for retries x (max_response_s + backoff) past the
round's deadline. Now the device gives up, the round reported not completed, and a masked input
whose answer is missing keeps its record for the check-in's `round_outcome` (as for any lost
answer). Against `SecureFake` (tests/sdk/test_h61_inflight.py) behind a handler that answers
503 to one kind of request; real time, deadlines a fraction of a second away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from compression import ErrorFeedback
from protocol.names import Header
from protocol.secagg import Stage
from sdk import AsyncClient, Client
from sdk.client import ClientError, SecureRoundReport
from sdk.device_store import DeviceStore

from .test_client import SPEC
from .test_h61_inflight import SecureFake, held_residual, record_content, secure_task

SLACK_S = 2.0  # how far past the deadline the last request may start (a loaded machine)
# 503s before the handler answers 404 (so the client before the fix ends, failing): at 0.05 s
# apart, 10 s of polls, well past any deadline + SLACK_S here
LIMIT = 200


class Stalling:
    """`SecureFake`, except that requests `method` to a path ending in `suffix` are answered
    503 with Retry-After 0.05 (LIMIT times, then 404). `times` holds each request's start."""

    def __init__(self, method: str, suffix: str, outcomes: dict[int, str] | None = None) -> None:
        self.fake = SecureFake(outcomes=outcomes)
        self.method, self.suffix = method, suffix
        self.times: list[float] = []
        self.stalled = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.times.append(time.time())
        if request.method == self.method and request.url.path.endswith(self.suffix):
            self.stalled += 1
            if self.stalled > LIMIT:
                return httpx.Response(404, json={"reason": "not_found", "detail": "enough"})
            return httpx.Response(503, content=b"busy", headers={Header.RETRY_AFTER: "0.05"})
        return self.fake(request)


def _run(
    kind: str, handler: Stalling, root: Path, deadline_unix: float, max_stage_wait_s: float = 600.0
) -> SecureRoundReport:
    a = replace(secure_task(1, 101), deadline_unix=deadline_unix)
    delta = np.full(SPEC.size, 0.05, np.float32)
    if kind == "sync":
        with Client(
            "http://coord", str(root), transport=httpx.MockTransport(handler), retries=1000,
            backoff_s=0.05, max_stage_wait_s=max_stage_wait_s,
        ) as client:  # fmt: skip
            return client.secure_round(a, lambda p: (delta, 8, 0.0))

    async def go() -> SecureRoundReport:
        async with AsyncClient(
            "http://coord", str(root), transport=httpx.MockTransport(handler), retries=1000,
            backoff_s=0.05, max_stage_wait_s=max_stage_wait_s,
        ) as client:  # fmt: skip
            return await client.secure_round(a, lambda p: (delta, 8, 0.0))

    return asyncio.run(go())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_stage_poll_answered_503_ends_by_the_round_deadline(tmp_path: Path, kind: str) -> None:
    # Prepare: the advertise-keys download is answered 503 (retry in 0.05 s) for ever
    handler = Stalling("GET", f"/stages/{Stage.ADVERTISE_KEYS}")
    deadline = time.time() + 0.8

    # Execute
    report = _run(kind, handler, tmp_path, deadline)

    # Assert: not completed, no request started past the deadline, no input computed (no
    # record, no residual). Before, the polls went on past it (LIMIT of them, then a 404)
    assert not report.completed
    assert "deadline" in report.detail, report.detail
    assert report.stages == [str(Stage.ADVERTISE_KEYS)]
    assert max(handler.times) <= deadline + SLACK_S, max(handler.times) - deadline
    assert handler.stalled < LIMIT
    assert DeviceStore(tmp_path).load_accepted(101) is None


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_stage_poll_answered_503_ends_by_max_stage_wait_s(tmp_path: Path, kind: str) -> None:
    # Prepare: a round deadline far off; the device polls a stage at most 0.4 s
    handler = Stalling("GET", f"/stages/{Stage.ADVERTISE_KEYS}")
    start = time.time()

    # Execute
    report = _run(kind, handler, tmp_path, 4e9, max_stage_wait_s=0.4)

    # Assert: the polls' 503 retries end by max_stage_wait_s too
    assert not report.completed
    assert "max_stage_wait_s" in report.detail, report.detail
    assert max(handler.times) <= start + 0.4 + 2 * SLACK_S, max(handler.times) - start
    assert handler.stalled < LIMIT


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_masked_input_answered_503_until_the_deadline_keeps_its_record(
    tmp_path: Path, kind: str
) -> None:
    # Prepare: the masked-input upload is answered 503 for ever (the coordinator may hold the
    # input: a 5xx answers nothing); the round's outcome will be `abandoned`
    handler = Stalling("POST", f"/stages/{Stage.MASKED_INPUT}", outcomes={101: "abandoned"})
    deadline = time.time() + 1.5
    delta = np.full(SPEC.size, 0.05, np.float32)

    # Execute
    report = _run(kind, handler, tmp_path, deadline)

    # Assert: given up by the deadline, not completed; the record of what the input stood
    # for is kept for `round_outcome`, and residual + record = the update, once
    assert not report.completed
    assert report.detail.startswith(f"{Stage.MASKED_INPUT}:"), report.detail
    assert "deadline" in report.detail
    assert max(handler.times) <= deadline + SLACK_S
    assert handler.stalled < LIMIT
    left, sent = held_residual(tmp_path, 1), record_content(tmp_path, 101)
    np.testing.assert_allclose(left + sent, delta, atol=1e-6)
    # ... which the check-in's `abandoned` returns into the residual, once
    with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(handler)) as c:
        assert c.check_in(1).round_outcome == "abandoned"
    assert DeviceStore(tmp_path).load_accepted(101) is None
    np.testing.assert_allclose(held_residual(tmp_path, 1), delta, atol=1e-6)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_round_whose_deadline_passed_sends_no_stage(tmp_path: Path, kind: str) -> None:
    # Prepare: a coordinator that answers everything at once; the deadline is already past
    handler = Stalling("GET", "/never")

    # Execute
    report = _run(kind, handler, tmp_path, time.time() - 1.0)

    # Assert: no stage request is sent past the deadline; no record. Before, the round ran
    # (and completed against this coordinator)
    assert not report.completed
    # (since helper-68's bound, the round ends at its model download, before any request)
    assert report.detail.startswith("model download:"), report.detail
    assert report.stages == []
    assert not any("/stages/" in p for _, p in handler.fake.seen)
    assert DeviceStore(tmp_path).load_accepted(101) is None


def test_a_refusal_of_a_stage_still_raises(tmp_path: Path) -> None:
    # A 404 to a poll (no deadline involved) is a refusal, raised as before
    handler = Stalling("GET", f"/stages/{Stage.SHARE_KEYS}")
    handler.stalled = LIMIT
    with pytest.raises(ClientError) as info:
        _run("sync", handler, tmp_path, time.time() + 30)
    assert info.value.status == 404


def test_a_masked_input_whose_deadline_passed_before_it_is_sent_is_returned_at_once(
    tmp_path: Path,
) -> None:
    # Prepare: task 1 holds residual OLD; the share-keys download answers only once the
    # round's deadline has passed (a client mod holds it; its own bound starts after the mod)
    old = np.linspace(-0.5, 0.5, SPEC.size).astype(np.float32)
    ef = ErrorFeedback(SPEC.size)
    ef.residual = old.copy()
    DeviceStore(tmp_path).save_residual(ef, 1)
    handler = Stalling("GET", "/never")
    deadline = time.time() + 0.5

    def late(request: httpx.Request, nxt: Callable[[httpx.Request], httpx.Response]) -> Any:
        if request.method == "GET" and request.url.path.endswith(f"/stages/{Stage.SHARE_KEYS}"):
            time.sleep(max(0.0, deadline - time.time()) + 0.1)
        return nxt(request)

    a = replace(secure_task(1, 101), deadline_unix=deadline)
    delta = np.full(SPEC.size, 0.05, np.float32)

    # Execute
    with Client(
        "http://coord", str(tmp_path), transport=httpx.MockTransport(handler), mods=(late,)
    ) as client:
        report = client.secure_round(a, lambda p: (delta, 8, 0.0))

    # Assert: the input was computed and saved with its record, then not sent (no attempt
    # could end by the deadline): the record is dropped and the residual is OLD again, exactly
    assert not report.completed
    assert report.detail == f"{Stage.MASKED_INPUT}: the round's deadline passed", report.detail
    assert report.stages == [str(Stage.ADVERTISE_KEYS), str(Stage.SHARE_KEYS)]
    assert not any(
        p.endswith(f"/stages/{Stage.MASKED_INPUT}") for m, p in handler.fake.seen if m == "POST"
    )
    assert DeviceStore(tmp_path).load_accepted(101) is None
    np.testing.assert_array_equal(held_residual(tmp_path, 1), old)
