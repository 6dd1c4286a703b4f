"""Helper-335's review of backup and restore:

- `plume coordinator backup --db old.bak --out plume.db` (the arguments swapped) renamed the
  copy over the database a coordinator was serving, reported success, and the coordinator's
  -wal then put the old state back at its next start. `backup` now refuses an --out that a
  coordinator serves (its `.lock` held) or that has a -wal or -journal beside it holding writes,
  and writes nothing; an --out that is an old backup (the usual nightly overwrite) is still
  replaced.
- A backup too damaged for SQLite's integrity check to run at all was reported as "cannot
  restore --db X from Y: database disk image is malformed", which reads as if --db were the
  damaged file; the message now names --from.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from coordinator.service import Store

from ._restore import marked, names, one_error, run


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_backup_refuses_an_out_a_coordinator_serves_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: an old backup, and serve's store (its lock held) on the live database
    old = tmp_path / "old.bak"
    marked(old, "old")
    live = tmp_path / "live"
    live.mkdir()
    db = live / "plume.db"
    served = Store(db, exclusive=True)
    try:
        served.create_task({"name": "live"}, "awaiting_model", 0.0)
        before = _files(live)
        # Execute: the arguments swapped
        code = run("backup", "--db", str(old), "--out", str(db))
        after = _files(live)
    finally:
        served.close()
    # Assert: refused, naming the serving process and restore; not a byte of it changed
    err = one_error(capsys, "backup")
    assert code == 1
    assert f"--out {db} is a database a coordinator (pid " in err, err
    assert "plume coordinator restore" in err, err
    assert after == before
    assert names(db) == ["live"]
    assert not list(tmp_path.glob(".old.bak*")) and not list(live.glob(".plume.db.*"))


def test_backup_refuses_an_out_with_writes_in_its_wal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a database whose last commit is still in its -wal (a stopped process's), and a
    # backup to be written over it
    old = tmp_path / "old.bak"
    marked(old, "old")
    db = tmp_path / "plume.db"
    keep = sqlite3.connect(db)
    keep.execute("PRAGMA journal_mode=WAL")
    keep.execute("PRAGMA wal_autocheckpoint=0")
    keep.execute("CREATE TABLE t (x)")
    keep.execute("INSERT INTO t VALUES (1)")
    keep.commit()
    wal = Path(f"{db}-wal")
    assert wal.stat().st_size > 0
    before = (db.read_bytes(), wal.read_bytes())
    # Execute
    code = run("backup", "--db", str(old), "--out", str(db))
    # Assert: refused, nothing written (compared before the connection's close checkpoints)
    err = one_error(capsys, "backup")
    assert code == 1
    assert f"--out {db} has a -wal file beside it (" in err, err
    assert "SQLite would replay onto the copy" in err, err
    assert (db.read_bytes(), wal.read_bytes()) == before
    keep.close()


def test_backup_still_replaces_an_old_backup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: yesterday's backup at --out, and a database that served once (its .lock left)
    db, out = tmp_path / "plume.db", tmp_path / "plume.bak"
    Store(db, exclusive=True).close()
    marked(out, "yesterday")
    marked(db, "today")
    # Execute: twice, the second over the first (and over --out's own leftover .lock)
    assert run("backup", "--db", str(db), "--out", str(out)) == 0
    Path(f"{out}.lock").write_text("")
    assert run("backup", "--db", str(db), "--out", str(out)) == 0, capsys.readouterr().err
    # Assert: --out is today's database
    assert names(out) == ["today"]


def test_a_backup_too_damaged_to_check_is_named_by_restore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a sound database, and a backup whose last page is zeroed (its header, schema
    # and tasks stay readable, so only the integrity check meets the damage, and fails on it)
    db, bak = tmp_path / "plume.db", tmp_path / "broken.bak"
    marked(db, "live")
    marked(bak, "backup")
    raw = bytearray(bak.read_bytes())
    page = int.from_bytes(raw[16:18], "big") or 65536
    raw[-page:] = bytes(page)
    bak.write_bytes(bytes(raw))
    before = db.read_bytes()
    # Execute
    code = run("restore", "--db", str(db), "--from", str(bak))
    # Assert: refused naming the backup, the database as it was
    err = one_error(capsys, "restore")
    assert code == 1
    assert f"--from {bak} fails SQLite's integrity check (" in err, err
    assert f"cannot restore --db {db} from" not in err, err
    assert db.read_bytes() == before
    assert names(db) == ["live"]
