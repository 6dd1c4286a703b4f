"""A publish that fails while the store also refuses the round's abandonment (the disk still
full): the round stays `aggregating` and its task opens no round until a tick 5 s later, or the
next start, rebuilds the task, which re-aggregates the round from its stored frames and
publishes it (docs/operations.md). These tests restart before the 5 s pass."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from .test_restart_midround import Clock, _frame, _open_round, _start
from .test_service_support import task_config


def test_a_round_whose_abandonment_is_refused_is_closed_by_the_next_start(
    tmp_path: Path,
) -> None:
    # Prepare: a full round; publish and abandon both fail as on a full disk
    db = tmp_path / "plume.db"
    clock = Clock()
    cfg = task_config(rounds=2, clients_per_round=2, selection_timeout_s=30)
    coord = _start(db, clock)
    task_id, round_id = _open_round(coord, cfg)
    coord.submit(round_id, "a", "key-a", _frame(cfg, 0))
    _, to_close = coord.submit(round_id, "b", "key-b", _frame(cfg, 1))
    assert to_close is not None

    def full(*args: Any, **kw: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    coord.store.publish = full  # type: ignore[method-assign]
    coord.store.abandon = full  # type: ignore[method-assign]
    # Execute
    outcome = asyncio.run(coord.close_round(to_close))
    coord.tick()
    stalled = coord.round_status(round_id).state
    opened_meanwhile = coord.check_in("c" * 32, task_id).assignment
    coord.store.close()
    restarted = _start(db, clock)
    rt = restarted.runtimes[task_id]
    due = restarted.pending_closes()
    closed = asyncio.run(restarted.close_round(rt))
    # Assert
    assert outcome is None and stalled == "aggregating" and opened_meanwhile is None
    assert due == [rt] and closed is not None and closed.committed
    status = restarted.round_status(round_id)
    assert status.state == "committed" and status.reports == 2
