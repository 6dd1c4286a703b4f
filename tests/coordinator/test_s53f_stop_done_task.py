"""Stopping a `done` task changes nothing: it stays `done` (stored and after a restart), the
stop answers its status, and its model is as its last round left it. Before, the stop turned
it `stopped` and logged "stopped by the operator", losing the record that it ran to its end."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from protocol.names import TaskState

from .test_h79_stop import DEVICES, _frame, _open_round, _start, _task
from .test_service_support import task_config


def test_a_done_task_stays_done_when_stopped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a one-round task run to its end
    db = tmp_path / "d.db"
    cfg = task_config(rounds=1, clients_per_round=3, min_reports=1)
    coord = _start(db)
    task_id = _task(coord, cfg)
    first = _open_round(coord, task_id, DEVICES)
    to_close = None
    for i, d in enumerate(DEVICES):
        _, to_close = coord.submit(first, d, f"k1{d}", _frame(cfg, i))
    assert to_close is not None
    asyncio.run(coord.close_round(to_close))
    before = coord.task_status(task_id)
    assert before.state == TaskState.DONE and before.version == 1
    # Execute
    with caplog.at_level(logging.WARNING, logger="plume"):
        status = coord.stop_task(task_id)
    # Assert: the same status, stored as done, nothing logged as a stop
    assert status == before
    assert coord.store.task(task_id).state == TaskState.DONE  # type: ignore[union-attr]
    assert "stopped by the operator" not in caplog.text
    # ... and a restart on the same database still reads it done
    again = _start(db)
    after = again.task_status(task_id)
    assert (after.state, after.version, after.model_digest) == (
        TaskState.DONE,
        1,
        before.model_digest,
    )
    assert again.stop_task(task_id).state == TaskState.DONE  # loaded finished: the same
