"""A running task's snapshots are encoded off the event loop (s49, helper-408's review).

Before: a start (or a task rebuilt from the store) left the fp32 snapshot to the first
download, and every version's first fp16 download encoded it, both on the event loop every
other request waits on (66 ms for 2M parameters). Now the start encodes the fp32 snapshot, and
the model route has `TaskRuntime.warm` encode a missing one in a worker thread; an encoding
of a version published again meanwhile is dropped, never served as the new one's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

import coordinator.service.rounds as rounds_mod
from compression import decode_snapshot
from coordinator.service import ServerThread, ServiceConfig
from protocol.names import SnapshotDType

from .test_service_support import ADMIN, SPEC, create_task, device_client, send_signed


def _watch_encodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Record each snapshot encoding's dtype and whether it ran on an event loop."""
    seen: list[tuple[str, bool]] = []
    real = rounds_mod.encode_snapshot

    def watched(params: np.ndarray, spec: object, dtype: str) -> bytes:
        try:
            asyncio.get_running_loop()
            seen.append((str(dtype), True))
        except RuntimeError:
            seen.append((str(dtype), False))
        return real(params, spec, dtype)  # type: ignore[arg-type]

    monkeypatch.setattr(rounds_mod, "encode_snapshot", watched)
    return seen


def test_after_a_start_no_snapshot_is_encoded_on_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a task with its model, then the coordinator started again on its database
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        task_id = create_task(http)
    seen = _watch_encodes(monkeypatch)
    server = ServerThread(cfg)
    with server, httpx.Client(base_url=server.url) as http:
        rt = server.app.state.coordinator.runtimes[task_id]
        kept_at_start = rt.keeps(SnapshotDType.FP32)
        at_start = list(seen)  # before uvicorn serves: no request waits on it
        seen.clear()
        device = device_client(server.url, str(tmp_path / "app"))
        device.register()
        # Execute: fp32 and fp16 snapshots, each twice
        answers = [
            send_signed(http, device, "GET", f"/v1/tasks/{task_id}/model", 0, params={"dtype": d})
            for d in ("fp32", "fp16", "fp32", "fp16")
        ]
        device.close()
    # Assert: served; the fp32 snapshot was encoded at the start, the fp16 one once, in a
    # worker thread (before: both at their first download, on the event loop)
    assert kept_at_start and at_start == [("fp32", True)], at_start
    assert [a.status_code for a in answers] == [200] * 4
    assert answers[0].content == answers[2].content
    assert answers[1].content == answers[3].content
    assert seen == [("fp16", False)], seen
    params = decode_snapshot(answers[1].content, SPEC)
    assert params.shape == (SPEC.size,)


def test_an_encoding_of_a_version_published_again_meanwhile_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a running task's runtime
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    server = ServerThread(cfg)
    with server, httpx.Client(base_url=server.url) as http:
        task_id = create_task(http)
        rt = server.app.state.coordinator.runtimes[task_id]
    newer = rt.published + np.float32(1.0)
    real = rounds_mod.encode_snapshot

    def publish_while_encoding(params: np.ndarray, spec: object, dtype: str) -> bytes:
        blob = real(params, spec, dtype)  # type: ignore[arg-type]
        rt.set_published(newer, rt.version + 1, "next")  # the loop publishes meanwhile
        return blob

    monkeypatch.setattr(rounds_mod, "encode_snapshot", publish_while_encoding)
    # Execute: warm fp16 (as the route does in a worker thread) across the publish
    rt.warm(SnapshotDType.FP16)
    monkeypatch.setattr(rounds_mod, "encode_snapshot", real)
    # Assert: the old version's encoding was not kept for the new one; the new one's snapshot
    # holds the new model
    assert not rt.keeps(SnapshotDType.FP16)
    served = decode_snapshot(rt.snapshot(SnapshotDType.FP16), SPEC)
    np.testing.assert_allclose(served, newer, rtol=1e-3, atol=1e-3)
