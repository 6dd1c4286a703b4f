"""`participate` returns None when no round was assigned in time, for whatever reason the
coordinator gave: a round still gathering, or a task that does not exist or has finished
("no active task"). Before, the answer that said which was dropped, so an app could not tell
"try again soon" from "this task is over" (or a mistyped `task_id`). The clients now keep the
last check-in answer as `last_check_in`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from sdk import AsyncClient, Client, ClientError, TrainResult


class _NeverTrains:
    def train(self, params: np.ndarray, x: np.ndarray, y: np.ndarray, **_: object) -> TrainResult:
        raise AssertionError("no round was assigned")


def _wait(request: httpx.Request) -> httpx.Response:
    body = {"action": "wait", "retry_after_s": 30.0, "detail": "no active task"}
    return httpx.Response(200, json=body)


X, Y = np.zeros((2, 3), np.float32), np.zeros(2, np.int64)


def test_the_reason_for_none_is_kept(tmp_path: Path) -> None:
    with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(_wait)) as client:
        assert client.last_check_in is None  # no check-in yet
        report = client.participate(_NeverTrains(), X, Y, task_id=99, max_wait_s=1.0)
        assert report is None
        last = client.last_check_in
    assert last is not None and last.detail == "no active task" and last.retry_after_s == 30.0


def test_the_async_client_keeps_it_too(tmp_path: Path) -> None:
    async def _await(request: httpx.Request) -> httpx.Response:
        return _wait(request)

    async def run() -> str | None:
        async with AsyncClient(
            "http://coord", str(tmp_path), transport=httpx.MockTransport(_await)
        ) as client:
            assert await client.participate(_NeverTrains(), X, Y, max_wait_s=1.0) is None
            return client.last_check_in.detail if client.last_check_in else None

    assert asyncio.run(run()) == "no active task"


def test_a_refused_answer_is_not_kept(tmp_path: Path) -> None:
    # An answer the client refuses (bad_response) is no answer to act on
    def bad(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"action": "wait", "retry_after_s": -1.0})

    with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(bad)) as client:
        with pytest.raises(ClientError, match=r"^200 bad_response: check-in answer: ") as caught:
            client.check_in()
        assert (caught.value.status, caught.value.reason) == (200, "bad_response")
        assert "retry_after_s" in caught.value.detail
        assert client.last_check_in is None
