"""A secure task whose distributed-DP noise is past a float's range is refused with a reason.

`plan_numbers` squared noise_multiplier x sensitivity with `**`, which raises OverflowError
(not ValueError) past 1e308; `check_plan` computed it outside its try, so creating a task
with secure.noise_multiplier 1e200 answered HTTP 500 instead of 422. `SecureConfig` took an
infinite noise_multiplier and failed only at the first round's plan (helper-193's F2).
"""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest

from coordinator.secure import SecureConfig, budget_k, plan_numbers
from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.secure import check_plan, parse_secure
from protocol.messages import to_json
from protocol.secagg import NoiseKind

from .test_service_support import ADMIN, task_config

AUTH = {"authorization": f"Bearer {ADMIN}"}
DG = NoiseKind.DISCRETE_GAUSSIAN


def test_create_task_with_a_huge_noise_multiplier_answers_422(tmp_path: Path) -> None:
    # Prepare: z = 1e200 squares past a float; z = 1e20 is refused by the sampler's range
    def body(z: float) -> object:
        secure = {"noise": "discrete_gaussian", "noise_multiplier": z}
        return to_json(task_config(clients_per_round=5, secure=secure))

    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url, httpx.Client(base_url=url, timeout=30) as http:
        # Execute
        huge = http.post("/v1/admin/tasks", json=body(1e200), headers=AUTH)
        large = http.post("/v1/admin/tasks", json=body(1e20), headers=AUTH)
        tasks = http.get("/v1/admin/tasks", headers=AUTH)
    # Assert: both are validation errors naming the option; nothing was stored
    for r in (huge, large):
        assert r.status_code == 422, r.text
        assert r.json()["reason"] == "validation"
    assert "noise_multiplier" in huge.json()["detail"]
    assert "range" in huge.json()["detail"]
    assert tasks.status_code == 200 and tasks.json() == []


@pytest.mark.parametrize("z", [1e155, 1e200, 1.7e308])
def test_check_plan_refuses_noise_past_a_float_with_a_value_error(z: float) -> None:
    settings = parse_secure(
        {"noise": "discrete_gaussian", "noise_multiplier": z}, seed=0, server_lr=1.0
    )
    with pytest.raises(ValueError, match="noise_multiplier") as refused:
        check_plan(settings, 10, 1000)
    assert "cannot be planned" in str(refused.value)


def test_plan_numbers_and_budget_k_raise_value_errors() -> None:
    cfg = SecureConfig(noise=DG, noise_multiplier=1e200)
    with pytest.raises(ValueError, match="lower noise_multiplier"):
        plan_numbers(cfg, 10, 10)
    budget = SecureConfig(noise=DG, noise_multiplier=1e200, upload_budget=100_000)
    with pytest.raises(ValueError, match="noise_multiplier"):
        budget_k(budget, 10, 1000)
    # A per-coordinate bound so small that 1 / C' overflows is named too
    tiny = SecureConfig(noise=DG, noise_multiplier=1.0, clip_norm=5e-324)
    with pytest.raises(ValueError, match="clip_norm"):
        plan_numbers(tiny, 10, 10)
    # An ordinary plan still computes
    assert math.isfinite(plan_numbers(SecureConfig(noise=DG, noise_multiplier=1.0), 10, 10)[3])


@pytest.mark.parametrize("z", [math.inf, math.nan, 0.0, -1.0])
def test_secure_config_needs_a_finite_positive_noise_multiplier(z: float) -> None:
    with pytest.raises(ValueError, match="noise_multiplier"):
        SecureConfig(noise=DG, noise_multiplier=z)
