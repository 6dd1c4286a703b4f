"""Tests of sdk.secure: the device's encoding (error feedback, clip, quantize) and its checks."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.secure import SecureConfig, make_plan
from protocol.secagg import (
    ModelMismatch,
    dequantize,
    model_digest,
    quantize,
    round_digest,
)
from sdk.secure import SecureParticipant, encode_for_plan

D = 3000


def _plan(**kw: object) -> object:
    cfg = SecureConfig(**kw)  # type: ignore[arg-type]
    return make_plan(cfg, 1, 10, D, np.arange(0, D, 3, dtype=np.int64))


@pytest.mark.parametrize("dither", [True, False])
@pytest.mark.parametrize("rotate", [True, False])
def test_residual_keeps_exactly_the_mass_not_sent(rotate: bool, dither: bool) -> None:
    # Prepare: an update far above the clip norm, so clipping and quantization both bite
    plan = _plan(clip_norm=0.5, rotate=rotate, value_bits=4, dither=dither)
    assert plan.dither is dither  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    u = rng.normal(0, 0.1, D).astype(np.float32)
    # Execute
    vector, sent = encode_for_plan(u, plan, 1, rng, node=3)  # type: ignore[arg-type]
    # Assert: u = sent + residual on S, residual = u off S
    residual = u.astype(np.float64).copy()
    residual[plan.indices] -= sent  # type: ignore[attr-defined]
    np.testing.assert_allclose(sent + residual[plan.indices], u[plan.indices], atol=1e-7)  # type: ignore[attr-defined]
    assert vector.size == plan.k + 1 and int(vector[-1]) == 1  # type: ignore[attr-defined]
    # What was sent respects the clip norm up to quantization error (step * sqrt(k) / 2).
    step = 2 * plan.coord_bound / 15  # type: ignore[attr-defined]
    assert np.linalg.norm(sent) <= plan.clip_norm + step * np.sqrt(plan.k)  # type: ignore[attr-defined]


def test_participant_commits_residual_and_survives_rounds() -> None:
    plan = _plan(clip_norm=1.0)
    p = SecureParticipant(D)
    assert p.residual.shape == (D,) and not p.residual.any()
    params = np.zeros(D, np.float32)
    sess = p.join(plan.to_bytes(), round_digest(model_digest(params), plan), params, 0)  # type: ignore[attr-defined]
    assert sess.plan.k == plan.k  # type: ignore[attr-defined]


def test_quantizer_is_unbiased_and_affine_map_roundtrips() -> None:
    rng = np.random.default_rng(1)
    v = np.array([-0.9, -0.3, 0.0, 0.25, 0.77], dtype=np.float64)
    draws = np.stack([dequantize(quantize(v, 1.0, 3, rng), 1.0, 3) for _ in range(20000)])
    np.testing.assert_allclose(draws.mean(axis=0), v, atol=0.005)
    levels = quantize(np.array([-1.0, 1.0, 5.0]), 1.0, 3, rng)
    assert levels.tolist() == [0, 7, 7]  # endpoints exact, out-of-range clipped


def test_subtractive_dither_is_unbiased_with_half_the_rounding_noise() -> None:
    # Prepare: values spread evenly over the level grid, one public dither per draw
    rng = np.random.default_rng(2)
    bits, bound = 3, 1.0
    step = 2 * bound / ((1 << bits) - 1)
    v = rng.uniform(-bound, bound, 20000)
    dither = rng.random(v.size)
    # Execute: subtractive dither and plain stochastic rounding on the same values
    err_dither = dequantize(quantize(v, bound, bits, rng, dither), bound, bits, dither) - v
    err_stoch = dequantize(quantize(v, bound, bits, rng), bound, bits) - v
    # Assert: both unbiased; dither error uniform in (-step/2, step/2], variance step^2 / 12,
    # while stochastic rounding averages step^2 / 6
    assert abs(err_dither.mean()) < 0.01 * step and abs(err_stoch.mean()) < 0.01 * step
    assert np.all(np.abs(err_dither) <= step / 2 + 1e-12)
    assert err_dither.var() == pytest.approx(step**2 / 12, rel=0.05)
    assert err_stoch.var() == pytest.approx(step**2 / 6, rel=0.05)


def test_dithered_plan_needs_the_node_and_uniform_weights() -> None:
    plan = _plan()
    assert plan.dither  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="node id"):
        encode_for_plan(np.zeros(D, np.float32), plan, 1, np.random.default_rng(0))  # type: ignore[arg-type]
    # Weighted plans fall back to stochastic rounding: the server could not subtract w_i U_i.
    assert not _plan(max_weight=4).dither  # type: ignore[attr-defined]


def test_weight_is_clamped_and_multiplies_the_levels() -> None:
    plan = _plan(max_weight=4, rotate=False, value_bits=8)
    u = np.zeros(D, np.float32)
    vec, _ = encode_for_plan(u, plan, 99, np.random.default_rng(0))  # type: ignore[arg-type]
    assert int(vec[-1]) == 4
    assert set(np.unique(vec[:-1]).tolist()) <= {4 * 127, 4 * 128}


def test_join_refuses_other_model_or_plan() -> None:
    plan = _plan()
    p = SecureParticipant(D)
    params = np.zeros(D, np.float32)
    digest = round_digest(model_digest(params), plan)  # type: ignore[arg-type]
    with pytest.raises(ModelMismatch):
        p.join(plan.to_bytes(), digest, params + np.float32(1e-3), 0)  # type: ignore[attr-defined]
    with pytest.raises(ModelMismatch):
        SecureParticipant(D + 1).join(plan.to_bytes(), digest, np.zeros(D + 1, np.float32), 0)  # type: ignore[attr-defined]
