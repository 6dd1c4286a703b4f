"""A snapshot none of which went out does not spend the device's `snapshots_per_version`
(stop 48, helper-408's F2: requests whose device closed before the answer, counted nowhere in
the ledger, used up the limit, and the device's first real download was refused 429 for up to
an hour). The count is still taken as the answer is planned, so concurrent requests cannot all
pass; the wire middleware gives it back when it drops the whole answer
(`test_s24g_ledger_closed_before_answer.py` holds that it calls `on_dropped` then, and only
then)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig, create_app
from coordinator.service.errors import ApiError
from protocol.names import SnapshotDType

from .test_service_support import ADMIN, create_task, task_config


@contextmanager
def _task(tmp_path: Path, limit: int) -> Iterator[tuple[Any, int]]:
    """(the serving coordinator, a task with its initial model) under `limit` snapshots."""
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, snapshots_per_version=limit
    )
    app = create_app(cfg)
    coordinator = app.state.coordinator
    try:
        with ServerThread(cfg, app=app) as url, httpx.Client(base_url=url, timeout=30) as http:
            yield coordinator, create_task(http, task_config(rounds=2))
    finally:
        coordinator.store.close()


def _snapshot(coordinator: Any, task: int, device: str) -> Any:
    return coordinator.plan_model(task, None, "snapshot", SnapshotDType.FP32, device)


def test_a_snapshot_given_back_leaves_the_device_its_limit(tmp_path: Path) -> None:
    with _task(tmp_path, limit=1) as (coordinator, task):
        # Prepare: a limit of one snapshot a version; the device's first answer is dropped
        first = _snapshot(coordinator, task, "dev-a")
        assert first.counted

        # Execute
        coordinator.uncount_snapshot(first)

        # Assert: the next snapshot is served, the one after it refused as before
        again = _snapshot(coordinator, task, "dev-a")
        assert again.counted
        with pytest.raises(ApiError) as refused:
            _snapshot(coordinator, task, "dev-a")
        assert refused.value.status == 429
        # Given back twice, or for another device, each count stays at zero
        coordinator.uncount_snapshot(again)
        coordinator.uncount_snapshot(again)
        other = _snapshot(coordinator, task, "dev-b")
        coordinator.uncount_snapshot(other)
        _, counts = coordinator._snapshot_counts[task]
        assert counts["dev-a"][1] == 0 and counts["dev-b"][1] == 0


def test_nothing_is_counted_or_given_back_without_a_limit(tmp_path: Path) -> None:
    with _task(tmp_path, limit=0) as (coordinator, task):
        answer = _snapshot(coordinator, task, "dev-a")
        assert not answer.counted
        coordinator.uncount_snapshot(answer)  # a no-op
        assert task not in coordinator._snapshot_counts
