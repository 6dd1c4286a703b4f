"""The store guards a round's durable record along its state machine (open -> aggregating ->
committed | abandoned): `Store.set_round_state` changes only a round still open or aggregating
(and never opens a frozen one again), and `Store.publish` commits only an aggregating round.
Each refusal is a `RoundStateError` naming the round and its stored state, raised inside the
write's transaction, so every table stays as it was. Before, both updated the round whatever
its state: a committed round set back to aggregating was aggregated again by the next start
and published as a second version, and a second publish of a committed round overwrote its
record with another version. The service's own writes (the freeze, the publish, the freeze
again after a restart) go on as before."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from coordinator.service.store import RoundStateError, Store

from .test_restart_midround import Clock, _start
from .test_s61_fail_close_committed import ready_to_close
from .test_s61c_store_close_records import _committed_round, _dump


def _publish(store: Store, task_id: int, round_id: int, version: int) -> None:
    """Publish `round_id` as `version` of `task_id` with small made-up rows."""
    store.publish(
        task_id=task_id,
        round_id=round_id,
        version=version,
        delta_frame=b"delta-%d" % version,
        digest=f"d{version}",
        params=b"\x02" * 8,
        residual=b"",
        measurements={"clients": 9},
        task_state="done",
        now=7.0,
    )


def _abandoned_round(store: Store) -> tuple[int, int]:
    """A task with a model whose first round was abandoned at its deadline."""
    task_id = store.create_task({"name": "t"}, "active", 0.0)
    store.set_initial_model(task_id, b"\x00" * 8, "d0", "active", 1.0)
    round_id = store.open_round(task_id, 1, 0, ["a"], 1, 1, 2.0, 3.0)
    assert store.abandon(round_id, task_id, {"abandoned": "deadline"}, "active", 4.0)
    return task_id, round_id


@pytest.mark.parametrize("state", ["aggregating", "open", "committed", "abandoned"])
@pytest.mark.parametrize("finished", ["committed", "abandoned"])
def test_a_finished_rounds_state_is_not_set_again(
    tmp_path: Path, finished: str, state: str
) -> None:
    # Prepare: a round committed as version 1, or abandoned
    db = tmp_path / "plume.db"
    store = Store(db)
    _, round_id = _committed_round(store) if finished == "committed" else _abandoned_round(store)
    before = _dump(db)
    # Execute / Assert: refused, naming the round and its state (store.py set_round_state:
    # the UPDATE of any round, whatever its state)
    with pytest.raises(RoundStateError, match=f"round {round_id} is {finished} in the store: "):
        store.set_round_state(round_id, state)
    assert _dump(db) == before
    store.close()


def test_an_aggregating_round_does_not_open_again(tmp_path: Path) -> None:
    # Prepare: a round frozen for its close
    db = tmp_path / "plume.db"
    store = Store(db)
    task_id = store.create_task({"name": "t"}, "active", 0.0)
    round_id = store.open_round(task_id, 1, 0, ["a"], 1, 1, 1.0, 2.0)
    store.set_round_state(round_id, "aggregating")
    before = _dump(db)
    # Execute / Assert
    with pytest.raises(RoundStateError, match="is aggregating in the store: a frozen round") as e:
        store.set_round_state(round_id, "open")
    assert (e.value.round_id, e.value.state) == (round_id, "aggregating")
    assert _dump(db) == before
    store.close()


def test_the_freeze_and_its_repeat_after_a_restart_are_stored(tmp_path: Path) -> None:
    # Prepare: one open round
    db = tmp_path / "plume.db"
    store = Store(db)
    task_id = store.create_task({"name": "t"}, "active", 0.0)
    round_id = store.open_round(task_id, 1, 0, ["a"], 1, 1, 1.0, 2.0)
    # Execute: frozen (begin_close), then frozen again by a restarted coordinator's close,
    # and set open while open (no change)
    store.set_round_state(round_id, "aggregating")
    store.close()
    store = Store(db)
    store.set_round_state(round_id, "aggregating")
    # Assert
    assert store.round_state(round_id) == (task_id, "aggregating")
    other = store.open_round(task_id, 2, 0, ["a"], 1, 1, 1.0, 2.0)
    store.set_round_state(other, "open")
    assert store.round_state(other) == (task_id, "open")
    store.close()


def test_a_round_not_in_the_store_is_refused(tmp_path: Path) -> None:
    # Prepare: a store with a task and no round
    db = tmp_path / "plume.db"
    store = Store(db)
    task_id = store.create_task({"name": "t"}, "active", 0.0)
    store.set_initial_model(task_id, b"\x00" * 8, "d0", "active", 1.0)
    before = _dump(db)
    # Execute / Assert: neither a state nor a publish for round 5 (before: a version with
    # no round, and the task's model replaced)
    with pytest.raises(RoundStateError, match="no round 5 is in the store: ") as e:
        store.set_round_state(5, "aggregating")
    assert (e.value.round_id, e.value.state) == (5, None)
    with pytest.raises(RoundStateError, match="no round 5 is in the store: only an aggregating"):
        _publish(store, task_id, 5, 1)
    assert _dump(db) == before
    store.close()


def test_a_state_that_is_none_of_a_rounds_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "plume.db"
    store = Store(db)
    task_id = store.create_task({"name": "t"}, "active", 0.0)
    round_id = store.open_round(task_id, 1, 0, ["a"], 1, 1, 1.0, 2.0)
    before = _dump(db)
    with pytest.raises(ValueError, match=f"round {round_id}: 'comitted' is not a round state"):
        store.set_round_state(round_id, "comitted")
    assert _dump(db) == before
    store.close()


@pytest.mark.parametrize("finished", ["committed", "abandoned"])
def test_a_finished_round_is_not_published(tmp_path: Path, finished: str) -> None:
    # Prepare: a round committed as version 1, or abandoned
    db = tmp_path / "plume.db"
    store = Store(db)
    made = _committed_round(store) if finished == "committed" else _abandoned_round(store)
    task_id, round_id = made
    before = _dump(db)
    # Execute / Assert: a publish of it as version 2 is refused before it writes anything
    # (before: version 2 stored, the task's model and the round's record replaced)
    with pytest.raises(
        RoundStateError,
        match=f"round {round_id} is {finished} in the store: only an aggregating round is "
        f"published \\(not as version 2 of task {task_id}\\)",
    ) as e:
        _publish(store, task_id, round_id, 2)
    assert (e.value.round_id, e.value.state) == (round_id, finished)
    assert _dump(db) == before
    # The store takes writes after the refusal (its transaction ended)
    assert not store._db.in_transaction
    store.set_task_state(task_id, "paused")
    store.close()


def test_an_open_round_is_not_published_before_its_freeze(tmp_path: Path) -> None:
    # Prepare: an open round with an accepted update
    db = tmp_path / "plume.db"
    store = Store(db)
    task_id = store.create_task({"name": "t"}, "active", 0.0)
    store.set_initial_model(task_id, b"\x00" * 8, "d0", "active", 1.0)
    round_id = store.open_round(task_id, 1, 0, ["a"], 1, 1, 2.0, 30.0)
    with store.transaction() as tx:
        store.insert_update(tx, round_id, "a", "key-a", b"frame-a", 3.0)
    before = _dump(db)
    # Execute / Assert: an upload could still land after its aggregate
    with pytest.raises(RoundStateError, match=f"round {round_id} is open in the store: "):
        _publish(store, task_id, round_id, 1)
    assert _dump(db) == before
    # Frozen, it is published
    store.set_round_state(round_id, "aggregating")
    _publish(store, task_id, round_id, 1)
    row = store.round(round_id)
    assert row is not None and (row.state, row.version_after) == ("committed", 1)
    store.close()


def test_a_committed_round_frozen_again_is_not_published_again_at_the_next_start(
    tmp_path: Path,
) -> None:
    # Prepare: a coordinator's round closed and published as version 1
    clock = Clock()
    db = tmp_path / "plume.db"
    coord, task_id, round_id, to_close = ready_to_close(db, clock)
    asyncio.run(coord.close_round(to_close))
    assert coord.task_status(task_id).version == 1
    # Execute: the round frozen again (a close started on a round memory still holds; none
    # does today), then a restart, whose first tick closes the rounds it found aggregating
    with pytest.raises(RoundStateError, match=f"round {round_id} is committed in the store"):
        coord.store.set_round_state(round_id, "aggregating")
    coord.store.close()
    again = _start(db, clock)
    due = again.tick()
    # Assert: nothing to close, the one version stands (before: the round was aggregated
    # again from its stored frames and published as version 2, its updates counted twice)
    assert due == []
    assert again.task_status(task_id).version == 1
    row = again.store.round(round_id)
    assert row is not None and (row.state, row.version_after) == ("committed", 1)
    again.store.close()
