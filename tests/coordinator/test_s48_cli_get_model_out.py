"""Stop 48, helper-411's review of the operator's command line, finding 1: `plume coordinator
get-model --out PATH` replaced whatever PATH named. `--out p0.db`, a database a coordinator
was serving, became an npz, and the database was lost; its -wal or -shm went the same way.
`backup` already refused exactly that (`_out_lock`, `_is_side_file`); get-model now refuses,
before the download, an --out that a coordinator serves (its `.lock` held), that has writes in
a -wal beside it, that is a side file of a database (-wal, -shm, -journal, .lock, by any path),
or that is a SQLite database at all (a stopped coordinator's, a backup): a model file is never
one. An existing model file is still replaced."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from coordinator.service import ServerThread, ServiceConfig, Store

from ._restore import marked, names, one_error, run
from .test_service_support import ADMIN, create_task


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A coordinator (its own database) with one task to export: (its URL, the task id)."""
    db = tmp_path_factory.mktemp("s48-get-model") / "coordinator.db"
    with ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN)) as url:
        yield url, create_task(url)


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[Path]:
    """Another coordinator's database, served: its lock held, its last commit in its -wal."""
    db = tmp_path / "p0.db"
    store = Store(db, exclusive=True)
    try:
        store.create_task({"name": "live"}, "awaiting_model", 0.0)
        yield db
    finally:
        store.close()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _get_model(task: tuple[str, int], out: Path) -> int:
    url, task_id = task
    return run("get-model", "--url", url, "--admin-token", ADMIN, "--task", str(task_id),
               "--out", str(out))  # fmt: skip


def test_get_model_refuses_an_out_a_coordinator_serves(
    task: tuple[str, int], served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    before = _files(served.parent)
    assert Path(f"{served}-wal").stat().st_size > 0
    # Execute: the served database as --out
    code = _get_model(task, served)
    # Assert: refused naming the serving process; not a byte of its files changed
    err = one_error(capsys, "get-model")
    assert code == 1
    assert f"--out {served} is a database a coordinator (pid {os.getpid()}) serves: " in err
    assert "get-model does not write a model over a database; give another file" in err
    assert _files(served.parent) == before
    assert names(served) == ["live"]


@pytest.mark.parametrize("side", ["-wal", "-shm", "-journal", ".lock"])
def test_get_model_refuses_a_side_file_of_a_served_database(
    task: tuple[str, int], served: Path, side: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    out = Path(f"{served}{side}")
    before = _files(served.parent)
    # Execute
    code = _get_model(task, out)
    # Assert: refused naming the database; nothing written (no -journal made either)
    err = one_error(capsys, "get-model")
    assert code == 1
    assert f"--out {out} is a side file of the database {served} (its -wal, -shm, " in err, err
    assert _files(served.parent) == before
    assert names(served) == ["live"]


def test_get_model_refuses_a_symlink_to_a_databases_wal(
    task: tuple[str, int], served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: an innocent-looking name that is the -wal by another path
    link = tmp_path / "model.npz"
    link.symlink_to(f"{served}-wal")
    before = _files(served.parent)
    # Execute
    code = _get_model(task, link)
    # Assert
    err = one_error(capsys, "get-model")
    assert code == 1 and f"is a side file of the database {served} " in err, err
    assert link.is_symlink() and _files(served.parent) == before


def test_get_model_refuses_a_database_no_coordinator_serves(
    task: tuple[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a stopped coordinator's database (or a backup): one file, nobody holds it
    db = tmp_path / "stopped.db"
    marked(db, "kept")
    before = db.read_bytes()
    # Execute
    code = _get_model(task, db)
    # Assert
    err = one_error(capsys, "get-model")
    assert code == 1
    assert f"--out {db} is a SQLite database: get-model does not write a model over" in err
    assert db.read_bytes() == before


def test_get_model_still_replaces_a_model_file(
    task: tuple[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: yesterday's export under the same name
    out = tmp_path / "model.npz"
    out.write_bytes(b"yesterday's model")
    # Execute
    code = _get_model(task, out)
    # Assert: replaced with the model
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["out"] == str(out)
    with np.load(out, allow_pickle=False) as arrays:
        assert arrays.files
