"""A central-DP task accounted with amplification by sampling (`population=N,sample=k`, N > k)
gets what its accounting assumes: each cohort is drawn from at least N devices, with randomness
nobody can recompute from the task seed. Before, the coordinator opened a round as soon as k
devices waited and drew the cohort from the task seed that every assignment carries, so the
epsilon it reported for `population=10000` held only if 10,000 devices were really sampled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compression import encode_snapshot
from coordinator.aggregators import build_aggregator
from coordinator.aggregators._dp import amplified_population, find_dp
from coordinator.service import ServiceConfig, Store
from coordinator.service import rounds as rounds_module
from coordinator.service.rounds import Coordinator, pool_capacity
from tests._clock import Clock

from .test_service_support import SPEC, initial_params, serve_cli, task_config


def _coordinator(tmp_path: Path, **service: float) -> tuple[Coordinator, Clock]:
    clock = Clock(1_000.0)
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), **service)  # type: ignore[arg-type]
    return Coordinator(Store(tmp_path / "plume.db"), cfg, clock=clock), clock


def _task(coordinator: Coordinator, aggregator: str, **over: object) -> int:
    task_id = coordinator.create_task(task_config(aggregator=aggregator, **over))
    coordinator.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    return task_id


def _check_in_all(coordinator: Coordinator, task_id: int, devices: list[str]) -> None:
    for d in devices:
        coordinator.check_in(d, task_id)


DEVICES = [f"{i:032x}" for i in range(12)]


def test_a_dp_round_waits_for_population_devices_even_past_the_selection_timeout(
    tmp_path: Path,
) -> None:
    # Prepare: population=5, cohort 2; four devices wait, then the selection timeout passes
    coordinator, clock = _coordinator(tmp_path)
    task_id = _task(coordinator, "dp:clip=1,z=1,population=5,sample=2+fedavg")
    _check_in_all(coordinator, task_id, DEVICES[:4])
    clock.now += 60.0  # past selection_timeout_s (5 s)
    coordinator.tick()
    _check_in_all(coordinator, task_id, DEVICES[:4])
    # Assert: no round; it opened with 2 of them before (enough for a cohort, and a timeout).
    # The task's status says what it waits for.
    assert coordinator.runtimes[task_id].current is None
    status = coordinator.task_status(task_id)
    assert (status.pool, status.pool_needed) == (4, 5)
    # Execute: the fifth device arrives
    coordinator.check_in(DEVICES[4], task_id)
    # Assert: a round of 2 out of the 5
    cur = coordinator.runtimes[task_id].current
    assert cur is not None and len(cur.selected) == 2 and cur.selected <= set(DEVICES[:5])


def test_tasks_without_amplified_dp_open_as_before(tmp_path: Path) -> None:
    # Prepare: no dp stage, and a dp stage with population == sample (no amplification)
    coordinator, _ = _coordinator(tmp_path)
    plain = _task(coordinator, "fedavg")
    flat = _task(coordinator, "dp:clip=1,z=1,population=2,sample=2+fedavg")
    # Execute: two devices check in to each
    _check_in_all(coordinator, plain, DEVICES[:2])
    _check_in_all(coordinator, flat, DEVICES[2:4])
    # Assert: both opened a round of 2 at once
    for task_id in (plain, flat):
        cur = coordinator.runtimes[task_id].current
        assert cur is not None and len(cur.selected) == 2


def test_an_unseeded_dp_cohort_is_drawn_from_os_randomness_not_the_task_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the OS draw is made visible; 12 devices wait for population=12, cohort 2
    draws: list[int] = []

    def randbits(k: int) -> int:
        draws.append(0xC0FFEE + len(draws))
        return draws[-1]

    monkeypatch.setattr(rounds_module.secrets, "randbits", randbits)
    coordinator, _ = _coordinator(tmp_path)
    task_id = _task(coordinator, "dp:clip=1,z=1,population=12,sample=2+fedavg")
    # Execute
    _check_in_all(coordinator, task_id, DEVICES)
    # Assert: one OS draw, and the cohort is the one it picks (not the seeded engine's)
    cur = coordinator.runtimes[task_id].current
    assert cur is not None and len(draws) == 1
    pool = sorted(DEVICES)
    picks = np.random.default_rng(draws[0]).choice(len(pool), size=2, replace=False)
    assert cur.selected == {pool[i] for i in picks.tolist()}
    seeded = np.random.default_rng([task_config().seed, 0]).choice(len(pool), 2, replace=False)
    assert {pool[i] for i in seeded.tolist()} != cur.selected  # what anyone could recompute


def test_a_seeded_dp_task_keeps_the_reproducible_seeded_cohort(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: seed= in the dp stage is for simulations and tests (its epsilon means nothing)
    def no_os_draw(k: int) -> int:
        raise AssertionError("a seeded dp task drew its cohort from the OS")

    monkeypatch.setattr(rounds_module.secrets, "randbits", no_os_draw)
    cohorts = []
    for run in range(2):
        # A seeded accounted dp stage is refused unless the service allows it (simulations).
        coordinator, _ = _coordinator(tmp_path / str(run), allow_seeded_dp=True)
        task_id = _task(coordinator, "dp:clip=1,z=1,population=12,sample=2,seed=4+fedavg")
        # Execute
        _check_in_all(coordinator, task_id, DEVICES)
        cur = coordinator.runtimes[task_id].current
        assert cur is not None
        cohorts.append(cur.selected)
    # Assert: the same cohort both times
    assert cohorts[0] == cohorts[1]


def test_a_population_the_pool_cannot_hold_is_refused_at_creation(tmp_path: Path) -> None:
    # Prepare: the default pool holds about 200/s x 60 s / 2 = 6000 devices
    coordinator, _ = _coordinator(tmp_path)
    assert pool_capacity(coordinator.config) == 6000
    # Execute / Assert: population=10000 would never open a round
    with pytest.raises(ValueError) as info:
        coordinator.create_task(
            task_config(aggregator="dp:clip=1,z=1,population=10000,sample=100+fedavg")
        )
    message = str(info.value)
    assert "population=10000" in message and "holds about 6000" in message
    assert "max_checkin_rate" in message and "pool_ttl_s" in message
    assert coordinator.task_statuses() == []  # nothing stored
    # A coordinator whose pool lasts longer takes it
    larger, _ = _coordinator(tmp_path / "larger", pool_ttl_s=200.0)
    assert larger.create_task(
        task_config(aggregator="dp:clip=1,z=1,population=10000,sample=100+fedavg")
    )


@pytest.mark.parametrize(
    ("spec", "need"),
    [
        ("fedavg", 0),
        ("dp:clip=1,z=1+fedavg", 0),
        ("dp:clip=1,z=1,population=7,sample=7+fedavg", 0),
        ("dp:clip=1,z=1,population=70,sample=7+fedavg", 70),
        ("avgm+dp:clip=1,z=1,population=70,sample=7+fedavg", 70),
    ],
)
def test_the_pool_a_round_needs(spec: str, need: int) -> None:
    assert amplified_population(find_dp(build_aggregator(spec))) == need


def test_the_pool_serve_flags_reach_the_config_and_bad_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: `serve` replaced by a recorder
    run, seen = serve_cli(monkeypatch)

    # Execute + Assert: the defaults, then both flags, land in the config (and its capacity)
    assert run() == 0
    assert (seen[-1].pool_ttl_s, seen[-1].max_checkin_rate) == (60.0, 200.0)
    assert run("--pool-ttl", "120", "--max-checkin-rate", "500") == 0
    assert pool_capacity(seen[-1]) == 30_000
    for flag, bad in [("--pool-ttl", "0"), ("--max-checkin-rate", "-5"), ("--pool-ttl", "nan")]:
        with pytest.raises(SystemExit) as exited:
            run(flag, bad)
        assert exited.value.code == 2
        assert f"argument {flag}: must be a finite number > 0, got {bad}" in (
            capsys.readouterr().err
        )
    for field in ("pool_ttl_s", "max_checkin_rate"):
        with pytest.raises(ValueError, match=f"{field} must be a finite number > 0"):
            ServiceConfig(**{field: 0.0})  # type: ignore[arg-type]
