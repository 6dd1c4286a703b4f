"""What each task has of its own in /metrics, as docs/operations.md says (s45).

A long-running coordinator's /metrics grows with its tasks, finished ones included (helper-375
measured about 47 lines a task over 85 tasks): the `task`-labelled families of every task are
kept for as long as the task is. The docs give the figure; this pins it.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from coordinator.service import ServerThread, ServiceConfig

from .test_service_support import ADMIN, create_task


def test_each_task_has_45_series(tmp_path: Path) -> None:
    # Prepare
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        # Execute: three tasks
        ids = [create_task(http) for _ in range(3)]
        text = http.get("/metrics").text
    # Assert: each task's own lines (its `task` label), the same for each: 45 (about 2.4 KB)
    per_task = {sum(f'task="{i}"' in line for line in text.splitlines()) for i in ids}
    assert per_task == {45}, per_task
