"""`plume coordinator restore`/`backup` open an existing database through a SQLite URI; a file
name that is not UTF-8 (Linux allows any bytes) made the URI's quoting raise 'utf-8 codec can't
encode' (helper-205). The path is now quoted as bytes."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from coordinator._cli import _connect_existing


@pytest.mark.parametrize("immutable", [False, True])
def test_a_database_whose_name_is_not_utf8_opens(tmp_path: Path, immutable: bool) -> None:
    # Prepare: a database named with a byte that is no UTF-8, and URI-special characters
    raw = os.path.join(os.fsencode(tmp_path), b"backup\xff ?#%20.db")
    with sqlite3.connect(raw) as db:
        db.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    db.close()
    # Execute
    conn = _connect_existing(Path(os.fsdecode(raw)), immutable=immutable)
    try:
        tables = conn.execute("SELECT name FROM sqlite_master").fetchall()
    finally:
        conn.close()
    # Assert: that very file (no new database made under another name)
    assert tables == [("meta",)]
    assert sorted(os.listdir(os.fsencode(tmp_path))) == [b"backup\xff ?#%20.db"]
