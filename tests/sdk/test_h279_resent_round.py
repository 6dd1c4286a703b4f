"""A device whose upload of round R failed (5xx on every attempt, so it stays pending) and whose
next call's first re-send failed too, is assigned round R again (still open, no upload held);
the round's settle-first re-send then gets through. The call must not train and upload round R
a second time (the coordinator refuses it: 409 `duplicate_upload`, raised to the app): it
returns the round's report built from the re-send's receipt (`RoundReport.resent`), with no
loss or example count of its own. Found by helper-277 behind a fault-injecting proxy.
Against a real coordinator on loopback, for `Client` and `AsyncClient`."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from sdk import AsyncClient, Client, TrainResult
from sdk.client import ClientError, RoundReport
from sdk.device_store import DeviceStore
from tests.coordinator.test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    create_task,
    local_data,
    loopback_url,  # noqa: F401  (the fixture `url`)
    task_config,
)

AUTH = {"authorization": f"Bearer {ADMIN}"}
DOWN_FOR = 4  # upload attempts answered 503: call 1's two, then call 2's first re-send's two


class _Counting(SoftmaxTrainer):
    def __init__(self) -> None:
        self.calls = 0

    def train(self, params: npt.NDArray[np.float32], *args: Any, **kw: Any) -> TrainResult:
        self.calls += 1
        return super().train(params, *args, **kw)


class _Outage:
    """The first DOWN_FOR upload attempts are answered 503 before they reach the coordinator
    (as a proxy in front of it would); every other request passes. Keeps each upload's
    idempotency key and the coordinator's status for it."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.statuses: list[int] = []

    def _down(self, request: httpx.Request) -> httpx.Response | None:
        if not (request.method == "POST" and request.url.path.endswith("/updates")):
            return None
        self.keys.append(request.headers["idempotency-key"])
        if len(self.keys) > DOWN_FOR:
            return None
        self.statuses.append(503)
        body = {"reason": "store_unavailable", "detail": "injected"}
        return httpx.Response(503, json=body, request=request)

    def __call__(self, request: httpx.Request, nxt: Callable[..., Any]) -> Any:
        refused = self._down(request)
        if refused is not None:
            return refused
        response = nxt(request)
        if request.url.path.endswith("/updates"):
            self.statuses.append(response.status_code)
        return response

    async def amod(
        self, request: httpx.Request, nxt: Callable[..., Awaitable[httpx.Response]]
    ) -> httpx.Response:
        refused = self._down(request)
        if refused is not None:
            return refused
        response = await nxt(request)
        if request.url.path.endswith("/updates"):
            self.statuses.append(response.status_code)
        return response


def _two_calls(
    kind: str, url: str, root: Path, task_id: int, outage: _Outage, trainer: _Counting
) -> tuple[BaseException, RoundReport | None, dict[int, dict[str, dict[str, int]]]]:
    """Call 1 (its upload fails: the error it raised), then call 2 (its result)."""
    x, y = local_data(1)
    kw: dict[str, Any] = {"retries": 1, "backoff_s": 0.01}
    if kind == "sync":
        with Client(url, str(root), mods=(outage,), sleep=lambda s: None, **kw) as c:
            c.register()
            with pytest.raises(ClientError) as first:
                c.participate(trainer, x, y, task_id=task_id, max_wait_s=20.0)
            report = c.participate(trainer, x, y, task_id=task_id, max_wait_s=20.0)
            return first.value, report, c.bandwidth

    async def run() -> tuple[BaseException, RoundReport | None, dict[Any, Any]]:
        async with AsyncClient(url, str(root), mods=(outage.amod,), **kw) as ac:
            await ac.register()
            with pytest.raises(ClientError) as first:
                await ac.participate(trainer, x, y, task_id=task_id, max_wait_s=20.0)
            report = await ac.participate(trainer, x, y, task_id=task_id, max_wait_s=20.0)
            return first.value, report, ac.bandwidth

    return asyncio.run(run())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_round_whose_pending_upload_lands_at_its_reassignment_is_not_trained_again(
    url: str, tmp_path: Path, kind: str
) -> None:
    # Prepare: one device per round, a long deadline (round 1 stays open across both calls)
    with httpx.Client(base_url=url) as http:
        task_id = create_task(
            http, task_config(clients_per_round=1, rounds=3, deadline_s=60.0,
                              selection_timeout_s=0.3),
        )  # fmt: skip
    outage, trainer = _Outage(), _Counting()

    # Execute
    first, report, bandwidth = _two_calls(kind, url, tmp_path / "dev", task_id, outage, trainer)

    # Assert: call 1 failed on the 503s, its upload left pending
    assert isinstance(first, ClientError) and first.status == 503
    # call 2: its first re-send failed (2 attempts), the re-send before round 1's second
    # assignment landed, and nothing more was trained or sent (before: a second training and
    # a new upload, refused 409 duplicate_upload and raised)
    assert outage.statuses == [503] * DOWN_FOR + [200], outage.statuses
    assert len(set(outage.keys)) == 1  # every attempt was the one pending upload
    assert trainer.calls == 1
    assert report is not None and report.resent
    assert (report.round_id, report.task_id) == (1, task_id)
    assert report.receipt.accepted and report.receipt.round_id == 1
    assert report.num_examples == 0 and math.isnan(report.loss)
    assert report.download_encoding == ""
    assert report.model_version == 0  # the round's base: the task's initial model
    # the bytes are the re-send's (the frame and its headers; its receipt), less than the
    # round's counts, which hold call 1's model download too
    row = bandwidth[1]
    assert report.receipt.payload_bytes < report.bytes_up < row["up"]["wire_bytes"]
    assert 0 < report.bytes_down < row["down"]["wire_bytes"]
    store = DeviceStore(tmp_path / "dev")
    try:
        assert store.load_pending() is None
        assert store.accepted_rounds() == [1]  # kept until a check-in says round 1 committed
    finally:
        store.close()
    with httpx.Client(base_url=url, headers=AUTH) as http:
        assert http.get("/v1/rounds/1").json()["reports"] == 1
