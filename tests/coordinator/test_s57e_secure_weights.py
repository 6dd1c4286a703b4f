"""Distributed DP's sensitivity with example weights (docs/privacy.md, "Distributed DP in secure
mode"): a device's integer weight multiplies its quantized input, so Δ₂ holds only when every
device weighs 1. SecureConfig refuses distributed noise with another max_weight, and a device
declaring any number of examples sends an input within Δ₂ of the zero update's."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coordinator.secure import SecureConfig, make_plan
from coordinator.secure._dp import integer_sensitivity
from protocol.secagg import CtrRandom, NoiseKind
from sdk.secure import encode_for_plan


@pytest.mark.parametrize("noise", [NoiseKind.DISCRETE_GAUSSIAN, NoiseKind.SKELLAM])
def test_distributed_noise_refuses_weights_above_one(noise: NoiseKind) -> None:
    with pytest.raises(ValueError, match="max_weight=1"):
        SecureConfig(noise=noise, noise_multiplier=1.0, max_weight=2)


@pytest.mark.parametrize("examples", [1, 7, 10**6])
def test_a_devices_declared_examples_do_not_scale_its_input(examples: int) -> None:
    # Prepare: a discrete-Gaussian plan over k = 20 coordinates; the device's update is far
    # above the clip, its neighbour the zero update declaring one example. The same rounding
    # draws, dither and noise stream on both sides, so the difference is the inputs' alone.
    k = 20
    cfg = SecureConfig(noise=NoiseKind.DISCRETE_GAUSSIAN, noise_multiplier=1.0)
    plan = make_plan(cfg, 1, 10, 100, np.arange(k, dtype=np.int64))
    mine = np.zeros(100, dtype=np.float32)
    mine[:k] = np.linspace(-50.0, 80.0, k, dtype=np.float32)

    def sent(u: np.ndarray, weight: int) -> np.ndarray:
        vector, _ = encode_for_plan(
            u, plan, weight, np.random.default_rng(3), CtrRandom(bytes(32)), node=4
        )
        assert int(vector[-1]) == 1  # the weight it sends
        return vector[:k].astype(np.int64)

    # Execute
    modulus = 1 << plan.ring_bits
    diff = (sent(mine, examples) - sent(np.zeros(100, dtype=np.float32), 1)) % modulus
    diff = np.where(diff >= modulus // 2, diff - modulus, diff)
    # Assert: within Δ₂ of the zero update, whatever the example count
    delta2 = integer_sensitivity(plan.clip_norm, plan.coord_bound, plan.value_bits, k)
    assert float(np.linalg.norm(diff)) <= delta2
    assert float(np.linalg.norm(diff)) > delta2 / 4  # the input is not empty
    assert plan.max_weight == 1 and math.isfinite(delta2)
