"""`train_round` called again with an assignment whose upload this device already delivered.

Before, the second call downloaded the model and trained again, encoded the new update (taking
the residual), and uploaded it; the coordinator holds the device's update for the round and
refused it (409 `duplicate_upload`), and the client put that second update's content into the
error-feedback residual: a second training of the same round, sent with a later round. Now the
call is refused before any request (`ClientError` status 0, reason `duplicate_upload`, naming
the round), with the residual as it was. Against a real coordinator on loopback, for `Client`
and `AsyncClient`; and after the app restarted (the accepted record in the app directory).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from protocol.messages import Assignment
from sdk import AsyncClient, Client, TrainResult
from sdk.client import ClientError
from tests.coordinator.test_service_support import (
    SoftmaxTrainer,
    await_assignment,
    create_task,
    local_data,
    loopback_url,  # noqa: F401  (the fixture `url`)
    task_config,
    wait_until,
)


class _Counting(SoftmaxTrainer):
    def __init__(self) -> None:
        self.calls = 0

    def train(self, params: npt.NDArray[np.float32], *args: Any, **kw: Any) -> TrainResult:
        self.calls += 1
        return super().train(params, *args, **kw)


class _Requests:
    """Every request's method and path, as it leaves the client."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request, nxt: Callable[..., Any]) -> Any:
        self.seen.append(f"{request.method} {request.url.path}")
        return nxt(request)

    async def amod(self, request: httpx.Request, nxt: Callable[..., Any]) -> Any:
        self.seen.append(f"{request.method} {request.url.path}")
        return await nxt(request)


def _task(url: str) -> int:
    # One device a round, min_reports 1: the round commits at the upload; a long deadline.
    with httpx.Client(base_url=url) as http:
        return create_task(
            http, task_config(clients_per_round=1, rounds=3, deadline_s=60.0,
                              selection_timeout_s=0.2),
        )  # fmt: skip


def _residual(root: Path, task_id: int) -> bytes:
    return (root / f"residual-{task_id}.bin").read_bytes()


def _assert_refused(err: ClientError, a: Assignment) -> None:
    assert (err.status, err.reason) == (0, "duplicate_upload")
    assert f"round {a.round_id} of task {a.task_id}" in err.detail
    assert "nothing was downloaded or trained" in err.detail


@pytest.mark.parametrize("settle_first", [False, True])
def test_a_second_train_round_of_a_delivered_round_is_refused_before_any_request(
    url: str, tmp_path: Path, settle_first: bool
) -> None:
    # Prepare: a device that trained and delivered round 1
    task_id = _task(url)
    root, trainer, seen = tmp_path / "dev", _Counting(), _Requests()
    x, y = local_data(1)
    with Client(url, str(root), mods=(seen,), sleep=lambda s: None) as c:
        c.register()
        a = await_assignment(c, task_id)
        report = c.train_round(a, trainer, x, y)
        assert report.receipt.accepted and not report.resent
        if settle_first:
            # A check-in learns the round committed: the accepted record is forgotten, and
            # the client still knows its upload was delivered. The coordinator closes the
            # round after answering its upload, so the commit is waited for first; a loaded
            # machine's check-in came before it and said "pending" (test_s66g_repeat_round).
            wait_until(url, f"/v1/rounds/{a.round_id}", "state", "committed")
            answer = c.check_in(task_id)
            assert answer.round_outcome == "committed"
            assert c._core.store.accepted_rounds() == []
        residual, sent = _residual(root, task_id), len(seen.seen)

        # Execute
        with pytest.raises(ClientError) as refused:
            c.train_round(a, trainer, x, y)

    # Assert: refused with nothing sent, trained or changed
    _assert_refused(refused.value, a)
    assert len(seen.seen) == sent
    assert trainer.calls == 1
    assert _residual(root, task_id) == residual


def test_async_client_refuses_the_repeat_too(url: str, tmp_path: Path) -> None:
    task_id = _task(url)
    root, trainer, seen = tmp_path / "dev", _Counting(), _Requests()
    x, y = local_data(1)

    async def run() -> tuple[Assignment, ClientError, int, bytes]:
        async with AsyncClient(url, str(root), mods=(seen.amod,)) as ac:
            await ac.register()
            a = None
            while a is None:
                a = (await ac.check_in(task_id)).assignment
                await asyncio.sleep(0.02)
            await ac.train_round(a, trainer, x, y)
            sent, residual = len(seen.seen), _residual(root, task_id)
            with pytest.raises(ClientError) as refused:
                await ac.train_round(a, trainer, x, y)
            assert len(seen.seen) == sent
            return a, refused.value, trainer.calls, residual

    a, err, calls, residual = asyncio.run(run())
    _assert_refused(err, a)
    assert calls == 1
    assert _residual(root, task_id) == residual


def test_after_a_restart_the_accepted_record_refuses_the_repeat(url: str, tmp_path: Path) -> None:
    # Prepare: round 1 delivered; the app restarts with the assignment it kept
    task_id = _task(url)
    root, trainer = tmp_path / "dev", _Counting()
    x, y = local_data(1)
    with Client(url, str(root), sleep=lambda s: None) as c:
        c.register()
        a = await_assignment(c, task_id)
        c.train_round(a, trainer, x, y)
    assert (root / "accepted-1.json").exists()
    residual = _residual(root, task_id)
    seen = _Requests()

    # Execute
    with Client(url, str(root), mods=(seen,), sleep=lambda s: None) as c2:
        with pytest.raises(ClientError) as refused:
            c2.train_round(a, trainer, x, y)

    # Assert
    _assert_refused(refused.value, a)
    assert seen.seen == [] and trainer.calls == 1
    assert _residual(root, task_id) == residual


def test_the_next_round_still_trains(url: str, tmp_path: Path) -> None:
    # The refusal is of the delivered round only: the device's next round runs as before.
    task_id = _task(url)
    root, trainer = tmp_path / "dev", _Counting()
    x, y = local_data(1)
    with Client(url, str(root), sleep=lambda s: None) as c:
        c.register()
        a1 = await_assignment(c, task_id)
        c.train_round(a1, trainer, x, y)
        a2 = await_assignment(c, task_id)
        assert a2.round_id == a1.round_id + 1
        report = c.train_round(a2, trainer, x, y)
    assert report.receipt.accepted and report.round_id == a2.round_id
    assert trainer.calls == 2
