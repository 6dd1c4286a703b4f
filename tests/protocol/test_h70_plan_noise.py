"""A device refuses, by name, a secure plan whose DP noise its samplers cannot draw.

Before, a plan near a 64-bit ring passed every plan check (its headroom held the summed noise)
and the device's Skellam sampler then raised numpy's bare ValueError ("lam value too large")
in the middle of the round: Skellam(mu) draws Poisson(mu), which numpy refuses above about
9.2e18. A subnormal variance halved to mu = 0 did the same ("mu must be positive"). Now the
plan check refuses both (`MalformedMessage` on the device), and the property below holds: a
plan is either refused with a `SecAggError` or its noise is drawn.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.secagg import CtrRandom, MalformedMessage, NoiseKind, SecAggError, SecurePlan
from protocol.secagg._plan import _FIXED, MAX_DG_VARIANCE, MAX_SKELLAM_VARIANCE
from sdk.secure import encode_for_plan

D = 16
K = 4


def _base(noise: NoiseKind) -> SecurePlan:
    return SecurePlan(
        round_id=1, num_nodes=3, degree=2, threshold=2, ring_bits=40, value_bits=8,
        max_weight=1, model_size=D, indices=np.arange(K, dtype=np.int64), clip_norm=1.0,
        coord_bound=0.5, graph_seed=bytes(32), rotation_seed=bytes(range(32)), noise=noise,
        noise_variance=100.0, noise_headroom=1000,
    )  # fmt: skip


def _bytes(
    noise: NoiseKind,
    variance: float,
    headroom: int,
    ring_bits: int = 64,
    num_nodes: int = 3,
    value_bits: int = 8,
    max_weight: int = 1,
) -> bytes:
    """A base plan's bytes with other ring, size and noise fields (as a coordinator sends)."""
    data = _base(noise).to_bytes()
    f = list(_FIXED.unpack_from(data))
    f[2], f[5], f[6], f[7], f[13], f[14] = (
        num_nodes, ring_bits, value_bits, max_weight, variance, headroom,
    )  # fmt: skip
    degree = min(2, num_nodes - 1)
    f[3], f[4] = degree, degree
    return _FIXED.pack(*f) + data[_FIXED.size :]


def _fitting_headroom(variance: float, num_nodes: int) -> int:
    """The least headroom the plan check takes for this noise (4 standard deviations)."""
    return math.ceil(4.0 * math.sqrt(variance * num_nodes) * (1.0 + 1e-9)) + 1


def _device_encodes(plan: SecurePlan) -> np.ndarray:
    rng = np.random.default_rng(0)
    u = rng.normal(size=D).astype(np.float32)
    vector, _ = encode_for_plan(u, plan, 1, rng, noise_rng=CtrRandom(bytes(32)), node=0)
    return vector


@pytest.mark.parametrize(
    ("noise", "variance"),
    [
        (NoiseKind.SKELLAM, 1e20),  # mu = 5e19: numpy's Poisson refuses it
        (NoiseKind.SKELLAM, 1e30),
        (NoiseKind.SKELLAM, MAX_SKELLAM_VARIANCE * 2.0),
        (NoiseKind.DISCRETE_GAUSSIAN, MAX_DG_VARIANCE * 2.0),  # draws past int64 could occur
        (NoiseKind.SKELLAM, 5e-324),  # mu = 5e-324 / 2 = 0.0
        (NoiseKind.DISCRETE_GAUSSIAN, 5e-324),
    ],
)
def test_noise_the_device_cannot_draw_is_malformed(noise: NoiseKind, variance: float) -> None:
    # The headroom holds the noise and the ring is 64 bits: every other check passes.
    data = _bytes(noise, variance, _fitting_headroom(variance, 3))
    with pytest.raises(MalformedMessage, match="noise variance"):
        SecurePlan.from_bytes(data, D)


@pytest.mark.parametrize(
    ("noise", "variance"),
    [
        (NoiseKind.SKELLAM, MAX_SKELLAM_VARIANCE),
        (NoiseKind.DISCRETE_GAUSSIAN, MAX_DG_VARIANCE),
        (NoiseKind.SKELLAM, sys.float_info.min),
        (NoiseKind.DISCRETE_GAUSSIAN, sys.float_info.min),
        (NoiseKind.SKELLAM, 1e4),
    ],
)
def test_noise_at_the_bounds_is_drawn(noise: NoiseKind, variance: float) -> None:
    plan = SecurePlan.from_bytes(_bytes(noise, variance, _fitting_headroom(variance, 3)), D)
    vector = _device_encodes(plan)
    assert vector.shape == (plan.vector_len,)


_VARIANCES = st.one_of(
    st.floats(min_value=0.0, max_value=1e40, allow_subnormal=True),
    st.sampled_from(
        [
            5e-324,
            sys.float_info.min,
            9.2e18,
            1.8e19,
            1.85e19,
            2.0**63,
            2.0**64,
            2.0**114,
            2.0**115,
            1e36,
            math.inf,
            math.nan,
        ]
    ),  # fmt: skip
)


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    noise=st.sampled_from([NoiseKind.DISCRETE_GAUSSIAN, NoiseKind.SKELLAM]),
    variance=_VARIANCES,
    num_nodes=st.integers(min_value=3, max_value=1 << 20),
    ring_bits=st.one_of(st.just(64), st.integers(min_value=1, max_value=70)),
    value_bits=st.integers(min_value=1, max_value=32),
    headroom=st.one_of(st.none(), st.integers(min_value=0, max_value=(1 << 64) - 1)),
)
def test_any_noise_plan_is_refused_by_name_or_drawn(
    noise: NoiseKind,
    variance: float,
    num_nodes: int,
    ring_bits: int,
    value_bits: int,
    headroom: int | None,
) -> None:
    # headroom None: the least the plan check takes (when that fits the wire's u64).
    if headroom is None:
        fits = math.isfinite(variance) and variance * num_nodes < 2.0**120
        headroom = _fitting_headroom(variance, num_nodes) if fits else 0
    data = _bytes(noise, variance, headroom, ring_bits, num_nodes, value_bits)
    try:
        plan = SecurePlan.from_bytes(data, D)
    except SecAggError:
        return  # refused with the protocol's own error, before any sampling
    vector = _device_encodes(plan)
    assert vector.shape == (plan.vector_len,) and vector.dtype == np.uint64
