"""test_s58a_json_strictness's model_version claims on a machine that stalls between the two
pool reads of one test.

A loaded CI machine failed `...refused[9223372036854775808-words2]` with `assert 0 == 1`: the
refused check-in changed nothing (its 422 is raised before `Coordinator.check_in`), but the
world's task had task_config's 5 s selection timeout, and the module had outlasted it since
the device's one check-in; a tick then opened a round with that device (min_reports 1), which
takes it out of the pool. The stall is forced here, on the coordinator's clock: an hour passes
between the test's check-in and its second read, and a tick runs in it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from . import test_s58a_json_strictness as s58a
from .test_service_support import admin_get

GIVE_UP_S = 30.0  # a tick comes every 0.05 s; this only bounds a broken run
STALL_S = 3600.0  # far longer than the module takes on any machine


def _stall(world: s58a.World, seconds: float) -> None:
    """Step the coordinator's clock `seconds` ahead, then wait for a tick that read it."""
    coordinator = world.coordinator
    real = coordinator.clock
    coordinator.clock = lambda: real() + seconds
    ticked = threading.Event()
    tick = coordinator.tick

    def counted() -> Any:
        out = tick()  # began after the step: it reads the stepped clock
        ticked.set()
        return out

    coordinator.tick = counted  # the tick loop looks it up on the instance at every tick
    try:
        assert ticked.wait(GIVE_UP_S), "no tick ran"
    finally:
        del coordinator.tick


def test_a_refused_model_version_leaves_the_pool_as_it_was_through_a_stall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with s58a.serving(tmp_path) as world:
        # Prepare: the module's order: the repeated-key test leaves the device in the pool
        s58a.test_a_check_in_with_a_repeated_key_is_refused_and_changes_nothing(world)
        assert world.pool() == 1
        check_in = world.check_in

        def stalled_check_in(body: bytes) -> httpx.Response:
            answer = check_in(body)
            _stall(world, STALL_S)
            return answer

        monkeypatch.setattr(world, "check_in", stalled_check_in)
        # Execute / Assert: the failed case's test body, stalled between its two pool reads;
        # no round opened in the stall
        s58a.test_a_check_in_model_version_out_of_range_or_not_an_integer_is_refused(
            world, str(2**63), ("is outside [0, 9223372036854775808)",)
        )
        status = admin_get(world.http, f"/v1/admin/tasks/{world.task_id}")
        assert status["current_round"] is None, status
