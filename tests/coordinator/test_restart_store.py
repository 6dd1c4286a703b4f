"""Starting on a database the coordinator cannot use: a newer schema, another application's
SQLite file, a corrupt or read-only file. Each is one clear sentence (`StoreError`, and one
`plume coordinator serve: error:` line), never a traceback, and the file is left unchanged."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator import cli
from coordinator.service import Store
from coordinator.service import store as store_module
from coordinator.service.store import SCHEMA_VERSION, StoreError

from .test_service_persistence import coordinator as serve_process
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


def test_a_second_exclusive_store_on_one_database_is_refused_until_the_first_closes(
    tmp_path: Path,
) -> None:
    # Prepare: a coordinator's store, opened as `serve` opens it
    db = tmp_path / "plume.db"
    first = Store(db, exclusive=True)
    # Execute: a second coordinator on the same database (a restart before the old one ended)
    with pytest.raises(StoreError) as refused:
        Store(db, exclusive=True)
    first.close()
    again = Store(db, exclusive=True)
    # Assert: refused naming the holder; free again once the first closed
    assert f"another coordinator (pid {os.getpid()}) is serving it" in str(refused.value)
    assert again.count_devices() == 0
    again.close()


@pytest.mark.slow  # three coordinator processes; the kill -9 restarts of
# test_service_persistence.py show in the fast suite that a killed one frees the lock
def test_serve_refuses_a_database_another_running_coordinator_serves(
    tmp_path: Path,
) -> None:
    # Prepare: a coordinator process serving the database
    db = tmp_path / "plume.db"
    with serve_process(db, None, tmp_path / "fault") as (url, proc):
        # Execute: a second one on the same database, another port
        second = subprocess.run(
            [sys.executable, "-m", "coordinator.cli", "coordinator", "serve", "--db", str(db),
             "--port", "0", "--admin-token", ADMIN],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        # Assert: one error line naming the running one; the first still serves
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert lines[-1].startswith("plume coordinator serve: error: cannot use the database")
        assert f"another coordinator (pid {proc.pid}) is serving it" in lines[-1]
        assert httpx.get(url + "/healthz", timeout=5).json()["ok"] is True
        os.kill(proc.pid, signal.SIGKILL)  # kill -9 drops the lock with the process
        proc.wait(10)
    with serve_process(db, None, tmp_path / "fault") as (url, _proc):
        assert httpx.get(url + "/healthz", timeout=5).json()["ok"] is True
