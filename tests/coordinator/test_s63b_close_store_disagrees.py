"""A close whose freeze the store refuses because its stored round is already finished
(rounds.py `close_round` on `begin_close`'s `RoundStateError`): the store's record stands,
the task is rebuilt from it once, and no tick retries the close.

Before, `close_round` caught only `sqlite3.Error` and `OSError` from `begin_close`: the
`RoundStateError` escaped the background task (an exception nobody awaits), the round stayed
current and not closing in memory, and every tick handed it back to close, to fail the same
way, for good, while its devices were told to wait."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from coordinator.service import rounds as rounds_module
from coordinator.service.store import RoundStateError

from .test_restart_midround import Clock
from .test_s61_fail_close_committed import ready_to_close


def _stored_rows(coord: rounds_module.Coordinator, task_id: int, round_id: int) -> tuple:
    """What the close must not change: the task's stored model and version, and the
    round's accepted updates."""
    row = coord.store.task(task_id)
    assert row is not None
    params, residual = coord.store.task_model(task_id)
    updates = [(u.device_id, u.frame) for u in coord.store.updates(round_id)]
    return row.version, row.digest, params, residual, updates


def test_a_close_of_a_round_the_store_holds_abandoned_rebuilds_the_task_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a round with both reports in, then abandoned in the store behind the
    # service's back (its memory still holds the round open)
    clock = Clock()
    coord, task_id, round_id, to_close = ready_to_close(tmp_path / "plume.db", clock)
    assert coord.store.abandon(round_id, task_id, {"abandoned": "by hand"}, "active", clock())
    before = _stored_rows(coord, task_id, round_id)
    assert len(before[-1]) == 2
    # Execute: the close, then ticks
    with caplog.at_level(logging.INFO, logger=rounds_module.log.name):
        assert asyncio.run(coord.close_round(to_close)) is None
        due = [coord.tick() for _ in range(3)]
    # Assert: no retry; the task was rebuilt from the store (no round in flight, version 0)
    assert due == [[], [], []]
    rt = coord.runtimes[task_id]
    assert rt is not to_close and rt.current is None
    assert coord.task_status(task_id).version == 0
    # The store's record stands: the round abandoned with its own measurements, the model
    # and the accepted updates as they were
    stored = coord.store.round(round_id)
    assert stored is not None and stored.state == "abandoned"
    assert stored.measurements == {"abandoned": "by hand"}
    assert _stored_rows(coord, task_id, round_id) == before
    # One error line, naming the round and its stored state
    said = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and f"round {round_id}" in r.getMessage()
    ]
    assert len(said) == 1, said
    assert "abandoned in the store" in said[0], said
    coord.store.close()


def test_a_close_of_a_round_the_store_holds_committed_does_not_publish_it_again(
    tmp_path: Path,
) -> None:
    # Prepare: the round published in the store behind the service's back, as version 1
    # with the task's own params (a rebuild must load them: their digest is checked)
    clock = Clock()
    coord, task_id, round_id, to_close = ready_to_close(tmp_path / "plume.db", clock)
    params, residual = coord.store.task_model(task_id)
    row = coord.store.task(task_id)
    assert row is not None
    digest = row.digest
    coord.store.set_round_state(round_id, "aggregating")
    coord.store.publish(
        task_id=task_id,
        round_id=round_id,
        version=1,
        delta_frame=b"delta-1",
        digest=digest,
        params=params,
        residual=residual or b"",
        measurements={"clients": 2},
        task_state="active",
        now=clock(),
    )
    before = _stored_rows(coord, task_id, round_id)
    # Execute
    assert asyncio.run(coord.close_round(to_close)) is None
    # Assert: the rebuilt task serves the stored version 1; nothing was published again
    assert coord.tick() == []
    assert coord.task_status(task_id).version == 1
    assert coord.store.first_missing_frame(task_id, 1) is None
    assert _stored_rows(coord, task_id, round_id) == before
    stored = coord.store.round(round_id)
    assert stored is not None and (stored.state, stored.version_after) == ("committed", 1)
    assert stored.measurements == {"clients": 2}
    coord.store.close()


def test_the_freeze_refusal_is_the_stores_round_state_error(tmp_path: Path) -> None:
    # What `close_round` handles: `begin_close` raises the store's refusal, writing nothing
    # and leaving the round current and not closing in memory
    clock = Clock()
    coord, task_id, round_id, to_close = ready_to_close(tmp_path / "plume.db", clock)
    assert coord.store.abandon(round_id, task_id, {"abandoned": "by hand"}, "active", clock())
    with pytest.raises(RoundStateError, match=f"round {round_id} is abandoned in the store"):
        coord.begin_close(to_close)
    assert to_close.current is not None and not to_close.current.close_started
    coord.store.close()


def test_a_close_of_a_replaced_runtime_leaves_its_successor_alone(tmp_path: Path) -> None:
    # Prepare: the task rebuilt from the store after its close was due (its round replayed
    # open in the new runtime), then the round abandoned in the store
    clock = Clock()
    coord, task_id, round_id, to_close = ready_to_close(tmp_path / "plume.db", clock)
    assert coord._reload(task_id)
    successor = coord.runtimes[task_id]
    assert successor is not to_close and successor.current is not None
    assert coord.store.abandon(round_id, task_id, {"abandoned": "by hand"}, "active", clock())
    # Execute: the close scheduled for the replaced runtime
    assert asyncio.run(coord.close_round(to_close)) is None
    # Assert: the successor is not rebuilt under its own close; its close meets the same
    # refusal and rebuilds the task, once
    assert coord.runtimes[task_id] is successor
    assert asyncio.run(coord.close_round(successor)) is None
    assert coord.runtimes[task_id] is not successor
    assert coord.runtimes[task_id].current is None and coord.tick() == []
    coord.store.close()
