"""Value codings: stated error bounds, unbiasedness, lossless fp32."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from compression import CodecConfig, ErrorFeedback, ModelSpec, UpdateCodec
from compression._bits import pack_fixed, unpack_fixed
from compression._quant import VALUE_CODINGS, error_bound

finite32 = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16, 32])
@settings(derandomize=True, max_examples=80, deadline=None)
@given(
    values=arrays(np.float32, st.integers(0, 600), elements=finite32),
    block=st.sampled_from([8, 16, 100, 256]),
    seed=st.integers(0, 2**32 - 1),
)
def test_within_stated_bound(bits: int, values: np.ndarray, block: int, seed: int) -> None:
    # Prepare
    vc = VALUE_CODINGS[bits]
    k = values.shape[0]
    if bits == 16:
        values = np.clip(values, -65504, 65504)  # fp16 refuses the rest (tested below)
    # Execute
    scales, codes = vc.encode(values, block, np.random.default_rng(seed))
    out = vc.decode(scales, codes, k, block)
    # Assert: sizes as declared, and |q - v| <= bound (+ float32 rounding of lo + j * step)
    assert len(scales) == vc.scale_bytes(k, block) and len(codes) == vc.value_bytes(k)
    assert out.dtype == np.float32 and out.shape == (k,)
    bound = error_bound(values, bits, block).astype(np.float64)
    slack = 4 * np.finfo(np.float32).eps * np.abs(values).max(initial=0.0)
    err = np.abs(out.astype(np.float64) - values.astype(np.float64))
    assert np.all(err <= bound + slack)
    if bits == 32:
        np.testing.assert_array_equal(out, values)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_stochastic_rounding_is_unbiased(bits: int) -> None:
    # Prepare: one block of 256 heavy-tailed values of both signs, repeated N times, so every
    # copy has the same scales and the N decodings of each value are independent draws.
    n_rep, block = 4000, 256
    v = np.random.default_rng(123).standard_t(2, size=block).astype(np.float32)
    tiled = np.tile(v, n_rep)
    vc = VALUE_CODINGS[bits]
    # Execute
    scales, codes = vc.encode(tiled, block, np.random.default_rng(7))
    q = vc.decode(scales, codes, tiled.shape[0], block).astype(np.float64).reshape(n_rep, block)
    # Assert: the mean of N draws is within 5 standard errors of v (a draw's spread is at most
    # half its step, so the standard error is <= step / (2 sqrt N)); 5 sigma over 256 values
    # fails by chance with probability < 1e-4, and the seed is fixed.
    step = error_bound(v, bits, block).astype(np.float64)
    se = step / (2 * np.sqrt(n_rep))
    bias = np.abs(q.mean(axis=0) - v.astype(np.float64))
    assert np.all(bias <= 5 * se + 1e-6 * np.abs(v))
    # and it is really stochastic: values strictly inside a step take both neighbours
    assert np.mean(q.std(axis=0) > 0) > 0.5


def test_sign_magnitude_is_tighter_than_symmetric_range() -> None:
    # Top-k values: all |v| >= t. The [lo, hi] magnitude range gives a much smaller step
    # than a symmetric [-max, max] range at the same bit width.
    rng = np.random.default_rng(0)
    v = rng.standard_normal(1_000_000).astype(np.float32)
    top = v[np.abs(v) >= np.quantile(np.abs(v), 0.99)][:256]
    ours = error_bound(top, 4, 256).max()
    symmetric = 2 * np.abs(top).max() / 15
    assert ours < 0.5 * symmetric


@settings(derandomize=True, max_examples=60, deadline=None)
@given(
    width=st.sampled_from([1, 2, 3, 4, 5, 7, 8, 11, 17, 31]),
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(0, 300),
)
def test_bit_packing_round_trips(width: int, seed: int, k: int) -> None:
    vals = np.random.default_rng(seed).integers(0, 1 << width, size=k).astype(np.int64)
    buf = pack_fixed(vals, width)
    np.testing.assert_array_equal(unpack_fixed(buf, k, width, "test"), vals)


def test_fp16_refuses_out_of_range() -> None:
    with pytest.raises(ValueError, match="fp16 range"):
        VALUE_CODINGS[16].encode(np.array([1e5], np.float32), 1, np.random.default_rng(0))


def test_constant_block_is_exact() -> None:
    v = np.full(40, -0.25, np.float32)
    for bits in (1, 2, 4, 8):
        vc = VALUE_CODINGS[bits]
        s, c = vc.encode(v, 16, np.random.default_rng(0))
        np.testing.assert_array_equal(vc.decode(s, c, 40, 16), v)


def test_one_bit_is_the_sign_and_each_sign_groups_mean() -> None:
    # Prepare: blocks of both signs, only one sign, zeros and -0.0, and a short last block
    v = np.array(
        [3.0, -1.0, 2.0, -5.0, 1.0, 4.0, 0.0, 2.0, -1.0, -3.0, -0.0, 0.0, -2.0], np.float32
    )
    vc = VALUE_CODINGS[1]
    # Execute
    scales, codes = vc.encode(v, 4, np.random.default_rng(0))
    out = vc.decode(scales, codes, v.shape[0], 4)
    # Assert: per block (lo, hi) = (mean of negatives, mean of the rest), lo = hi for a block
    # of one sign; each value decodes to its group's level
    sc = np.frombuffer(scales, "<f4")
    assert sc.tolist() == [-3.0, 2.5, 1.75, 1.75, -2.0, 0.0, -2.0, -2.0]
    assert out.tolist() == [2.5, -3.0, 2.5, -3.0, 1.75, 1.75, 1.75, 1.75, -2.0, -2.0, 0, 0, -2.0]


@pytest.mark.parametrize("block", [1, 7, 64, 4096])
def test_one_bit_is_a_contraction_per_block(block: int) -> None:
    # The property error feedback needs: sum (q - v)^2 < sum v^2 in every block that is not
    # all zeros (the error of sending each value as its sign group's mean)
    rng = np.random.default_rng(block)
    v = (rng.standard_t(2, 10_000) * rng.choice([1e-3, 1.0], 10_000)).astype(np.float32)
    vc = VALUE_CODINGS[1]
    scales, codes = vc.encode(v, block, rng)
    q = vc.decode(scales, codes, v.shape[0], block).astype(np.float64)
    err = (q - v) ** 2
    for s in range(0, v.shape[0], block):
        assert err[s : s + block].sum() < (v[s : s + block].astype(np.float64) ** 2).sum()


@pytest.mark.parametrize("topk", [1.0, 0.05])
def test_one_bit_error_feedback_stays_bounded(topk: float) -> None:
    # helper-341: 1-bit with error feedback (the coordinator's downlink, a device's upload)
    # grew its residual about 1.8x a round, 30 rounds of 1e-3 steps ending near 1e5.
    spec = ModelSpec.from_shapes([("w", (1000,))])
    codec = UpdateCodec(spec, CodecConfig(topk=topk, bits=1))
    ef = ErrorFeedback(spec.size)
    rng = np.random.default_rng(0)
    sent = np.zeros(spec.size, np.float32)
    total = np.zeros(spec.size, np.float64)
    for _ in range(30):
        u = rng.normal(0, 1e-3, spec.size).astype(np.float32)
        frame, _ = ef.step(u, codec, rng)
        codec.decode(frame).add_to(sent, 1.0)
        total += u
    # What was sent plus what is held is what was asked to send; what is held stays small
    np.testing.assert_allclose(sent + ef.held(), total, atol=1e-5)
    assert np.abs(ef.held()).max() < 0.02
