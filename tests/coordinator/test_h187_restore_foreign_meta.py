"""`plume coordinator restore`/`backup` take a file for Plume's by the store's own rule.

A file with tables is Plume's only if its `meta` table has `key`/`value` columns and a
`schema_version` row (`coordinator.service.store.schema_version_of`, the check `Store` makes
since 2ee5adc). Before, restore replaced, without `--force`, a `--db` with `meta` and `tasks`
tables but no version row (another application's file, e.g. one with a `meta(key, value)`
table as Chrome's History has), and a `meta` table without a `value` column was reported as
"not a SQLite database or it is corrupt (no such column: value)"."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from coordinator.service import Store

from ._restore import marked, names, one_error, run


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _foreign(path: Path, meta: str, rows: list[tuple[str, str]]) -> None:
    """Another application's file: a `meta` table (the given columns and rows), `tasks`."""
    con = sqlite3.connect(path)
    con.execute(f"CREATE TABLE meta ({meta})")
    con.executemany("INSERT INTO meta VALUES (?, ?)", rows)
    con.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY, title TEXT, due TEXT)")
    con.execute("INSERT INTO tasks(title, due) VALUES ('water the plants', '2026-12-01')")
    con.commit()
    con.close()


FOREIGN = {
    # meta(key, value) with a 'version' row (Chrome's History shape), and a to-do app's tasks
    "version_row": ("key LONGVARCHAR PRIMARY KEY, value LONGVARCHAR", [("version", "66")]),
    # meta(key, value) with no row at all
    "empty_meta": ("key TEXT PRIMARY KEY, value TEXT", []),
    # a meta table with other columns, even holding a 'schema_version' name
    "other_columns": ("name TEXT, data TEXT", [("schema_version", "4")]),
}


@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_restore_over_a_foreign_file_with_meta_and_tasks_needs_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    # Prepare: a --db naming another application's file that has meta and tasks tables
    other, bak = tmp_path / "todo.sqlite", tmp_path / "b.db"
    marked(bak, "backup")
    _foreign(other, *FOREIGN[case])
    before = _md5(other)
    # Execute
    code = run("restore", "--db", str(other), "--from", str(bak))
    # Assert: refused as for any other application's file, the file byte for byte as it was
    assert code == 1
    line = one_error(capsys, "restore")
    assert "not a Plume database" in line and "--force" in line, line
    assert "tables: meta, tasks" in line and "no such column" not in line, line
    assert _md5(other) == before
    # and --force replaces it, as for other foreign targets
    assert run("restore", "--db", str(other), "--from", str(bak), "--force") == 0
    assert names(other) == ["backup"]


def test_restore_over_a_plume_database_needs_no_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the target is Plume's (its meta has a schema_version row)
    db, bak = tmp_path / "plume.db", tmp_path / "b.db"
    Store(db).close()
    marked(bak, "backup")
    # Execute
    code = run("restore", "--db", str(db), "--from", str(bak))
    # Assert
    assert code == 0, capsys.readouterr().err
    assert names(db) == ["backup"]


@pytest.mark.parametrize("prog", ["backup", "restore"])
def test_a_meta_table_without_a_value_column_is_named_another_applications(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], prog: str
) -> None:
    # Prepare: the file backup reads (--db) or restore reads (--from)
    other, db, out = tmp_path / "other.sqlite", tmp_path / "plume.db", tmp_path / "plume.bak"
    _foreign(other, *FOREIGN["other_columns"])
    Store(db).close()
    before, before_db = _md5(other), _md5(db)
    # Execute
    if prog == "backup":
        code = run("backup", "--db", str(other), "--out", str(out))
    else:
        code = run("restore", "--db", str(db), "--from", str(other))
    # Assert: not "not a SQLite database or it is corrupt (no such column: value)"
    assert code == 1
    line = one_error(capsys, prog)
    assert "SQLite database of another application" in line, line
    assert "not a Plume database" in line and "tables: meta, tasks" in line, line
    assert "corrupt" not in line and "no such column" not in line, line
    assert _md5(other) == before and _md5(db) == before_db
    assert not out.exists()


def test_a_backup_without_a_schema_version_row_is_named_another_applications(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a meta(key, value) with another application's rows, read as --from
    other, db = tmp_path / "History", tmp_path / "plume.db"
    _foreign(other, *FOREIGN["version_row"])
    Store(db).close()
    before_db = _md5(db)
    # Execute
    code = run("restore", "--db", str(db), "--from", str(other))
    # Assert
    assert code == 1
    line = one_error(capsys, "restore")
    assert "SQLite database of another application" in line, line
    assert "not a Plume database" in line, line
    assert _md5(db) == before_db
