"""A secure task whose rounds could never open is refused when it is created. `check_plan`
planned its test round over as many coordinates as the graph degree (a shadowed name), not
over |S_r|; under distributed DP the ring's noise headroom grows with |S_r|, so a plan whose
ring overflows at the real |S_r| passed, and then every round was abandoned at open."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.secure import budget_k, make_plan
from coordinator.service.secure import SecureSettings, check_plan, parse_secure

MODEL = 100_000
COHORT = 1000


def _settings(z: float, **more: object) -> SecureSettings:
    raw = {"noise": "discrete_gaussian", "noise_multiplier": z, "coord_fraction": 0.5}
    return parse_secure({**raw, "value_bits": 8, **more}, seed=0, server_lr=1.0)


def test_a_dp_plan_whose_ring_overflows_at_its_real_coordinate_count_is_refused() -> None:
    # Prepare: the plan a round of this task makes, over |S_r| = 0.5 x 100,000 coordinates
    settings = _settings(1e14)
    with pytest.raises(ValueError, match="64"):
        make_plan(settings.config, 1, COHORT, MODEL, np.arange(MODEL // 2, dtype=np.int64))
    # Execute / Assert: refused at creation too
    with pytest.raises(ValueError, match="64"):
        check_plan(settings, COHORT, MODEL)


def test_a_plan_that_works_at_its_real_coordinate_count_still_passes() -> None:
    settings = _settings(1e12)
    make_plan(settings.config, 1, COHORT, MODEL, np.arange(MODEL // 2, dtype=np.int64))
    check_plan(settings, COHORT, MODEL)


def test_an_upload_budget_plan_is_checked_at_the_coordinate_count_it_buys() -> None:
    # With a budget, |S_r| is the largest count the budget buys (budget_k), as in a round.
    settings = _settings(1.0, upload_budget=200_000)
    k = budget_k(settings.config, COHORT, MODEL)
    assert k > 1
    check_plan(settings, COHORT, MODEL)
    # ... and a budget that buys not one coordinate is refused at creation
    with pytest.raises(ValueError, match="upload budget"):
        check_plan(_settings(1.0, upload_budget=100), COHORT, MODEL)
