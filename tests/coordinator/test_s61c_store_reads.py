"""The store's reads and probes at their edges (the s61c mutation hunt on store.py): a database
left with a hot rollback journal (a writer killed mid-transaction) opens at its last committed
state, the journal rolled back; `probe_write` writes nothing while the store is healthy, tries
at most once per `every_s` while it is not, and leaves no transaction open when its COMMIT is
refused; the model reads raise `KeyError` for a task without a model instead of answering
something else; the nonce horizon's forgotten bound is read back after a restart (a hand-edited
one ignored with a warning), kept by the first prune of a store that had none, and a prune at
the horizon itself (nor a clamp) does not lower it; a failed creation names its own error;
training losses at both ends of their range are read back exactly; and a finished round's
measurements are not overwritten."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from coordinator.service import store as store_module
from coordinator.service.store import Store, StoreError
from protocol.messages import MAX_TRAIN_LOSS


def _kill_mid_transaction(db: Path) -> None:
    """Switch the (closed) store at `db` to a rollback journal, as `restore` writes, then in a
    child process change every task's config inside a transaction large enough to spill pages
    into the file, and die there (os._exit): the `-journal` left is hot."""
    code = textwrap.dedent(
        f"""
        import os, sqlite3
        conn = sqlite3.connect({str(db)!r}, isolation_level=None)
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA cache_size=1")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE tasks SET config_json='{{\\"name\\": \\"uncommitted\\"}}'")
        for i in range(64):
            conn.execute(
                "INSERT INTO devices VALUES (?, ?, 0)", (f"ghost-{{i}}", os.urandom(4096))
            )
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_hot_rollback_journal_is_rolled_back_and_the_store_opens_as_committed(
    tmp_path: Path,
) -> None:
    # Prepare: a store with one task, then a writer killed inside a transaction
    db = tmp_path / "plume.db"
    store = Store(db)
    task_id = store.create_task({"name": "committed"}, "awaiting_model", 1.0)
    store.close()
    _kill_mid_transaction(db)
    journal = Path(f"{db}-journal")
    assert journal.stat().st_size > 0  # hot: the read-only check cannot read past it
    # Execute: open it (store.py _check_file: SQLITE_READONLY_ROLLBACK through the read-only
    # connection; `_open` then checks it through its own connection)
    again = Store(db)
    # Assert: the committed task, no uncommitted row, the journal gone, WAL on again
    try:
        assert [(t.task_id, t.config) for t in again.tasks()] == [(task_id, {"name": "committed"})]
        assert again.count_devices() == 0
        assert not journal.exists()
        assert again.journal_mode == "wal"
    finally:
        again.close()


class _RefusedCommit:
    """The store's connection with its COMMITs refused as by a full disk."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def test_probe_write_writes_nothing_while_the_store_takes_writes(tmp_path: Path) -> None:
    # Prepare: a healthy store
    store = Store(tmp_path / "plume.db")
    changes = store._db.total_changes
    # Execute / Assert: no write is tried (store.py probe_write's early return)
    assert store.probe_write(every_s=0.0) is None
    assert store._db.total_changes == changes
    store.close()


def test_probe_write_tries_once_per_interval_and_leaves_no_transaction_open(
    tmp_path: Path,
) -> None:
    # Prepare: a store whose last write failed, its COMMITs refused
    store = Store(tmp_path / "plume.db")
    real = store._db
    store._db = _RefusedCommit(real)  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError):
        store.set_task_state(1, "active")
    assert store.write_failing == "database or disk is full"
    # Execute: a probe, then another within its interval, then one after the disk is freed
    first = store.probe_write(every_s=3600.0)
    open_after_first = real.in_transaction
    store._db = real
    within = store.probe_write(every_s=3600.0)
    store._probed -= 3600.0  # the interval has passed
    after = store.probe_write(every_s=3600.0)
    # Assert: the refused probe was rolled back, the second was not tried, the third recovered
    assert first == "database or disk is full" and not open_after_first
    assert within == "database or disk is full"
    assert after is None and store.write_failing is None
    assert store._query("SELECT COUNT(*) FROM meta WHERE key='plume_write_probe'") == [(0,)]
    store.close()


def test_model_reads_of_a_task_without_a_model_raise_key_error(tmp_path: Path) -> None:
    # Prepare: a task awaiting its model
    store = Store(tmp_path / "plume.db")
    task_id = store.create_task({"name": "t"}, "awaiting_model", 1.0)
    # Execute / Assert: no params (store.py task_model and task_params), and no task at all
    # (task_aggregator_state) are KeyError, as their callers catch
    with pytest.raises(KeyError):
        store.task_model(task_id)
    with pytest.raises(KeyError):
        store.task_params(task_id)
    with pytest.raises(KeyError):
        store.task_model(task_id + 1)
    with pytest.raises(KeyError):
        store.task_aggregator_state(task_id + 1)
    assert store.task_aggregator_state(task_id) is None
    store.close()


def test_the_newest_forgotten_nonce_is_read_back_after_a_restart(tmp_path: Path) -> None:
    # Prepare: nonces at 1000 and 5000 pruned below 6000 (horizon 6000, forgotten 5000)
    db = tmp_path / "plume.db"
    store = Store(db)
    store.remember_nonce("d", "n1", 1000)
    store.remember_nonce("d", "n2", 5000)
    assert store.prune_nonces(6000, now_ms=10_000) == 2
    store.close()
    # Execute: reopened (store.py _stored_forgotten reads the row), then the clock is found
    # at 5500, before the horizon
    again = Store(db)
    lowered = again.clamp_nonce_horizon(5500)
    again.close()
    # Assert: lowered to just after the newest forgotten timestamp, not to the clock (which
    # would let a replay of the nonce at 5000 through once the clock passes 5000)
    assert lowered == 5001


def test_a_store_reopened_before_its_first_prune_prunes_and_keeps_a_forgotten_bound(
    tmp_path: Path,
) -> None:
    # Prepare: a nonce remembered, the store closed before any prune (no forgotten row)
    db = tmp_path / "plume.db"
    store = Store(db)
    store.remember_nonce("d", "n1", 1000)
    store.close()
    again = Store(db)
    # Execute: the first prune after the restart (store.py prune_nonces, forgotten unknown)
    pruned = again.prune_nonces(2000, now_ms=10_000)
    # Assert: the nonce is gone, the horizon is the cut-off, and the forgotten bound kept is
    # the cut-off's last millisecond (everything deleted lies before it)
    rows = again._query(
        "SELECT key, value FROM meta WHERE key IN ('nonce_horizon_ms', 'nonce_forgotten_ms') "
        "ORDER BY key"
    )
    again.close()
    assert pruned == 1
    assert rows == [("nonce_forgotten_ms", "1999"), ("nonce_horizon_ms", "2000")]


def test_a_prune_at_the_horizon_itself_does_not_lower_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a nonce at 5000 pruned below 6000: horizon 6000, forgotten 5000
    store = Store(tmp_path / "plume.db")
    store.remember_nonce("d", "n1", 5000)
    store.prune_nonces(6000, now_ms=10_000)
    # Execute: the next prune runs with its clock exactly at the horizon (store.py
    # prune_nonces: `ahead > 0`), which is not ahead of it
    with caplog.at_level(logging.WARNING, logger="plume.coordinator"):
        store.prune_nonces(1000, now_ms=6000)
    # Assert: kept, without the clock-set-back warning
    assert store.nonce_horizon_ms == 6000
    assert "ahead of the clock" not in caplog.text
    store.close()


@pytest.mark.parametrize(
    ("stored", "lowered", "warned"),
    [("-1", 0, False), ("-2", 5000, True), ("12ab", 5000, True), ("", 5000, True)],
)
def test_a_stored_forgotten_bound_is_read_as_written_or_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, stored: str, lowered: int, warned: bool
) -> None:
    # Prepare: a horizon at 9000 and a forgotten bound as stored (-1: nothing was forgotten;
    # the others are hand edits)
    db = tmp_path / "plume.db"
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO meta VALUES ('nonce_horizon_ms', '9000')")
    conn.execute("INSERT INTO meta VALUES ('nonce_forgotten_ms', ?)", (stored,))
    conn.commit()
    conn.close()
    # Execute: opened (store.py _stored_forgotten), then the clock is found at 5000
    with caplog.at_level(logging.WARNING, logger="plume.coordinator"):
        store = Store(db)
    got = store.clamp_nonce_horizon(5000)
    store.close()
    # Assert: -1 lowers the horizon to 0 (no pruned nonce lies after it); a value that is not
    # a time is ignored, said once, and the horizon lowered to the clock
    assert got == lowered
    assert ("nonce_forgotten_ms of" in caplog.text) is warned


def test_a_failed_creation_names_its_own_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the new store's creation script fails midway
    monkeypatch.setattr(store_module, "_SCHEMA", store_module._SCHEMA + "SELECT nope();\n")
    # Execute / Assert: the creation's error, not a later "no such table: meta" (store.py
    # _open re-raises it after the rollback)
    with pytest.raises(StoreError, match="no such function: nope"):
        Store(tmp_path / "plume.db")


def test_a_clamp_at_the_horizon_itself_does_not_lower_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: horizon 6000, forgotten 5000
    store = Store(tmp_path / "plume.db")
    store.remember_nonce("d", "n1", 5000)
    store.prune_nonces(6000, now_ms=10_000)
    # Execute: a signed request's clock exactly at the horizon (store.py clamp_nonce_horizon:
    # `ahead <= 0`)
    with caplog.at_level(logging.WARNING, logger="plume.coordinator"):
        got = store.clamp_nonce_horizon(6000)
    # Assert: unchanged, nothing said
    assert got == 6000 == store.nonce_horizon_ms
    assert "ahead of the clock" not in caplog.text
    store.close()


def test_the_training_losses_at_both_ends_of_the_range_are_read_back(tmp_path: Path) -> None:
    # Prepare: updates carrying losses 0, the largest accepted, and one past it (a hand edit)
    db = tmp_path / "plume.db"
    store = Store(db)
    task_id = store.create_task({"name": "t"}, "active", 0.0)
    round_id = store.open_round(task_id, 1, 0, ["a", "b", "c"], 3, 1, 1.0, 2.0)
    with store.transaction() as tx:
        store.insert_update(tx, round_id, "a", "ka", b"fa", 1.5, 0.0)
        store.insert_update(tx, round_id, "b", "kb", b"fb", 1.5, MAX_TRAIN_LOSS)
        store.insert_update(tx, round_id, "c", "kc", b"fc", 1.5, 1.0)
    store.close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE updates SET train_loss=? WHERE device_id='c'", (MAX_TRAIN_LOSS * 2,))
    conn.commit()
    conn.close()
    # Execute: read back after a restart, as a resumed round's replay reads them (store.py
    # _stored_loss)
    again = Store(db)
    losses = {u.device_id: u.train_loss for u in again.updates(round_id)}
    again.close()
    # Assert: both ends kept exactly; the value no upload carries reads as none
    assert losses == {"a": 0.0, "b": MAX_TRAIN_LOSS, "c": None}


def test_round_measurements_of_a_finished_round_are_not_overwritten(tmp_path: Path) -> None:
    # Prepare: one round open, one abandoned
    store = Store(tmp_path / "plume.db")
    task_id = store.create_task({"name": "t"}, "active", 0.0)
    live = store.open_round(task_id, 1, 0, ["a"], 1, 1, 1.0, 2.0)
    done = store.open_round(task_id, 2, 0, ["a"], 1, 1, 1.0, 2.0)
    store.abandon(done, task_id, {"abandoned": "deadline"}, "active", 3.0)
    # Execute (store.py set_round_measurements: `rowcount > 0`)
    wrote_live = store.set_round_measurements(live, {"pending_dp": 1})
    wrote_done = store.set_round_measurements(done, {"pending_dp": 2})
    wrote_none = store.set_round_measurements(done + 1, {"pending_dp": 3})
    # Assert: only the open round's record changed, and the answers say so
    assert (wrote_live, wrote_done, wrote_none) == (True, False, False)
    one, two = store.round(live), store.round(done)
    assert one is not None and one.measurements == {"pending_dp": 1}
    assert two is not None and two.measurements == {"abandoned": "deadline"}
    store.close()


def test_round_and_task_rows_read_back_field_for_field(tmp_path: Path) -> None:
    # Prepare: two tasks (so ids differ from sequence numbers), a round of the second with
    # every field distinct, and two damaged rounds of it (a selection of numbers, and one
    # that does not parse)
    db = tmp_path / "plume.db"
    store = Store(db)
    store.create_task({"name": "first"}, "awaiting_model", 0.5)
    task_id = store.create_task({"name": "t"}, "active", 1.0)
    store.set_initial_model(task_id, b"\x00" * 8, "d0", "active", 1.5)
    round_id = store.open_round(task_id, 7, 0, ["b", "a"], 5, 3, 11.0, 41.0)
    damaged = store.open_round(task_id, 8, 0, ["a"], 1, 1, 50.0, 60.0)
    unparsed = store.open_round(task_id, 9, 0, ["a"], 1, 1, 50.0, 60.0)
    store.close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE rounds SET selected_json='[1]' WHERE round_id=?", (damaged,))
    conn.execute("UPDATE rounds SET selected_json='[' WHERE round_id=?", (unparsed,))
    conn.commit()
    conn.close()
    # Execute: read back after a restart (store.py _round and _task)
    again = Store(db)
    got = again.round(round_id)
    task = again.task(task_id)
    with pytest.raises(store_module.DamagedRow) as caught:
        again.round(damaged)
    with pytest.raises(store_module.DamagedRow) as unparsed_caught:
        again.round(unparsed)
    again.close()
    # Assert: every field as written
    assert got == store_module.RoundRow(
        round_id=round_id,
        task_id=task_id,
        seq=7,
        state="open",
        base_version=0,
        selected=["b", "a"],
        target=5,
        min_reports=3,
        opened_unix=11.0,
        deadline_unix=41.0,
        closed_unix=None,
        version_after=None,
        measurements={},
    )
    assert task == store_module.TaskRow(task_id, {"name": "t"}, "active", 0, "d0")
    assert (caught.value.key, caught.value.task_id) == (damaged, task_id)
    assert (unparsed_caught.value.key, unparsed_caught.value.task_id) == (unparsed, task_id)
