"""An empty (or missing) database file beside a non-empty -wal is refused as damage, not served
as a brand-new store (s24/r1, finding 2).

A store's file always keeps its first page (SQLite writes it when the store turns WAL on,
before any -wal exists), so a 0-byte .db with commits in its -wal is a truncated or removed
file. SQLite's first look at an empty database file deletes its -wal: the start served an
empty coordinator and the commits were gone. Now the start refuses with one line and leaves
both files as they were."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.service import Store
from coordinator.service.store import StoreError

from .test_service_support import ADMIN

DAMAGE = "its -wal file holds"


def _files(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if not p.name.endswith(".lock")
    }


def _killed_store(tmp: Path, db: Path) -> None:
    """`db` and its -wal as a coordinator killed after creating two tasks leaves them."""
    src = tmp / "elsewhere" / "plume.db"
    src.parent.mkdir()
    store = Store(src)
    store.create_task({"name": "a"}, "active", 1.0)
    store.create_task({"name": "b"}, "active", 1.0)
    # Copied while the store is open: its commits are in the -wal, not yet in the .db.
    assert Path(f"{src}-wal").stat().st_size > 0
    shutil.copyfile(src, db)
    shutil.copyfile(f"{src}-wal", f"{db}-wal")
    store.close()


@pytest.mark.parametrize("damage", ["emptied", "removed"])
def test_a_wal_beside_an_empty_or_missing_database_file_is_refused(
    tmp_path: Path, damage: str
) -> None:
    # Prepare
    folder = tmp_path / "store"
    folder.mkdir()
    db = folder / "plume.db"
    _killed_store(tmp_path, db)
    if damage == "emptied":
        db.write_bytes(b"")
    else:
        db.unlink()
    before = _files(folder)
    wal_bytes = Path(f"{db}-wal").stat().st_size
    # Execute
    with pytest.raises(StoreError) as refused:
        Store(db, exclusive=True)
    # Assert: one sentence naming the damage, and the -wal kept (SQLite would delete it)
    text = str(refused.value)
    assert f"{DAMAGE} {wal_bytes} bytes" in text and "restore a backup" in text, text
    assert ("is empty (0 bytes)" if damage == "emptied" else "does not exist") in text
    assert "\n" not in text
    assert _files(folder) == before


def test_serve_on_an_empty_database_file_with_a_wal_prints_one_line(tmp_path: Path) -> None:
    # Prepare (a subprocess with a timeout: the code before served an empty store, and never
    # returned)
    folder = tmp_path / "store"
    folder.mkdir()
    db = folder / "plume.db"
    _killed_store(tmp_path, db)
    db.write_bytes(b"")
    before = _files(folder)
    cmd = [sys.executable, "-m", "coordinator.cli", "coordinator", "serve", "--db", str(db)]
    # Execute
    try:
        done = subprocess.run(
            [*cmd, "--port", "0", "--admin-token", ADMIN],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("serve took the empty file for a new store and ran")
    # Assert
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(err) == 1 and err[0].startswith("plume coordinator serve: error: "), err
    assert DAMAGE in err[0]
    assert _files(folder) == before


def test_an_empty_database_file_with_an_empty_wal_is_still_a_new_store(tmp_path: Path) -> None:
    # Prepare: what a reader leaves (an empty -wal holds no commit)
    db = tmp_path / "plume.db"
    db.write_bytes(b"")
    Path(f"{db}-wal").write_bytes(b"")
    # Execute
    store = Store(db)
    # Assert
    try:
        assert store.tasks() == []
        assert store.journal_mode == "wal"
    finally:
        store.close()
    con = sqlite3.connect(db)
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("5",)
    con.close()
