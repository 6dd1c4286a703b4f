"""A device refuses a secure plan whose DP noise it cannot add within the plan's own ring."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.secure import SecureConfig, make_plan
from protocol.secagg import MalformedMessage, NoiseKind, SecurePlan
from protocol.secagg._plan import _FIXED

D = 64


def _dp_plan(noise: NoiseKind) -> SecurePlan:
    cfg = SecureConfig(noise=noise, noise_multiplier=1.0, coord_fraction=0.25)
    return make_plan(cfg, 5, 10, D, np.arange(16, dtype=np.int64))


def _with(plan: SecurePlan, variance: float, headroom: int) -> bytes:
    """The plan's bytes with another noise variance and headroom (fields 13 and 14)."""
    data = plan.to_bytes()
    fields = list(_FIXED.unpack_from(data))
    fields[13], fields[14] = variance, headroom
    return _FIXED.pack(*fields) + data[_FIXED.size :]


@pytest.mark.parametrize("noise", [NoiseKind.DISCRETE_GAUSSIAN, NoiseKind.SKELLAM])
def test_the_coordinator_s_own_dp_plans_still_decode(noise: NoiseKind) -> None:
    plan = _dp_plan(noise)
    assert plan.noise_variance > 0 and plan.noise_headroom > 0
    assert SecurePlan.from_bytes(plan.to_bytes(), D).to_bytes() == plan.to_bytes()


@pytest.mark.parametrize("noise", [NoiseKind.DISCRETE_GAUSSIAN, NoiseKind.SKELLAM])
def test_noise_without_a_variance_is_malformed(noise: NoiseKind) -> None:
    # Before, the plan decoded, and the device's encoder then raised a bare ValueError from
    # the sampler ("sigma2 must be positive" / "mu must be positive") in the middle of its
    # round instead of refusing the plan by name.
    plan = _dp_plan(noise)
    with pytest.raises(MalformedMessage, match="noise needs a positive variance"):
        SecurePlan.from_bytes(_with(plan, 0.0, plan.noise_headroom), D)


def test_noise_larger_than_the_ring_s_headroom_is_malformed() -> None:
    # Noise of 1e30 per device in a ring whose headroom is sized for the plan's own variance
    # would wrap: the sum cannot decode (Skellam's sampler also refuses so large a mean with
    # a bare ValueError). The coordinator sizes headroom at 8 standard deviations of the
    # whole group's noise; a device asks for at least 4.
    plan = _dp_plan(NoiseKind.SKELLAM)
    with pytest.raises(MalformedMessage, match="headroom"):
        SecurePlan.from_bytes(_with(plan, 1e30, plan.noise_headroom), D)
