"""`plume coordinator backup`/`restore` guards that a reviewer (helper 115) found missing:
restore through a symlink or a hard link of a served database, restore leaving the previous
coordinator's pid in the lock file, a backup written over the database's -wal/-shm/lock,
a backup whose schema version restore and `Store` read differently, and a restore over
another application's SQLite file."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

import coordinator._cli as cli
from coordinator.service import Store
from coordinator.service.store import StoreError, lock_path

from ._restore import marked, names, one_error, run


def test_restore_through_a_symlink_of_a_served_database_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: serve's store on real.db, restore given a symlink to it (a "current" link)
    real, link, bak = tmp_path / "real.db", tmp_path / "current.db", tmp_path / "b.db"
    marked(real, "live")
    marked(bak, "backup")
    link.symlink_to(real)
    live = Store(link, exclusive=True)  # serve given the link: the lock is the real file's
    try:
        # Execute: before, the lock looked for current.db.lock, found none, and overwrote
        code = run("restore", "--db", str(real), "--from", str(bak))
        code_link = run("restore", "--db", str(link), "--from", str(bak))
    finally:
        live.close()
    # Assert
    assert (code, code_link) == (1, 1)
    assert names(real) == ["live"]
    assert "a coordinator (pid " in capsys.readouterr().err


def test_a_served_database_refuses_a_second_serve_through_a_symlink(tmp_path: Path) -> None:
    real, link = tmp_path / "real.db", tmp_path / "current.db"
    link.symlink_to(real)
    live = Store(real, exclusive=True)
    try:
        with pytest.raises(StoreError, match="another coordinator"):
            Store(link, exclusive=True)
    finally:
        live.close()
    assert lock_path(link) == lock_path(real) == f"{real}.lock"


def test_restore_holds_the_lock_with_its_own_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a coordinator that ran and stopped left its pid in plume.db.lock
    db, bak = tmp_path / "plume.db", tmp_path / "b.db"
    marked(db, "live")
    marked(bak, "backup")
    Path(f"{db}.lock").write_text("999999\n")
    seen: list[str] = []
    info = cli._plume_info

    def spy(conn: sqlite3.Connection, what: str) -> tuple[str, int]:
        seen.append(Path(f"{db}.lock").read_text().strip())
        return info(conn, what)

    monkeypatch.setattr(cli, "_plume_info", spy)
    # Execute
    assert run("restore", "--db", str(db), "--from", str(bak)) == 0, capsys.readouterr().err
    # Assert: a serve started meanwhile would name restore's process, not the stopped one
    assert seen and set(seen) == {str(os.getpid())}
    assert names(db) == ["backup"]


def test_restore_onto_a_hard_linked_database_needs_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A coordinator serving the other name holds a lock restore cannot find
    db, other, bak = tmp_path / "plume.db", tmp_path / "other.db", tmp_path / "b.db"
    marked(db, "live")
    marked(bak, "backup")
    os.link(db, other)
    live = Store(other, exclusive=True)
    try:
        code = run("restore", "--db", str(db), "--from", str(bak))
    finally:
        live.close()
    assert code == 1
    assert "hard link" in one_error(capsys, "restore")
    assert names(db) == ["live"]
    assert run("restore", "--db", str(db), "--from", str(bak), "--force") == 0
    assert names(other) == ["backup"]


@pytest.mark.parametrize("side", ["-wal", "-shm", "-journal", ".lock", "link"])
def test_backup_refuses_an_out_naming_a_side_file_of_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], side: str
) -> None:
    # Prepare: a served database (its -wal holds commits)
    db = tmp_path / "plume.db"
    live = Store(db, exclusive=True)
    live.create_task({"name": "live"}, "awaiting_model", 0.0)
    wal = Path(f"{db}-wal")
    before = wal.read_bytes()
    if side == "link":  # a symlink naming the -wal
        out = tmp_path / "out.db"
        out.symlink_to(wal)
    else:
        out = Path(f"{db}{side}")
    try:
        # Execute
        code = run("backup", "--db", str(db), "--out", str(out))
        after = wal.read_bytes()
    finally:
        live.close()
    # Assert: refused, the -wal as it was
    assert code == 1
    assert "side file" in one_error(capsys, "backup")
    assert after == before


def test_a_schema_version_store_refuses_is_refused_by_restore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a backup whose version is '04' (int says 4, Store says not one it reads)
    db, bak = tmp_path / "plume.db", tmp_path / "b.db"
    marked(db, "live")
    marked(bak, "backup")
    with closing(sqlite3.connect(bak)) as conn, conn:  # closed: no -wal left
        conn.execute("UPDATE meta SET value='04' WHERE key='schema_version'")
    with pytest.raises(StoreError) as refused:
        Store(bak)
    # Execute
    code = run("restore", "--db", str(db), "--from", str(bak))
    # Assert: the same words as Store's
    assert code == 1
    assert "its schema version '04' is not one this coordinator reads" in str(refused.value)
    assert "its schema version '04' is not one this coordinator reads" in one_error(
        capsys, "restore"
    )
    assert names(db) == ["live"]


def test_restore_over_another_applications_database_needs_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a typo'd --db naming another application's SQLite file
    other, bak = tmp_path / "app.sqlite", tmp_path / "b.db"
    marked(bak, "backup")
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    before = other.read_bytes()
    # Execute
    code = run("restore", "--db", str(other), "--from", str(bak))
    # Assert: refused with one line, the file as it was; --force replaces it
    assert code == 1
    line = one_error(capsys, "restore")
    assert "not a Plume database" in line and "--force" in line, line
    assert other.read_bytes() == before
    assert run("restore", "--db", str(other), "--from", str(bak), "--force") == 0
    assert names(other) == ["backup"]


@pytest.mark.parametrize("kind", ["absent", "empty"])
def test_restore_onto_an_absent_or_empty_file_needs_no_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    db, bak = tmp_path / "plume.db", tmp_path / "b.db"
    marked(bak, "backup")
    if kind == "empty":
        db.touch()
    assert run("restore", "--db", str(db), "--from", str(bak)) == 0, capsys.readouterr().err
    assert names(db) == ["backup"]
