"""A plan whose per-coordinate bound C' the device's float quantizer cannot use is malformed.

Before, a plan passed with any positive finite C' (docs/secure-aggregation.md, "What a device
refuses": "the plan is malformed"). At C' = 1e308, 2C' is infinite and the device's
reconstruction v_hat = x_hat * 2C' / (2^b - 1) - C' is not finite, so its error-feedback
residual u_S - R^T v_hat became inf or NaN; at C' = 5e-324 the scale (2^b - 1) / (2C') is
infinite and quantizing gave NaN levels (numpy: "invalid value encountered"); and with the
rotation, |S_r| values of size C' summed past a float's range in the inverse Hadamard
transform. A plan is now refused (`MalformedMessage`) unless (2^b - 1) / (2C') and
2C' |S_r| are finite, and every plan accepted quantizes to finite values."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.secagg import (
    MalformedMessage,
    SecurePlan,
    dequantize,
    quantize,
    required_ring_bits,
    rotate,
    unrotate,
)

from .test_secagg_review import D, _forge, _plan


def _forged(coord_bound: float, value_bits: int = 3, rotate: bool = True) -> bytes:
    plan = _plan()
    ring = required_ring_bits(plan.num_nodes, plan.max_weight, value_bits, plan.noise_headroom)
    return _forge(
        plan, coord_bound=coord_bound, clip_norm=max(1.0, coord_bound), value_bits=value_bits,
        ring_bits=ring, rotate=rotate,
    )  # fmt: skip


def _device_sends(plan: SecurePlan, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The device pipeline's float part (`sdk.secure.encode_for_plan` steps 1 to 4 and the
    residual's R^T v_hat): levels q, uint64[k], and what they stand for, float64[k]."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0.0, 1.0, plan.k)
    u *= min(1.0, plan.clip_norm / float(np.linalg.norm(u)))
    v = rotate(u, plan.rotation_seed) if plan.rotate else u
    q = quantize(v, plan.coord_bound, plan.value_bits, rng)
    v_hat = dequantize(q, plan.coord_bound, plan.value_bits)
    return q, unrotate(v_hat, plan.rotation_seed) if plan.rotate else v_hat


@pytest.mark.parametrize(
    ("coord_bound", "value_bits", "rotate"),
    [
        (1e308, 3, False),  # 2C' overflows
        (sys.float_info.max, 1, False),
        (5e-324, 3, False),  # (2^b - 1) / (2C') overflows
        (1e-300, 32, False),
        (1e306, 3, True),  # |S_r| values of C' summed in the inverse rotation overflow
    ],
)
def test_a_bound_the_quantizer_cannot_use_is_malformed(
    coord_bound: float, value_bits: int, rotate: bool
) -> None:
    raw = _forged(coord_bound, value_bits, rotate)
    with pytest.raises(MalformedMessage, match="coord_bound"):
        SecurePlan.from_bytes(raw, D)


@settings(max_examples=120)
@given(
    coord_bound=st.floats(min_value=5e-324, max_value=sys.float_info.max),
    value_bits=st.integers(1, 32),
    rotate=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_any_plan_accepted_quantizes_to_finite_values(
    coord_bound: float, value_bits: int, rotate: bool, seed: int
) -> None:
    # Prepare: the plan a server sends with this C' (and C = max(1, C'))
    raw = _forged(coord_bound, value_bits, rotate)
    try:
        plan = SecurePlan.from_bytes(raw, D)
    except MalformedMessage:
        return
    # Execute: warnings are errors under pytest (a NaN level is "invalid value")
    q, sent = _device_sends(plan, seed)
    # Assert
    assert int(q.max()) <= (1 << value_bits) - 1
    assert np.all(np.isfinite(sent))


def test_the_coordinator_s_own_bounds_still_decode() -> None:
    # C' = min(C, 2.5 C / sqrt(k)) at C = 1, and far beyond it either way
    for coord_bound in (2.5 / math.sqrt(_plan().k), 1.0, 1e-30, 1e30):
        plan = SecurePlan.from_bytes(_forged(coord_bound), D)
        assert plan.coord_bound == coord_bound
