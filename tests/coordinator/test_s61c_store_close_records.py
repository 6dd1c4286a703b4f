"""A closed round's record is final in the store: `Store.abandon` changes only a round still
open or aggregating, so a close that fails after its publish committed (the snapshot encoding
after the publish, a secure task's parameters) leaves the round committed with the version it
published, across a restart too. Before, the close's failure handler abandoned the committed
round: its record said `abandoned` with the error for measurements (a dp round's epsilon record
gone) while the task served the version that round published.

Also the store's own transaction edges the service relies on: a publish that fails before its
COMMIT leaves every table as it was, and `prune_frames` refuses a negative count."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.service.store import Store

from .test_restart_midround import Clock, _start
from .test_s61_fail_close_committed import ready_to_close, snapshot_encoding_fails_once


def _dump(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the store's tables, read through a connection of its own."""
    conn = sqlite3.connect(db)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
                "ORDER BY name"
            )
        ]
        return {n: conn.execute(f"SELECT * FROM {n} ORDER BY 1, 2").fetchall() for n in names}
    finally:
        conn.close()


def _committed_round(store: Store) -> tuple[int, int]:
    """A task whose first round is published as version 1: (task id, round id)."""
    task_id = store.create_task({"name": "t"}, "active", 0.0)
    store.set_initial_model(task_id, b"\x00" * 8, "d0", "active", 1.0)
    round_id = store.open_round(task_id, 1, 0, ["a", "b"], 2, 1, 2.0, 30.0)
    with store.transaction() as db:
        store.insert_update(db, round_id, "a", "key-a", b"frame-a", 3.0)
    store.set_round_state(round_id, "aggregating")
    store.publish(
        task_id=task_id,
        round_id=round_id,
        version=1,
        delta_frame=b"delta-1",
        digest="d1",
        params=b"\x01" * 8,
        residual=b"",
        measurements={"clients": 1, "dp": {"epsilon": 1.5}},
        task_state="active",
        now=4.0,
    )
    return task_id, round_id


@pytest.mark.parametrize("task_state", ["active", "done"])
def test_abandoning_a_committed_round_changes_nothing(tmp_path: Path, task_state: str) -> None:
    # Prepare: a round published as version 1
    db = tmp_path / "plume.db"
    store = Store(db)
    task_id, round_id = _committed_round(store)
    before = _dump(db)
    # Execute: a failure handler abandons it afterwards (store.py abandon: the UPDATE of any
    # round, whatever its state, and of the task's state)
    store.abandon(round_id, task_id, {"error": "late failure"}, task_state, 9.0)
    store.close()
    # Assert: the round's record and the task's row are as the publish left them
    assert _dump(db) == before
    again = Store(db)
    row = again.round(round_id)
    assert row is not None and row.state == "committed" and row.version_after == 1
    assert row.measurements == {"clients": 1, "dp": {"epsilon": 1.5}} and row.closed_unix == 4.0
    assert again.round_counts(task_id) == (1, 1)
    assert again.task_raw(task_id) == ('{"name": "t"}', "active", 1, "d1")
    again.close()


def test_abandoning_an_already_abandoned_round_keeps_its_first_record(tmp_path: Path) -> None:
    # Prepare: a round abandoned at its deadline
    store = Store(tmp_path / "plume.db")
    task_id = store.create_task({"name": "t"}, "active", 0.0)
    round_id = store.open_round(task_id, 1, 0, ["a"], 1, 1, 1.0, 2.0)
    store.abandon(round_id, task_id, {"abandoned": "deadline"}, "active", 3.0)
    # Execute: abandoned again, later, with another reason
    store.abandon(round_id, task_id, {"error": "second"}, "done", 5.0)
    # Assert: the first record stands, and the task is not finished by the second
    row = store.round(round_id)
    assert row is not None and row.state == "abandoned"
    assert row.measurements == {"abandoned": "deadline"} and row.closed_unix == 3.0
    assert store.task_raw(task_id) == ('{"name": "t"}', "active", -1, "")
    store.close()


def test_open_and_aggregating_rounds_are_still_abandoned(tmp_path: Path) -> None:
    # Prepare: one round open, one aggregating
    store = Store(tmp_path / "plume.db")
    task_id = store.create_task({"name": "t"}, "active", 0.0)
    first = store.open_round(task_id, 1, 0, ["a"], 1, 1, 1.0, 2.0)
    second = store.open_round(task_id, 2, 0, ["a"], 1, 1, 1.0, 2.0)
    store.set_round_state(second, "aggregating")
    # Execute
    store.abandon(first, task_id, {"abandoned": "one"}, "active", 3.0)
    store.abandon(second, task_id, {"abandoned": "two"}, "done", 4.0)
    # Assert: both are abandoned with their records, and the last one finished the task
    one, two = store.round(first), store.round(second)
    assert one is not None and (one.state, one.measurements) == ("abandoned", {"abandoned": "one"})
    assert two is not None and (two.state, two.measurements) == ("abandoned", {"abandoned": "two"})
    assert store.task_raw(task_id) == ('{"name": "t"}', "done", -1, "")
    store.close()


def test_a_close_failing_after_its_publish_committed_leaves_the_round_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a round with both reports, and the snapshot encoding the close does after its
    # publish has committed (rounds.py `_store_close`) failing once
    clock = Clock()
    db = tmp_path / "plume.db"
    coord, task_id, round_id, to_close = ready_to_close(db, clock)
    failures = snapshot_encoding_fails_once(monkeypatch)
    # Execute: the close publishes, then fails; the coordinator then restarts
    asyncio.run(coord.close_round(to_close))
    status = coord.round_status(round_id)
    served = coord.task_status(task_id)
    coord.store.close()
    again = _start(db, clock)
    restored = again.round_status(round_id)
    # Assert: the round is committed with its version and measurements, in the running
    # coordinator and after the restart, and the task serves that version
    assert not failures
    assert status.state == "committed" and status.version_after == 1
    assert status.measurements["clients"] == 2 and "error" not in status.measurements
    assert served.version == 1
    assert restored.state == "committed" and restored.version_after == 1
    assert restored.measurements == status.measurements
    assert again.task_status(task_id).version == 1
    assert again.store.round_counts(task_id) == (1, 1)
    again.store.close()


def test_a_publish_failing_before_its_commit_leaves_every_table_as_it_was(
    tmp_path: Path,
) -> None:
    # Prepare: a round aggregating with one accepted update
    db = tmp_path / "plume.db"
    store = Store(db)
    task_id = store.create_task({"name": "t"}, "active", 0.0)
    store.set_initial_model(task_id, b"\x00" * 8, "d0", "active", 1.0)
    round_id = store.open_round(task_id, 1, 0, ["a"], 1, 1, 2.0, 30.0)
    with store.transaction() as tx:
        store.insert_update(tx, round_id, "a", "key-a", b"frame-a", 3.0)
    store.set_round_state(round_id, "aggregating")
    before, frame_bytes = _dump(db), store.frame_bytes

    def crash() -> None:
        raise OSError("killed inside the publish transaction")

    # Execute: the publish's hook before its COMMIT fails (store.py publish: `before_commit`)
    with pytest.raises(OSError, match="inside the publish"):
        store.publish(
            task_id=task_id,
            round_id=round_id,
            version=1,
            delta_frame=b"delta-1",
            digest="d1",
            params=np.ones(2, dtype="<f4").tobytes(),
            residual=b"",
            measurements={"clients": 1},
            task_state="done",
            now=4.0,
            agg_state=b"state",
            before_commit=crash,
        )
    # Assert: no version, no model, no round state changed; the next write works
    assert _dump(db) == before and store.frame_bytes == frame_bytes
    assert not store._db.in_transaction
    store.set_round_state(round_id, "aggregating")
    store.close()
    assert _dump(db) == before


def test_a_negative_keep_count_is_refused_and_prunes_nothing(tmp_path: Path) -> None:
    # Prepare: a closed round with a frame
    db = tmp_path / "plume.db"
    store = Store(db)
    _committed_round(store)
    before = _dump(db)
    # Execute / Assert: -1 is refused (SQLite reads OFFSET -1 as 0: it would empty every
    # closed round's frames), and nothing is emptied
    with pytest.raises(ValueError, match="keep_rounds must be >= 0, got -1"):
        store.prune_frames(1, -1)
    store.close()
    assert _dump(db) == before


class _CommitRolledBack:
    """The store's connection with its next COMMIT refused after SQLite rolled the
    transaction back itself (as after an I/O error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.refuse = True

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.refuse:
            self.refuse = False
            self.db.execute("ROLLBACK")
            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def test_a_commit_refused_after_sqlite_rolled_back_reports_its_own_error(tmp_path: Path) -> None:
    # Prepare: a round open; the upload's COMMIT is refused, the transaction already ended
    db = tmp_path / "plume.db"
    store = Store(db)
    task_id = store.create_task({"name": "t"}, "active", 0.0)
    round_id = store.open_round(task_id, 1, 0, ["a"], 1, 1, 1.0, 2.0)
    before, frame_bytes = _dump(db), store.frame_bytes
    real = store._db
    store._db = _CommitRolledBack(real)  # type: ignore[assignment]
    # Execute: store.py transaction's COMMIT handler (no second ROLLBACK, whose "no
    # transaction is active" would replace the error)
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        with store.transaction() as tx:
            store.insert_update(tx, round_id, "a", "key-a", b"frame-a", 1.5)
    # Assert: the real error is reported and counted, nothing was stored, writes go on
    assert store.write_failing == "disk I/O error" and store.write_errors == 1
    assert _dump(db) == before and store.frame_bytes == frame_bytes
    with store.transaction() as tx:
        store.insert_update(tx, round_id, "a", "key-a", b"frame-a", 1.5)
    assert store.count_updates(round_id) == 1 and store.write_failing is None
    store._db = real
    store.close()
