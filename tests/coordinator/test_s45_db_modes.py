"""The coordinator's database is readable by its owner alone (s45/privacy finding 1). Under the
usual umask 022, `plume coordinator serve` created plume.db, its -wal and -shm, and the lock
file 0644, and `plume coordinator restore` a new --db 0644: every local user could read every
device's update frames, train losses and ledger rows. A database the coordinator creates is
now created 0600 before SQLite opens it (SQLite gives the -wal and -shm the file's mode), the
lock file 0600; an existing database other users may read is said at start, not changed."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.service import Store

from ._restore import marked, run
from .test_h113_serve_logging import _serve_then_stop


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    """The usual umask, whatever the test runner's."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_new_database_its_wal_shm_and_lock_file_are_0600(tmp_path: Path) -> None:
    # Prepare: no database yet
    db = tmp_path / "plume.db"
    # Execute: open it as serve does, and write (a -wal and -shm appear)
    store = Store(db, exclusive=True)
    try:
        store.create_task({"name": "t"}, "awaiting_model", 0.0)
        files = [db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}.lock")]
        # Assert: each file readable and writable by its owner alone
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        store.close()


def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    # Prepare: a database the operator made 0640 (a group may be meant)
    db = tmp_path / "plume.db"
    marked(db, "old")
    db.chmod(0o640)
    # Execute
    Store(db, exclusive=True).close()
    # Assert: not changed
    assert _mode(db) == 0o640


def test_serve_warns_of_a_database_other_users_may_read_and_leaves_it(tmp_path: Path) -> None:
    # Prepare: a database made 0644 (as serve made them before)
    db = tmp_path / "plume.db"
    Store(db).close()
    db.chmod(0o644)
    # Execute
    err = _serve_then_stop(db)
    # Assert: one WARNING line naming the file, its mode and the fix (with the -wal and -shm
    # SQLite made beside it in its mode); the mode left as it was
    warnings = [line for line in err.splitlines() if "may be read by other users" in line]
    assert warnings == [
        f"WARNING:  the database {db} may be read by other users (mode 0644), and with it "
        f"every device's updates and ledger rows; chmod 600 {db} {db}-wal {db}-shm"
    ], err
    assert _mode(db) == 0o644


def test_serve_says_nothing_of_a_private_database(tmp_path: Path) -> None:
    # Prepare: a 0600 database
    db = tmp_path / "plume.db"
    Store(db).close()
    db.chmod(0o600)
    # Execute
    err = _serve_then_stop(db)
    # Assert
    assert "may be read by other users" not in err, err


def test_restore_creates_a_new_database_0600(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a backup
    backup = tmp_path / "b1.db"
    marked(backup, "backup")
    out = tmp_path / "r2" / "plume.db"
    out.parent.mkdir()
    # Execute
    assert run("restore", "--db", str(out), "--from", str(backup)) == 0
    # Assert: the restored file and its lock file are the owner's alone; no note
    assert (_mode(out), _mode(Path(f"{out}.lock"))) == (0o600, 0o600)
    assert "note" not in capsys.readouterr().err


def test_restore_through_a_dangling_symlink_creates_its_target_0600(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a backup, and a --db that is a symlink to a file not there yet
    backup = tmp_path / "b1.db"
    marked(backup, "backup")
    (tmp_path / "t").mkdir()
    target = tmp_path / "t" / "r.db"
    link = tmp_path / "l.db"
    link.symlink_to(target)
    # Execute
    assert run("restore", "--db", str(link), "--from", str(backup)) == 0
    # Assert: the target the link names is the owner's alone (helper-381: it was 0644, and
    # restore then noted its own file as readable by others)
    assert _mode(target) == 0o600
    assert "note" not in capsys.readouterr().err


def test_restore_over_an_existing_readable_database_notes_it_and_keeps_its_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a backup, and a 0644 database to replace
    backup = tmp_path / "b1.db"
    marked(backup, "backup")
    db = tmp_path / "plume.db"
    marked(db, "old")
    db.chmod(0o644)
    capsys.readouterr()
    # Execute
    assert run("restore", "--db", str(db), "--from", str(backup), "--force") == 0
    # Assert
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"plume coordinator restore: note: the database {db} may be read by other users (mode "
        f"0644), and with it every device's updates and ledger rows; chmod 600 {db}"
    ]
    assert _mode(db) == 0o644


def test_an_in_memory_store_makes_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the working directory is where a file named ":memory:" would go
    monkeypatch.chdir(tmp_path)
    # Execute
    store = Store(":memory:")
    store.close()
    # Assert: SQLite's in-memory database (a first version of the 0600 creation made an empty
    # file ":memory:" in the working directory)
    assert not (tmp_path / ":memory:").exists()
