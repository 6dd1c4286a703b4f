"""A published version's fp32 snapshot is encoded by the round's close in its worker thread,
and version 0's as the initial model is set, not by the first model download on the event
loop (stop 48, helper-408's N1: the first download after each publish encoded it there, 177 ms
for 6 M parameters in that review, while every other request waited). A loopback coordinator
and real SDK devices; `encode_snapshot` is wrapped to record whether each call ran on the
event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig, rounds
from protocol.names import SnapshotDType

from .test_h203_delta_bounded import _get  # a model GET signed by the device, round 0
from .test_service_support import (
    ADMIN,
    SoftmaxTrainer,
    await_assignment,
    create_task,
    device_client,
    local_data,
    task_config,
    wait_until,
)


def test_each_versions_fp32_snapshot_is_encoded_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: every encode_snapshot call in rounds.py, with its dtype and whether on the loop
    calls: list[tuple[str, bool]] = []
    real = rounds.encode_snapshot

    def recording(params: Any, spec: Any, dtype: str = SnapshotDType.FP32) -> bytes:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        calls.append((str(dtype), on_loop))
        return real(params, spec, dtype)

    monkeypatch.setattr(rounds, "encode_snapshot", recording)
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.02, tick_s=0.02
    )
    with ServerThread(cfg) as url, httpx.Client(base_url=url, timeout=30) as http:
        task = create_task(http, task_config(rounds=2, clients_per_round=1))
        device = device_client(url, str(tmp_path / "d"))
        device.register()

        # Execute: two rounds, then a snapshot download and a chain weighed against it
        for version in (1, 2):
            device.train_round(await_assignment(device, task), SoftmaxTrainer(), *local_data(0))
            wait_until(http, f"/v1/admin/tasks/{task}", "version", version)
        published = [
            _get(http, device, task, {"format": "snapshot"}),
            _get(http, device, task, {"format": "auto", "have": "1"}),
        ]

    # Assert: both answered; every snapshot encoded (version 0's when the initial model is
    # set, each close's, the finished task's read back) was encoded off the event loop
    assert [r.status_code for r in published] == [200, 200]
    assert published[0].headers["x-plume-model-version"] == "2"
    assert calls, "no snapshot was encoded at all"
    assert not [c for c in calls if c[1]], calls
