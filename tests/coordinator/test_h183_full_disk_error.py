"""A full disk is reported as a full disk, not as "cannot rollback".

After SQLITE_FULL (or an I/O error) inside a transaction, SQLite has already rolled it back;
`Store.transaction` ran ROLLBACK unconditionally and that error ("cannot rollback - no
transaction is active") replaced the real one in the 503 detail and the log. The full disk is
made with `PRAGMA max_page_count` (the database may not grow past its current pages)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from coordinator.service import Store

from .test_restart_midround import Clock, _frame, _open_round, _start
from .test_service_support import task_config

FULL = "database or disk is full"


def _fill_up(db: sqlite3.Connection) -> None:
    """No page may be added to the database from now on (as if its disk were full)."""
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count={pages}")


def test_a_full_disk_in_a_transaction_raises_the_full_disk_error(tmp_path: Path) -> None:
    # Prepare
    store = Store(tmp_path / "plume.db")
    _fill_up(store._db)
    # Execute
    with pytest.raises(sqlite3.OperationalError) as refused:
        store.register_device("a", b"k" * 200_000, 0.0)
    # Assert: the real error, and the store still takes the next transaction
    assert FULL in str(refused.value), refused.value
    assert "cannot rollback" not in str(refused.value)
    assert not store._db.in_transaction
    store._db.execute("PRAGMA max_page_count=1073741823")
    assert store.register_device("a", b"k" * 32, 0.0)
    store.close()


def test_a_full_disk_after_earlier_writes_keeps_none_of_them(tmp_path: Path) -> None:
    # Prepare
    store = Store(tmp_path / "plume.db")
    _fill_up(store._db)
    # Execute: a small write that fits, then one that does not, in one transaction
    with pytest.raises(sqlite3.OperationalError) as refused:
        with store.transaction() as db:
            db.execute("INSERT INTO meta(key, value) VALUES ('h183', 'x')")
            db.execute(
                "INSERT INTO devices(device_id, public_key, registered_unix) VALUES (?, ?, 0)",
                ("b", b"k" * 200_000),
            )
    # Assert
    assert FULL in str(refused.value), refused.value
    assert store._query("SELECT value FROM meta WHERE key='h183'") == []
    store.close()


def test_an_upload_on_a_full_disk_reports_the_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: an open round with devices a and b selected, then a disk with no room for the
    # upload's transaction (the test model's frame, 129 bytes, fits in pages the store
    # already has: the accept transaction also writes 200 kB of ballast, SQLite's own full
    # disk error at the upload's insert)
    db = tmp_path / "plume.db"
    cfg = task_config(rounds=2, clients_per_round=2, selection_timeout_s=30)
    coord = _start(db, Clock())
    _, round_id = _open_round(coord, cfg)
    store = coord.store
    store._db.execute("CREATE TABLE h183_ballast (data BLOB)")
    insert = store.insert_update

    def insert_with_ballast(tx: sqlite3.Connection, *args: Any) -> Any:
        done = insert(tx, *args)
        tx.execute("INSERT INTO h183_ballast VALUES (?)", (b"x" * 200_000,))
        return done

    monkeypatch.setattr(store, "insert_update", insert_with_ballast)
    _fill_up(store._db)
    # Execute
    with pytest.raises(sqlite3.OperationalError) as refused:
        coord.submit(round_id, "a", "key-a", _frame(cfg, 0))
    # Assert: the error app.py turns into the 503's detail and its log line
    assert FULL in str(refused.value), refused.value
    assert "cannot rollback" not in str(refused.value)
    assert store._query("SELECT device_id FROM updates") == []
    monkeypatch.undo()
    coord.submit(round_id, "a", "key-a", _frame(cfg, 0))  # the retry is taken
    assert store._query("SELECT device_id FROM updates") == [("a",)]
    store.close()
