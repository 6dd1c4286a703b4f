"""Stop 49: `plume coordinator restore` says what database it wrote and what it replaced.

--db defaults to plume.db in the current folder, and the JSON line named --db only as given
(`"db": "plume.db"`) and nothing of the database that was there: a restore run from the wrong
folder, or with a mistyped --db, replaced a database without a word of which one. Now the line
has `path`, the file written (absolute, symlinks followed), and `replaced`: null when --db did
not exist, else that file's size (its -wal's included) and, for a Plume database, its schema
version, its number of tasks and each task's state, model version and closed rounds (the 20
newest tasks)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main
from coordinator.service.store import Store


def _restore(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    """The JSON line of a `plume coordinator restore ARGV` that succeeds."""
    code = main(["coordinator", "restore", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    line: dict[str, Any] = json.loads(out)
    return line


def _database(path: Path, tasks: list[tuple[str, int, int]]) -> None:
    """A Plume database at `path` with a task per (state, model version, closed rounds), its
    rounds committed, and one more round open (not closed) for each task that has rounds."""
    store = Store(path)
    for i, (state, _, _) in enumerate(tasks):
        store.create_task({"name": f"t{i}"}, state, 0.0)
    store.close()
    with closing(sqlite3.connect(path)) as conn, conn:
        for task_id, (_, version, closed) in enumerate(tasks, start=1):
            conn.execute("UPDATE tasks SET version=? WHERE task_id=?", (version, task_id))
            for seq in range(closed + (1 if closed else 0)):
                state = "committed" if seq < closed else "collecting"
                conn.execute(
                    "INSERT INTO rounds (task_id, seq, state, base_version, selected_json, "
                    "target, min_reports, opened_unix, deadline_unix) "
                    "VALUES (?, ?, ?, ?, '[]', 3, 2, 0, 60)",
                    (task_id, seq, state, seq),
                )


def _backup(tmp_path: Path) -> Path:
    """A backup holding one task, as `plume coordinator backup` writes it."""
    source, out = tmp_path / "source.db", tmp_path / "plume.bak"
    _database(source, [("active", 2, 2)])
    assert main(["coordinator", "backup", "--db", str(source), "--out", str(out)]) == 0
    return out


def test_restore_over_the_default_db_names_the_file_and_what_it_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a coordinator's database in the current folder, the one --db defaults to
    bak = _backup(tmp_path)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    _database(here / "plume.db", [("done", 20, 20), ("active", 7, 8), ("awaiting_model", -1, 0)])
    size = os.stat(here / "plume.db").st_size
    capsys.readouterr()
    # Execute: no --db
    line = _restore(capsys, "--from", str(bak))
    # Assert: the file written, absolute, and the database it replaced, task by task
    assert line["db"] == "plume.db"
    assert line["path"] == os.path.realpath(here / "plume.db")
    assert (line["schema_version"], line["tasks"]) == (5, 1)
    assert line["replaced"] == {
        "bytes": size,
        "schema_version": 5,
        "tasks": 3,
        "task_versions": [
            {"task": 1, "state": "done", "version": 20, "rounds_closed": 20},
            {"task": 2, "state": "active", "version": 7, "rounds_closed": 8},
            {"task": 3, "state": "awaiting_model", "version": -1, "rounds_closed": 0},
        ],
    }


def test_restore_to_a_new_file_says_it_replaced_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bak = _backup(tmp_path)
    capsys.readouterr()
    db = tmp_path / "new" / "plume.db"
    db.parent.mkdir()
    line = _restore(capsys, "--db", str(db), "--from", str(bak))
    assert line["path"] == os.path.realpath(db)
    assert line["replaced"] is None


def test_restore_through_a_symlink_names_the_file_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: --db a symlink to a database elsewhere
    bak = _backup(tmp_path)
    (tmp_path / "data").mkdir()
    real = tmp_path / "data" / "plume.db"
    _database(real, [("active", 3, 3)])
    link = tmp_path / "link.db"
    link.symlink_to(real)
    capsys.readouterr()
    # Execute
    line = _restore(capsys, "--db", str(link), "--from", str(bak))
    # Assert
    assert line["db"] == str(link)
    assert line["path"] == os.path.realpath(real)
    assert line["replaced"]["task_versions"] == [
        {"task": 1, "state": "active", "version": 3, "rounds_closed": 3}
    ]


def test_the_replaced_size_counts_a_killed_coordinators_wal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a database whose last commit is still in its -wal: its writer died without
    # closing it, as a coordinator killed with kill -9
    bak = _backup(tmp_path)
    db = tmp_path / "plume.db"
    _database(db, [("active", 1, 1)])
    killed = (
        "import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "c.execute('PRAGMA journal_mode=WAL'); c.execute('UPDATE tasks SET version=4'); "
        "c.commit(); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", killed, str(db)], check=True, timeout=60)
    wal = os.stat(f"{db}-wal").st_size
    size = os.stat(db).st_size + wal
    capsys.readouterr()
    # Execute
    line = _restore(capsys, "--db", str(db), "--from", str(bak))
    # Assert: the -wal's bytes, and its commit, are part of what was replaced
    assert wal > 0
    assert line["replaced"]["bytes"] == size
    assert line["replaced"]["task_versions"][0]["version"] == 4


def test_only_the_newest_tasks_are_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bak = _backup(tmp_path)
    db = tmp_path / "plume.db"
    _database(db, [("active", i, 0) for i in range(25)])
    capsys.readouterr()
    replaced = _restore(capsys, "--db", str(db), "--from", str(bak))["replaced"]
    assert replaced["tasks"] == 25
    assert [t["task"] for t in replaced["task_versions"]] == list(range(6, 26))


@pytest.mark.parametrize("kind", ["empty", "foreign"])
def test_a_file_that_was_not_a_plume_database_is_named_by_its_size(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: an empty file, or another application's SQLite file (--force replaces it)
    bak = _backup(tmp_path)
    db = tmp_path / "other.db"
    db.touch()
    if kind == "foreign":
        with closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("CREATE TABLE visits (url TEXT)")
    size = os.stat(db).st_size
    capsys.readouterr()
    # Execute
    flags = ["--force"] if kind == "foreign" else []
    line = _restore(capsys, "--db", str(db), "--from", str(bak), *flags)
    # Assert
    assert line["replaced"] == {
        "bytes": size,
        "schema_version": None,
        "tasks": None,
        "task_versions": None,
    }


def test_force_replaces_a_file_that_is_not_sqlite_at_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: random bytes where the database should be (mode 0600), a junk -journal beside
    # it; a backup. Before: --force failed with SQLite's "file is not a database", though the
    # docs say it replaces a file too damaged to read
    bak = _backup(tmp_path)
    db = tmp_path / "plume.db"
    db.write_bytes(bytes(range(256)) * 40)
    os.chmod(db, 0o600)
    Path(f"{db}-journal").write_bytes(b"\x01" * 512)
    capsys.readouterr()
    # Execute: without --force, then with it
    with pytest.raises(SystemExit) as refused:
        main(["coordinator", "restore", "--db", str(db), "--from", str(bak)])
    err = capsys.readouterr().err
    kept = db.read_bytes()
    line = _restore(capsys, "--db", str(db), "--from", str(bak), "--force")
    # Assert: refused and left as it was; then replaced by the backup's task, the mode kept
    assert refused.value.code == 1 and "is not a SQLite database" in err and "--force" in err, err
    assert kept == bytes(range(256)) * 40
    assert line["tasks"] == 1 and line["replaced"]["bytes"] == 10240, line
    assert line["replaced"]["schema_version"] is None
    assert not Path(f"{db}-journal").exists()
    assert os.stat(db).st_mode & 0o777 == 0o600
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 1
