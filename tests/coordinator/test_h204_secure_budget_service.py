"""A secure task's epsilon budget stops the task in the coordinator service, also after a
restart (helper-193's F1; needs helper-204's rounds.py patch).

`SecureCoordinator` marks the round after which no round fits (`dp.budget_exhausted`) and
abandons a round whose release could pass the budget before unmasking (`budget_exhausted`,
`dp_refused`). The service stops the task on either, as it stops a plain task on DPMean's
`budget_exhausted`, shows it in `plume_dp_budget_exhausted`, and a restart restores the stop
from the stored rounds, so a task paused at that point is not resumed into rounds its devices
would train for only to be refused.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np

from coordinator.secure import (
    DistributedDpAccountant,
    SecureConfig,
    SecureCoordinator,
    integer_sensitivity,
    make_plan,
    min_round_rho,
)
from protocol.messages import TaskConfig
from protocol.secagg import NoiseKind
from sdk.client import Client, SecureRoundReport

from ._secure_service import assignment, fast_service, metric, secure_dp_task, secure_round_of
from .test_service_support import ADMIN, SPEC, admin_get, create_task, wait_until

AUTH = {"authorization": f"Bearer {ADMIN}"}


def _epsilons() -> tuple[float, float, float]:
    """(epsilon after one round of 3, the floor after it, epsilon after two such rounds)."""
    cfg = SecureConfig(coord_fraction=0.25, noise=NoiseKind.DISCRETE_GAUSSIAN, noise_multiplier=1)
    k = SecureCoordinator(np.zeros(SPEC.size, np.float32), cfg).k
    plan = make_plan(cfg, 1, 3, SPEC.size, np.arange(k, dtype=np.int64))
    sens = integer_sensitivity(plan.clip_norm, plan.coord_bound, plan.value_bits, k)
    acc = DistributedDpAccountant(cfg.dp_delta)
    acc.record_round(NoiseKind.DISCRETE_GAUSSIAN, sens, plan.noise_variance, 3, k)
    one, floor = acc.epsilon(), acc.epsilon_after(min_round_rho(1.0, cfg.expected_dropout))
    acc.record_round(NoiseKind.DISCRETE_GAUSSIAN, sens, plan.noise_variance, 3, k)
    return one, floor, acc.epsilon()


def _task(budget: float) -> TaskConfig:
    return secure_dp_task(5, epsilon_budget=budget)


def _no_assignment(clients: list[Client], task_id: int, seconds: float = 1.0) -> None:
    """Every client checks in for `seconds`: none is given a round."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for c in clients:
            assert c.check_in(task_id).assignment is None
        time.sleep(0.05)


def test_the_round_after_which_none_fits_ends_the_task(tmp_path: Path) -> None:
    # Prepare: a budget the first round fits and no second round can
    one, floor, _ = _epsilons()
    budget = (one + floor) / 2
    db = tmp_path / "plume.db"
    with fast_service(db) as url, httpx.Client(base_url=url) as http:
        task_id = create_task(http, _task(budget))
        clients = [Client(url, str(tmp_path / f"dev{i}")) for i in range(3)]
        for c in clients:
            c.register()
        # Execute
        assert all(r.completed for r in secure_round_of(clients, task_id))
        done = wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
        _no_assignment(clients, task_id)
        metrics = http.get("/metrics").text
        round1 = admin_get(http, "/v1/rounds/1")
        for c in clients:
            c.close()
    # Assert: done after its first of 5 rounds, marked spent; no second round
    assert done["version"] == 1 and not _exists_after(db, 2)
    assert round1["measurements"]["dp"]["budget_exhausted"] is True
    assert round1["measurements"]["dp"]["epsilon"] == one
    assert metric(metrics, "plume_dp_budget_exhausted", task_id) == 1.0
    # A restart keeps it done and spent
    with fast_service(db) as url, httpx.Client(base_url=url) as http:
        assert admin_get(http, f"/v1/admin/tasks/{task_id}")["state"] == "done"
        assert metric(http.get("/metrics").text, "plume_dp_budget_exhausted", task_id) == 1.0


def _exists_after(db: Path, round_id: int) -> bool:
    import sqlite3

    with sqlite3.connect(db) as con:
        return con.execute("SELECT 1 FROM rounds WHERE seq=?", (round_id,)).fetchone() is not None


def test_a_round_past_the_budget_is_abandoned_unreleased_and_stays_stopped(
    tmp_path: Path,
) -> None:
    # Prepare: a budget the floor after round 1 fits but round 2's release does not; the
    # task paused while round 2 runs, so its close leaves it paused (not done)
    one, floor, two = _epsilons()
    budget = (floor + two) / 2
    db = tmp_path / "plume.db"
    with fast_service(db) as url, httpx.Client(base_url=url) as http:
        task_id = create_task(http, _task(budget))
        clients = [Client(url, str(tmp_path / f"dev{i}")) for i in range(3)]
        for c in clients:
            c.register()
        assert all(r.completed for r in secure_round_of(clients, task_id))
        wait_until(http, f"/v1/admin/tasks/{task_id}", "version", 1)
        # Execute: round 2 opens, the task is paused, the round runs to its unmask stage
        reports: list[SecureRoundReport] = []
        opened = threading.Barrier(len(clients) + 1, timeout=60)

        def run(c: Client) -> None:
            a = assignment(c, task_id)
            opened.wait()  # every device assigned; the task paused meanwhile
            opened.wait()
            reports.append(
                c.secure_round(a, lambda p: (np.full(SPEC.size, 0.02, np.float32), 1, 0.0))
            )

        threads = [threading.Thread(target=run, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        opened.wait()
        paused = http.post(f"/v1/admin/tasks/{task_id}/pause", headers=AUTH)
        assert paused.json()["state"] == "paused"
        opened.wait()
        for t in threads:
            t.join(60)
        round2 = wait_until(http, "/v1/rounds/2", "state", "abandoned")
        metrics = http.get("/metrics").text
        for c in clients:
            c.close()
    # Assert: nothing unmasked, nothing spent, the stop shown
    meas = round2["measurements"]
    assert meas["budget_exhausted"] is True and "dp" not in meas
    assert meas["dp_refused"]["epsilon"] == one
    assert meas["dp_refused"]["epsilon_if_released"] > budget
    assert metric(metrics, "plume_dp_epsilon", task_id) == one
    assert metric(metrics, "plume_dp_budget_exhausted", task_id) == 1.0
    # Execute: a restart, then resume the paused task
    with fast_service(db) as url, httpx.Client(base_url=url) as http:
        metrics = http.get("/metrics").text
        resumed = http.post(f"/v1/admin/tasks/{task_id}/resume", headers=AUTH)
        clients = [Client(url, str(tmp_path / f"dev{i}")) for i in range(3)]
        _no_assignment(clients, task_id)
        for c in clients:
            c.close()
    # Assert: resuming has no round to run: done, epsilon as before, no third round
    assert resumed.status_code == 200 and resumed.json()["state"] == "done"
    assert metric(metrics, "plume_dp_epsilon", task_id) == one
    assert metric(metrics, "plume_dp_budget_exhausted", task_id) == 1.0
    assert not _exists_after(db, 3)
