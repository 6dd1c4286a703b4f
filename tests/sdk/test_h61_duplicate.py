"""An upload refused with `duplicate_upload` (the device already reported in that round under
another idempotency key) was never taken: the coordinator refuses it before storing it (a
re-send of a stored upload, same key, gets its receipt again, never this refusal). Its content
goes back into its task's residual, as for the other refusals for good. Before, it was dropped:
what it carried (its delta and the residual it took) was lost from error feedback."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import httpx
import numpy as np
import pytest

from sdk import AsyncClient, Client
from sdk.client import ClientError
from sdk.device_store import DeviceStore

from .test_client import SPEC
from .test_h51_task_residuals import DELTA, _decoded, _task
from .test_h61_inflight import held_residual


def _duplicate(request: httpx.Request) -> httpx.Response:
    return httpx.Response(409, json={"reason": "duplicate_upload", "detail": "already reported"})


def _encoded(root: Path) -> tuple[np.ndarray, object]:
    """Task 1's round 5 encoded and pending; (the residual it left, the pending upload)."""
    client = Client("http://coord", str(root), transport=httpx.MockTransport(_duplicate))
    params = np.zeros(SPEC.size, np.float32)
    pending = client._core.encode(_task(1, 5), SPEC, params, DELTA[1], 8)
    client.close()
    return held_residual(root, 1), pending


def test_an_upload_refused_as_a_duplicate_goes_back_into_the_residual(tmp_path: Path) -> None:
    # Prepare
    left, pending = _encoded(tmp_path)
    client = Client(
        "http://coord", str(tmp_path), transport=httpx.MockTransport(_duplicate), retries=0
    )

    # Execute
    with pytest.raises(ClientError) as err:
        client.upload(pending, SPEC)  # type: ignore[arg-type]

    # Assert: settled at once, its content back: the residual is the whole delta
    assert err.value.reason == "duplicate_upload"
    assert DeviceStore(tmp_path).load_pending() is None
    frame = pending.frame  # type: ignore[attr-defined]
    np.testing.assert_allclose(held_residual(tmp_path, 1), left + _decoded(frame), atol=1e-6)
    np.testing.assert_allclose(held_residual(tmp_path, 1), DELTA[1], atol=1e-5)
    client.close()


def test_a_pending_upload_refused_as_a_duplicate_before_a_new_round_goes_back(
    tmp_path: Path,
) -> None:
    # Prepare: the upload left pending (offline); the next round's settle re-sends it
    _encoded(tmp_path)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/updates"):
            return _duplicate(request)
        return httpx.Response(500, json={"reason": "stop", "detail": "the test ends here"})

    async def run() -> None:
        async with AsyncClient(
            "http://coord", str(tmp_path), transport=httpx.MockTransport(handler), retries=0
        ) as client:
            a = dataclasses.replace(_task(1, 6))
            with pytest.raises(ClientError, match="stop"):
                await client.train_round(a, object(), np.zeros((4, 4), np.float32), np.zeros(4, np.int64))  # type: ignore[arg-type]  # fmt: skip

    # Execute
    asyncio.run(run())

    # Assert: settled, its content back into the residual
    assert DeviceStore(tmp_path).load_pending() is None
    np.testing.assert_allclose(held_residual(tmp_path, 1), DELTA[1], atol=1e-5)


def test_a_round_assigned_again_after_its_upload_was_taken_counts_nothing_twice(
    tmp_path: Path,
) -> None:
    # Prepare: the record of the device's upload to task 1's round 5, which the coordinator
    # holds (an earlier run's); the device is given round 5 again and encodes a new upload
    old = np.linspace(-1, 1, SPEC.size).astype(np.float32)
    client = Client(
        "http://coord", str(tmp_path), transport=httpx.MockTransport(_duplicate), retries=0
    )
    params = np.zeros(SPEC.size, np.float32)
    first = client._core.encode(_task(1, 5), SPEC, params, old, 8)
    client._core.accept_upload(first, SPEC)
    left = held_residual(tmp_path, 1)
    again = client._core.encode(_task(1, 5), SPEC, params, DELTA[1], 8)

    # Execute: the coordinator, holding the first upload, refuses the second
    with pytest.raises(ClientError, match="duplicate_upload"):
        client.upload(again, SPEC)

    # Assert: the record of the first stays (the coordinator holds it: it is not returned), and
    # the second's content is back in the residual (it was never taken)
    record = DeviceStore(tmp_path).load_accepted(5)
    assert record is not None and record.frame == first.frame
    np.testing.assert_allclose(held_residual(tmp_path, 1), left + DELTA[1], atol=1e-5)
    client.close()
