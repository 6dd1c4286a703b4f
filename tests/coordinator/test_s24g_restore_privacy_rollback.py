"""`plume coordinator restore` refuses to roll a task's DP accounting back (s24/r1, finding 4).

A task's epsilon is composed from the rounds its store says it released. Restoring a backup
taken before more rounds were released put the count back to the backup's, although those
rounds had reached devices: the restored task would release as many again against the same
budget, overspending it (s24/r1: a central-DP task at 103 released rounds, epsilon 257.36, was
at 67 rounds and 180.00 after a restore). Now restore refuses, naming each task and both
figures, unless `--allow-privacy-rollback` is given; with it, the figures rolled back are
printed (stderr and the JSON line), not lost silently."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from pathlib import Path

import httpx
import pytest

from coordinator import cli
from coordinator.privacy import FixedSizeSampling, PrivacyAccountant
from coordinator.service.rounds import Coordinator
from protocol.messages import TaskConfig
from sdk.client import Client

from ._secure_service import fast_service, secure_dp_task, secure_round_of
from .test_h79_stop import DEVICES, _frame, _open_round, _start, _task
from .test_service_support import create_task, task_config, wait_until

DP3 = "dp:clip=1,z=1,population=3,sample=3,delta=1e-5+fedavg"
PROG = "plume coordinator restore: "


def _eps(rounds: int) -> float:
    return PrivacyAccountant(1.0, FixedSizeSampling(3, 3)).epsilon(rounds, 1e-5)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rounds(coord: Coordinator, cfg: TaskConfig, task_id: int, first: int, n: int) -> None:
    """`n` committed rounds of the task, every device reporting."""
    for r in range(first, first + n):
        round_id = _open_round(coord, task_id, DEVICES)
        to_close = None
        for i, d in enumerate(DEVICES):
            _, to_close = coord.submit(round_id, d, f"k{r}{d}", _frame(cfg, 3 * r + i))
        assert to_close is not None
        asyncio.run(coord.close_round(to_close))


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = cli.main(["coordinator", *argv])
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def _central_world(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    """A store whose central-DP task (task 2, beside a plain task 1) released 3 rounds, and
    a backup taken when it had released 2: (database, backup)."""
    db, bak = tmp_path / "plume.db", tmp_path / "plume.bak"
    plain = task_config(rounds=20, clients_per_round=3, min_reports=1)
    cfg = task_config(rounds=20, clients_per_round=3, min_reports=1, aggregator=DP3)
    coord = _start(db)
    plain_id = _task(coord, plain)
    task_id = _task(coord, cfg)
    assert (plain_id, task_id) == (1, 2)
    _rounds(coord, cfg, task_id, 0, 2)
    coord.store.close()
    status, _, err = _run(capsys, "backup", "--db", str(db), "--out", str(bak))
    assert status == 0, err
    coord = _start(db)
    _rounds(coord, cfg, task_id, 2, 1)
    coord.store.close()
    return db, bak


def test_restoring_a_backup_with_fewer_released_dp_rounds_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    db, bak = _central_world(tmp_path, capsys)
    before = _digest(db)
    # Execute
    status, out, err = _run(capsys, "restore", "--db", str(db), "--from", str(bak))
    # Assert: one line naming the task and both figures; the database as it was
    lines = err.strip().splitlines()
    assert status == 1 and out == ""
    assert len(lines) == 1 and lines[0].startswith(PROG + "error: "), lines
    line = lines[0]
    assert f"task 2: 3 rounds, epsilon {_eps(3):.6g}" in line, line
    assert f"the backup: 2 rounds, epsilon {_eps(2):.6g}" in line, line
    assert "task 1" not in line  # no DP accounting
    assert "--allow-privacy-rollback" in line
    assert _digest(db) == before


def test_the_override_restores_and_says_what_it_rolled_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    db, bak = _central_world(tmp_path, capsys)
    # Execute
    status, out, err = _run(
        capsys, "restore", "--db", str(db), "--from", str(bak), "--allow-privacy-rollback"
    )
    # Assert: restored (the task back at 2 released rounds), the figures rolled back printed
    assert status == 0, err
    line = json.loads(out)
    assert line["privacy_rollback"] == [
        {
            "task": 2,
            "rounds": 3,
            "epsilon": _eps(3),
            "backup_rounds": 2,
            "backup_epsilon": _eps(2),
        }
    ]
    assert "warning: " in err and "task 2: 3 rounds" in err
    coord = _start(db)
    try:
        assert coord.runtimes[2].dp_rounds_released() == 2
    finally:
        coord.store.close()


def test_a_backup_as_far_as_the_database_restores_without_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a backup of the database as it is now (the usual restore after damage)
    db, _ = _central_world(tmp_path, capsys)
    now = tmp_path / "now.bak"
    assert _run(capsys, "backup", "--db", str(db), "--out", str(now))[0] == 0
    # Execute
    status, out, err = _run(capsys, "restore", "--db", str(db), "--from", str(now))
    # Assert
    assert status == 0, err
    assert "privacy_rollback" not in json.loads(out)


def test_a_secure_dp_task_rolled_back_is_refused_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a secure task with distributed DP, one round released at the backup, two now
    db, bak = tmp_path / "plume.db", tmp_path / "plume.bak"
    with fast_service(db) as url, httpx.Client(base_url=url) as http:
        task_id = create_task(http, secure_dp_task(rounds=5))
        clients = [Client(url, str(tmp_path / f"dev{i}")) for i in range(3)]
        for c in clients:
            c.register()
        task = f"/v1/admin/tasks/{task_id}"
        assert all(r.completed for r in secure_round_of(clients, task_id))
        assert wait_until(http, task, "rounds_committed", 1)["rounds_committed"] == 1
        assert _run(capsys, "backup", "--db", str(db), "--out", str(bak))[0] == 0
        assert all(r.completed for r in secure_round_of(clients, task_id))
        assert wait_until(http, task, "rounds_committed", 2)["rounds_committed"] == 2
        for c in clients:
            c.close()
    before = _digest(db)
    # Execute
    status, _, err = _run(capsys, "restore", "--db", str(db), "--from", str(bak))
    # Assert
    assert status == 1, err
    assert f"task {task_id}: 2 rounds, epsilon " in err and "the backup: 1 rounds" in err, err
    assert _digest(db) == before


def test_accounting_restore_cannot_read_needs_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the database's last round record damaged (its measurements do not parse)
    db, bak = _central_world(tmp_path, capsys)
    con = sqlite3.connect(db)
    con.execute(
        "UPDATE rounds SET measurements_json='{not json' "
        "WHERE round_id=(SELECT MAX(round_id) FROM rounds)"
    )
    con.commit()
    con.close()
    before = _digest(db)
    # Execute
    refused = _run(capsys, "restore", "--db", str(db), "--from", str(bak))
    after_refusal = _digest(db)
    allowed = _run(
        capsys, "restore", "--db", str(db), "--from", str(bak), "--allow-privacy-rollback"
    )
    # Assert: refused as unknown, the file unchanged; restored with the flag, saying so
    assert refused[0] == 1
    assert "the DP accounting of --db cannot be read" in refused[2], refused[2]
    assert "--allow-privacy-rollback" in refused[2]
    assert after_refusal == before
    assert allowed[0] == 0, allowed[2]
    assert "warning: the DP accounting of --db cannot be read" in allowed[2]
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM rounds").fetchone() == (2,)  # the backup's
    con.close()


@pytest.mark.parametrize("damage", ["blob", "deep"])
def test_a_round_record_that_is_not_json_text_is_one_line_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    # Prepare: the last round's measurements a blob (json.loads: TypeError) or nested deeper
    # than the parser goes (RecursionError); both were tracebacks (helper-248)
    db, bak = _central_world(tmp_path, capsys)
    value: bytes | str = b"\x00\xff" if damage == "blob" else "[" * 200_000 + "]" * 200_000
    con = sqlite3.connect(db)
    con.execute(
        "UPDATE rounds SET measurements_json=? WHERE round_id=(SELECT MAX(round_id) FROM rounds)",
        (value,),
    )
    con.commit()
    con.close()
    before = _digest(db)
    # Execute
    status, out, err = _run(capsys, "restore", "--db", str(db), "--from", str(bak))
    # Assert
    assert status == 1 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "the DP accounting of --db cannot be read" in err
    assert _digest(db) == before
