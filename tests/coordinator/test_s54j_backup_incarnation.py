"""`plume coordinator backup` leaves the database's incarnation out of the file it writes, so
the database put back from it gets a new one when it is opened, whichever way it is put back:
`restore` (which makes one anyway), a `cp` over the database, or sqlite3's `.restore`. Before,
the backup carried the incarnation, and a copy put back by hand named the old one: devices took
it for the database they knew, though it hands out again the round and task ids given after the
backup. The database backed up is not changed."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig, Store
from sdk import Client

from ._restore import marked, names, run
from .test_service_support import ADMIN


def _meta(db: Path) -> dict[str, str]:
    with closing(sqlite3.connect(db)) as conn:
        return {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_backup_holds_no_incarnation_and_the_database_is_unchanged(tmp_path: Path) -> None:
    # Prepare: a stopped coordinator's database with a task
    db, bak = tmp_path / "plume.db", tmp_path / "plume.bak"
    marked(db, "ours")
    before, digest = _meta(db), _sha(db)
    # Execute
    assert run("backup", "--db", str(db), "--out", str(bak)) == 0
    # Assert: the copy holds everything but the incarnation; the database is byte for byte
    # what it was
    assert "incarnation" in before
    assert _meta(bak) == {k: v for k, v in before.items() if k != "incarnation"}
    assert names(bak) == ["ours"]
    assert _sha(db) == digest and _meta(db) == before


def test_a_served_database_keeps_its_incarnation(tmp_path: Path) -> None:
    # Prepare: a database a store holds open (WAL, as serve's)
    db, bak = tmp_path / "plume.db", tmp_path / "plume.bak"
    with closing(Store(db)) as store:
        served = store.incarnation
        # Execute
        assert run("backup", "--db", str(db), "--out", str(bak)) == 0
        # Assert: the open store's database still names it
        assert _meta(db)["incarnation"] == served
    with closing(Store(db)) as store:
        assert store.incarnation == served
    assert "incarnation" not in _meta(bak)


def _cp(bak: Path, db: Path) -> None:
    shutil.copyfile(bak, db)


def _sqlite_restore(bak: Path, db: Path) -> None:
    # What sqlite3's `.restore` does: SQLite's backup from the file into the database
    with closing(sqlite3.connect(bak)) as source, closing(sqlite3.connect(db)) as target:
        source.backup(target)


@pytest.mark.parametrize("put_back", [_cp, _sqlite_restore], ids=["cp", "sqlite3-restore"])
def test_a_backup_put_back_by_hand_gets_a_new_incarnation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, put_back: object
) -> None:
    # Prepare: a database and its backup
    db, bak = tmp_path / "plume.db", tmp_path / "plume.bak"
    marked(db, "ours")
    with closing(Store(db)) as store:
        served = store.incarnation
    assert run("backup", "--db", str(db), "--out", str(bak)) == 0
    # Execute: the backup copied over the stopped coordinator's database, then opened
    put_back(bak, db)  # type: ignore[operator]
    with caplog.at_level(logging.INFO, logger="plume.coordinator"), closing(Store(db)) as store:
        opened = store.incarnation
    # Assert: a new one, written, kept, and said once naming the backup as a cause
    assert opened != served and len(opened) == 32
    assert _meta(db)["incarnation"] == opened and names(db) == ["ours"]
    with closing(Store(db)) as store:
        assert store.incarnation == opened
    said = [r.getMessage() for r in caplog.records if "incarnation" in r.getMessage()]
    assert len(said) == 1 and "a file the backup command wrote" in said[0]


def test_restore_still_makes_a_new_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, bak = tmp_path / "plume.db", tmp_path / "plume.bak"
    with closing(Store(db)) as store:
        served = store.incarnation
    assert run("backup", "--db", str(db), "--out", str(bak)) == 0
    capsys.readouterr()
    assert run("restore", "--db", str(db), "--from", str(bak)) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["incarnation"] == _meta(db)["incarnation"] != served
    assert "incarnation" not in _meta(bak)  # the backup only read


def test_a_device_hears_another_incarnation_after_a_hand_copy(tmp_path: Path) -> None:
    # Prepare: a device registered with a coordinator, whose database is backed up while served
    db, bak, root = tmp_path / "plume.db", tmp_path / "plume.bak", tmp_path / "dev"
    config = ServiceConfig(db_path=str(db), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(config) as url, Client(url, str(root), sleep=lambda s: None) as c:
        c.register()
        port = httpx.URL(url).port
        assert run("backup", "--db", str(db), "--out", str(bak)) == 0
    served = json.loads((root / "state.json").read_text())["incarnation"]
    # Execute: the backup copied into place by hand, served again at the same address
    shutil.copyfile(bak, db)
    with ServerThread(config, port=port) as url, Client(url, str(root), sleep=lambda s: None) as c:
        c.register()
    # Assert: the device heard (and keeps) a new incarnation, which sets its state aside
    heard = json.loads((root / "state.json").read_text())["incarnation"]
    assert len(served) == 32 and heard != served
    assert heard == _meta(db)["incarnation"] and "incarnation" not in _meta(bak)
