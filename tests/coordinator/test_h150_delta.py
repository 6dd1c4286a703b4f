"""helper-150: delta against the population (docs/privacy.md, assumption 8).

`plume sim ... --aggregator "dp:clip=1,z=1,population=100,sample=10,delta=0.5+fedavg"` printed
`dp epsilon 0.04 at delta 0.5` and the coordinator service created a task with delta=0.3: a
mechanism that publishes one random device's data in full is (0, 1/N)-DP, so such a delta
promises nothing. `delta_refusal` says why; a task stored with such a delta must still load and
run after an upgrade, so the refusal is not in `DPMean` / `build_aggregator`, which the service
also uses to load stored tasks. The paths that create a new task or run must call it: the
coordinator service's `create_task` (coordinator/service/rounds.py) and the simulator's spec
check (mobile_sim/), files helper-150 does not own; the two xfail(strict) tests below fail (as
XPASS) once they do, and their marker then goes."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from compression import encode_snapshot
from coordinator.aggregators import build_aggregator
from coordinator.aggregators._dp import delta_refusal, find_dp
from coordinator.service import ServerThread, ServiceConfig, Store
from coordinator.service.rounds import Coordinator
from mobile_sim.runner import SimConfig
from protocol.messages import to_json
from protocol.names import TaskState

from .test_restart_refused import _participate
from .test_service_support import (
    ADMIN,
    SPEC,
    admin_get,
    initial_params,
    rewrite_stored_config,
    task_config,
    wait_until,
)


def _service(db: Path) -> ServerThread:
    return ServerThread(ServiceConfig(db_path=str(db), admin_token=ADMIN, poll_s=0.05, tick_s=0.02))


def _refusal(spec: str) -> str | None:
    return delta_refusal(find_dp(build_aggregator(spec)))


@pytest.mark.parametrize(
    ("population", "delta"),
    [(100, 0.5), (100, 0.01), (2, 0.5), (10, 0.3), (100_000, 1e-5), (10**6, 1e-5)],
)
def test_a_delta_of_at_least_one_over_the_population_is_refused(
    population: int, delta: float
) -> None:
    spec = f"dp:clip=1,z=1,population={population},sample=2,delta={delta}+fedavg"
    why = _refusal(spec)
    assert why is not None
    assert f"delta {delta:g} is not below 1/N = 1/{population}" in why
    assert "assumption 8" in why


@pytest.mark.parametrize(
    "spec",
    [
        "dp:clip=1,z=1,population=100,sample=10,delta=0.0099+fedavg",
        "dp:clip=1,z=1,population=10000,sample=10+fedavg",  # the default 1e-5 < 1e-4
        "dp:clip=1,z=1,population=99999,sample=10+fedavg",
        "dp:clip=1,z=1,q=0.1,denom=10,delta=0.5+fedavg",  # Poisson: no N to check against
        "dp:clip=1,z=1,delta=0.5+fedavg",  # no sampling, no epsilon claimed
        "fedavg",
        "avgm+dp:clip=1,z=1,population=1400,sample=140,denom=140,eps=8+fedavg",
    ],
)
def test_a_delta_below_one_over_the_population_or_without_one_is_not_refused(spec: str) -> None:
    assert _refusal(spec) is None


def test_the_spec_still_builds_so_that_a_stored_task_loads() -> None:
    # DPMean / build_aggregator must keep building it: the service loads stored tasks with it
    dp = find_dp(build_aggregator("dp:clip=1,z=1,population=100,sample=10,delta=0.5+fedavg"))
    assert dp is not None and dp.delta == 0.5


def test_a_task_stored_with_such_a_delta_still_loads_and_runs_after_a_restart(
    tmp_path: Path,
) -> None:
    # Prepare: a one-round task whose stored spec has delta 0.5 >= 1/2, as a store written
    # before any refusal holds it (written into the row, so this holds whatever creation refuses)
    db = tmp_path / "p.db"
    ok = "dp:clip=1,z=1,population=2,sample=2+fedavg"
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()
    task_id = coord.create_task(task_config(aggregator=ok, rounds=1, selection_timeout_s=30))
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    coord.store.close()
    stored_spec = "dp:clip=1,z=1,population=2,sample=2,delta=0.5+fedavg"
    rewrite_stored_config(db, task_id, aggregator=stored_spec)

    # Execute: the upgraded coordinator starts on that store; two devices take its round
    with _service(db) as url, httpx.Client(base_url=url) as http:
        loaded = admin_get(http, f"/v1/admin/tasks/{task_id}")
        _participate(url, tmp_path, task_id)
        done = wait_until(http, f"/v1/admin/tasks/{task_id}", "state", TaskState.DONE)
        rounds = admin_get(http, f"/v1/admin/tasks/{task_id}/rounds")

    # Assert: loaded (not refused), ran its round, accounted at the stored delta
    assert loaded["state"] == TaskState.ACTIVE and loaded["config"]["aggregator"] == stored_spec
    assert done["state"] == TaskState.DONE
    (committed,) = [r for r in rounds if r["state"] == "committed"]
    assert committed["measurements"]["delta"] == 0.5


def test_the_service_refuses_a_new_task_with_such_a_delta(tmp_path: Path) -> None:
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN, poll_s=0.05)
    spec = "dp:clip=1,z=1,population=100,sample=2,delta=0.3+fedavg"
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        r = http.post(
            "/v1/admin/tasks",
            json=to_json(task_config(aggregator=spec)),
            headers={"authorization": f"Bearer {ADMIN}"},
        )
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == "validation"
    assert "delta 0.3 is not below 1/N = 1/100" in r.json()["detail"]


def test_the_simulator_refuses_such_a_delta() -> None:
    # SimConfig's checks are what `plume sim` reports as a usage error, before any data loads
    spec = "dp:clip=1,z=1,population=10,sample=4,delta=0.5+fedavg"
    with pytest.raises(ValueError, match="delta 0.5 is not below 1/N = 1/10"):
        SimConfig(dataset="digits", clients=10, per_round=4, rounds=1, aggregator=spec)
