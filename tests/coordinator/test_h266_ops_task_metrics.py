"""Per-task counters survive a rebuild of the task, and the admin token is not in
`ServiceConfig`'s repr (s25/ops findings 3 and 7).

Before: each `TaskRuntime` made a new `AnomalyMetrics`, so when a task was rebuilt from the
store in the middle of the process's life (a refused upload COMMIT, a failed publish, an
unloaded task loaded again) its `plume_updates_screened_total`, `plume_updates_rejected_total`
and histogram `_count` series went back to 0, although docs/operations.md says the counters
count from the process's start. In-process: a Coordinator over a Store, the COMMIT refused as
by a full disk (as tests/coordinator/test_restart_store_failures.py does).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from coordinator.service import ServiceConfig, Store
from coordinator.service.metrics import Metrics
from coordinator.service.rounds import Coordinator

from .test_restart_midround import Clock, _frame, _open_round
from .test_restart_store_failures import FailingCommit
from .test_service_support import task_config


def _sample(metrics: Metrics, name: str, task_id: int) -> float | None:
    return metrics.registry.get_sample_value(name, {"task": str(task_id)})  # type: ignore[no-any-return]


def test_a_tasks_counters_survive_its_rebuild_from_the_store(tmp_path: Path) -> None:
    # Prepare: a task with an anomaly stage, one round closed with two updates screened
    db = tmp_path / "plume.db"
    metrics = Metrics()
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)), metrics, clock=Clock())
    coord.restore()
    cfg = task_config(
        rounds=3, clients_per_round=2, selection_timeout_s=30, aggregator="anomaly+fedavg"
    )
    task_id, r1 = _open_round(coord, cfg)
    coord.submit(r1, "a", "k1a", _frame(cfg, 0))
    _, rt = coord.submit(r1, "b", "k1b", _frame(cfg, 1))
    assert rt is not None
    asyncio.run(coord.close_round(rt))
    before = _sample(metrics, "plume_updates_screened_total", task_id)
    count_before = _sample(metrics, "plume_update_norm_count", task_id)
    assert before == 2.0 and count_before == 2.0
    # Execute: round 2's first upload COMMIT is refused: the task is rebuilt from the store
    coord.check_in("a", task_id)
    answer = coord.check_in("b", task_id)
    assert answer.assignment is not None
    old_runtime = coord.runtimes[task_id]
    coord.store._db = FailingCommit(coord.store._db, 1)  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError):
        coord.submit(answer.assignment.round_id, "a", "k2a", _frame(cfg, 2))
    # Assert: a new runtime, the same counts (before: 0 and 0)
    assert coord.runtimes[task_id] is not old_runtime
    assert _sample(metrics, "plume_updates_screened_total", task_id) == 2.0
    assert _sample(metrics, "plume_update_norm_count", task_id) == 2.0
    coord.store.close()


def test_the_admin_token_is_not_in_the_config_repr() -> None:
    config = ServiceConfig(db_path="x.db", admin_token="TOPSECRET")
    assert "TOPSECRET" not in repr(config)
    assert "TOPSECRET" not in str(config)
    assert config.admin_token == "TOPSECRET"
