"""`plume coordinator status` (a line a task) shows no pool for a finished task (helper-222's
walkthrough: a done task's line said "pool": 91, the devices that checked in before it
finished, until their pool entries expire; a done or stopped task opens no round, so there is
nothing for them to wait for). The line says null for `pool` and `pool_needed` then; a running
or paused task keeps its counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator._cli import _task_line
from coordinator.cli import main
from coordinator.service import AdminClient, ServerThread, ServiceConfig
from protocol.messages import TaskConfig, TensorShape

ADMIN = "s3cret-h231p"


def _status(state: str) -> dict[str, Any]:
    return {
        "task_id": 3, "state": state, "version": 5, "rounds_closed": 5, "current_round": None,
        "config": {"name": "t", "model_name": "mlp", "rounds": 5}, "pool": 91,
        "pool_needed": 20, "refused": None,
    }  # fmt: skip


@pytest.mark.parametrize("state", ["done", "stopped"])
def test_a_finished_tasks_line_has_no_pool(state: str) -> None:
    line = _task_line(_status(state))
    assert (line["state"], line["pool"], line["pool_needed"]) == (state, None, None)


@pytest.mark.parametrize("state", ["active", "paused", "awaiting_model"])
def test_a_running_tasks_line_keeps_its_pool(state: str) -> None:
    line = _task_line(_status(state))
    assert (line["pool"], line["pool_needed"]) == (91, 20)


def test_status_and_stop_print_no_pool_for_a_stopped_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: two tasks, the first stopped through the CLI
    config = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    task = TaskConfig(
        name="t", model_name="tiny", spec=[TensorShape("w", [10])], rounds=3,
        clients_per_round=1,
    )  # fmt: skip
    with ServerThread(config) as url:
        with AdminClient(url, ADMIN) as admin:
            admin.create_task(task, np.zeros(10, np.float32))
            admin.create_task(task, np.zeros(10, np.float32))
        flags = ["--url", url, "--admin-token", ADMIN]
        # Execute
        assert main(["coordinator", "stop", *flags, "--task", "1"]) == 0
        stopped = json.loads(capsys.readouterr().out)
        assert main(["coordinator", "status", *flags]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # Assert
    assert (stopped["state"], stopped["pool"], stopped["pool_needed"]) == ("stopped", None, None)
    assert [(r["state"], r["pool"], r["pool_needed"]) for r in rows] == [
        ("stopped", None, None), ("active", 0, 2),
    ]  # fmt: skip
