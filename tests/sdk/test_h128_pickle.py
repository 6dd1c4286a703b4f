"""The SDK's errors cross a process boundary (a process pool's worker raising them, pickle,
copy) as themselves: `CoordinatorUnreachable` of each httpx class it is made for keeps that
class, and every `ClientError` keeps its status, reason, detail and own attributes."""

from __future__ import annotations

import copy
import pickle

import httpx
import pytest

from sdk.client import (
    ClientError,
    CoordinatorUnreachable,
    ParticipationCancelled,
    TaskEndedError,
    _unreachable,
)

REQUEST = httpx.Request("POST", "http://127.0.0.1:1/v1/checkin")
KINDS = [
    httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout, httpx.WriteTimeout,
    httpx.PoolTimeout, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError,
    httpx.ProxyError, httpx.TransportError,
]  # fmt: skip


@pytest.mark.parametrize("how", ["pickle", "copy"])
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_coordinator_unreachable_survives_pickle_and_copy(
    kind: type[httpx.TransportError], how: str
) -> None:
    exc = _unreachable("http://127.0.0.1:1", REQUEST, kind("boom", request=REQUEST), 5)
    back = pickle.loads(pickle.dumps(exc)) if how == "pickle" else copy.copy(exc)
    assert type(back) is type(exc) and isinstance(back, kind)
    assert isinstance(back, CoordinatorUnreachable) and isinstance(back, ClientError)
    assert (str(back), back.args) == (str(exc), exc.args)
    assert (back.status, back.reason, back.detail) == (exc.status, exc.reason, exc.detail)
    assert back.request.url == REQUEST.url and back.request.method == "POST"


@pytest.mark.parametrize(
    "exc",
    [
        ClientError(409, "task_refused", "not now"),
        TaskEndedError(200, "task_done", "the task ran its rounds", 3),
        ParticipationCancelled("upload", "it stays pending", 7),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_refusal_survives_pickle(exc: ClientError) -> None:
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and str(back) == str(exc)
    assert vars(back) == vars(exc)
