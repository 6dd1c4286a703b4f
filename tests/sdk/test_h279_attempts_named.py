"""A 5xx or 429 that outlasts the retries names the attempts made, as `CoordinatorUnreachable`
does (`... in 5 attempts: ...`). Before, its `ClientError` was the same as a single 5xx's, so an
app could not tell "the coordinator was busy for the whole retry budget" from one refusal.
The type, `status`, `reason` and the coordinator's `detail` stay; the count is appended to the
detail (and so to the message). Found by helper-277 behind a fault-injecting proxy."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from sdk import AsyncClient, Client
from sdk.client import MAX_ERROR_DETAIL, ClientError
from sdk.device_store import DeviceStore

from .test_client import SPEC, _assignment

WAIT = b'{"action": "wait", "retry_after_s": 1.0}'
Handler = Callable[[httpx.Request], httpx.Response]


def _busy(status: int, detail: str = "busy") -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"reason": "store_unavailable", "detail": detail})

    return handler


def _check_in_error(kind: str, root: Path, handler: Handler, retries: int) -> ClientError:
    if kind == "sync":
        with Client(
            "http://coord", str(root), transport=httpx.MockTransport(handler), retries=retries,
            sleep=lambda s: None,
        ) as c, pytest.raises(ClientError) as err:  # fmt: skip
            c.check_in(1)
        return err.value

    async def run() -> ClientError:
        async with AsyncClient(
            "http://coord", str(root), transport=httpx.MockTransport(handler), retries=retries,
            backoff_s=0.0,
        ) as ac:  # fmt: skip
            with pytest.raises(ClientError) as err:
                await ac.check_in(1)
            return err.value

    return asyncio.run(run())


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_a_busy_answer_on_every_attempt_names_the_attempts(
    tmp_path: Path, kind: str, status: int
) -> None:
    # Execute: every one of the 3 attempts is answered `status`
    err = _check_in_error(kind, tmp_path, _busy(status), retries=2)
    # Assert: the same error as before, the attempts named after the coordinator's detail
    assert type(err) is ClientError
    assert (err.status, err.reason) == (status, "store_unavailable")
    assert err.detail == "busy (after 3 attempts)"
    assert str(err) == f"{status} store_unavailable: busy (after 3 attempts)"


def test_with_no_retries_it_is_one_attempt(tmp_path: Path) -> None:
    err = _check_in_error("sync", tmp_path, _busy(503), retries=0)
    assert err.detail == "busy (after 1 attempt)"


def test_a_long_detail_is_cut_before_the_count(tmp_path: Path) -> None:
    err = _check_in_error("sync", tmp_path, _busy(503, "x" * 5000), retries=1)
    assert err.detail.endswith("more characters cut] (after 2 attempts)")
    assert len(err.detail) <= MAX_ERROR_DETAIL


def test_a_refusal_after_a_busy_answer_is_the_refusal_alone(tmp_path: Path) -> None:
    # A 4xx ends the retries: it is not a busy answer outlasting them
    answers = [
        httpx.Response(503, json={"reason": "store_unavailable", "detail": "busy"}),
        httpx.Response(409, json={"reason": "task_refused", "detail": "not now"}),
    ]
    err = _check_in_error("sync", tmp_path, lambda r: answers.pop(0), retries=3)
    assert (err.status, err.detail) == (409, "not now")


def test_a_busy_answer_then_a_good_one_is_no_error(tmp_path: Path) -> None:
    answers = [
        httpx.Response(503, json={"reason": "store_unavailable", "detail": "busy"}),
        httpx.Response(200, content=WAIT),
    ]
    with Client(
        "http://coord", str(tmp_path), transport=httpx.MockTransport(lambda r: answers.pop(0)),
        sleep=lambda s: None,
    ) as c:  # fmt: skip
        assert c.check_in(1).action == "wait"


def test_an_upload_busy_on_every_attempt_names_them_and_stays_pending(tmp_path: Path) -> None:
    with Client(
        "http://coord", str(tmp_path), transport=httpx.MockTransport(_busy(503)), retries=3,
        sleep=lambda s: None,
    ) as c:  # fmt: skip
        params = np.zeros(SPEC.size, np.float32)
        pending = c._core.encode(_assignment(), SPEC, params, params + 0.1, 8)
        with pytest.raises(
            ClientError, match=r"^503 store_unavailable: busy \(after 4 attempts\)$"
        ):
            c.upload(pending, SPEC)
    store = DeviceStore(tmp_path)
    try:
        kept = store.load_pending()
        assert kept is not None and kept.key == pending.key
    finally:
        store.close()
