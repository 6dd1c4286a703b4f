"""The coordinator-wide epsilon (docs/privacy.md, assumption 7): a device in every DP-accounted
task is covered by the composition of all the tasks' rounds. Composed under RDP it must be
what dp_accounting computes for the ComposedDpEvent of the tasks' events, more than either
task's own epsilon; one task alone is that task's epsilon exactly; tasks without accounting
are left out and counted; /healthz and /metrics show it, and a restart rebuilds it."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dp_accounting
import httpx
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from coordinator.aggregators import build_aggregator
from coordinator.aggregators._dp import find_dp
from coordinator.privacy import (
    FixedSizeSampling,
    PoissonSampling,
    PrivacyAccountant,
    composed_rdp_epsilon,
    rdp_curve,
)
from coordinator.secure._dp import DistributedDpAccountant
from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.dp_total import all_tasks_privacy
from protocol.secagg import NoiseKind

from .test_service_aggregator_state import _dp, _one_round
from .test_service_support import ADMIN, create_task, task_config

ADD_REMOVE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
REPLACE = dp_accounting.NeighboringRelation.REPLACE_ONE


def _direct(relation: Any, events: list[Any], delta: float) -> float:
    """dp_accounting's own RDP epsilon of the composed event."""
    acc = RdpAccountant(neighboring_relation=relation)
    acc.compose(dp_accounting.ComposedDpEvent(events))
    return float(acc.get_epsilon(delta))


def test_two_poisson_tasks_compose_as_dp_accounting_composes_their_events() -> None:
    # Prepare: two tasks with their own sampling and noise, and round counts
    a = PrivacyAccountant(1.1, PoissonSampling(0.05))
    b = PrivacyAccountant(0.9, PoissonSampling(0.1))
    delta = 1e-5
    # Execute
    eps = composed_rdp_epsilon([rdp_curve(a, 30), rdp_curve(b, 10)], delta)
    # Assert: the same floats as the RDP accountant over the ComposedDpEvent, and above each
    # task's own epsilon (PLD, as the task reports it, and RDP)
    assert eps == _direct(ADD_REMOVE, [a.dp_event(30), b.dp_event(10)], delta)
    for acc, rounds in ((a, 30), (b, 10)):
        own_rdp = PrivacyAccountant(acc.noise_multiplier, acc.sampling, "rdp")
        assert eps > own_rdp.epsilon(rounds, delta) >= acc.epsilon(rounds, delta) * 0.999
        assert eps > acc.epsilon(rounds, delta)


def test_a_fixed_size_task_composes_with_a_secure_tasks_zcdp_rounds() -> None:
    # Prepare: a fixed-size task accounted under dp_accounting's RDP as is (method rdp) and a
    # secure task with two discrete-Gaussian rounds
    fixed = PrivacyAccountant(1.5, FixedSizeSampling(1000, 50), "rdp")
    secure = DistributedDpAccountant(1e-6)
    for survivors in (40, 35):
        secure.record_round(NoiseKind.DISCRETE_GAUSSIAN, 300.0, 4.0e5, survivors, 64)
    # Execute
    eps = composed_rdp_epsilon([rdp_curve(fixed, 20), secure.rdp()], 1e-6)
    # Assert
    assert eps == _direct(REPLACE, [fixed.dp_event(20), *secure.events], 1e-6)
    assert eps > max(fixed.epsilon(20, 1e-6), secure.epsilon())


def _runtime(task_id: int, aggregator: str, rounds: int) -> Any:
    """A stand-in plain task: its id, its config's aggregator, its dp stage when that accounts
    epsilon (`TaskRuntime.accounted_dp`), and the rounds its accountant counts released
    (`TaskRuntime.dp_rounds_released`)."""
    dp = find_dp(build_aggregator(aggregator))
    return SimpleNamespace(
        task_id=task_id,
        secure=None,
        config=SimpleNamespace(aggregator=aggregator),
        accounted_dp=dp if dp is not None and dp.sampling is not None else None,
        dp_rounds_released=lambda: rounds,
    )


# Fixed-size with N > k: method "auto" caps each round by the unsampled Gaussian.
DP_A = "dp:clip=1,z=2,population=100,sample=90,delta=1e-6+fedavg"
DP_B = "dp:clip=1,z=3,population=50,sample=10,delta=1e-5+fedavg"


def test_one_accounted_task_alone_gives_exactly_its_own_epsilon() -> None:
    # Prepare: one accounted task with 12 rounds, one plain task, one accounted without rounds
    rts = [
        _runtime(1, DP_A, 12),
        _runtime(2, "fedavg", 0),
        _runtime(3, "dp:clip=1,z=1,sample=5+fedavg", 4),  # no sampling model: no epsilon
        _runtime(4, DP_B, 0),
    ]
    # Execute
    v = all_tasks_privacy(rts)
    # Assert: task 1's own epsilon at its delta, to the bit; 2 and 3 left out and counted
    own = PrivacyAccountant(2.0, FixedSizeSampling(100, 90)).epsilon(12, 1e-6)
    assert v.epsilon == own and v.delta == 1e-6
    assert v.composed == (1, 4) and v.not_accounted == (2, 3) and v.tasks == 4
    body = v.to_json()
    assert body["tasks_composed"] == 2 and body["epsilon_infinite"] is False


def test_two_accounted_tasks_compose_at_the_smallest_delta() -> None:
    # Prepare
    rts = [_runtime(1, DP_A, 12), _runtime(2, DP_B, 7), _runtime(3, "fedavg", 0)]
    # Execute
    v = all_tasks_privacy(rts)
    # Assert: the capped curves added, read at the smaller delta (task 1's)
    a = PrivacyAccountant(2.0, FixedSizeSampling(100, 90))
    b = PrivacyAccountant(3.0, FixedSizeSampling(50, 10))
    assert v.delta == 1e-6
    assert v.epsilon == composed_rdp_epsilon([rdp_curve(a, 12), rdp_curve(b, 7)], 1e-6)
    assert v.epsilon > a.epsilon(12, 1e-6) and v.epsilon > b.epsilon(7, 1e-5)
    assert v.composed == (1, 2) and v.not_accounted == (3,)


def test_nothing_released_is_zero_and_a_non_private_secure_round_is_infinite() -> None:
    assert all_tasks_privacy([_runtime(1, DP_A, 0)]).to_json()["epsilon"] == 0.0
    secure = DistributedDpAccountant(1e-5)
    secure.record_round(NoiseKind.NONE, 1.0, 0.0, 3, 8)
    rt = SimpleNamespace(
        task_id=2,
        secure=SimpleNamespace(
            settings=SimpleNamespace(config=SimpleNamespace(dp=True)),
            coordinator=SimpleNamespace(accountant=secure),
        ),
    )
    v = all_tasks_privacy([_runtime(1, DP_A, 3), rt])
    assert math.isinf(v.epsilon)
    assert v.to_json()["epsilon"] is None and v.to_json()["epsilon_infinite"] is True


# population=2, sample=2: the two devices of `_one_round` (the service selects fixed-size
# cohorts; a larger population would wait for that many devices).
DP_1 = "dp:clip=1,z=1,population=2,sample=2,delta=1e-5+fedavg"
DP_2 = "dp:clip=1,z=2,population=2,sample=2,delta=1e-6+fedavg"


def _service(db: Path) -> ServerThread:
    return ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN, poll_s=0.05, tick_s=0.02))


def _scrape(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("plume_dp_") and "{" not in line.split(" ")[0]
    }


def test_healthz_and_metrics_show_the_composed_epsilon_and_a_restart_rebuilds_it(
    tmp_path: Path,
) -> None:
    # Prepare: two central-DP tasks and a plain one on a real coordinator; one round of the
    # first, then one of the second
    db = tmp_path / "plume.db"
    with _service(db) as url:
        with httpx.Client(base_url=url) as http:
            t1 = create_task(http, task_config(rounds=2, aggregator=DP_1))
            t2 = create_task(http, task_config(rounds=2, aggregator=DP_2))
            t3 = create_task(http, task_config(rounds=2, aggregator="fedavg"))
            fresh = http.get("/healthz").json()["dp_all_tasks"]
            _one_round(url, tmp_path, t1, 1)
            alone = http.get("/healthz").json()["dp_all_tasks"]
            eps_1 = _dp(url, 1)["epsilon"]
            _one_round(url, tmp_path, t2, 1)
            both = http.get("/healthz").json()["dp_all_tasks"]
            gauges = _scrape(url)
    # Execute: a new process on the same database, scraped before any round
    with _service(db) as url:
        restarted = httpx.get(f"{url}/healthz").json()["dp_all_tasks"]
        gauges_after = _scrape(url)

    # Assert: nothing spent at first; task 1 alone is its own epsilon; both are the RDP
    # composition of their events at the smaller delta, more than either alone
    assert fresh["epsilon"] == 0.0 and fresh["delta"] is None
    assert fresh["composed"] == [t1, t2] and fresh["not_accounted"] == [t3]
    assert fresh["tasks"] == 3 and fresh["tasks_composed"] == 2
    assert alone["epsilon"] == eps_1 and alone["delta"] == 1e-5
    s = FixedSizeSampling(2, 2)
    a, b = PrivacyAccountant(1.0, s), PrivacyAccountant(2.0, s)
    direct = _direct(REPLACE, [a.dp_event(1), b.dp_event(1)], 1e-6)
    assert both["epsilon"] == pytest.approx(direct, rel=1e-12) and both["delta"] == 1e-6
    assert both["epsilon"] > a.epsilon(1, 1e-5) and both["epsilon"] > b.epsilon(1, 1e-6)
    assert gauges["plume_dp_epsilon_all_tasks"] == both["epsilon"]
    assert gauges["plume_dp_delta_all_tasks"] == 1e-6
    assert gauges["plume_dp_tasks_composed"] == 2.0
    assert gauges["plume_dp_tasks_not_accounted"] == 1.0
    # the restart rebuilds the same figure from the store
    assert restarted == both
    assert gauges_after == gauges


def test_a_secure_task_and_a_central_one_compose_over_http_and_after_a_restart(
    tmp_path: Path,
) -> None:
    # Prepare: a secure task with distributed DP (delta 1e-5) and a central one (delta 1e-6)
    from coordinator.secure import SecureConfig, SecureCoordinator, integer_sensitivity, make_plan
    from sdk.client import Client

    from ._secure_service import fast_service, secure_dp_task, secure_round_of
    from .test_service_support import SPEC

    db = tmp_path / "plume.db"
    with fast_service(db) as url, httpx.Client(base_url=url) as http:
        ts = create_task(http, secure_dp_task(2))
        tc = create_task(http, task_config(rounds=2, aggregator=DP_2))
        clients = [Client(url, str(tmp_path / f"s{i}")) for i in range(3)]
        for c in clients:
            c.register()
        # Execute: one secure round, then one central round
        assert all(r.completed for r in secure_round_of(clients, ts))
        for c in clients:
            c.close()
        _one_round(url, tmp_path, tc, 1)
        both = http.get("/healthz").json()["dp_all_tasks"]
    with fast_service(db) as url:
        restarted = httpx.get(f"{url}/healthz").json()["dp_all_tasks"]

    # Assert: the secure round's zCDP event (as the service accounts a round of 3 survivors)
    # composed with the central round's, at the smaller delta, by dp_accounting directly
    cfg = SecureConfig(coord_fraction=0.25, noise=NoiseKind.DISCRETE_GAUSSIAN, noise_multiplier=1)
    k = SecureCoordinator(np.zeros(SPEC.size, np.float32), cfg).k
    plan = make_plan(cfg, 1, 3, SPEC.size, np.arange(k, dtype=np.int64))
    sens = integer_sensitivity(plan.clip_norm, plan.coord_bound, plan.value_bits, k)
    secure = DistributedDpAccountant(cfg.dp_delta)
    secure.record_round(NoiseKind.DISCRETE_GAUSSIAN, sens, plan.noise_variance, 3, k)
    central = PrivacyAccountant(2.0, FixedSizeSampling(2, 2))
    direct = _direct(REPLACE, [central.dp_event(1), *secure.events], 1e-6)
    assert both["composed"] == [ts, tc] and both["delta"] == 1e-6
    assert both["epsilon"] == pytest.approx(direct, rel=1e-12)
    assert both["epsilon"] > max(secure.epsilon(), central.epsilon(1, 1e-6))
    assert restarted == both
