"""`plume coordinator backup` and `plume coordinator restore`: the database's backup and
restore without the `sqlite3` command-line tool (docs/operations.md used it; a slim host or
container has Python, and so plume, but often not that tool).

`backup` copies a running coordinator's database consistently (SQLite's online backup, every
commit in the `-wal` included), checks the copy, and writes it atomically. `restore` puts a
backup in place of a stopped coordinator's database, refusing while a coordinator serves it and
refusing a file that is not a sound Plume backup, and leaves no stale `-wal` to replay."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from coordinator.service import AdminClient, ServerThread, ServiceConfig, Store
from protocol.messages import TaskConfig, TensorShape

from ._restore import run

ADMIN = "s3cret-h113b"
TASK = TaskConfig(
    name="t", model_name="tiny", spec=[TensorShape("w", [10])], rounds=1, clients_per_round=1
)


def _tasks(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT state FROM tasks ORDER BY task_id")]


def test_backup_of_a_running_coordinator_holds_every_commit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a coordinator serving a database with two tasks, its last commits in -wal
    db, out = tmp_path / "plume.db", tmp_path / "backups" / "plume-1.db"
    out.parent.mkdir()
    with (
        ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN)) as url,
        AdminClient(url, ADMIN) as admin,
    ):
        admin.create_task(TASK, np.zeros(10, np.float32))
        admin.create_task(TASK, np.zeros(10, np.float32))
        admin.stop(2)
        assert Path(f"{db}-wal").stat().st_size > 0
        # Execute
        code = run("backup", "--db", str(db), "--out", str(out))
    # Assert: one JSON line; the copy alone (no -wal beside it) has both tasks, as they were
    assert code == 0, capsys.readouterr().err
    line = json.loads(capsys.readouterr().out)
    assert line == {
        "db": str(db), "out": str(out), "bytes": out.stat().st_size, "schema_version": 5,
        "tasks": 2,
    }  # fmt: skip
    assert sorted(p.name for p in out.parent.iterdir()) == ["plume-1.db"]
    assert _tasks(out) == ["active", "stopped"]
    with sqlite3.connect(out) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.parametrize("case", ["missing", "not plume", "same file", "no folder"])
def test_backup_refuses_with_one_line_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    # Prepare
    db, out = tmp_path / "plume.db", tmp_path / "plume.bak"
    if case == "not plume":
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE photos (id INTEGER)")
    elif case != "missing":
        Store(db).close()
    if case == "same file":
        out = db
    if case == "no folder":
        out = tmp_path / "nowhere" / "plume.bak"
    before = sorted(p.name for p in tmp_path.iterdir())
    # Execute
    code = run("backup", "--db", str(db), "--out", str(out))
    # Assert
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("plume coordinator backup: error: "), err
    words = {
        "missing": f"--db {db}: no such file",
        "not plume": "not a Plume database",
        "same file": "--out is the database itself",
        "no folder": "the folder of --out",
    }[case]
    assert words in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_restore_puts_the_backup_in_place_of_a_killed_coordinators_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a backup with one task; then the database gets a second, and a process that
    # writes to it dies without closing it (its last commit left in -wal, as after kill -9)
    db, bak = tmp_path / "plume.db", tmp_path / "plume.bak"
    with (
        ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN)) as url,
        AdminClient(url, ADMIN) as admin,
    ):
        admin.create_task(TASK, np.zeros(10, np.float32))
        assert run("backup", "--db", str(db), "--out", str(bak)) == 0
        admin.create_task(TASK, np.zeros(10, np.float32))
    killed = (
        "import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "c.execute(\"UPDATE tasks SET state='stopped'\"); c.commit(); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", killed, str(db)], check=True, timeout=60)
    assert Path(f"{db}-wal").stat().st_size > 0
    capsys.readouterr()
    # Execute
    code = run("restore", "--db", str(db), "--from", str(bak))
    # Assert: the backup's one task; a coordinator opens it
    assert code == 0, capsys.readouterr().err
    line = json.loads(capsys.readouterr().out)
    assert {k: line[k] for k in ("db", "from", "schema_version", "tasks")} == {
        "db": str(db),
        "from": str(bak),
        "schema_version": 5,
        "tasks": 1,
    }
    assert line["path"] == os.path.realpath(db)
    assert line["replaced"]["tasks"] == 2 and line["replaced"]["bytes"] > 0, (
        line
    )  # 2: after the backup
    assert _tasks(db) == ["active"]
    with ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN)) as url:
        with AdminClient(url, ADMIN) as admin:
            assert [t.task_id for t in admin.tasks()] == [1]


@pytest.mark.parametrize("case", ["serving", "not plume", "missing", "newer"])
def test_restore_refuses_and_leaves_the_database_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    # Prepare: a database with a task, and a backup (or not) to restore
    db, bak = tmp_path / "plume.db", tmp_path / "plume.bak"
    store = Store(db)
    store.create_task({"name": "t"}, "awaiting_model", 0.0)
    store.close()
    if case in ("serving", "newer"):
        Store(bak).close()
    if case == "newer":
        with closing(sqlite3.connect(bak)) as conn, conn:  # closed: no -wal left
            conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    if case == "not plume":
        bak.write_bytes(b"not a database at all" * 100)
    before = db.read_bytes()
    holder = Store(db, exclusive=True) if case == "serving" else None
    try:
        # Execute
        code = run("restore", "--db", str(db), "--from", str(bak))
    finally:
        if holder is not None:
            holder.close()
    # Assert
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    words = {
        "serving": "a coordinator (pid ",
        "not plume": "is not a SQLite database",
        "missing": f"--from {bak}: no such file",
        "newer": "schema version '99' is newer than this coordinator's 5",
    }[case]
    assert err[0].startswith("plume coordinator restore: error: ") and words in err[0], err
    assert db.read_bytes() == before


@pytest.mark.parametrize(
    "args, words",
    [
        (["backup", "--db", "{d}", "--out", "{t}/x.bak"], "--db {d} is a folder; give the"),
        (["restore", "--db", "{d}", "--from", "{t}/ok.bak"], "--db {d} is a folder; give the"),
        (["restore", "--db", "{t}/new.db", "--from", "{d}"], "--from {d} is a folder; give the"),
    ],
)
def test_a_folder_given_for_a_file_is_called_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], words: str
) -> None:
    # helper-353: a folder was "no such file", and restore's --db folder "has 2 hard links"
    folder = tmp_path / "adir"
    folder.mkdir()
    (tmp_path / "ok.bak").write_bytes(b"")
    fill = {"d": str(folder), "t": str(tmp_path)}
    code = run(*[a.format(**fill) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    # a usage mistake, status 2 as serve's --db DIR (s48, helper-411; it was 1)
    assert code == 2 and len(err) == 1, err
    assert words.format(**fill) in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "ok.bak"]
