"""A secure task is refused at creation if any round it can open could not be planned.

`check_plan` planned only the largest SecAgg group. Each device's noise variance is the
sum's target over the group's expected survivors, so it is largest in the smallest group
(the last group takes the remainder, and a selection timeout opens a round with as few as 3
devices): a noise multiplier whose smallest group needs more than the Skellam sampler draws
(protocol/secagg/_plan.py refuses it) passed creation, and then every round was abandoned at
open. With an upload budget, |S_r| is sized for a round's largest group, so a small round
shares more coordinates than the cohort's: a budget could pass the plan-size check at the
cohort and exceed it in a round of 3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import ModelSpec, encode_snapshot
from coordinator.secure import budget_k, make_plan, split_groups
from coordinator.service import ServerThread, ServiceConfig, Store
from coordinator.service.rounds import Coordinator
from coordinator.service.secure import (
    MAX_SECURE_COORDS,
    check_plan,
    group_extremes,
    parse_secure,
)
from protocol.messages import TensorShape, to_json
from protocol.secagg._plan import MAX_SKELLAM_VARIANCE

from .test_service_support import ADMIN, task_config

MODEL = 1000
K = 100  # coord_fraction 0.1 of MODEL
# At 16 value bits over 100 coordinates, Skellam noise for z = 45,000 needs a per-device
# variance of 1.16e19 in a group of 3 (above the sampler's 2^63 = 9.2e18) and 8.7e18 in a
# group of 4; at z = 40,000 a group of 3 needs 9.16e18 (within it).
TOO_NOISY, NOISY_OK = 45_000.0, 40_000.0


def _secure(z: float, **more: Any) -> dict[str, Any]:
    return {
        "noise": "skellam", "noise_multiplier": z, "value_bits": 16, "coord_fraction": 0.1,
        "stage_timeout_s": 300.0, **more,
    }  # fmt: skip


def _task(secure: dict[str, Any], **over: Any) -> Any:
    return task_config(
        spec=[TensorShape("w", [MODEL])],
        clients_per_round=10,
        min_reports=3,
        deadline_s=600.0,
        secure=secure,
        **over,
    )


def _coordinator(tmp_path: Path) -> Coordinator:
    db = tmp_path / "p.db"
    coord = Coordinator(Store(db), ServiceConfig(db_path=str(db)))
    coord.restore()
    return coord


def test_groups_of_three_whose_noise_the_sampler_cannot_draw_are_refused_at_creation(
    tmp_path: Path,
) -> None:
    # Prepare: 10 devices in groups of 3 are split 3, 3, 4; a group of 3 cannot be planned
    cfg = parse_secure(_secure(TOO_NOISY, group_size=3), seed=0, server_lr=1.0).config
    with pytest.raises(ValueError, match="sampler"):
        make_plan(cfg, 1, 3, MODEL, np.arange(K, dtype=np.int64))
    make_plan(cfg, 1, 5, MODEL, np.arange(K, dtype=np.int64))  # the largest group plans
    coord = _coordinator(tmp_path)
    # Execute / Assert: refused, naming the group and the sampler
    with pytest.raises(ValueError, match=r"group of 3 devices .*skellam sampler"):
        coord.create_task(_task(_secure(TOO_NOISY, group_size=3)))


def test_create_task_answers_422_with_the_reason(tmp_path: Path) -> None:
    body = to_json(_task(_secure(TOO_NOISY, group_size=3)))
    with (
        ServerThread(ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN)) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        r = http.post("/v1/admin/tasks", json=body, headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 422
    assert "group of 3 devices" in r.text and "sampler" in r.text


def test_a_task_whose_smallest_group_still_plans_is_created_and_its_round_opens(
    tmp_path: Path,
) -> None:
    # Prepare: the largest noise that a group of 3 can still draw
    coord = _coordinator(tmp_path)
    task_id = coord.create_task(_task(_secure(NOISY_OK, group_size=3)))
    rng = np.random.default_rng(0)
    params = rng.normal(0, 0.1, MODEL).astype(np.float32)
    spec = ModelSpec.from_shapes([("w", (MODEL,))])
    coord.set_initial_model(task_id, encode_snapshot(params, spec, "fp32"))
    # Execute: ten devices check in, the round opens with groups of 3, 3 and 4
    for i in range(10):
        coord.check_in(f"{i:032x}", task_id)
    # Assert: open, planned, not abandoned
    rt = coord.runtimes[task_id]
    assert rt.current is not None and rt.secure is not None
    plans = rt.secure.registry.plans(rt.current.round_id)
    assert sorted(p.num_nodes for p in plans) == [3, 3, 4]
    assert max(p.noise_variance for p in plans) <= MAX_SKELLAM_VARIANCE


def test_one_group_rounds_are_checked_down_to_three_devices(tmp_path: Path) -> None:
    # Without group_size a selection timeout opens a round of 3 (min_reports 3): its one
    # group needs the noise of a group of 3
    coord = _coordinator(tmp_path)
    with pytest.raises(ValueError, match="group of 3 devices"):
        coord.create_task(_task(_secure(TOO_NOISY)))
    # ... while a task that never opens a round below 4 devices is fine
    settings_ = parse_secure(_secure(TOO_NOISY), seed=0, server_lr=1.0)
    check_plan(settings_, 10, MODEL, least=4)
    with pytest.raises(ValueError, match="sampler"):
        check_plan(settings_, 10, MODEL, least=3)


def test_a_budget_that_gives_a_round_of_three_too_many_coordinates_is_refused() -> None:
    # Prepare: a budget under which the cohort of 10 shares fewer than MAX_SECURE_COORDS
    # coordinates but a round of 3 (a narrower ring) more
    model = 6_000_000
    raw = {"coord_fraction": 0.001, "upload_budget": 3_000_000, "sketch": False}
    settings_ = parse_secure(raw, seed=0, server_lr=1.0)
    assert budget_k(settings_.config, 10, model) <= MAX_SECURE_COORDS
    assert budget_k(settings_.config, 3, model) > MAX_SECURE_COORDS
    # Execute / Assert: refused by the round of 3's coordinate count
    with pytest.raises(ValueError, match="coordinates"):
        check_plan(settings_, 10, model)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    cohort=st.integers(3, 60),
    least=st.integers(3, 60),
    group_size=st.one_of(st.none(), st.integers(3, 25)),
)
def test_group_extremes_match_every_round_split_groups_makes(
    cohort: int, least: int, group_size: int | None
) -> None:
    least = min(least, cohort)
    rounds = [
        sorted(len(g) for g in split_groups([f"d{i}" for i in range(n)], group_size, b"s" * 32))
        for n in range(least, cohort + 1)
    ]
    small = min(r[0] for r in rounds)
    small_round = min(r[-1] for r in rounds if r[0] == small)
    large = max(r[-1] for r in rounds)
    assert group_extremes(cohort, least, group_size) == (small, small_round, large)
