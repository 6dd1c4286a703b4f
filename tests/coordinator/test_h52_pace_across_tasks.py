"""Pace steering holds for a device that checks in to every task (no task id, the SDK's
default): it joins each active task's pool, and each pool's devices must together stay under
`max_checkin_rate`. The answer took the smallest wait over the tasks, pace included, so a task
still gathering a cohort (wait `poll_s`, 0.25 s) undid the pacing of a dp task holding
thousands of devices while it waits for its population: 1,000 devices came back 4 times a
second each, 4,000 check-ins/s against a rate of 200."""

from __future__ import annotations

from pathlib import Path

from compression import encode_snapshot
from coordinator.service import ServiceConfig, Store
from coordinator.service.rounds import Coordinator
from tests import _clock

from .test_service_support import SPEC, initial_params, task_config


class _Clock(_clock.Clock):
    start = 1_000.0


def _coordinator(tmp_path: Path) -> tuple[Coordinator, _Clock]:
    clock = _Clock()
    config = ServiceConfig(db_path=str(tmp_path / "p.db"))
    return Coordinator(Store(tmp_path / "p.db"), config, clock=clock), clock


def _task(coordinator: Coordinator, **over: object) -> int:
    task_id = coordinator.create_task(task_config(**over))
    coordinator.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    return task_id


def test_a_device_in_every_pool_is_paced_by_the_largest(tmp_path: Path) -> None:
    # Prepare: a dp task waiting for 5,000 devices, and a plain task whose first devices
    # just arrived (its cohort of 2 is open to any device)
    coordinator, clock = _coordinator(tmp_path)
    dp = _task(coordinator, aggregator="dp:clip=1,z=1,population=5000,sample=2+fedavg")
    devices = [f"{i:032x}" for i in range(1_000)]
    for d in devices:
        coordinator.check_in(d, dp)
    plain = _task(coordinator, clients_per_round=2, min_reports=1, selection_timeout_s=600.0)
    # Execute: a device checks in to every task (the plain one opens its round of 2 with the
    # first two of them), then another
    for d in devices[:2]:
        coordinator.check_in(d)
    assert coordinator.runtimes[plain].current is not None
    clock.now += 0.5
    answer = coordinator.check_in(devices[2])
    # Assert: paced by the dp pool of 1,000 devices at 200/s, as a check-in to it alone is
    alone = coordinator.check_in(devices[3], dp)
    assert alone.retry_after_s == 1_000 / 200
    assert answer.action == "wait" and answer.retry_after_s >= 1_000 / 200


def test_with_one_task_the_answer_is_unchanged(tmp_path: Path) -> None:
    # Prepare: one plain task gathering its cohort of 4
    coordinator, _ = _coordinator(tmp_path)
    _task(coordinator, clients_per_round=4, min_reports=1, selection_timeout_s=600.0)
    # Execute
    answers = [coordinator.check_in(f"{i:032x}") for i in range(3)]
    # Assert: the poll interval (the pool is far below the rate)
    assert [a.retry_after_s for a in answers] == [0.25, 0.25, 0.25]
