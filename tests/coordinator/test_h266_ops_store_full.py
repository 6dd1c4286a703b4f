"""A start on a full file system names it and leaves no lock file (s25/ops finding 9).

Before: a new database on a full disk failed with "[Errno 28] No space left on device" (no
file named: the lock file's pid could not be written) and left an empty `<db>.lock`; an
existing one failed with SQLite's "disk I/O error" (its -shm could not grow), which points at
the hardware. Now both say "no space left on the file system of PATH", and a lock file this
start created is removed. The full disk is simulated (ENOSPC from `os.write` on the lock file;
SQLite's errors raised where the store connects), not made.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from coordinator.cli import main
from coordinator.service import Store
from coordinator.service import store as store_module
from coordinator.service.store import StoreError, lock_path


def _lock_write_fails(monkeypatch: pytest.MonkeyPatch, code: int = errno.ENOSPC) -> None:
    """`os.write` to a `.lock` file fails with `code`; other writes go through."""
    real = os.write

    def write(fd: int, data: Any) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".lock"):
            raise OSError(code, os.strerror(code))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def test_a_lock_file_that_cannot_be_written_names_the_full_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    db = tmp_path / "new.db"
    _lock_write_fails(monkeypatch)
    # Execute
    with pytest.raises(StoreError) as refused:
        Store(db, exclusive=True)
    # Assert: the sentence names the file system by the lock file; the lock file is gone
    text = str(refused.value)
    assert f"no space left on the file system of {lock_path(db)}" in text, text
    assert "df " in text
    assert not Path(lock_path(db)).exists()
    assert not db.exists()


def test_a_lock_file_that_was_there_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a lock file a stopped coordinator left (its pid in it)
    db = tmp_path / "plume.db"
    Path(lock_path(db)).write_text("12345\n")
    _lock_write_fails(monkeypatch, errno.EIO)
    # Execute
    with pytest.raises(StoreError) as refused:
        Store(db, exclusive=True)
    # Assert: named, not removed (this start did not create it)
    assert f"cannot write its lock file {lock_path(db)}" in str(refused.value)
    assert Path(lock_path(db)).exists()


def test_serve_on_a_full_file_system_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    db = tmp_path / "new.db"
    _lock_write_fails(monkeypatch)
    # Execute
    with pytest.raises(SystemExit) as stopped:
        main(["coordinator", "serve", "--db", str(db), "--port", "0", "--log-level", "error"])
    # Assert: status 1 (retried: space may come back), the file system named, no lock left
    err = capsys.readouterr().err
    assert stopped.value.code == 1, err
    assert f"no space left on the file system of {lock_path(db)}" in err, err
    assert "Errno 28" not in err
    assert not Path(lock_path(db)).exists()


def _sqlite_error(text: str, name: str) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(text)
    exc.sqlite_errorname = name  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    ("text", "name", "free_blocks", "full"),
    [
        ("disk I/O error", "SQLITE_IOERR_SHMSIZE", 0, True),
        ("database or disk is full", "SQLITE_FULL", 10_000, True),
        ("disk I/O error", "SQLITE_IOERR_READ", 10_000, False),
    ],
)
def test_an_existing_database_on_a_full_file_system_names_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    name: str,
    free_blocks: int,
    full: bool,
) -> None:
    # Prepare: a store, then SQLite failing when it is opened again, and the file system's
    # free blocks as given
    db = tmp_path / "plume.db"
    Store(db).close()

    def connect(*args: Any, **kwargs: Any) -> Any:
        raise _sqlite_error(text, name)

    monkeypatch.setattr(store_module, "_connect_read_only", connect)
    real_statvfs = os.statvfs
    monkeypatch.setattr(
        os,
        "statvfs",
        lambda p: (
            SimpleNamespace(f_bavail=free_blocks) if str(p) == str(tmp_path) else real_statvfs(p)
        ),
    )
    # Execute
    with pytest.raises(StoreError) as refused:
        Store(db, exclusive=True)
    # Assert: "no space left" only when the file system is full; SQLite's words kept
    said = str(refused.value)
    assert (f"no space left on the file system of {db}" in said) is full, said
    assert text in said
