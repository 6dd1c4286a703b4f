"""`participate(max_wait_s=...)` bounds the re-send of an upload an earlier run left pending,
which comes before the first check-in: against a loopback coordinator that stalls it ends with
the wait, the upload still pending (nothing lost), for `Client` and `AsyncClient`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from compression import ErrorFeedback
from sdk import AsyncClient, Client
from sdk.client import RoundReport
from sdk.device_store import DeviceStore, PendingUpload

from .test_client import RECEIPT
from .test_client_deadlines import BUDGET_S, SLACK_S, Loopback
from .test_client_secure import ShiftTrainer
from .test_h48_client_records import _dense
from .test_review_device_state import SPEC


def _residual(root: Path) -> npt.NDArray[np.float32]:
    ef = DeviceStore(root).load_residual(SPEC.size)
    assert ef is not None
    return ef.residual.copy()


# -- max_wait_s bounds the re-send of a pending upload ---------------------------------------


def _with_pending(root: Path) -> PendingUpload:
    store = DeviceStore(root)
    pending = PendingUpload(5, "p" * 32, _dense(5), SPEC.dense_bytes, SPEC)
    ef = ErrorFeedback(SPEC.size)
    ef.residual[:] = 0.5
    store.save_pending(pending, ef)
    return pending


def _participate(kind: str, url: str, root: Path) -> RoundReport | None:
    x, y = np.zeros((8, 4), np.float32), np.zeros(8, np.int64)
    if kind == "sync":
        with Client(url, str(root), timeout=30.0) as c:
            return c.participate(ShiftTrainer(0.01), x, y, task_id=1, max_wait_s=BUDGET_S)

    async def run() -> RoundReport | None:
        async with AsyncClient(url, str(root), timeout=30.0) as ac:
            return await ac.participate(ShiftTrainer(0.01), x, y, task_id=1, max_wait_s=BUDGET_S)

    return asyncio.run(run())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_stalled_resend_of_a_pending_upload_ends_with_max_wait(tmp_path: Path, kind: str) -> None:
    # Prepare: an upload an earlier run left pending; a coordinator that reads every request
    # and never answers (read timeout 30 s, 4 retries: 150 s unbounded)
    pending = _with_pending(tmp_path)
    with Loopback(lambda n: "stall") as server:
        start = time.monotonic()
        # Execute
        report = _participate(kind, server.url, tmp_path)
        elapsed = time.monotonic() - start
    # Assert: the re-send was abandoned within the wait, no check-in began, and the upload is
    # still pending, whole, with its residual (its key makes the next re-send harmless)
    assert report is None and server.requests == 1
    assert elapsed < BUDGET_S + SLACK_S, f"{elapsed:.2f} s for a {BUDGET_S} s max_wait_s"
    kept = DeviceStore(tmp_path).load_pending()
    assert kept is not None and (kept.round_id, kept.key, kept.frame) == (
        pending.round_id,
        pending.key,
        pending.frame,
    )
    np.testing.assert_array_equal(_residual(tmp_path), np.full(SPEC.size, 0.5, np.float32))


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_prompt_resend_is_accepted_and_the_check_ins_follow(tmp_path: Path, kind: str) -> None:
    # Prepare: the re-send gets its receipt; check-ins are told to wait 0.3 s
    _with_pending(tmp_path)
    receipt = {**RECEIPT, "duplicate": True}
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path != "/v1/checkin":
            return httpx.Response(200, json=receipt)
        return httpx.Response(200, json={"action": "wait", "retry_after_s": 0.3})

    x, y = np.zeros((8, 4), np.float32), np.zeros(8, np.int64)
    start = time.monotonic()

    # Execute
    if kind == "sync":
        with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(handler)) as c:
            report = c.participate(ShiftTrainer(0.01), x, y, task_id=1, max_wait_s=BUDGET_S)
    else:

        async def run() -> RoundReport | None:
            t = httpx.MockTransport(handler)
            async with AsyncClient("http://coord", str(tmp_path), transport=t) as ac:
                return await ac.participate(
                    ShiftTrainer(0.01), x, y, task_id=1, max_wait_s=BUDGET_S
                )

        report = asyncio.run(run())
    elapsed = time.monotonic() - start

    # Assert: accepted (now a record awaiting round 5's outcome), then check-ins until the
    # budget was spent
    assert report is None and elapsed < BUDGET_S + SLACK_S
    assert paths[0] == "/v1/rounds/5/updates" and paths[1:] == ["/v1/checkin"] * (len(paths) - 1)
    assert len(paths) >= 3
    assert DeviceStore(tmp_path).load_pending() is None
    assert DeviceStore(tmp_path).accepted_rounds() == [5]
