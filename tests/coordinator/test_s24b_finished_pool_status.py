"""The service's `TaskStatus` (GET /v1/admin/tasks/{id}, GET /v1/admin/tasks) says `pool` 0 and
`pool_needed` 0 for a `done` or `stopped` task, as it does for a task this coordinator does not
run: a finished task opens no round, so no device waits for one. Before, a done task kept
counting the devices that checked in during its last round until their entries expired after
`--pool-ttl`, and a stopped or done task still said its cohort size as `pool_needed` (the
`plume coordinator status` line already showed null for both, commit f0126b2). A running or
paused task keeps its counts. In process on a real store with a stepped clock, then over HTTP.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from coordinator.service import AdminClient, ServerThread, ServiceConfig
from protocol.messages import TaskConfig, TensorShape
from protocol.names import TaskState

from .test_h79_stop import _frame, _open_round, _start, _task
from .test_service_support import task_config

ADMIN = "s3cret-s24b"


def test_a_done_task_reports_no_pool_and_forgets_its_late_devices(
    tmp_path: Path,
) -> None:
    # Prepare: a one-round task; two devices check in after its round opened (they wait in
    # the pool for a round that never comes)
    cfg = task_config(rounds=1, clients_per_round=3, min_reports=1)
    coord = _start(tmp_path / "p.db")
    task_id = _task(coord, cfg)
    round_id = _open_round(coord, task_id, ["a", "b", "c"])
    for late in ("d", "e"):
        coord.check_in(late, task_id)
    running = coord.task_status(task_id)
    assert (running.state, running.pool, running.pool_needed) == (TaskState.ACTIVE, 2, 3)
    # Execute: the round commits and the task is done
    for i, d in enumerate(["a", "b", "c"]):
        _, to_close = coord.submit(round_id, d, f"k{d}", _frame(cfg, i))
    assert to_close is not None
    asyncio.run(coord.close_round(to_close))
    status = coord.task_status(task_id)
    # Assert: done, nothing waiting, nothing needed, and the late devices' entries dropped:
    # nothing else would expire them (check-ins and round opening skip a done task), so
    # before they stayed in memory for the coordinator's life (helper-248 F6)
    assert status.state == TaskState.DONE
    assert (status.pool, status.pool_needed) == (0, 0)
    assert len(coord.runtimes[task_id].pool) == 0


def test_a_paused_task_keeps_its_counts(tmp_path: Path) -> None:
    coord = _start(tmp_path / "p.db")
    task_id = _task(coord, task_config(rounds=2, clients_per_round=3))
    coord.check_in("a", task_id)
    status = coord.set_paused(task_id, True)
    assert (status.state, status.pool, status.pool_needed) == (TaskState.PAUSED, 1, 3)


def test_a_stopped_tasks_status_over_http_needs_no_pool(tmp_path: Path) -> None:
    # Prepare: two tasks of cohort 2
    config = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    task = TaskConfig(
        name="t", model_name="tiny", spec=[TensorShape("w", [10])], rounds=3,
        clients_per_round=2,
    )  # fmt: skip
    with ServerThread(config) as url, AdminClient(url, ADMIN) as admin:
        first = admin.create_task(task, np.zeros(10, np.float32))
        admin.create_task(task, np.zeros(10, np.float32))
        # Execute
        stopped = admin.stop(first)
        one = admin.status(first)
        every = admin.tasks()
    # Assert: the stop's answer, the task's status and the list agree
    for s in (stopped, one, every[0]):
        assert (s.state, s.pool, s.pool_needed) == (TaskState.STOPPED, 0, 0)
    assert (every[1].state, every[1].pool, every[1].pool_needed) == (TaskState.ACTIVE, 0, 3)
