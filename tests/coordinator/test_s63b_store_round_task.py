"""`Store.publish` and `Store.abandon` write a round only under its own task: a round of
another task than the `task_id` given is refused with a `RoundStateError` naming the round,
its state and both tasks, inside the write's transaction, so every table stays as it was.

Before, neither looked at the round's task: a publish stored a new version and model on the
named task against another task's round (and marked that round committed), and an abandonment
marked the other task's round abandoned while storing its close state on the named task."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.service.store import RoundStateError, Store

from .test_s61c_store_close_records import _dump


def _two_tasks(store: Store) -> tuple[int, int, int]:
    """Two active tasks with a model each, and an open round of the second: (first task,
    second task, its round)."""
    first = store.create_task({"name": "first"}, "active", 0.0)
    store.set_initial_model(first, b"\x00" * 8, "d0", "active", 1.0)
    second = store.create_task({"name": "second"}, "active", 0.0)
    store.set_initial_model(second, b"\x00" * 8, "d0", "active", 1.0)
    round_id = store.open_round(second, 1, 0, ["a"], 1, 1, 2.0, 30.0)
    with store.transaction() as db:
        store.insert_update(db, round_id, "a", "key-a", b"frame-a", 3.0)
    return first, second, round_id


def _task_state(store: Store, task_id: int) -> tuple[str, int]:
    """(state, version) of a stored task."""
    row = store.task(task_id)
    assert row is not None
    return row.state, row.version


def _publish(store: Store, task_id: int, round_id: int) -> None:
    store.publish(
        task_id=task_id,
        round_id=round_id,
        version=1,
        delta_frame=b"delta-1",
        digest="d1",
        params=b"\x01" * 8,
        residual=b"",
        measurements={"clients": 1},
        task_state="done",
        now=4.0,
    )


def test_a_round_of_another_task_is_not_published(tmp_path: Path) -> None:
    # Prepare: the second task's round frozen for its close
    db = tmp_path / "plume.db"
    store = Store(db)
    first, second, round_id = _two_tasks(store)
    store.set_round_state(round_id, "aggregating")
    before = _dump(db)
    # Execute / Assert: published under the first task, it is refused (before: version 1 of
    # the first task stored against the second's round, its model replaced and the task
    # marked done, the second's round committed)
    with pytest.raises(
        RoundStateError,
        match=f"round {round_id} is aggregating in the store: it is a round of task {second}, "
        f"not of task {first}$",
    ) as e:
        _publish(store, first, round_id)
    assert (e.value.round_id, e.value.state) == (round_id, "aggregating")
    assert _dump(db) == before
    # Under its own task it is published
    _publish(store, second, round_id)
    row = store.round(round_id)
    assert row is not None and (row.task_id, row.state, row.version_after) == (
        second,
        "committed",
        1,
    )
    assert (_task_state(store, first), _task_state(store, second)) == (("active", 0), ("done", 1))
    store.close()


@pytest.mark.parametrize("state", ["open", "aggregating", "committed", "abandoned"])
def test_a_round_of_another_task_is_not_abandoned(tmp_path: Path, state: str) -> None:
    # Prepare: the second task's round, open, frozen, published or abandoned
    db = tmp_path / "plume.db"
    store = Store(db)
    first, second, round_id = _two_tasks(store)
    if state != "open":
        store.set_round_state(round_id, "aggregating")
    if state == "committed":
        _publish(store, second, round_id)
    if state == "abandoned":
        assert store.abandon(round_id, second, {"abandoned": "deadline"}, "active", 4.0)
    before = _dump(db)
    # Execute / Assert: abandoned under the first task (before, for an unfinished round: the
    # second's round abandoned and the first task stored "done"), refused whatever its state
    with pytest.raises(
        RoundStateError,
        match=f"round {round_id} is {state} in the store: it is a round of task {second}, "
        f"not of task {first}$",
    ):
        store.abandon(round_id, first, {"abandoned": "wrong task"}, "done", 5.0)
    assert _dump(db) == before
    assert not store._db.in_transaction
    store.close()


def test_an_unknown_round_is_still_not_abandoned_and_its_own_task_abandons_it(
    tmp_path: Path,
) -> None:
    db = tmp_path / "plume.db"
    store = Store(db)
    first, second, round_id = _two_tasks(store)
    before = _dump(db)
    # No such round: False, nothing written (as before)
    assert not store.abandon(round_id + 1, first, {"abandoned": "x"}, "done", 5.0)
    assert _dump(db) == before
    # Its own task abandons it, storing that task's close state
    assert store.abandon(round_id, second, {"abandoned": "deadline"}, "done", 5.0)
    row = store.round(round_id)
    assert row is not None and (row.state, row.measurements) == (
        "abandoned",
        {"abandoned": "deadline"},
    )
    assert (_task_state(store, first), _task_state(store, second)) == (("active", 0), ("done", 0))
    store.close()
