"""Stop 46: a distributed-DP round's `dp` measurements say when the survivors' summed noise is
below what the plan calibrated (`noise_below_plan`) and the noise multiplier the released sum
carried (`effective_noise_multiplier`). Before, an operator had to infer it from `survivors`
and `noise_variance_per_device` (carried since stop 42)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coordinator.secure import SecureConfig, integer_sensitivity, make_plan
from coordinator.secure._dp import DistributedDpAccountant, account_released_groups
from protocol.secagg import NoiseKind


@pytest.mark.parametrize("noise", [NoiseKind.DISCRETE_GAUSSIAN, NoiseKind.SKELLAM])
@pytest.mark.parametrize("n, dropout", [(12, 0.1), (40, 0.35), (150, 0.0)])
def test_noise_below_plan_is_flagged_only_below_n_min(
    noise: NoiseKind, n: int, dropout: float
) -> None:
    # Prepare
    z = 1.2
    cfg = SecureConfig(
        coord_fraction=1.0, noise=noise, noise_multiplier=z, expected_dropout=dropout
    )
    plan = make_plan(cfg, 1, n, 256, np.arange(256, dtype=np.int64))
    d2 = integer_sensitivity(plan.clip_norm, plan.coord_bound, plan.value_bits, plan.k)
    n_min = max(plan.threshold, math.ceil((1 - dropout) * n))

    # Execute
    meas = {
        s: account_released_groups(DistributedDpAccountant(1e-5), [(s, plan)], z)
        for s in (n_min - 1, n_min, n)
    }

    # Assert: at n_min and above the sum carries at least z; one fewer is flagged
    for s, m in meas.items():
        assert m["effective_noise_multiplier"] == pytest.approx(
            math.sqrt(s * plan.noise_variance) / d2, rel=1e-12
        )
        assert m["noise_below_plan"] is (s < n_min)
    assert meas[n_min]["effective_noise_multiplier"] >= z * (1 - 1e-12)
    assert meas[n_min - 1]["effective_noise_multiplier"] < z
    assert meas[n]["effective_noise_multiplier"] >= meas[n_min]["effective_noise_multiplier"]
