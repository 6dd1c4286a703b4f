"""The "round opened" log line names the cohort and the pool it was drawn from. Before, it said
"opened with N devices" with N the whole checked-in pool, so a dp task drawing 2 of 5 said 5."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from .test_service_dp_pool import DEVICES, _check_in_all, _coordinator, _task


def test_the_open_log_names_the_cohort_and_the_pool(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a dp task sampling 2 of a population of 5
    coordinator, _ = _coordinator(tmp_path)
    task_id = _task(coordinator, "dp:clip=1,z=1,population=5,sample=2+fedavg")
    # Execute: five devices check in, so a round of 2 opens from the 5
    with caplog.at_level(logging.INFO, logger="plume.coordinator"):
        _check_in_all(coordinator, task_id, DEVICES[:5])
    # Assert: the cohort is 2, and the line says 2 of 5
    cur = coordinator.runtimes[task_id].current
    assert cur is not None and len(cur.selected) == 2
    opened = [r.getMessage() for r in caplog.records if "opened with" in r.getMessage()]
    assert opened == [f"task {task_id} round 1 opened with 2 of 5 checked-in devices"]
