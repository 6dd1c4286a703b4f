"""A start that refuses the database removes the `<db>.lock` file it created (before, `plume
coordinator serve --db History` left `History.lock` beside another application's database and
`--db serve.log` a `serve.log.lock`); a lock file that was there before stays."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from coordinator.service import Store
from coordinator.service.store import StoreError


def _other_application(db: Path) -> None:
    con = sqlite3.connect(db)
    con.execute("create table urls(id)")
    con.commit()
    con.close()


@pytest.mark.parametrize("kind", ["text", "sqlite"])
def test_a_refused_start_leaves_no_lock_file(tmp_path: Path, kind: str) -> None:
    # Prepare: a file of another program
    db = tmp_path / ("serve.log" if kind == "text" else "History")
    if kind == "text":
        db.write_text("hello\n")
    else:
        _other_application(db)
    # Execute
    with pytest.raises(StoreError, match="cannot use the database"):
        Store(db, exclusive=True)
    # Assert: the folder holds that file alone
    assert sorted(p.name for p in tmp_path.iterdir()) == [db.name]


def test_a_lock_file_that_was_there_stays(tmp_path: Path) -> None:
    # Prepare: a file of another program and a lock file beside it already
    db = tmp_path / "History"
    _other_application(db)
    lock = tmp_path / "History.lock"
    lock.write_text("123\n")
    # Execute
    with pytest.raises(StoreError):
        Store(db, exclusive=True)
    # Assert
    assert lock.exists()


def test_an_opened_store_keeps_its_lock_file_while_open(tmp_path: Path) -> None:
    # Execute
    store = Store(tmp_path / "plume.db", exclusive=True)
    # Assert
    assert (tmp_path / "plume.db.lock").exists()
    store.close()
