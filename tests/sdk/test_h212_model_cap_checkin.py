"""The SDK tells the coordinator its `max_model_bytes` in every check-in, so `participate()`
naming no task is given a task whose model fits instead of the oversized one it would refuse
(helper-210's review of db68ea2: it was handed the same oversized task at every check-in and
held a selection slot in its rounds), and `participate(task_id=...)` of an oversized task ends
at its first check-in with `ModelTooLargeError` (the coordinator's 409 `model_too_large`).

Against a real loopback coordinator holding two tasks, the larger one created first (the one a
check-in naming no task was given before), with `Client` and `AsyncClient` alike.
"""

from __future__ import annotations

import asyncio
import json
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import CheckInRequest
from protocol.names import Reason
from sdk import AsyncClient, Client, ClientError, ModelTooLargeError
from sdk.client import MAX_MODEL_BYTES, MODEL_TOO_LARGE
from tests.coordinator.test_h212_model_cap_checkin import BIG_SHAPES, create_sized_task
from tests.coordinator.test_service_support import ADMIN, SHAPES, SoftmaxTrainer, local_data

X, Y = local_data(0)
CAP = 1000  # the small task's model is 680 bytes, the big one's 6,800
MODES = pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])


class _Requests:
    """A client mod keeping every request's path and, for check-ins, body."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.check_ins: list[bytes] = []

    def _note(self, request: httpx.Request) -> None:
        self.paths.append(request.url.path)
        if request.url.path == "/v1/checkin":
            self.check_ins.append(request.content)

    def sync_mod(self, request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        self._note(request)
        return nxt(request)  # type: ignore[no-any-return]

    async def async_mod(self, request: httpx.Request, nxt: Callable[..., Any]) -> httpx.Response:
        self._note(request)
        return await nxt(request)  # type: ignore[no-any-return]

    @property
    def models(self) -> list[str]:
        return [p for p in self.paths if p.endswith("/model")]


@dataclass
class Coordinator:
    url: str
    http: httpx.Client


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        yield Coordinator(url, http)


def _run(
    url: str, root: Path, seen: _Requests, asynchronous: bool, call: str, **kwargs: Any
) -> Any:
    """`participate(**kwargs)` (call "participate") or `check_in(**kwargs)` ("check_in") of a
    freshly registered client with max_model_bytes=CAP."""
    if not asynchronous:
        with Client(url, str(root), mods=(seen.sync_mod,), max_model_bytes=CAP) as client:
            client.register()
            if call == "participate":
                return client.participate(SoftmaxTrainer(), X, Y, **kwargs)
            return client.check_in(**kwargs)

    async def run() -> Any:
        async with AsyncClient(
            url, str(root), mods=(seen.async_mod,), max_model_bytes=CAP
        ) as client:
            await client.register()
            if call == "participate":
                return await client.participate(SoftmaxTrainer(), X, Y, **kwargs)
            return await client.check_in(**kwargs)

    return asyncio.run(run())


@MODES
def test_participate_naming_no_task_trains_the_task_that_fits(
    coordinator: Coordinator, tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare: the big task first (one-device rounds: the first check-in would open its round)
    big = create_sized_task(coordinator.http, BIG_SHAPES)
    small = create_sized_task(coordinator.http, SHAPES)
    seen = _Requests()
    # Execute
    report = _run(coordinator.url, tmp_path / "d", seen, asynchronous, "participate", max_wait_s=20)
    # Assert: a round of the small task, and the big task's model never asked for
    assert report is not None and report.receipt.accepted
    assert seen.models == [f"/v1/tasks/{small}/model"]
    assert f"/v1/tasks/{big}/model" not in seen.paths
    assert all(f'"max_model_bytes":{CAP}'.encode() in body for body in seen.check_ins)


@MODES
def test_participate_naming_no_task_with_only_the_big_one_running_waits_and_says_why(
    coordinator: Coordinator, tmp_path: Path, asynchronous: bool
) -> None:
    # Prepare
    create_sized_task(coordinator.http, BIG_SHAPES)
    seen = _Requests()
    # Execute: the idle wait (30 s) is longer than the call's
    report = _run(coordinator.url, tmp_path / "d", seen, asynchronous, "participate", max_wait_s=2)
    # Assert: no round, no model (the next test reads the answer's detail)
    assert report is None
    assert seen.models == [] and len(seen.check_ins) == 1


def test_the_wait_detail_names_the_task_and_the_limit(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    # Prepare
    big = create_sized_task(coordinator.http, BIG_SHAPES)
    with Client(coordinator.url, str(tmp_path / "d"), max_model_bytes=CAP) as client:
        client.register()
        # Execute
        assert client.participate(SoftmaxTrainer(), X, Y, max_wait_s=2) is None
        answer = client.last_check_in
    # Assert
    assert answer is not None and answer.action == "wait"
    assert answer.detail.startswith("no active task this device can run: ")
    assert f"task {big}'s model is 6800 bytes" in answer.detail
    assert f"max_model_bytes={CAP}" in answer.detail


@MODES
@pytest.mark.parametrize("call", ["participate", "check_in"])
def test_naming_the_big_task_raises_model_too_large_at_the_first_check_in(
    coordinator: Coordinator, tmp_path: Path, asynchronous: bool, call: str
) -> None:
    # Prepare
    big = create_sized_task(coordinator.http, BIG_SHAPES)
    seen = _Requests()
    kwargs: dict[str, Any] = {"task_id": big}
    if call == "participate":
        kwargs["max_wait_s"] = 20
    # Execute
    with pytest.raises(ModelTooLargeError) as caught:
        _run(coordinator.url, tmp_path / "d", seen, asynchronous, call, **kwargs)
    # Assert: the coordinator's refusal, as the same exception the SDK's own check raises;
    # one check-in, no model asked for, the device selected for no round of the task
    err = caught.value
    assert isinstance(err, ClientError)
    assert (err.status, err.reason) == (409, MODEL_TOO_LARGE) == (409, Reason.MODEL_TOO_LARGE)
    assert (err.task_id, err.declared, err.limit) == (big, None, CAP)
    assert f"task {big}'s model is 6800 bytes" in err.detail
    assert f"max_model_bytes={CAP}" in err.detail
    assert len(seen.check_ins) == 1 and seen.models == []
    status = coordinator.http.get(
        f"/v1/admin/tasks/{big}", headers={"authorization": f"Bearer {ADMIN}"}
    ).json()
    assert status["current_round"] is None and status["pool"] == 0


@MODES
@pytest.mark.parametrize(
    ("setting", "sent"),
    [
        (None, MAX_MODEL_BYTES),
        (4, 4),
        (2**63 - 1, 2**63 - 1),
        (2**63, 2**63 - 1),
        (10**30, 2**63 - 1),
    ],
    ids=["default", "least", "most", "2^63", "10^30"],
)
def test_every_check_in_carries_the_limit_before_the_features(
    tmp_path: Path, asynchronous: bool, setting: int | None, sent: int
) -> None:
    # Prepare: a coordinator that answers "wait"
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(200, json={"action": "wait", "retry_after_s": 1.0})

    kwargs: dict[str, Any] = {} if setting is None else {"max_model_bytes": setting}
    # Execute: naming a task and naming none
    if not asynchronous:
        transport = httpx.MockTransport(handler)
        with Client("http://c", str(tmp_path), transport=transport, **kwargs) as c:
            c.check_in(3)
            c.check_in()
    else:

        async def run() -> None:
            transport = httpx.MockTransport(handler)
            async with AsyncClient("http://c", str(tmp_path), transport=transport, **kwargs) as c:
                await c.check_in(3)
                await c.check_in()

        asyncio.run(run())
    # Assert: the exact bytes, the features still last
    assert bodies == [
        f'{{"task_id":3,"max_model_bytes":{sent},"features":["error_feedback_off"]}}'.encode(),
        f'{{"max_model_bytes":{sent},"features":["error_feedback_off"]}}'.encode(),
    ]


@dataclass(slots=True)
class CheckInRequestBeforeTheLimit:
    """`protocol.messages.CheckInRequest` as a coordinator before `max_model_bytes` had it."""

    task_id: int | None = None
    model_version: int | None = None
    awaiting_round: int | None = None
    features: list[str] | None = None


def test_a_coordinator_before_the_field_reads_the_check_in_as_before() -> None:
    # Prepare: this SDK's body and the SDK's before it
    body = (
        b'{"task_id":7,"model_version":3,"max_model_bytes":1000,"features":["error_feedback_off"]}'
    )
    older = b'{"task_id":7,"model_version":3,"features":["error_feedback_off"]}'
    # the older route's body model, parsed as FastAPI parses it
    parse = TypeAdapter(CheckInRequestBeforeTheLimit).validate_json
    # Execute / Assert: the key is dropped, not refused
    expected = CheckInRequestBeforeTheLimit(7, 3, None, ["error_feedback_off"])
    assert parse(body) == parse(older) == expected
    # and today's model reads both
    now = TypeAdapter(CheckInRequest).validate_json
    assert now(body) == CheckInRequest(7, 3, None, ["error_feedback_off"], 1000)
    assert now(older) == CheckInRequest(7, 3, None, ["error_feedback_off"])
    assert json.loads(body)["max_model_bytes"] == 1000


def test_the_coordinators_refusal_survives_pickling_whole() -> None:
    # A ClientError raised in a process pool's worker is pickled back to the app
    err = ModelTooLargeError(3, None, 1000, status=409, detail="task 3's model is 6800 bytes")

    again = pickle.loads(pickle.dumps(err))

    assert type(again) is ModelTooLargeError and str(again) == str(err)
    assert (again.status, again.reason, again.detail) == (409, MODEL_TOO_LARGE, err.detail)
    assert (again.task_id, again.declared, again.limit) == (3, None, 1000)
