"""A start that refuses the database writes nothing to it: the `.db`, its `-wal` and its `-shm`
are left byte for byte as they were (s24/r1, finding 1).

The checks used to read through the read-write connection the store then ran on; closing it
on a refusal let SQLite checkpoint the -wal into the .db and delete the -wal. A stray -wal of
another SQLite database beside a good store (a hand copy) was applied: the start refused the
file as "another application's (tables t)", and the .db then held only table t, where
deleting the stray -wal would have given the store back. Now the checks read through a
read-only connection, and only a database that passes them is opened read-write."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator import cli
from coordinator.service import Store
from coordinator.service.store import SCHEMA_VERSION, StoreError

from .test_service_support import ADMIN


def _files(folder: Path) -> dict[str, str]:
    """Every file of the folder but the lock file, by name: its SHA-256."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if not p.name.endswith(".lock")
    }


def _store_with_tasks(db: Path, tasks: int = 3) -> None:
    """A Plume store holding `tasks` tasks, all of it in the .db (no -wal beside it)."""
    store = Store(db)
    for i in range(tasks):
        store.create_task({"name": f"task-{i}", "pad": "x" * 3000}, "active", 1.0)
    store.close()
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def _killed_copy(src: Path, dst: Path, *statements: str) -> None:
    """`dst`: what a process killed right after committing `statements` on `src` leaves, the
    .db and a -wal holding those commits (copied while the writer still has them open)."""
    con = sqlite3.connect(src, isolation_level=None)
    con.execute("PRAGMA wal_autocheckpoint=0")
    for statement in statements:
        con.execute(statement)
    assert Path(f"{src}-wal").stat().st_size > 0
    shutil.copyfile(src, dst)
    shutil.copyfile(f"{src}-wal", f"{dst}-wal")
    con.close()


def _foreign_wal(tmp: Path, db: Path) -> None:
    """A good store with another SQLite database's -wal beside it (a hand copy)."""
    _store_with_tasks(db)
    other = tmp / "elsewhere" / "other.db"
    other.parent.mkdir()
    con = sqlite3.connect(other, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("CREATE TABLE t (x)")
    con.execute("INSERT INTO t VALUES (1)")
    shutil.copyfile(f"{other}-wal", f"{db}-wal")
    con.close()


def _newer_in_wal(tmp: Path, db: Path) -> None:
    """A store a newer Plume stamped (its schema version 5 only in the -wal)."""
    src = tmp / "elsewhere" / "plume.db"
    src.parent.mkdir()
    _store_with_tasks(src)
    newer = SCHEMA_VERSION + 1
    _killed_copy(src, db, f"UPDATE meta SET value='{newer}' WHERE key='schema_version'")


def _truncated_with_wal(tmp: Path, db: Path) -> None:
    """A killed store's .db cut to its first two pages, its -wal intact."""
    src = tmp / "elsewhere" / "plume.db"
    src.parent.mkdir()
    _store_with_tasks(src, tasks=12)
    _killed_copy(src, db, "UPDATE tasks SET state='paused' WHERE task_id=1")
    with open(db, "r+b") as f:
        f.truncate(8192)


def _truncated_mid_header_with_wal(tmp: Path, db: Path) -> None:
    src = tmp / "elsewhere" / "plume.db"
    src.parent.mkdir()
    _store_with_tasks(src)
    _killed_copy(src, db, "UPDATE tasks SET state='paused' WHERE task_id=1")
    with open(db, "r+b") as f:
        f.truncate(100)


CASES: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "foreign_wal": (_foreign_wal, "it is a SQLite database of another application (tables t)"),
    "newer_in_wal": (_newer_in_wal, f"its schema version '{SCHEMA_VERSION + 1}' is newer"),
    "truncated_with_wal": (_truncated_with_wal, "not a SQLite database or it is corrupt"),
    "mid_header_with_wal": (
        _truncated_mid_header_with_wal,
        "not a SQLite database or it is corrupt",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_refused_start_leaves_the_db_and_its_wal_byte_for_byte(tmp_path: Path, case: str) -> None:
    # Prepare
    make, words = CASES[case]
    folder = tmp_path / "store"
    folder.mkdir()
    db = folder / "plume.db"
    make(tmp_path, db)
    before = _files(folder)
    assert "plume.db-wal" in before
    # Execute
    with pytest.raises(StoreError) as refused:
        Store(db, exclusive=True)
    # Assert: refused for what the files hold, and not one byte of them changed (the -shm
    # SQLite makes to read a -wal is removed again)
    assert words in str(refused.value), str(refused.value)
    assert _files(folder) == before


def test_deleting_a_stray_wal_gives_the_store_back_after_a_refused_start(tmp_path: Path) -> None:
    # Prepare: a good store of 3 tasks with another database's -wal beside it
    folder = tmp_path / "store"
    folder.mkdir()
    db = folder / "plume.db"
    _foreign_wal(tmp_path, db)
    with pytest.raises(StoreError):
        Store(db, exclusive=True)
    # Execute: what the operator does about a stray -wal
    Path(f"{db}-wal").unlink()
    store = Store(db, exclusive=True)
    # Assert: the store as it was (before, the refusal had replaced it by the table t)
    try:
        assert [t.config["name"] for t in store.tasks()] == ["task-0", "task-1", "task-2"]
    finally:
        store.close()


def test_serve_refusing_a_foreign_wal_prints_one_line_and_changes_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    folder = tmp_path / "store"
    folder.mkdir()
    db = folder / "plume.db"
    _foreign_wal(tmp_path, db)
    before = _files(folder)
    # Execute
    with pytest.raises(SystemExit) as exited:
        cli.main(["coordinator", "serve", "--db", str(db), "--port", "0", "--admin-token", ADMIN])
    # Assert
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 1
    assert len(err) == 1 and "another application (tables t)" in err[0], err
    assert _files(folder) == before


def test_a_store_with_commits_in_its_wal_still_opens_with_them(tmp_path: Path) -> None:
    # Prepare: the honest case the read-only checks must not disturb (a killed coordinator)
    src = tmp_path / "elsewhere" / "plume.db"
    src.parent.mkdir()
    _store_with_tasks(src)
    db = tmp_path / "plume.db"
    _killed_copy(src, db, "UPDATE tasks SET state='paused' WHERE task_id=2")
    # Execute
    store = Store(db, exclusive=True)
    # Assert
    try:
        assert [t.state for t in store.tasks()] == ["active", "paused", "active"]
        assert store.journal_mode == "wal"
    finally:
        store.close()
