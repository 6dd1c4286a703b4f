"""A check-in answer whose `action` this SDK does not know (a newer coordinator's) is read as a
wait, as an SDK from before "end" reads "end" (protocol.names.CheckInAction; docs/devices.md,
"What the app must handle"): `check_in` returns it as sent, and `participate` (both clients)
waits its `retry_after_s` (at least `min_poll_s`, at most a week) and checks in again, acts on
no assignment it carries, and returns None with it as `last_check_in` once the next wait would
pass `max_wait_s`."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdk import AsyncClient, Client
from sdk.client import CheckInResponse, ClientError

from .test_client_hostile_server import _app_files, _data, _train_answer
from .test_client_secure import ShiftTrainer
from .test_s57g_hostile_answers import _app

KINDS = ["sync", "async"]


def _unknown(retry_after_s: float, assignment: bool = False) -> bytes:
    """The real "train" answer with its action replaced by one this SDK does not know, and
    its assignment removed unless `assignment`."""
    doc = json.loads(_train_answer())
    doc.update(action="pause", retry_after_s=retry_after_s, detail="a newer coordinator's")
    if not assignment:
        doc["assignment"] = None
    return json.dumps(doc).encode()


class Coordinator:
    """Answers every check-in with `body`; notes each request's path and `time.monotonic()`."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.seen: list[tuple[str, float]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.url.path, time.monotonic()))
        headers = {"content-type": "application/json"}
        return httpx.Response(200, headers=headers, content=self.body)


def _call(root: Path, coordinator: Coordinator, kind: str, what: str, **kw: Any) -> Any:
    """`check_in(1)` (`what` "check_in") or `participate(..., task_id=1, **kw)` by a `kind`
    client; (its result, the client's `last_check_in`)."""
    x, y = _data()
    if kind == "sync":
        with Client("http://coord", str(root), transport=httpx.MockTransport(coordinator)) as c:
            if what == "check_in":
                return c.check_in(1), c.last_check_in
            return c.participate(ShiftTrainer(0.01), x, y, task_id=1, **kw), c.last_check_in

    async def run() -> Any:
        transport = httpx.MockTransport(coordinator)
        async with AsyncClient("http://coord", str(root), transport=transport) as c:
            if what == "check_in":
                return await c.check_in(1), c.last_check_in
            got = await c.participate(ShiftTrainer(0.01), x, y, task_id=1, **kw)
            return got, c.last_check_in

    return asyncio.run(run())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("assignment", [False, True], ids=["bare", "with-assignment"])
def test_check_in_returns_an_unknown_action_as_sent(kind: str, assignment: bool) -> None:
    # Prepare
    coordinator = Coordinator(_unknown(2.5, assignment))
    with _app() as (root, files):
        # Execute
        got, last = _call(root, coordinator, kind, "check_in")
        # Assert: the answer as sent, no error; nothing in the app directory changed
        assert isinstance(got, CheckInResponse) and got is last
        assert (got.action, got.retry_after_s, got.detail) == (
            "pause",
            2.5,
            "a newer coordinator's",
        )
        assert (got.assignment is not None) == assignment
        assert _app_files(root) == files


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("assignment", [False, True], ids=["bare", "with-assignment"])
def test_participate_waits_on_an_unknown_action_until_max_wait_s(
    kind: str, assignment: bool
) -> None:
    # Prepare: a wait of 0.1 s asked for, within a call of 0.5 s
    coordinator = Coordinator(_unknown(0.1, assignment))
    with _app() as (root, files):
        # Execute
        start = time.monotonic()
        got, last = _call(root, coordinator, kind, "participate", max_wait_s=0.5)
        took = time.monotonic() - start
        # Assert: no round (nothing downloaded or trained, even with an assignment), the
        # last answer kept; check-ins at least the asked 0.1 s apart; the call within its wait
        paths = [path for path, _ in coordinator.seen]
        assert got is None and last is not None and last.action == "pause"
        assert set(paths) == {"/v1/checkin"} and len(paths) >= 2
        times = [t for _, t in coordinator.seen]
        assert all(b - a >= 0.1 for a, b in zip(times, times[1:], strict=False)), times
        assert took < 0.5 + 2.0  # the wait, and the slack of a loaded machine
        assert _app_files(root) == files


@pytest.mark.parametrize("kind", KINDS)
def test_an_unknown_action_asking_for_more_than_max_wait_s_ends_the_call_at_once(
    kind: str,
) -> None:
    # Prepare: a wait beyond any bound (1e9 s; the SDK takes a week at most)
    coordinator = Coordinator(_unknown(1e9))
    with _app() as (root, _files):
        # Execute
        start = time.monotonic()
        got, last = _call(root, coordinator, kind, "participate", max_wait_s=60.0)
        # Assert: one check-in, then None at once rather than a wait past max_wait_s
        assert got is None and last is not None and last.action == "pause"
        assert [path for path, _ in coordinator.seen] == ["/v1/checkin"]
        assert time.monotonic() - start < 10.0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("action", [5, None, ["wait"], {"a": 1}, True])
def test_an_action_that_is_no_string_is_a_bad_response(kind: str, action: Any) -> None:
    # Prepare
    doc = json.loads(_unknown(1.0))
    doc["action"] = action
    coordinator = Coordinator(json.dumps(doc).encode())
    with _app() as (root, files):
        # Execute
        with pytest.raises(ClientError) as caught:
            _call(root, coordinator, kind, "check_in")
        # Assert
        assert caught.value.reason == "bad_response"
        assert _app_files(root) == files


@pytest.mark.parametrize("action", ["train", "pause"])
def test_only_a_train_answer_notes_its_assignments_round(action: str) -> None:
    # Prepare: the real "train" answer, or the same with an action this SDK does not know
    doc = json.loads(_unknown(2.5, assignment=True))
    doc["action"] = action
    coordinator = Coordinator(json.dumps(doc).encode())
    with _app() as (root, _files):
        transport = httpx.MockTransport(coordinator)
        with Client("http://coord", str(root), transport=transport) as c:
            # Execute
            got = c.check_in(1)
            core = c._core
            noted = (core._assigning, core._round_ends, core._assigned_at)

    # Assert: "train" notes the round (its deadline, and when it was assigned, which
    # `delivered` reads); an unknown action's assignment notes nothing (before: it did, so an
    # accepted upload to that round read as not delivered)
    assert got.assignment is not None
    key = (got.assignment.task_id, got.assignment.round_id)
    if action == "train":
        assert all(len(table) == 1 for table in noted) and key in core._assigned_at
    else:
        assert noted == ({}, {}, {})
