"""A finished task's model download reads its model from the store only to send a snapshot
(s45, helper-381's review of `release_finished`).

`plan_model` weighed every delta chain against the fp32 snapshot's length, `len(snapshot())`:
for a finished task, whose model is no longer in memory, that read the model back from the
store, checked its digest and encoded it, on the event loop, for every chain asked for once
the snapshot had left the coordinator's few kept ones, and even for a device that already held
the current version (an empty chain: 66 ms for 2M parameters, against 2 ms before). Now a chain
from the current version is sent without looking at the snapshot, and the snapshot's length is
kept once known.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from coordinator.service.rounds import Coordinator

from .test_s45_finished_task_memory import _world


def _count_loads(coord: Coordinator, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    loads: list[int] = []
    real = coord.store.task_params

    def counted(task_id: int) -> bytes:
        loads.append(task_id)
        return real(task_id)

    monkeypatch.setattr(coord.store, "task_params", counted)
    return loads


def test_a_device_holding_the_current_version_reads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: finished tasks, their models let go of
    coord, ids = _world(tmp_path)
    loads = _count_loads(coord, monkeypatch)
    # Execute: a download from the version each holds, auto and delta
    for t in ids:
        v = coord.runtimes[t].version
        for fmt in ("auto", "delta"):
            answer = coord.plan_model(t, v, fmt, "fp32")
            assert answer.body is None  # the (empty) chain
    # Assert: no model read back (before: one per request)
    assert loads == []


def test_a_chain_weighs_against_the_snapshot_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    coord, ids = _world(tmp_path)
    loads = _count_loads(coord, monkeypatch)
    plain = ids[1]  # done after 3 rounds
    v = coord.runtimes[plain].version
    # Execute: chains from an older version, asked many times while other finished tasks'
    # snapshots go through the coordinator's few kept ones
    for _ in range(5):
        coord.plan_model(plain, v - 1, "auto", "fp32")
        for t in ids:
            for dtype in ("fp32", "fp16"):
                coord.plan_model(t, None, "auto", dtype)
    loads_for_plain = loads.count(plain)
    # Assert: the chain's weighing read the model at most once; the snapshots themselves are
    # read back as the kept ones turn over (1 per fp32/fp16 request at most)
    assert loads_for_plain <= 1 + 2 * 5, loads
    before = loads_for_plain
    for _ in range(5):
        coord.plan_model(plain, v - 1, "auto", "fp32")
    assert loads.count(plain) == before  # the length is kept: no read for a chain


def test_a_finished_tasks_model_is_read_back_off_the_event_loop(tmp_path: Path) -> None:
    # Prepare: a served task stopped at version 0 (finished: its model let go of), a device
    from coordinator.service import ServerThread, ServiceConfig

    from .test_service_support import (
        ADMIN,
        create_task,
        device_client,
        send_signed,
    )

    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    server = ServerThread(cfg)
    on_loop: list[bool] = []
    with server, httpx.Client(base_url=server.url) as http:
        task_id = create_task(http)
        auth = {"authorization": f"Bearer {ADMIN}"}
        assert http.post(f"/v1/admin/tasks/{task_id}/stop", headers=auth).status_code == 200
        coord = server.app.state.coordinator
        assert coord.runtimes[task_id].released
        real = coord.store.task_params

        def watched(t: int) -> bytes:
            try:
                asyncio.get_running_loop()
                on_loop.append(True)
            except RuntimeError:
                on_loop.append(False)
            return real(t)

        coord.store.task_params = watched
        device = device_client(server.url, str(tmp_path / "app"))
        device.register()
        # Execute: an admin export, then a device's fp32 and fp16 snapshots (each read back:
        # the kept ones hold 4)
        export = http.get(f"/v1/admin/tasks/{task_id}/model", headers=auth)
        fp32 = send_signed(http, device, "GET", f"/v1/tasks/{task_id}/model", 0)
        fp16 = send_signed(
            http, device, "GET", f"/v1/tasks/{task_id}/model", 0, params={"dtype": "fp16"}
        )
        device.close()
    # Assert: answered, and every read of the model was in a worker thread (before: on the
    # event loop, which every other request waits on)
    assert (export.status_code, fp32.status_code, fp16.status_code) == (200, 200, 200)
    assert export.content == fp32.content
    assert on_loop and not any(on_loop), on_loop
