"""`plume sim --transport http --no-error-feedback` tells the coordinator's task so.

Before, the HTTP fleet built its task from the codec alone and dropped `SimConfig.error_feedback`:
the run was recorded as without error feedback while every SDK client kept a residual. Now the
task it creates carries `codec.error_feedback` false, and a default run's task leaves the field
out (its JSON is the bytes it was)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from coordinator.service import AdminClient
from mobile_sim.http_fleet import HttpFleetOptions, run_http_simulation
from mobile_sim.runner import SimConfig
from protocol.messages import TaskConfig, to_json

TINY = SimConfig(
    dataset="digits",
    model="digits_mlp",
    clients=4,
    per_round=2,
    rounds=1,
    topk=0.1,
    bits=8,
    local_epochs=1,
    partition="iid",
    seed=0,
)


class _Created(Exception):
    """Stops the run once its task is made."""


def _task_of(cfg: SimConfig, monkeypatch: pytest.MonkeyPatch) -> TaskConfig:
    """The task `run_http_simulation(cfg)` creates on its embedded coordinator (the run stops
    there)."""
    made: list[TaskConfig] = []

    def create_task(self: AdminClient, config: TaskConfig, params: Any) -> int:
        made.append(config)
        raise _Created

    monkeypatch.setattr(AdminClient, "create_task", create_task)
    with pytest.raises(_Created):
        run_http_simulation(cfg, progress=False, options=HttpFleetOptions())
    (task,) = made
    return task


def test_no_error_feedback_reaches_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    # Execute
    task = _task_of(replace(TINY, error_feedback=False), monkeypatch)
    # Assert
    assert task.codec.error_feedback is False
    assert to_json(task)["codec"]["error_feedback"] is False
    assert (task.codec.topk, task.codec.bits) == (0.1, 8)


def test_the_default_run_leaves_the_field_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # Execute
    task = _task_of(TINY, monkeypatch)
    # Assert
    assert task.codec.error_feedback is None
    assert "error_feedback" not in to_json(task)["codec"]
