"""docs/devices.md on `participate`'s wait, as a property over a coordinator whose every
check-in answer is a real "wait" (or busy) answer mutated at random (its body, its
`Retry-After` or `Date`, its status): `participate` "blocks its thread: up to `max_wait_s` ...
for an assignment", then returns `None` ("no round was assigned within max_wait_s";
`last_check_in` None or a "wait" answer of this call) or raises a `ClientError` (an answer it
cannot use; "a 5xx or 429 on every attempt, when the wait outlasts the retries, is that
ClientError"), never another exception; every pause is one `time.sleep` takes, and the app
directory is as it was. The SDK's steady clock is a fake one the pauses advance."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

import sdk.client as client_mod
from sdk import AsyncClient, Client
from sdk.client import ClientError
from tests._clock import SleepClock

from .test_client_hostile_server import WAIT, _app_files, _app_with_state, _data
from .test_client_secure import ShiftTrainer
from .test_s57g_hostile_answers import (
    HEADER_TEXT,
    PROPERTY,
    Answer,
    _app,
    _response,
    mutated_json,
)

BUSY = b'{"reason": "store_unavailable", "detail": "busy"}'


class _Clock(SleepClock):
    """The SDK's steady clock (`sdk.client._tick`), moved only by the client's pauses."""

    start = 1000.0

    def sleep(self, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise AssertionError(f"time.sleep({seconds}) would raise or never return")
        super().sleep(seconds)


@st.composite
def wait_answers(draw: st.DrawFn) -> Answer:
    """A "wait" answer, or a busy 503 / 429, with its body or one header mutated."""
    status = draw(st.sampled_from([200, 200, 429, 503]))
    body = WAIT if status == 200 else BUSY
    headers: dict[str, bytes] = {"content-type": b"application/json"}
    if draw(st.booleans()):
        body = draw(mutated_json(body))
    else:
        name = draw(st.sampled_from(["retry-after", "date"]))
        headers[name] = draw(
            HEADER_TEXT
            | st.sampled_from([b"Wed, 21 Oct 2037 07:28:00 GMT", b"Thu, 01 Jan 1970 00:00:00 GMT"])
            | st.floats(0, 1e6).map(lambda f: f"{f:g}".encode())
        )
    return status, headers, body


@PROPERTY
@given(answer=wait_answers(), max_wait_s=st.sampled_from([0.0, 1.0, 30.0]))
def test_participate_against_mutated_wait_answers_ends_within_max_wait_s(
    answer: Answer, max_wait_s: float
) -> None:
    clock = _Clock()
    seen: list[str] = []

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return _response(answer)

    x, y = _data()
    with _app() as (root, files), mock.patch.object(client_mod, "_tick", clock.tick):
        transport = httpx.MockTransport(reply)
        with Client("http://coord", str(root), transport=transport, sleep=clock.sleep) as c:
            # Execute
            start = clock.now
            try:
                report = c.participate(ShiftTrainer(0.01), x, y, task_id=1, max_wait_s=max_wait_s)
            except ClientError as exc:
                event(f"{answer[0]}, {max_wait_s:g} s: ClientError {exc.reason}")
            else:
                # Assert: no round, and the answer kept is this call's, with none
                assert report is None
                last = c.last_check_in
                event(f"{answer[0]}, {max_wait_s:g} s: None, last {last and last.action!r}")
                assert last is None or last.assignment is None or last.action != "train"
        # Assert: within the wait, check-ins only, nothing written
        assert clock.now - start <= max_wait_s + 1e-9, (clock.now - start, clock.sleeps)
        assert set(seen) == ({"/v1/checkin"} if max_wait_s > 0 else set())
        assert _app_files(root) == files


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_wait_of_zero_sends_nothing_not_even_the_pending_upload(
    tmp_path: Path, kind: str
) -> None:
    # devices.md's None row: "`max_wait_s=0` sends nothing (no check-in, nor the re-send of an
    # upload left pending): `None` at once, `last_check_in` None"
    files = _app_with_state(tmp_path)  # an upload for round 4 pending
    seen: list[str] = []

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, content=WAIT)

    x, y = _data()

    async def run_async() -> tuple[Any, Any]:
        transport = httpx.MockTransport(reply)
        async with AsyncClient("http://coord", str(tmp_path), transport=transport) as ac:
            got = await ac.participate(ShiftTrainer(0.01), x, y, task_id=1, max_wait_s=0)
            return got, ac.last_check_in

    # Execute
    if kind == "sync":
        with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(reply)) as c:
            report = c.participate(ShiftTrainer(0.01), x, y, task_id=1, max_wait_s=0)
            last = c.last_check_in
    else:
        report, last = asyncio.run(run_async())
    # Assert
    assert report is None and last is None
    assert seen == []
    assert _app_files(tmp_path) == files
