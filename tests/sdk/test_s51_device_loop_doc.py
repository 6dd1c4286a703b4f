"""docs/devices.md's participation loop, run verbatim against a loopback coordinator."""

from __future__ import annotations

import ast
import inspect
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

DOC = Path(__file__).parents[2] / "docs" / "devices.md"
HEADING = "### A device's whole life: the participation loop"
DOC_URL = "http://127.0.0.1:8080"
ROUNDS = 2
LOOP_BUDGET_S = 30.0  # the loop must end by itself well within this


def loop_block(doc: str) -> str:
    """The first python block of the section under `HEADING`."""
    section = re.search(re.escape(HEADING) + r"\n(.*?)(?=\n#{2,3} )", doc, re.S)
    assert section is not None, f"docs/devices.md has no section {HEADING!r}"
    block = re.search(r"```python\n(.*?)```", section.group(1), re.S)
    assert block is not None, f"{HEADING!r} has no python block"
    return block.group(1)


def create_loop_task(admin: Any) -> int:
    """A task of the block's model (`torch.nn.Linear(64, 10)`) for `ROUNDS` rounds of one
    device each, with short selection and retry waits; its id."""
    import torch

    from protocol.messages import TaskConfig, TensorShape, TrainingParams
    from sdk.flat import get_flat_params, spec_from_module

    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10)
    spec = spec_from_module(model)
    task_id: int = admin.create_task(
        TaskConfig(
            name="device-loop",
            model_name="linear",
            spec=[TensorShape(e.name, list(e.shape)) for e in spec.entries],
            rounds=ROUNDS,
            clients_per_round=1,
            selection_timeout_s=0.2,
            retry_after_s=0.5,
            training=TrainingParams(1, 32, 0.05),
        ),
        get_flat_params(model),
    )
    return task_id


def unknown_names(code: str) -> list[str]:
    """Attributes and keywords the block uses on the SDK's objects that those do not have.

    The loopback run takes no `None` branch (the device is selected every round), so the
    names there are checked here: `client.X(...)` against `Client` and its signatures, and
    `answer.X` against `CheckInResponse`, what `client.last_check_in` holds."""
    from protocol.messages import CheckInResponse
    from sdk import Client

    kinds: dict[str, type] = {"client": Client, "answer": CheckInResponse}
    fields = {"answer": set(CheckInResponse.__dataclass_fields__)}
    missing: list[str] = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            name, attr = node.value.id, node.attr
            if name in kinds and not (hasattr(kinds[name], attr) or attr in fields.get(name, ())):
                missing.append(f"{name}.{attr}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "client":
                method = getattr(Client, node.func.attr, None)
                if method is None:
                    continue  # reported above
                params = inspect.signature(method).parameters
                missing += [
                    f"client.{node.func.attr}({k.arg}=)"
                    for k in node.keywords
                    if k.arg is not None and k.arg not in params
                ]
    return missing


def run_loop(code: str, url: str, cwd: Path) -> dict[str, Any]:
    """Exec `code` with the doc's URL swapped for `url`, in `cwd`, on a thread; its globals.

    A loop still running after `LOOP_BUDGET_S` is stopped through the block's own `stop`
    event, so a broken loop fails the test rather than hanging it."""
    scope: dict[str, Any] = {"__name__": "__device_loop__"}
    failed: list[BaseException] = []

    def run() -> None:
        try:
            exec(compile(code.replace(DOC_URL, url), "devices.md", "exec"), scope)
        except BaseException as exc:  # handed to the test thread
            failed.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    here = os.getcwd()
    os.chdir(cwd)  # the block's app_dir is relative
    try:
        worker.start()
        worker.join(LOOP_BUDGET_S)
        ran_over = worker.is_alive()
        if ran_over and isinstance(scope.get("stop"), threading.Event):
            scope["stop"].set()
        worker.join(10.0)
    finally:
        os.chdir(here)
    if failed:
        raise failed[0]
    assert not worker.is_alive(), "the loop ignored its stop event"
    assert not ran_over, f"the loop did not end by itself within {LOOP_BUDGET_S} s"
    return scope


def _wait_done(admin: Any, task_id: int) -> Any:
    """The task's status once it is done (the last round commits asynchronously)."""
    deadline = time.monotonic() + 10.0
    status = admin.status(task_id)
    while status.state != "done" and time.monotonic() < deadline:
        time.sleep(0.02)
        status = admin.status(task_id)
    return status


def test_device_loop_runs_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from coordinator.service import AdminClient, ServerThread, ServiceConfig
    from sdk.flat import get_flat_params

    # Prepare: the block, and a fresh coordinator whose first task is the block's TASK_ID.
    code = loop_block(DOC.read_text())
    assert DOC_URL in code and "\nTASK_ID = 1 " in code
    assert 15 <= len([line for line in code.splitlines() if line.strip()]) <= 45
    assert unknown_names(code) == []
    assert "client.last_check_in" in code and "answer.retry_after_s" in code
    torch.set_num_threads(1)
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token="t", poll_s=0.05)
    with ServerThread(cfg) as url, AdminClient(url, "t") as admin:
        task_id = create_loop_task(admin)
        assert task_id == 1

        # Execute
        scope = run_loop(code, url, tmp_path)

        # Assert: every round committed with this device's report, and the loop said "done".
        status = _wait_done(admin, task_id)
        rounds = admin.rounds(task_id)
        device_id = scope["client"].device_id
        reporters = [
            {row["device_id"] for row in admin.bandwidth(r.round_id)["rows"]} for r in rounds
        ]
        final = admin.model(task_id).params
    assert scope["outcome"] == "done"
    assert capsys.readouterr().out.splitlines()[-1:] == ["done"]
    assert status.state == "done" and status.version == ROUNDS
    assert [(r.state, r.reports) for r in rounds] == [("committed", 1)] * ROUNDS
    assert all(device_id in seen for seen in reporters)
    np.testing.assert_array_equal(get_flat_params(scope["served"]), final)
    assert (tmp_path / "plume-app" / "device_key").exists()
