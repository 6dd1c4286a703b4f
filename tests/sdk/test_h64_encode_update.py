"""`Client.encode_update`, as `AsyncClient.encode_update`: the same frame, pending upload and
residual for the same inputs (before, only `AsyncClient` had it)."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from compression import ErrorFeedback
from sdk import AsyncClient, Client
from sdk.device_store import DeviceStore

from .test_client import SPEC, _assignment

OLD = np.linspace(-0.5, 0.5, SPEC.size).astype(np.float32)


def test_client_and_async_client_encode_updates_alike(tmp_path: Path) -> None:
    # Prepare: two copies of one app directory (the same device key, residual OLD for task 1)
    a_root, b_root = tmp_path / "a", tmp_path / "b"
    ef = ErrorFeedback(SPEC.size)
    ef.residual = OLD.copy()
    DeviceStore(a_root).save_residual(ef, 1)
    DeviceStore(a_root).private_key()
    shutil.copytree(a_root, b_root)
    rng = np.random.default_rng(64)
    params = rng.normal(0, 0.1, SPEC.size).astype(np.float32)
    trained = (params + rng.normal(0, 0.05, SPEC.size)).astype(np.float32)
    a = replace(_assignment(), deadline_unix=4e9)
    dead = httpx.MockTransport(lambda r: httpx.Response(500))

    # Execute: one update through each client's encode_update, twice (the residual carries)
    with Client("http://coord", str(a_root), transport=dead) as sync:
        s1 = sync.encode_update(a, params, trained, 8)
        s2 = sync.encode_update(replace(a, round_id=6), params, trained, 8)

    async def go() -> tuple[Any, Any]:
        async with AsyncClient("http://coord", str(b_root), transport=dead) as c:
            return (
                c.encode_update(a, params, trained, 8),
                c.encode_update(replace(a, round_id=6), params, trained, 8),
            )

    a1, a2 = asyncio.run(go())

    # Assert: the same frames, the same pending upload's round and task, the same residual
    assert (s1.frame, s1.round_id, s1.task_id) == (a1.frame, a1.round_id, a1.task_id)
    assert (s2.frame, s2.round_id, s2.task_id) == (a2.frame, a2.round_id, a2.task_id)
    pending_a, pending_b = DeviceStore(a_root).load_pending(), DeviceStore(b_root).load_pending()
    assert pending_a is not None and pending_b is not None
    assert pending_a.frame == pending_b.frame == s2.frame
    ra, rb = (
        DeviceStore(a_root).load_residual(SPEC.size, 1),
        DeviceStore(b_root).load_residual(SPEC.size, 1),
    )
    assert ra is not None and rb is not None
    np.testing.assert_array_equal(ra.residual, rb.residual)
    assert not np.array_equal(ra.residual, OLD)  # the encodes took from it
