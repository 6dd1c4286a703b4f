"""helper-104: a task stored with krum:f=0.5 (created before Krum refused f >= 0.5) is refused
at the next start, with the reason in its status, and its rows are kept as stored."""

from __future__ import annotations

from pathlib import Path

from compression import encode_snapshot
from coordinator.service import ServiceConfig, Store
from coordinator.service.rounds import Coordinator
from protocol.names import TaskState

from .test_service_support import SPEC, initial_params, rewrite_stored_config, task_config

REASON = (
    "AggregatorSpecError: krum: Krum needs n > 2f + 2, which a fraction f >= 0.5 never meets; "
    "got f=0.5 (give a fraction below 0.5 or a count)"
)


def test_a_stored_krum_task_with_f_one_half_is_refused_at_start(tmp_path: Path) -> None:
    # Prepare: a running task whose stored spec is rewritten to krum:f=0.5, as a store written
    # before the refusal holds it (creating it now is a 422)
    db = tmp_path / "p.db"
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()
    task_id = coord.create_task(task_config(aggregator="krum:f=0.4", clients_per_round=7))
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    coord.store.close()
    stored = rewrite_stored_config(db, task_id, aggregator="krum:f=0.5")

    # Execute: the upgraded coordinator starts on that store
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()

    # Assert: refused with the reason, not running, its config as stored
    assert task_id not in coord.runtimes
    assert coord.refused[task_id].reason == REASON
    status = coord.task_status(task_id)
    assert status.state == TaskState.REFUSED
    assert status.refused == REASON
    err = coord.refused[task_id].error()
    assert (err.status, err.reason) == (409, "task_refused")
    assert coord.store.task_raw(task_id)[0] == stored  # type: ignore[index]
    coord.store.close()
