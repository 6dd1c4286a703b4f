"""The pool a dp task waits for holds what docs/privacy.md (assumption 1) says it holds: at the
default settings (max_checkin_rate 200/s, pool_ttl_s 60 s) about 6,000 devices, each asked back
after len(pool) / 200 s, none of them dropped by the TTL while the pool fills. Devices here
check in exactly when told, on a fake clock."""

from __future__ import annotations

import heapq
from pathlib import Path

from compression import encode_snapshot
from coordinator.service import ServiceConfig, Store
from coordinator.service.rounds import Coordinator, pool_capacity
from tests._clock import Clock

from .test_service_support import SPEC, initial_params, task_config


def test_the_default_pool_fills_to_its_capacity_when_devices_come_back_when_told(
    tmp_path: Path,
) -> None:
    # Prepare: population = the default capacity; the devices first arrive over 120 s
    clock = Clock(1_000.0)
    config = ServiceConfig(db_path=str(tmp_path / "p.db"))
    coordinator = Coordinator(Store(tmp_path / "p.db"), config, clock=clock)
    n = int(pool_capacity(config))
    assert n == 6000
    task_id = coordinator.create_task(
        task_config(aggregator=f"dp:clip=1,z=1,population={n},sample=2+fedavg")
    )
    coordinator.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    rt = coordinator.runtimes[task_id]
    devices = [f"{i:032x}" for i in range(n)]
    due = [(clock.now + 120.0 * i / n, i) for i in range(n)]
    longest = 0.0
    # Execute: every device checks in when it is due, and again when told
    while rt.current is None:
        clock.now, i = heapq.heappop(due)
        answer = coordinator.check_in(devices[i], task_id)
        coordinator.tick()
        if rt.current is None:
            longest = max(longest, answer.retry_after_s)
            heapq.heappush(due, (clock.now + answer.retry_after_s, i))
        assert clock.now < 1_000.0 + 600.0, len(rt.pool)  # devices expiring would keep it short
    # Assert: it opened once the last device had arrived, out of all n (nobody had expired),
    # and no device was asked back later than the TTL allows
    assert clock.now >= 1_000.0 + 120.0 * (n - 1) / n
    assert len(rt.pool) == n - len(rt.current.selected)
    assert longest <= n / config.max_checkin_rate < config.pool_ttl_s
