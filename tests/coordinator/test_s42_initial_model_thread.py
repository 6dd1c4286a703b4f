"""The initial model upload decodes, validates and builds in a worker thread
(`Coordinator.prepare_initial_model`) and stores on the event loop (`commit_initial_model`),
which reads the task's state again: of two uploads prepared at once, the second is 409 and the
first one's model is the task's version 0."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from compression import decode_snapshot, encode_snapshot
from coordinator.service import ServerThread, ServiceConfig, Store
from coordinator.service.errors import ApiError
from coordinator.service.rounds import Coordinator
from protocol.messages import to_json
from protocol.names import TaskState

from .test_h52_pace_across_tasks import _Clock
from .test_service_support import ADMIN, SPEC, initial_params, task_config


def _coordinator(tmp_path: Path) -> Coordinator:
    config = ServiceConfig(db_path=str(tmp_path / "p.db"))
    return Coordinator(Store(tmp_path / "p.db"), config, clock=_Clock())


def test_a_second_prepared_model_is_refused_at_commit_and_the_first_is_kept(
    tmp_path: Path,
) -> None:
    # Prepare: one task, two different initial models prepared before either is committed
    coord = _coordinator(tmp_path)
    task_id = coord.create_task(task_config())
    first, second = initial_params(), initial_params() + np.float32(1.0)
    rt_a = coord.prepare_initial_model(task_id, encode_snapshot(first, SPEC, "fp32"))
    rt_b = coord.prepare_initial_model(task_id, encode_snapshot(second, SPEC, "fp32"))
    # Prepared is not stored: the task still awaits its model
    row = coord.store.task(task_id)
    assert row is not None and row.state == TaskState.AWAITING_MODEL
    assert task_id not in coord.runtimes

    # Act
    status = coord.commit_initial_model(rt_a)
    with pytest.raises(ApiError) as refused:
        coord.commit_initial_model(rt_b)

    # Assert: the second is 409 and version 0 is the first model, in memory and in the store
    assert status.state == TaskState.ACTIVE
    assert refused.value.status == 409 and "already has a model" in refused.value.detail
    assert coord.runtimes[task_id] is rt_a
    stored = coord.store.initial_params(task_id)
    assert stored is not None
    np.testing.assert_array_equal(np.frombuffer(stored, "<f4"), first)
    np.testing.assert_array_equal(
        decode_snapshot(coord.runtimes[task_id].snapshot("fp32"), SPEC), first
    )


def test_concurrent_uploads_over_http_give_one_model_and_one_409(tmp_path: Path) -> None:
    # Prepare: a task created over HTTP, and two different snapshots to race
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    auth = {"authorization": f"Bearer {ADMIN}"}
    models = [initial_params() + np.float32(k) for k in range(4)]
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        r = http.post("/v1/admin/tasks", json=to_json(task_config()), headers=auth)
        assert r.status_code == 201, r.text
        task_id = int(r.json()["task_id"])
        answers: list[httpx.Response] = []
        start = threading.Barrier(len(models))

        def put(params: np.ndarray) -> None:
            with httpx.Client(base_url=url) as own:
                start.wait()
                answers.append(
                    own.put(
                        f"/v1/admin/tasks/{task_id}/model",
                        content=encode_snapshot(params, SPEC, "fp32"),
                        headers={**auth, "content-type": "application/octet-stream"},
                    )
                )

        # Act
        threads = [threading.Thread(target=put, args=(m,)) for m in models]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = http.get(f"/v1/admin/tasks/{task_id}/model", headers=auth)

    # Assert: one upload taken, the others 409, and the task's model is the one taken
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] + [409] * (len(models) - 1), [a.text for a in answers]
    assert got.status_code == 200, got.text
    held = decode_snapshot(got.content, SPEC)
    assert sum(np.array_equal(held, m) for m in models) == 1
