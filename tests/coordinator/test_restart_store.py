"""Starting on a database the coordinator cannot use: a newer schema, another application's
SQLite file, a corrupt or read-only file. Each is one clear sentence (`StoreError`, and one
`plume coordinator serve: error:` line), never a traceback, and the file is left unchanged."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from coordinator import cli
from coordinator.service import Store
from coordinator.service import store as store_module
from coordinator.service.store import SCHEMA_VERSION, StoreError

from .test_service_support import ADMIN


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plume_store(path: Path) -> None:
    Store(path).close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the whole store in the main file
    con.close()


def _newer(path: Path) -> None:
    _plume_store(path)
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.execute("PRAGMA journal_mode=DELETE")  # as a newer coordinator might leave it
    con.close()


def _foreign(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, data BLOB)")
    con.commit()
    con.close()


def _corrupt(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 20)


CASES = {
    "newer": (_newer, f"schema version '{SCHEMA_VERSION + 1}' is newer than this coordinator's"),
    "foreign": (_foreign, "another application (tables photos), not a Plume store"),
    "corrupt": (_corrupt, "not a SQLite database or it is corrupt"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_unusable_database_is_refused_with_a_sentence_and_left_unchanged(
    tmp_path: Path, case: str
) -> None:
    # Prepare
    make, words = CASES[case]
    db = tmp_path / "plume.db"
    make(db)
    before = _digest(db)
    # Execute
    with pytest.raises(StoreError) as refused:
        Store(db)
    # Assert
    assert words in str(refused.value) and str(db) in str(refused.value)
    assert _digest(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plume.db"]  # no -wal/-shm made


@pytest.mark.parametrize("case", sorted(CASES))
def test_serve_on_an_unusable_database_prints_one_error_line(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    make, words = CASES[case]
    db = tmp_path / "plume.db"
    make(db)
    # Execute
    with pytest.raises(SystemExit) as exited:
        cli.main(["coordinator", "serve", "--db", str(db), "--port", "0", "--admin-token", ADMIN])
    # Assert
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 1
    assert len(err) == 1 and err[0].startswith("plume coordinator serve: error: ")
    assert words in err[0] and "Traceback" not in err[0]


def test_a_read_only_database_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a Plume store opened the way SQLite opens a file it may not write (file
    # permissions cannot show it here: the tests may run as root, who writes anyway)
    db = tmp_path / "plume.db"
    _plume_store(db)
    before = _digest(db)
    connect = sqlite3.connect

    def read_only(path: str, **kw: Any) -> sqlite3.Connection:
        return connect(f"file:{path}?mode=ro", uri=True, **kw)

    monkeypatch.setattr(store_module.sqlite3, "connect", read_only)
    # Execute
    with pytest.raises(StoreError) as refused:
        Store(db)
    # Assert
    assert "it is read-only" in str(refused.value)
    assert _digest(db) == before


def test_a_current_store_still_opens_in_wal_mode(tmp_path: Path) -> None:
    # Prepare: a current store (the honest path the checks above must not disturb)
    db = tmp_path / "plume.db"
    _plume_store(db)
    # Execute
    store = Store(db)
    # Assert
    assert store.journal_mode == "wal"
    assert store._query("SELECT value FROM meta WHERE key='schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
    store.close()
