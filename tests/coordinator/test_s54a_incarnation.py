"""The coordinator database's incarnation: a random identity made with the database (the `meta`
row `incarnation`), given on open to a database an older coordinator wrote, made anew by
`plume coordinator restore`, and named in the registration answer and in the check-in answers
that carry an assignment or a `round_outcome` (the answers a device acts on with what it keeps
per round and task id). Devices tell by it a database that hands the same ids out again."""

from __future__ import annotations

import json
import logging
import sqlite3
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig, Store
from sdk import Client

from ._restore import run
from .test_service_support import ADMIN, await_assignment, create_task, task_config


def _meta(db: Path) -> str | None:
    with closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key='incarnation'").fetchone()
    return None if row is None else str(row[0])


def _is_incarnation(value: object) -> bool:
    return isinstance(value, str) and len(value) == 32 and set(value) <= set("0123456789abcdef")


def test_a_new_database_has_one_and_keeps_it(tmp_path: Path) -> None:
    # Execute: two new databases, one opened twice
    first, second = tmp_path / "a.db", tmp_path / "b.db"
    with closing(Store(first)) as store:
        made = store.incarnation
    with closing(Store(first)) as store:
        again = store.incarnation
    with closing(Store(second)) as store:
        other = store.incarnation
    # Assert
    assert _is_incarnation(made) and again == made == _meta(first)
    assert _is_incarnation(other) and other != made


@pytest.mark.parametrize("stored", [None, "not-hex", "A" * 32])
def test_a_database_without_one_gets_one_on_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, stored: str | None
) -> None:
    # Prepare: a store as an older coordinator left it (no row), or with a hand-edited one
    db = tmp_path / "plume.db"
    Store(db).close()
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("DELETE FROM meta WHERE key='incarnation'")
        if stored is not None:
            conn.execute("INSERT INTO meta(key, value) VALUES ('incarnation', ?)", (stored,))
    # Execute
    with caplog.at_level(logging.INFO, logger="plume.coordinator"), closing(Store(db)) as store:
        given = store.incarnation
    with closing(Store(db)) as store:
        kept = store.incarnation
    # Assert: one is written, said once, and kept
    assert _is_incarnation(given) and kept == given == _meta(db)
    said = [r.getMessage() for r in caplog.records if "incarnation" in r.getMessage()]
    assert len(said) == 1 and f"gave the database {db} the incarnation {given}" in said[0]


def test_restore_makes_a_new_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: a database and its backup (which leaves the incarnation out since s54j)
    db, bak = tmp_path / "plume.db", tmp_path / "plume.bak"
    with closing(Store(db)) as store:
        served = store.incarnation
    assert run("backup", "--db", str(db), "--out", str(bak)) == 0
    assert _meta(bak) is None
    capsys.readouterr()
    # Execute
    assert run("restore", "--db", str(db), "--from", str(bak)) == 0
    # Assert: a new one, printed, and kept when served; the backup is left as it was
    line = json.loads(capsys.readouterr().out)
    restored = _meta(db)
    assert _is_incarnation(restored) and restored not in (served, None)
    assert line["incarnation"] == restored and _meta(bak) is None
    with closing(Store(db)) as store:
        assert store.incarnation == restored


def test_the_answers_name_it(tmp_path: Path) -> None:
    db = tmp_path / "plume.db"
    raw: list[tuple[str, bytes]] = []

    def keep(request: httpx.Request, nxt: object) -> httpx.Response:
        response: httpx.Response = nxt(request)  # type: ignore[operator]
        raw.append((request.url.path, response.read()))
        return response

    with ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN, poll_s=0.05)) as url:
        with Client(url, str(tmp_path / "dev"), mods=(keep,)) as c:
            c.register()
            idle = c.check_in()  # no task: a wait, no outcome asked
            task_id = create_task(url, task_config(clients_per_round=1, selection_timeout_s=0.1))
            await_assignment(c, task_id)
    incarnation = _meta(db)
    answers = [json.loads(body) for _, body in raw]
    # Assert: the registration answer, as the doc shows it (its field order)
    assert raw[0][0] == "/v1/devices"
    assert list(answers[0]) == ["device_id", "created", "incarnation"]
    assert answers[0]["incarnation"] == incarnation and _is_incarnation(incarnation)
    # a wait that asked nothing is the bytes it was; the assignment's answer names it, last
    assert idle.incarnation is None and "incarnation" not in answers[1]
    assert raw[1][1].endswith(b',"assignment":null,"detail":"no active task"}')
    assert list(answers[-1])[-1] == "incarnation" and answers[-1]["incarnation"] == incarnation
