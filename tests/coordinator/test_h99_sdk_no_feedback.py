"""sdk.Client and AsyncClient honour an assignment's `codec.error_feedback` false (docs/privacy.md,
item 5).

Against a real loopback coordinator: a device that holds a residual for the task from before
(planted in its app directory) gets a round of a task with error feedback off. Its upload is
the compressed delta alone (top-k of the delta, fp32 values: no stochastic rounding, so the
expected frame is exact), and its stored residual for the task is zero afterwards. Before the
SDK patch, the planted residual was added into the upload and the lossy codec left a new one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from compression import ErrorFeedback, UpdateCodec
from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import CodecParams
from sdk import AsyncClient, Client
from sdk.device_store import DeviceStore

from .test_service_support import (
    ADMIN,
    SPEC,
    SoftmaxTrainer,
    await_assignment,
    create_task,
    local_data,
    task_config,
)

CODEC = CodecParams(topk=0.25, bits=32)  # lossy (top-k), deterministic (no rounding)


def _train(a: Any, params: np.ndarray) -> tuple[np.ndarray, int]:
    x, y = local_data(0)
    t = a.training
    result = SoftmaxTrainer().train(
        params,
        x,
        y,
        epochs=t.local_epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        rng=np.random.default_rng(0),
    )
    return result.params, result.num_examples


async def _async_round(url: str, app_dir: str, task_id: int) -> tuple[Any, np.ndarray, np.ndarray]:
    async with AsyncClient(url, app_dir) as device:
        await device.register()
        while (a := (await device.check_in(task_id)).assignment) is None:
            await asyncio.sleep(0.05)
        params, _ = await device.fetch_model(a)
        trained, n = _train(a, params)
        pending = device.encode_update(a, params, trained, n)
        receipt = await device.upload(pending)
    assert receipt.accepted
    return pending, params, trained


def _round(
    tmp_path: Path, error_feedback: bool | None, use_async: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One device's upload in round 1 of a task with `error_feedback`, after a residual was
    planted for the task: (decoded upload, the delta it trained, its stored residual after)."""
    codec = CodecParams(topk=CODEC.topk, bits=CODEC.bits, error_feedback=error_feedback)
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN, poll_s=0.05)
    app_dir = str(tmp_path / "dev")
    planted = ErrorFeedback(SPEC.size)
    planted.residual[:] = np.linspace(-5.0, 5.0, SPEC.size, dtype=np.float32)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        task_id = create_task(http, task_config(clients_per_round=1, codec=codec))
        DeviceStore(app_dir).save_residual(planted, task_id, SPEC)
        if use_async:
            pending, params, trained = asyncio.run(_async_round(url, app_dir, task_id))
        else:
            with Client(url, app_dir) as device:
                device.register()
                a = await_assignment(device, task_id)
                params, _ = device.fetch_model(a)
                trained, n = _train(a, params)
                pending = device.encode_update(a, params, trained, n)
                assert device.upload(pending).accepted
    sent = UpdateCodec(SPEC, CODEC.to_config()).decode(pending.frame).to_dense()
    held = DeviceStore(app_dir).load_residual(SPEC.size, task_id, SPEC)
    assert held is not None
    return sent, (trained - params).astype(np.float32), held.residual


@pytest.mark.parametrize("use_async", [False, True])
def test_error_feedback_off_sends_the_delta_alone_and_keeps_no_residual(
    tmp_path: Path, use_async: bool
) -> None:
    # Execute
    sent, delta, residual = _round(tmp_path, False, use_async)
    # Assert: exactly the top-k of the delta (no planted residual in it), and nothing kept
    expected, _ = UpdateCodec(SPEC, CODEC.to_config()).encode(delta, np.random.default_rng(0))
    want = UpdateCodec(SPEC, CODEC.to_config()).decode(expected).to_dense()
    np.testing.assert_array_equal(sent, want)
    assert not residual.any()


def test_the_default_still_carries_the_residual(tmp_path: Path) -> None:
    # Execute
    sent, delta, residual = _round(tmp_path, None)
    # Assert: the planted residual went into the upload, and a new one is kept
    assert np.abs(sent).max() > 1.0 > np.abs(delta).max()
    assert residual.any()
