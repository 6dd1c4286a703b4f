"""DPMean's configuration bounds at their edges, and the fixed-size accountant's inputs pinned
to dp_accounting directly.

A noise multiplier of 0 (no noise at all), a delta of 0 or 1, an epsilon budget of 0 are
refused by name; the documented inclusive edges (clip = MIN_CLIP, z = the accounted floor,
a clip at exactly the float32 ceiling) build. Under fixed-size sampling, method "rdp" is
dp_accounting's replace-one RDP of SampledWithoutReplacement(N, m, Gaussian(z / 2)) as it is,
and "auto" caps each round's curve by the unsampled Gaussian's alpha / (2 (z / 2)^2)."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp
from dp_accounting.rdp import rdp_privacy_accountant

from coordinator.aggregators import AdaptiveClip, DPMean
from coordinator.aggregators._clip import MIN_CLIP
from coordinator.privacy import (
    MIN_ACCOUNTED_NOISE_MULTIPLIER,
    FixedSizeSampling,
    PoissonSampling,
    PrivacyAccountant,
    calibrate_noise_multiplier,
)

DELTA = 1e-5


@pytest.mark.parametrize("z", [0.0, -1.0, math.nan, math.inf])
def test_a_noise_multiplier_of_zero_or_less_is_refused_even_without_accounting(z: float) -> None:
    # Without sampling no accountant floor applies: only this check stands between z = 0 and
    # a release without noise.
    with pytest.raises(ValueError, match="noise multiplier must be finite and > 0"):
        DPMean(z)


@pytest.mark.parametrize("clip", [0.0, -1.0, math.nan, math.inf])
def test_a_clip_of_zero_or_less_or_not_finite_is_refused_by_name(clip: float) -> None:
    with pytest.raises(ValueError, match="clip norm must be finite and > 0"):
        DPMean(1.0, clip=clip)


@pytest.mark.parametrize("delta", [0.0, 1.0])
def test_delta_zero_and_one_are_refused(delta: float) -> None:
    with pytest.raises(ValueError, match="delta must be in"):
        DPMean(1.0, delta=delta)


def test_an_epsilon_budget_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="epsilon budget must be > 0"):
        DPMean(1.0, sampling=PoissonSampling(0.1), denominator=10.0, epsilon_budget=0.0)


def test_the_inclusive_edges_build() -> None:
    # clip = MIN_CLIP; accounted z = the floor; z below the floor without accounting.
    assert DPMean(1.0, clip=MIN_CLIP).clip == MIN_CLIP
    floor = MIN_ACCOUNTED_NOISE_MULTIPLIER
    assert DPMean(floor, sampling=PoissonSampling(0.1), denominator=10.0).noise_multiplier == floor
    assert DPMean(floor / 2).noise_multiplier == floor / 2
    with pytest.raises(ValueError, match="accounted noise multiplier must be at least"):
        DPMean(floor * (1 - 1e-9), sampling=PoissonSampling(0.1), denominator=10.0)


def test_the_clip_ceiling_uses_the_update_share_of_the_noise_and_is_inclusive() -> None:
    # Prepare: adaptive clipping with a configured cohort: z_u = (z^-2 - (2 sigma_b)^-2)^-1/2.
    z, sigma_b, denom = 2.0, 1.5, 10.0
    z_u = (z**-2 - (2 * sigma_b) ** -2) ** -0.5
    dp = DPMean(z, clip=AdaptiveClip(initial=1.0, count_stddev=sigma_b), denominator=denom)
    # Execute / Assert: the ceiling is MAX_NOISE_SCALE · min(denominator, 1) / max(z_u, 1).
    ceiling = dp.clip_ceiling()
    assert ceiling == pytest.approx(1e30 / z_u, rel=1e-12)
    # A fixed clip at exactly the ceiling builds; just above, it is refused.
    edge = DPMean.largest_clip(z, 0.5)
    assert DPMean(z, clip=edge, denominator=0.5).clip == edge
    with pytest.raises(ValueError, match="must be at\\s+most"):
        DPMean(z, clip=edge * (1 + 1e-12), denominator=0.5)


def _fixed_curve(n: int, m: int, z: float) -> tuple[np.ndarray, np.ndarray]:
    acc = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    acc.compose(
        dp_accounting.SampledWithoutReplacementDpEvent(n, m, dp_accounting.GaussianDpEvent(z / 2))
    )
    orders = np.asarray(rdp_privacy_accountant.DEFAULT_RDP_ORDERS, dtype=np.float64)
    return orders, np.asarray(acc._rdp, dtype=np.float64)


def test_fixed_size_rdp_and_auto_epsilons_recompute_from_dp_accounting() -> None:
    # Prepare: N = 110, m = 100, z = 4, 50 rounds (docs/privacy.md's example, where the cap
    # by the unsampled Gaussian binds).
    n, m, z, rounds = 110, 100, 4.0, 50
    orders, curve = _fixed_curve(n, m, z)
    gaussian = orders / (2 * (z / 2) ** 2)
    plain = rdp_privacy_accountant.compute_epsilon(orders, rounds * curve, DELTA)[0]
    capped = rdp_privacy_accountant.compute_epsilon(
        orders, rounds * np.minimum(curve, gaussian), DELTA
    )[0]
    assert capped < plain  # the cap matters here
    sampling = FixedSizeSampling(n, m)
    # Execute / Assert
    assert PrivacyAccountant(z, sampling, "rdp").epsilon(rounds, DELTA) == pytest.approx(
        plain, rel=1e-12
    )
    assert PrivacyAccountant(z, sampling, "auto").epsilon(rounds, DELTA) == pytest.approx(
        capped, rel=1e-12
    )


def test_calibration_refuses_a_target_the_floor_meets_exactly() -> None:
    # Prepare: the floor's own epsilon as the target: the floor already meets it.
    sampling = PoissonSampling(0.05)
    at_floor = PrivacyAccountant(MIN_ACCOUNTED_NOISE_MULTIPLIER, sampling, "rdp").epsilon(3, DELTA)
    # Execute / Assert
    with pytest.raises(ValueError, match="needs less noise than"):
        calibrate_noise_multiplier(at_floor, DELTA, 3, sampling, "rdp")
