"""A refused `plume coordinator restore` removes what it created and nothing else (helper-222's
walkthrough: `restore --db new.db --from serve.log` was refused and left `new.db.lock`
behind). The lock file goes again when the restore created it; a lock file that was there
stays; a `--db` that did not exist is not left behind, empty, by a restore that failed after
SQLite created it; a restore that succeeds keeps its database and lock file."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

import coordinator._cli as cli

from ._restore import marked, names, run


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_a_refused_restore_to_a_new_db_leaves_no_lock(tmp_path: Path) -> None:
    # Prepare: a log file given as the backup (not a database)
    log = tmp_path / "serve.log"
    log.write_text("INFO started\n")
    # Execute
    code = run("restore", "--db", str(tmp_path / "new.db"), "--from", str(log))
    # Assert: refused, and the folder holds what it held
    assert code == 1
    assert _files(tmp_path) == {"serve.log"}


def test_a_refused_restore_keeps_a_lock_file_that_was_there(tmp_path: Path) -> None:
    # Prepare: a database a coordinator served (its lock file stays after it stops)
    db, log = tmp_path / "plume.db", tmp_path / "serve.log"
    marked(db, "kept")
    (tmp_path / "plume.db.lock").write_text("4242\n")
    log.write_text("INFO started\n")
    before = db.read_bytes()
    # Execute
    code = run("restore", "--db", str(db), "--from", str(log))
    # Assert: the lock file stays (the restore rewrote only its pid), the database as it was
    assert code == 1
    assert _files(tmp_path) == {"plume.db", "plume.db.lock", "serve.log"}
    assert db.read_bytes() == before


def test_a_refused_restore_of_an_existing_db_without_lock_removes_only_the_lock(
    tmp_path: Path,
) -> None:
    db, log = tmp_path / "plume.db", tmp_path / "serve.log"
    marked(db, "kept")
    log.write_text("INFO started\n")
    before = db.read_bytes()
    code = run("restore", "--db", str(db), "--from", str(log))
    assert code == 1
    assert _files(tmp_path) == {"plume.db", "serve.log"}
    assert db.read_bytes() == before


class _FailingBackup:
    """A connection to the backup whose copy into the database fails part way."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def backup(self, target: sqlite3.Connection, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")


def test_a_restore_that_fails_after_sqlite_created_the_db_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a sound backup, and a copy that fails after the new database was opened
    backup = tmp_path / "backup.db"
    marked(backup, "b")
    real = cli._connect_existing
    monkeypatch.setattr(cli, "_connect_existing", lambda *a, **k: _FailingBackup(real(*a, **k)))
    # Execute
    code = run("restore", "--db", str(tmp_path / "new.db"), "--from", str(backup))
    # Assert
    assert code == 1
    assert _files(tmp_path) == {"backup.db"}


def test_a_restore_that_succeeds_keeps_its_database_and_lock(tmp_path: Path) -> None:
    backup, db = tmp_path / "backup.db", tmp_path / "new.db"
    marked(backup, "b")
    code = run("restore", "--db", str(db), "--from", str(backup))
    assert code == 0
    assert _files(tmp_path) == {"backup.db", "new.db", "new.db.lock"}
    assert names(db) == ["b"]
