"""helper-222 re-ran the README's ten-line SDK example after its one-round task had finished:
`participate` checked in for its default `max_wait_s` of 600 s, silently, then printed None, and
a new user kills it as hung. The example now passes max_wait_s=30 (tests/sdk/test_client.py
runs it, identical to docs/http-api.md's copy, against a loopback coordinator)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_sdk_example_gives_up_within_half_a_minute() -> None:
    # Before: participate(...) without max_wait_s: a re-run after the one-round task finished
    # checked in for the default 600 s, silently, then printed None
    block = next(b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "Client(" in b)
    call = re.search(r"client\.participate\((.*)\)", block)
    assert call is not None
    wait = re.search(r"max_wait_s=(\d+)", call.group(1))
    assert wait is not None and int(wait.group(1)) <= 60
    assert "(30 s here; 600 s if you leave it out" in README
    assert int(wait.group(1)) == 30


def test_naming_the_finished_task_ends_at_once(tmp_path: Path) -> None:
    # The README's alternative: participate(..., task_id=1) on the finished one-round task
    # raises TaskEndedError without waiting out max_wait_s
    import time

    import numpy as np
    import torch

    from coordinator.service import AdminClient, ServerThread, ServiceConfig
    from mobile_sim.models import build_model
    from sdk import Client
    from sdk.client import TaskEndedError
    from sdk.trainer import TorchTrainer
    from tests.sdk.test_client import create_readme_task

    # Prepare: the README's task (mlp, one round, one device) and a device that took part
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_model("mlp")
    x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 10, 64)
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token="t", poll_s=0.05)
    with ServerThread(cfg) as url, AdminClient(url, "t") as admin:
        task_id = create_readme_task(admin, model)
        with Client(url, app_dir=str(tmp_path / "plume-app")) as client:
            client.register()
            assert client.participate(TorchTrainer(model), x, y, max_wait_s=30) is not None
            for _ in range(500):  # the round closes asynchronously after the last report
                if admin.status(task_id).state == "done":
                    break
                time.sleep(0.02)

            # Execute
            start = time.monotonic()
            with pytest.raises(TaskEndedError):
                client.participate(TorchTrainer(model), x, y, task_id=task_id, max_wait_s=30)
            took = time.monotonic() - start

    # Assert: well inside max_wait_s (30 s), not waited out
    assert task_id == 1
    assert took < 10
