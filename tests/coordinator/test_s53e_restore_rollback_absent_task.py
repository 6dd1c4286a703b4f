"""`plume coordinator restore` refusing a privacy rollback says "the backup has no task N" for
a DP task made after the backup, instead of "the backup: 0 rounds, epsilon 0", which read as a
task the backup holds that released nothing (an operator's walkthrough, s53e: last night's
backup restored over a store whose DP task was created today). A task the backup holds keeps
its figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_h79_stop import _start, _task
from .test_s24g_restore_privacy_rollback import DP3, _eps, _rounds, _run
from .test_service_support import task_config


def test_a_dp_task_the_backup_lacks_is_named_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the backup holds DP task 1 at 1 released round; task 2 is made after it
    db, bak = tmp_path / "plume.db", tmp_path / "plume.bak"
    cfg = task_config(rounds=20, clients_per_round=3, min_reports=1, aggregator=DP3)
    coord = _start(db)
    first = _task(coord, cfg)
    _rounds(coord, cfg, first, 0, 1)
    coord.store.close()
    status, _, err = _run(capsys, "backup", "--db", str(db), "--out", str(bak))
    assert status == 0, err
    coord = _start(db)
    _rounds(coord, cfg, first, 1, 1)
    second = _task(coord, cfg)
    _rounds(coord, cfg, second, 2, 2)
    coord.store.close()
    assert (first, second) == (1, 2)
    # Execute
    status, out, err = _run(capsys, "restore", "--db", str(db), "--from", str(bak))
    # Assert: both tasks named; the one the backup lacks says so, the other keeps its figures
    lines = err.strip().splitlines()
    assert status == 1 and out == "" and len(lines) == 1, lines
    assert f"task 1: 2 rounds, epsilon {_eps(2):.6g}; the backup: 1 rounds, epsilon " in lines[0]
    assert f"task 2: 2 rounds, epsilon {_eps(2):.6g}; the backup has no task 2)" in lines[0]
    assert "the backup: 0 rounds" not in lines[0]
