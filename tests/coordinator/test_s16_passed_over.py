"""A check-in naming no task, from an SDK without a feature a task needs, is told about (and
counted against) only a task that could give it a round now: not a stopped or paused one."""

from __future__ import annotations

import pytest

from .test_h110_checkin_features import ADMIN, World, _ef_off_task, world  # noqa: F401


@pytest.mark.parametrize("action", ["stop", "pause"])
def test_a_task_that_runs_no_rounds_now_is_not_what_an_older_sdk_is_told_it_cannot_run(
    world: World,  # noqa: F811
    action: str,
) -> None:
    # Prepare: the only task needs error_feedback_off, and is stopped or paused
    task = _ef_off_task(world)
    r = world.http.post(
        f"/v1/admin/tasks/{task}/{action}", headers={"authorization": f"Bearer {ADMIN}"}
    )
    assert r.status_code == 200, r.text

    # Execute: check-ins naming no task, from an SDK before `features`
    answers = [world.check_in(b"{}").json() for _ in range(3)]

    # Assert: the answer any device gets with no task running, and nothing counted
    assert [a["detail"] for a in answers] == ["no active task"] * 3
    assert world.metric(task) == 0.0
