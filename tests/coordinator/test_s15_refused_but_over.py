"""A task stored as stopped (or done) that this coordinator then refuses to load is still over:
a check-in naming it is answered "end", not 409 `task_refused`, which the SDK does not treat
as final (helper-105's review: the fleet kept polling a task that can never run again). A
refused task that was running stays 409: the operator's fix brings it back."""

from __future__ import annotations

from pathlib import Path

import pytest

from compression import encode_snapshot
from coordinator.service import ServiceConfig, Store
from coordinator.service.errors import ApiError
from coordinator.service.rounds import Coordinator

from .test_service_support import SPEC, initial_params, rewrite_stored_config, task_config


def _refused_world(db: Path, stop: bool) -> tuple[Coordinator, int]:
    """A task with a model, stopped or not, whose stored spec a restart refuses."""
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()
    task_id = coord.create_task(task_config(aggregator="krum:f=0.4", clients_per_round=7))
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    if stop:
        coord.stop_task(task_id)
    coord.store.close()
    rewrite_stored_config(db, task_id, aggregator="krum:f=0.5")
    again = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    again.restore()
    assert task_id in again.refused
    return again, task_id


def test_a_stopped_task_refused_at_start_is_answered_end(tmp_path: Path) -> None:
    coord, task_id = _refused_world(tmp_path / "p.db", stop=True)
    answer = coord.check_in("a", task_id)
    assert (answer.action, answer.assignment) == ("end", None)
    assert answer.detail == f"task {task_id} is stopped: it runs no more rounds"
    coord.store.close()


def test_a_running_task_refused_at_start_stays_409(tmp_path: Path) -> None:
    coord, task_id = _refused_world(tmp_path / "p.db", stop=False)
    with pytest.raises(ApiError) as err:
        coord.check_in("a", task_id)
    assert (err.value.status, err.value.reason) == (409, "task_refused")
    coord.store.close()
