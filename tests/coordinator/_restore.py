"""Shared helpers for the `plume coordinator backup`/`restore` tests (no tests here): the
command run in-process, a Plume database marked by its one task's name, and the one-line error
the commands print."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from coordinator.cli import main
from coordinator.service import Store


def run(*argv: str) -> int:
    """`plume coordinator *argv` in this process: its exit code (a SystemExit's included)."""
    try:
        return main(["coordinator", *argv])
    except SystemExit as exc:
        return int(exc.code or 0)


def marked(path: Path, who: str) -> None:
    """A Plume database at `path` holding one task named `who` (awaiting its model)."""
    store = Store(path)
    store.create_task({"name": who}, "awaiting_model", 0.0)
    store.close()


def names(path: Path) -> list[str]:
    """The names of the tasks in the database at `path`."""
    with sqlite3.connect(path) as conn:
        return [json.loads(r[0])["name"] for r in conn.execute("SELECT config_json FROM tasks")]


def one_error(capsys: pytest.CaptureFixture[str], prog: str) -> str:
    """The one line `plume coordinator <prog>` printed on stderr, an error."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"plume coordinator {prog}: error: "), err
    return err[0]
