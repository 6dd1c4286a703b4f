"""`plume coordinator restore` from a backup whose header says journal_mode=WAL: a `cp` of a
served (or cleanly stopped) coordinator's database, or sqlite3's `.backup` of one (the copy
keeps the WAL flag; `plume coordinator backup` writes a rollback-journal file instead).

Before, restore opened such a backup read-only (`mode=ro`), and SQLite still created a
`-wal` and a `-shm` beside it, left there after restore ended; where the backup's folder was
not writable by the user restoring (a root-owned /backups, restore run as the coordinator's
user as docs/operations.md says) it could not be read at all and was reported as "not a
SQLite database or it is corrupt (attempt to write a readonly database)". The restored
database kept the WAL flag. Now the backup is read with SQLite's `immutable` flag (nothing
opened, created or locked beside it), a backup with writes beside it that the file alone does
not hold (a non-empty -wal or -journal, a held `.lock`) is refused, and the restored database
is one rollback-journal file, as `backup` writes, which `serve` turns to WAL."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing
from pathlib import Path

import pytest

from coordinator.service import Store

from ._restore import marked, names, run

ROOT = Path(__file__).resolve().parents[2]


def _wal_flagged_backup(folder: Path, how: str) -> Path:
    """A backup of a Plume database with one task, 'backup', whose header says WAL."""
    folder.mkdir(parents=True, exist_ok=True)
    live = folder.parent / f"live-{folder.name}.db"
    marked(live, "backup")
    bak = folder / "plume-backup.db"
    if how == "cp":  # the coordinator stopped cleanly: the .db alone holds every commit
        shutil.copyfile(live, bak)
    else:  # sqlite3 plume.db ".backup FILE", done through Python's binding of the same API
        with closing(sqlite3.connect(live)) as src, closing(sqlite3.connect(bak)) as dst:
            src.backup(dst)
    header = bak.read_bytes()[:20]
    assert (header[18], header[19]) == (2, 2)  # WAL
    return bak


def _state(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def _header_mode(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:20]
    return header[18], header[19]


@pytest.mark.parametrize("how", ["cp", "sqlite3-backup"])
@pytest.mark.parametrize("target", ["absent", "plume", "killed"])
def test_restore_from_a_wal_flagged_backup_leaves_it_alone_and_the_target_one_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str, target: str
) -> None:
    # Prepare: the backup in its own folder; --db absent, a Plume database, or one a killed
    # coordinator left with commits in its -wal (to be folded in and overwritten, not replayed)
    bak = _wal_flagged_backup(tmp_path / "backups", how)
    db = tmp_path / "var" / "plume.db"
    db.parent.mkdir()
    if target == "plume":
        marked(db, "old")
    elif target == "killed":
        killed = (
            "import os, sys; sys.path.insert(0, sys.argv[2]); "
            "from coordinator.service import Store; "
            "Store(sys.argv[1]).create_task({'name': 'old'}, 'awaiting_model', 0.0); os._exit(0)"
        )
        subprocess.run([sys.executable, "-c", killed, str(db), str(ROOT)], check=True, timeout=60)
        assert Path(f"{db}-wal").stat().st_size > 0
    before = _state(bak.parent)
    # Execute
    code = run("restore", "--db", str(db), "--from", str(bak))
    # Assert: the backup byte-identical with nothing beside it (before: -wal and -shm)
    assert code == 0, capsys.readouterr().err
    assert _state(bak.parent) == before
    # the restored database: one file (no -wal/-shm to replay), rollback-journal mode like
    # `backup`'s output, the backup's content, sound; serve's store opens it in WAL
    assert sorted(p.name for p in db.parent.iterdir()) == ["plume.db", "plume.db.lock"]
    assert _header_mode(db) == (1, 1)
    assert names(db) == ["backup"]
    store = Store(db, exclusive=True)
    try:
        assert store.journal_mode == "wal"
        assert store._db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        store.close()


def test_a_backup_left_beside_the_old_restores_empty_wal_and_shm_still_restores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: what the old restore left beside a backup: an empty -wal and a -shm
    bak = _wal_flagged_backup(tmp_path / "backups", "cp")
    Path(f"{bak}-wal").write_bytes(b"")
    Path(f"{bak}-shm").write_bytes(b"\0" * 32768)
    db = tmp_path / "plume.db"
    before = _state(bak.parent)
    # Execute / Assert
    assert run("restore", "--db", str(db), "--from", str(bak)) == 0, capsys.readouterr().err
    assert _state(bak.parent) == before
    assert names(db) == ["backup"]


def _as_nobody(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HOME="/nonexistent")
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/", timeout=120)


def test_restore_reads_a_wal_flagged_backup_in_a_folder_it_may_not_write(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare: the backup in a folder the restoring user cannot write (a root-owned
    # /backups, restore run as the coordinator's user). root writes anywhere, so as root the
    # restore runs as the user nobody (setpriv); tmp_path (0700, root's) is not reachable by
    # nobody, so the folders are made here.
    root = os.geteuid() == 0
    if root and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot restore as a user without write")
    if root and _as_nobody(["-c", "import coordinator.cli"]).returncode != 0:
        pytest.skip("the user nobody cannot run this checkout's Python")
    with tempfile.TemporaryDirectory(prefix="h197-") as top:
        base = Path(top)
        base.chmod(0o755)
        bak = _wal_flagged_backup(base / "backups", "cp")
        bak.chmod(0o444)
        bak.parent.chmod(0o555)
        db = base / "var" / "plume.db"
        db.parent.mkdir()
        before = _state(bak.parent)
        argv = ["coordinator", "restore", "--db", str(db), "--from", str(bak)]
        try:
            # Execute
            if root:
                os.chown(db.parent, 65534, 65534)
                done = _as_nobody(["-m", "coordinator.cli", *argv])
                code, err = done.returncode, done.stderr
            else:
                code = run(*argv[1:])
                err = capsys.readouterr().err
            # Assert: before, "--from ... is not a SQLite database or it is corrupt
            # (attempt to write a readonly database)"
            assert code == 0, err
            assert _state(bak.parent) == before
            assert names(db) == ["backup"]
        finally:
            bak.parent.chmod(0o755)


def test_restore_refuses_a_backup_with_writes_in_a_wal_beside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a copy of a killed coordinator's database with its -wal (its last commit only
    # there): reading it needs SQLite to write a -shm beside it, and it is not a backup
    src = tmp_path / "src"
    src.mkdir()
    bak = src / "copy.db"
    killed = (
        "import os, sys; sys.path.insert(0, sys.argv[2]); "
        "from coordinator.service import Store; "
        "Store(sys.argv[1]).create_task({'name': 'backup'}, 'awaiting_model', 0.0); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", killed, str(bak), str(ROOT)], check=True, timeout=60)
    os.unlink(f"{bak}-shm")  # as a cp of the .db and its -wal
    db = tmp_path / "plume.db"
    marked(db, "old")
    before, db_bytes = _state(src), db.read_bytes()
    capsys.readouterr()
    # Execute
    code = run("restore", "--db", str(db), "--from", str(bak))
    # Assert: refused in one line naming the -wal and the way out; nothing changed
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1, err
    assert err[0].startswith(f"plume coordinator restore: error: --from {bak} has a -wal file"), err
    assert f"plume coordinator backup --db {bak} --out FILE" in err[0], err
    assert _state(src) == before
    assert db.read_bytes() == db_bytes


def test_restore_refuses_a_database_a_coordinator_serves_as_the_backup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: --from is a database serve holds (Store(exclusive=True) is serve's store)
    live, db = tmp_path / "live.db", tmp_path / "plume.db"
    marked(db, "old")
    served = Store(live, exclusive=True)
    try:
        served.create_task({"name": "live"}, "awaiting_model", 0.0)
        capsys.readouterr()
        # Execute
        code = run("restore", "--db", str(db), "--from", str(live))
    finally:
        served.close()
    # Assert
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1, err
    assert f"is a database a coordinator (pid {os.getpid()}) serves, not a backup" in err[0]
    assert names(db) == ["old"]
