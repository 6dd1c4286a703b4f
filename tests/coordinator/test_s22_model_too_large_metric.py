"""`plume_check_ins_model_too_large{task}` counts the check-ins a task's rounds were not given
to because its model is over the device's declared `max_model_bytes` (58987a0 refused or
passed them over without a count, unlike a missing SDK feature's
`plume_check_ins_sdk_unsupported`; helper-212's report). Against the loopback coordinator of
test_h212_model_cap_checkin."""

from __future__ import annotations

import httpx

from .test_h212_model_cap_checkin import BIG_SHAPES, CAP, SHAPES, World, create_sized_task, world

__all__ = ["world"]  # the fixture, used by name


def _count(http: httpx.Client, task_id: int) -> float:
    """`plume_check_ins_model_too_large` of the task (0 before its first count)."""
    want = f'plume_check_ins_model_too_large_total{{task="{task_id}"}}'
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def test_each_check_in_passed_over_or_refused_for_the_model_size_is_counted(
    world: World,
) -> None:
    # Prepare: the larger task and one that fits; a capped device and one without a cap
    big = create_sized_task(world.http, BIG_SHAPES)
    small = create_sized_task(world.http, SHAPES)
    capped, free = world.device(), world.device()
    # Execute: naming no task (passed over), naming the big one twice (409), naming the small
    capped_body = f'{{"max_model_bytes":{CAP}}}'.encode()
    world.check_in(capped, capped_body)
    for _ in range(2):
        named = world.check_in(capped, f'{{"task_id":{big},"max_model_bytes":{CAP}}}'.encode())
        assert named.status_code == 409
    world.check_in(capped, f'{{"task_id":{small},"max_model_bytes":{CAP}}}'.encode())
    world.check_in(free, f'{{"task_id":{big}}}'.encode())
    # Assert: three for the big task (one passed over, two refused), none for the small one
    # or for the device that declared no cap
    assert _count(world.http, big) == 3.0
    assert _count(world.http, small) == 0.0
