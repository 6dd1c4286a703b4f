"""`plume coordinator pause`, `resume` and `stop` print the task's one line, as `status`
without --task lists it (helper-222's walkthrough: each printed the task's whole status,
about 100 lines of JSON with the spec and codecs one number a line). `status --task` keeps
the whole status."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coordinator.cli import main
from coordinator.service import AdminClient, ServerThread, ServiceConfig
from protocol.messages import TaskConfig, TensorShape

ADMIN = "s3cret-h231"


def test_pause_resume_stop_print_the_status_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: one task with a spec of several tensors (each a JSON number a line before)
    config = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    task = TaskConfig(
        name="t", model_name="tiny", spec=[TensorShape("w", [4, 5]), TensorShape("b", [5])],
        rounds=3, clients_per_round=1,
    )  # fmt: skip
    admin_flags = ["--admin-token", ADMIN, "--task", "1"]
    with ServerThread(config) as url:
        with AdminClient(url, ADMIN) as admin:
            assert admin.create_task(task, np.zeros(25, np.float32)) == 1
        printed = {}
        # Execute
        for action in ("pause", "resume", "stop", "status"):
            code = main(["coordinator", action, "--url", url, *admin_flags])
            out = capsys.readouterr().out
            assert code == 0, out
            printed[action] = out
        code = main(["coordinator", "status", "--url", url, "--admin-token", ADMIN])
        listed = capsys.readouterr().out
    # Assert: one line each, the same keys as `status` without --task prints
    assert code == 0
    keys = list(json.loads(listed.splitlines()[0]))
    for action, state in (("pause", "paused"), ("resume", "active"), ("stop", "stopped")):
        assert printed[action].count("\n") == 1, printed[action]
        line = json.loads(printed[action])
        assert list(line) == keys
        assert (line["task_id"], line["state"], line["rounds"]) == (1, state, 3)
        assert "spec" not in printed[action] and "codec" not in printed[action]
    # `status --task` still prints the whole status, config and rounds
    whole = json.loads(printed["status"])
    assert whole["task"]["config"]["spec"][0]["shape"] == [4, 5]
    assert whole["task"]["state"] == "stopped" and whole["rounds"] == []
