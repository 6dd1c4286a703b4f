"""The store's reads put each column in its own field (the s61c mutation hunt left these column
indexes untested, s62c): an accepted update's sequence number, round and idempotency key; a
damaged row's round or task id and its task (`DamagedRow`, whose key the service's 503 names);
a committed round's close time apart from its version; the (device, bytes) pairs of a round's
accepted frames, pruned or not; and the bytes `prune_versions` frees, apart from how many
frames. Each store below has ids, sequence numbers and versions chosen to differ, so a read of
a neighbouring column gives another answer."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from coordinator.service.store import DamagedRow, PruneResult, Store, UpdateRow


def _edit(db: Path, sql: str, *args: object) -> None:
    """A hand edit through a connection of its own (the store keeps its own open)."""
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(sql, args)
    finally:
        conn.close()


def _two_tasks(store: Store) -> tuple[int, int, int]:
    """Task 1 with two rounds, task 2 with one (round id 3, its sequence number 7): (task 2,
    its round, task 1's first round)."""
    first = store.create_task({"name": "one"}, "active", 0.0)
    other = store.open_round(first, 1, 0, ["x"], 1, 1, 1.0, 2.0)
    store.open_round(first, 2, 0, ["x"], 1, 1, 1.0, 2.0)
    task_id = store.create_task({"name": "two"}, "active", 0.0)
    round_id = store.open_round(task_id, 7, 0, ["a", "b"], 2, 1, 1.0, 2.0)
    assert (first, other, task_id, round_id) == (1, 1, 2, 3)
    return task_id, round_id, other


def test_an_updates_row_reads_its_own_seq_round_and_key(tmp_path: Path) -> None:
    # Prepare: two uploads to task 1's round first, so task 2's round's first update is seq 3
    store = Store(tmp_path / "plume.db")
    _, round_id, other = _two_tasks(store)
    with store.transaction() as tx:
        store.insert_update(tx, other, "x", "key-x", b"frame-x", 1.5)
        store.insert_update(tx, other, "y", "key-y", b"frame-y", 1.5)
        store.insert_update(tx, round_id, "b", "key-b", b"frame-b", 1.6, 0.25)
        store.insert_update(tx, round_id, "a", "key-a", b"frame-a", 1.7)
    # Execute
    rows = store.updates(round_id)
    # Assert: store.py `updates` (r[0] seq, r[1] round, r[3] key)
    assert rows == [
        UpdateRow(3, round_id, "b", "key-b", b"frame-b", 0.25),
        UpdateRow(4, round_id, "a", "key-a", b"frame-a", None),
    ]
    store.close()


@pytest.mark.parametrize("column", ["measurements_json", "selected_json"])
def test_a_damaged_round_names_its_round_and_task(tmp_path: Path, column: str) -> None:
    # Prepare: task 2's round 3 (seq 7), its column edited by hand into valid JSON of the
    # wrong shape (a selection holding a number; measurements that are a list)
    db = tmp_path / "plume.db"
    store = Store(db)
    task_id, round_id, _ = _two_tasks(store)
    _edit(db, f"UPDATE rounds SET {column}=? WHERE round_id=?", "[1]", round_id)
    # Execute
    with pytest.raises(DamagedRow) as e:
        store.round(round_id)
    # Assert: store.py `_round`'s DamagedRow(..., row[0], row[1], ...)
    assert (e.value.table, e.value.key, e.value.task_id, e.value.column) == (
        "rounds",
        round_id,
        task_id,
        column,
    )
    assert str(e.value).startswith(f"round {round_id}: its stored {column} does not parse")
    store.close()


def test_a_damaged_task_names_itself(tmp_path: Path) -> None:
    # Prepare: task 2's config edited by hand into JSON that is not an object
    db = tmp_path / "plume.db"
    store = Store(db)
    task_id, _, _ = _two_tasks(store)
    _edit(db, "UPDATE tasks SET config_json='[2]' WHERE task_id=?", task_id)
    # Execute
    with pytest.raises(DamagedRow) as e:
        store.task(task_id)
    # Assert: store.py `_task`'s DamagedRow("tasks", row[0], row[0], ...)
    assert (e.value.table, e.value.key, e.value.task_id, e.value.column) == (
        "tasks",
        task_id,
        task_id,
        "config_json",
    )
    assert str(e.value) == (
        f"task {task_id}: its stored config_json does not parse (a JSON list, not a dict)"
    )
    store.close()


def test_a_committed_rounds_close_time_is_not_its_version(tmp_path: Path) -> None:
    # Prepare: task 2's round published as version 3 at t=42.5
    store = Store(tmp_path / "plume.db")
    task_id, round_id, _ = _two_tasks(store)
    store.set_initial_model(task_id, b"\x00" * 8, "d0", "active", 1.0)
    store.set_round_state(round_id, "aggregating")
    store.publish(
        task_id=task_id,
        round_id=round_id,
        version=3,
        delta_frame=b"delta",
        digest="d3",
        params=b"\x01" * 8,
        residual=b"",
        measurements={},
        task_state="active",
        now=42.5,
    )
    # Execute
    row = store.round(round_id)
    # Assert: store.py `_round` (closed_unix=row[10], version_after=row[11])
    assert row is not None
    assert (row.closed_unix, row.version_after, row.seq) == (42.5, 3, 7)
    store.close()


def test_accepted_frame_sizes_pair_each_device_with_its_bytes(tmp_path: Path) -> None:
    # Prepare: task 2's round with two frames of different lengths, then committed and its
    # frames pruned; task 1's round keeps its frame
    store = Store(tmp_path / "plume.db")
    task_id, round_id, other = _two_tasks(store)
    with store.transaction() as tx:
        store.insert_update(tx, round_id, "b", "key-b", b"\x05" * 11, 1.5)
        store.insert_update(tx, round_id, "a", "key-a", b"\x06" * 4, 1.5)
        store.insert_update(tx, other, "x", "key-x", b"\x07" * 9, 1.5)
    expected = [("a", 4), ("b", 11)]
    # Execute / Assert: by device id; store.py `accepted_frame_sizes` (r[0] device, r[1] size)
    assert store.accepted_frame_sizes(round_id) == expected
    store.set_round_state(round_id, "committed")
    assert store.prune_frames(task_id, 0) == PruneResult(2, 15)
    assert store.accepted_frame_sizes(round_id) == expected  # by the lengths kept
    assert store.accepted_frame_sizes(other) == [("x", 9)]
    store.close()


def test_prune_versions_counts_the_bytes_it_frees(tmp_path: Path) -> None:
    # Prepare: three published versions whose delta frames are 5, 13 and 2 bytes long
    store = Store(tmp_path / "plume.db")
    task_id = store.create_task({"name": "t"}, "active", 0.0)
    store.set_initial_model(task_id, b"\x00" * 8, "d0", "active", 1.0)
    for version, size in ((1, 5), (2, 13), (3, 2)):
        round_id = store.open_round(task_id, version, version - 1, ["a"], 1, 1, 1.0, 2.0)
        store.set_round_state(round_id, "aggregating")
        store.publish(
            task_id=task_id,
            round_id=round_id,
            version=version,
            delta_frame=b"\x09" * size,
            digest=f"d{version}",
            params=b"\x01" * 8,
            residual=b"",
            measurements={},
            task_state="active",
            now=3.0,
        )
    # Execute: the frames of versions 1 and 2 are emptied, then again (nothing left)
    first = store.prune_versions(task_id, 2)
    again = store.prune_versions(task_id, 2)
    # Assert: store.py `prune_versions` (size[0] the bytes, size[1] the count)
    assert first == PruneResult(frames=2, bytes_freed=18)
    assert again == PruneResult(0, 0)
    assert store.frame_lengths(task_id, 0, 3) == {3: 2}
    store.close()
