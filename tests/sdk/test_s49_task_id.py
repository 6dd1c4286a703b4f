"""A task id that is not an int in [1, 2^63) is refused before any request (s49 review, item 6).

`participate(task_id="1")` (a task id read from a config file or the environment as text) was
sent as task 1, selected, then refused its own assignment ("an assignment for task 1; this
device asked for 1"), the round's slot lost; `task_id=True` was read as task 1 and 1.0 as
1. Every public method taking a task id (`participate`, `check_in`, `fetch_current`, in both
clients) now checks it first: `TypeError` for a non-int, `ValueError` outside [1, 2^63),
the value's repr() in the message. numpy integers are ints.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from compression import ModelSpec
from sdk import AsyncClient, Client
from tests.coordinator.test_service_support import SHAPES, SoftmaxTrainer, local_data

X, Y = local_data(0)
SPEC = ModelSpec.from_shapes(SHAPES)

BAD = [
    ("1", TypeError, "not str '1': convert a task id read as text with int"),
    (True, TypeError, "not bool True"),
    (np.bool_(True), TypeError, "not bool"),
    (1.0, TypeError, "not float 1.0"),
    (0, ValueError, "from 1 to 2\\^63 - 1, got 0"),
    (-1, ValueError, "got -1"),
    (2**63, ValueError, "got 9223372036854775808"),
    (np.uint64(2**63), ValueError, "got np.uint64\\(9223372036854775808\\)"),
]
CALLS: dict[str, Callable[[Any, Any], Any]] = {
    "participate": lambda c, t: c.participate(SoftmaxTrainer(), X, Y, task_id=t, max_wait_s=0.2),
    "check_in": lambda c, t: c.check_in(t),
    "fetch_current": lambda c, t: c.fetch_current(t, SPEC),
}


class _Requests:
    """A mock coordinator that answers every request 503 and keeps them."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(503, json={"reason": "busy", "detail": "x"})


def _call(
    tmp_path: Path, asynchronous: bool, method: str, task_id: Any
) -> tuple[Any, list[httpx.Request]]:
    """`method` with `task_id` on a fresh client; (its error, the requests it made)."""
    seen = _Requests()
    transport = httpx.MockTransport(seen)
    call = CALLS[method]
    if not asynchronous:
        with Client("http://c.test", tmp_path / "app", transport=transport, retries=0) as c:
            try:
                call(c, task_id)
            except Exception as exc:  # noqa: BLE001 (the test looks at it)
                return exc, seen.requests
        return None, seen.requests

    async def run() -> Any:
        async with AsyncClient(
            "http://c.test", tmp_path / "app", transport=transport, retries=0
        ) as c:
            try:
                await call(c, task_id)
            except Exception as exc:  # noqa: BLE001
                return exc
        return None

    return asyncio.run(run()), seen.requests


@pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])
@pytest.mark.parametrize("method", sorted(CALLS))
@pytest.mark.parametrize(("task_id", "error", "words"), BAD, ids=[repr(b[0]) for b in BAD])
def test_a_task_id_that_is_no_int_in_range_is_refused_before_any_request(
    tmp_path: Path,
    asynchronous: bool,
    method: str,
    task_id: Any,
    error: type[Exception],
    words: str,
) -> None:
    # Execute
    got, requests = _call(tmp_path, asynchronous, method, task_id)

    # Assert
    assert type(got) is error, got
    assert str(got).startswith("task_id must be")
    assert re.search(words, str(got)), str(got)
    assert requests == []


@pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])
@pytest.mark.parametrize("method", sorted(CALLS))
@pytest.mark.parametrize("task_id", [1, np.int64(7), 2**63 - 1], ids=["1", "np.int64", "max"])
def test_an_int_task_id_is_sent(
    tmp_path: Path, asynchronous: bool, method: str, task_id: Any
) -> None:
    # Execute: the mock coordinator answers 503
    got, requests = _call(tmp_path, asynchronous, method, task_id)

    # Assert: the request was made, for that task (an int in the JSON or the URL)
    assert requests, got
    if method == "fetch_current":
        assert requests[0].url.path == f"/v1/tasks/{int(task_id)}/model"
    else:
        assert json.loads(requests[0].content)["task_id"] == int(task_id)


def test_no_task_named_is_still_any_task(tmp_path: Path) -> None:
    # Execute
    got, requests = _call(tmp_path, False, "check_in", None)

    # Assert
    assert len(requests) == 1 and "task_id" not in json.loads(requests[0].content)
