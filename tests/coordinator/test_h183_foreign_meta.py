"""Another application's SQLite file with a `meta` table is refused, not taken over.

Chrome's History and Cookies files (and many others) have a `meta(key, value)` table. The
store used to take any file with a `meta` table for its own: it created Plume's tables in it
and stamped schema_version 4. Now a file with any table but no schema version row is another
application's database (the same one-line error as any other), and is left byte for byte as
it was; a `meta` table with other columns gets that error too, not SQLite's "no such column".
A new (empty) file is still initialised, in one transaction with its schema version."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.service import Store
from coordinator.service import store as store_module
from coordinator.service.store import SCHEMA_VERSION, StoreError

from .test_service_support import ADMIN

FOREIGN = "it is a SQLite database of another application"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _chrome_like(path: Path) -> None:
    """The shape of Chrome's History file: meta(key, value) with a version, but no Plume's."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE meta(key LONGVARCHAR NOT NULL UNIQUE PRIMARY KEY, value LONGVARCHAR)")
    con.executemany(
        "INSERT INTO meta VALUES (?, ?)", [("version", "66"), ("last_compatible_version", "16")]
    )
    con.execute("CREATE TABLE urls(id INTEGER PRIMARY KEY, url LONGVARCHAR, title LONGVARCHAR)")
    con.execute("INSERT INTO urls(url, title) VALUES ('https://example.org', 'x')")
    con.commit()
    con.close()


def _empty_meta(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.commit()
    con.close()


def _meta_other_columns(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE meta (name TEXT, data BLOB)")
    con.execute("INSERT INTO meta VALUES ('schema_version', x'04')")
    con.commit()
    con.close()


CASES = {
    "chrome_like": (_chrome_like, "(tables meta, urls)"),
    "empty_meta": (_empty_meta, "(tables meta)"),
    "meta_other_columns": (_meta_other_columns, "(tables meta)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_foreign_meta_table_is_refused_and_the_file_is_left_byte_for_byte(
    tmp_path: Path, case: str
) -> None:
    # Prepare
    make, tables = CASES[case]
    db = tmp_path / "History"
    make(db)
    before = _md5(db)
    # Execute
    with pytest.raises(StoreError) as refused:
        Store(db, exclusive=True)
    # Assert
    text = str(refused.value)
    assert FOREIGN in text and tables in text and str(db) in text, text
    assert "no such column" not in text
    assert _md5(db) == before
    # nor a lock file beside it (tests/coordinator/test_s44_refused_start_lock.py)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["History"]
    con = sqlite3.connect(db)
    names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    con.close()
    assert "tasks" not in names and "updates" not in names


def test_serve_on_a_chrome_like_file_prints_the_foreign_database_line(tmp_path: Path) -> None:
    # Prepare (a subprocess with a timeout: the code before served the file, and never
    # returned)
    db = tmp_path / "History"
    _chrome_like(db)
    before = _md5(db)
    cmd = [sys.executable, "-m", "coordinator.cli", "coordinator", "serve", "--db", str(db)]
    # Execute
    try:
        done = subprocess.run(
            [*cmd, "--port", "0", "--admin-token", ADMIN],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("serve took the foreign file and ran")
    # Assert
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(err) == 1 and err[0].startswith("plume coordinator serve: error: ")
    assert FOREIGN in err[0] and "pick another --db" in err[0]
    assert _md5(db) == before


@pytest.mark.parametrize("empty_file", [True, False])
def test_a_new_or_empty_file_is_still_initialised(tmp_path: Path, empty_file: bool) -> None:
    # Prepare: a zero-byte file (touched by an installer), or no file at all
    db = tmp_path / "plume.db"
    if empty_file:
        db.write_bytes(b"")
    # Execute
    store = Store(db)
    # Assert
    assert store._query("SELECT value FROM meta WHERE key='schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
    store.close()
    Store(db).close()  # and it opens again as Plume's


def test_an_interrupted_creation_leaves_no_tables_and_the_next_start_initialises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the creation fails after Plume's tables were made, before it ends (as a start
    # killed there would): tables without a version would be refused as another
    # application's at the next start
    db = tmp_path / "plume.db"
    monkeypatch.setattr(store_module, "_SCHEMA", store_module._SCHEMA + "SELECT nope();\n")
    with pytest.raises(StoreError):
        Store(db)
    con = sqlite3.connect(db)
    left = con.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    con.close()
    monkeypatch.undo()
    # Execute
    store = Store(db)
    # Assert
    assert left == []
    assert store._query("SELECT value FROM meta WHERE key='schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
    store.close()
