"""s59q mutation hunt: `compression._quant` sizes, refusals and bounds, with exact numbers."""

from __future__ import annotations

import numpy as np
import pytest

from compression._bits import pack_fixed
from compression._errors import MalformedSection, NonFiniteValues
from compression._quant import (
    VALUE_CODINGS,
    Fp16Values,
    Fp32Values,
    StochasticQuantizer,
    _block_expand,
    error_bound,
    one_bit_levels,
    refuse_overflowing_top,
)

# Ten values over two blocks of 8 (the second block holds 2).
V = np.array([0.5, -1.0, 2.0, -3.0, 0.25, 1.5, -0.75, 4.0, 1.0, -2.0], np.float32)


@pytest.mark.parametrize("bits", [0, 3, 16, 32])
def test_stochastic_rounding_refuses_other_widths(bits: int) -> None:
    with pytest.raises(ValueError, match=rf"supports 1, 2, 4 or 8 bits, not {bits}$"):
        StochasticQuantizer(bits)


def test_levels_and_section_sizes() -> None:
    assert [StochasticQuantizer(b).steps for b in (2, 4, 8)] == [1, 7, 127]
    q = StochasticQuantizer(4)
    assert [q.scale_bytes(k, 8) for k in (1, 8, 9, 16, 17)] == [8, 8, 16, 16, 24]
    assert [q.value_bytes(k) for k in (1, 2, 3)] == [1, 1, 2]
    assert StochasticQuantizer(1).value_bytes(9) == 2
    assert Fp16Values().value_bytes(5) == 10 and Fp16Values().scale_bytes(5, 8) == 0
    assert Fp32Values().value_bytes(5) == 20 and Fp32Values().scale_bytes(5, 8) == 0
    assert sorted(VALUE_CODINGS) == [1, 2, 4, 8, 16, 32]
    assert StochasticQuantizer(4).encode(np.zeros(0, np.float32), 8, np.random.default_rng(0)) == (
        b"",
        b"",
    )


def test_block_expand_sizes_the_last_block_by_k() -> None:
    out = _block_expand(np.array([1.0, 2.0], np.float32), 8, 10)
    assert out.tolist() == [1.0] * 8 + [2.0] * 2
    assert _block_expand(np.array([5.0], np.float32), 1 << 20, 1).tolist() == [5.0]
    assert _block_expand(np.zeros(0, np.float32), 8, 0).shape == (0,)


def test_four_bit_scales_and_levels_of_a_known_vector() -> None:
    q = StochasticQuantizer(4)
    scales, codes = q.encode(V, 8, np.random.default_rng(0))
    # (lo, hi) = (min |v|, max |v|) per block.
    assert np.frombuffer(scales, "<f4").tolist() == [0.25, 4.0, 1.0, 2.0]
    out = q.decode(scales, codes, 10, 8)
    lo = np.array([0.25] * 8 + [1.0] * 2, np.float32)
    step = np.array([3.75 / 7] * 8 + [1.0 / 7] * 2, np.float32)
    j = np.round((np.abs(out) - lo) / step)
    # Every value decodes to a level lo + j * step, j in 0..7, with the value's sign, and to
    # one of the two levels around it (the stochastic rounding bound).
    assert np.all((j >= 0) & (j <= 7))
    np.testing.assert_allclose(np.abs(out), lo + j * step, rtol=1e-6)
    assert np.all(np.sign(out) == np.sign(V))
    assert np.all(np.abs(out - V) <= step * (1 + 1e-6))
    # Block ends are exact levels: min and max |v| decode to themselves.
    assert out[4] == 0.25 and out[7] == 4.0 and out[8] == 1.0 and out[9] == -2.0


def test_error_bound_of_each_coding() -> None:
    assert error_bound(V, 32, 8).tolist() == [0.0] * 10
    assert error_bound(np.zeros(0, np.float32), 4, 8).shape == (0,)
    # One value: fp16 still has its relative bound (no span to speak of).
    one = np.array([3.0], np.float32)
    assert error_bound(one, 16, 8).tolist() == [np.float32(3.0 * 2.0**-11 + 2.0**-25)]
    assert error_bound(one, 4, 8).tolist() == [0.0]
    np.testing.assert_array_equal(
        error_bound(V, 16, 8), (np.abs(V) * np.float32(2.0**-11) + np.float32(2.0**-25))
    )
    # 1 bit: max v - min v of the block.
    assert error_bound(V, 1, 8).tolist() == [7.0] * 8 + [3.0] * 2
    # b bits: (max |v| - min |v|) / (2**(b-1) - 1).
    np.testing.assert_array_equal(
        error_bound(V, 4, 8), np.array([3.75 / 7] * 8 + [1.0 / 7] * 2, np.float32)
    )
    np.testing.assert_array_equal(
        error_bound(V, 2, 8), np.array([3.75] * 8 + [1.0] * 2, np.float32)
    )
    np.testing.assert_array_equal(
        error_bound(V, 8, 8), np.array([3.75 / 127] * 8 + [1.0 / 127] * 2, np.float32)
    )


def test_one_bit_levels_are_the_means_of_each_sign() -> None:
    lo, hi = one_bit_levels(V[None, :], 8)
    np.testing.assert_allclose(lo, [[-4.75 / 3, -2.0]])
    np.testing.assert_allclose(hi, [[8.25 / 5, 1.0]])
    # A block of one sign only: both levels are that mean (and zero counts as positive).
    lo, hi = one_bit_levels(np.array([[1.0, 3.0, -2.0, -4.0, 0.0, 0.0]], np.float32), 2)
    assert lo.tolist() == [[2.0, -3.0, 0.0]] and hi.tolist() == [[2.0, -3.0, 0.0]]
    q = StochasticQuantizer(1)
    scales, codes = q.encode(V, 8, np.random.default_rng(0))
    out = q.decode(scales, codes, 10, 8)
    np.testing.assert_allclose(
        out, np.where(V >= 0, [1.65] * 8 + [1.0] * 2, [-4.75 / 3] * 8 + [-2.0] * 2)
    )


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_a_scale_section_of_the_wrong_length_is_refused(bits: int) -> None:
    q = StochasticQuantizer(bits)
    scales, codes = q.encode(V, 8, np.random.default_rng(0))
    assert len(scales) == 16
    for bad in (scales[:-8], scales + bytes(8), scales[:-1]):
        with pytest.raises(
            MalformedSection,
            match=rf"^scale section of {len(bad)} bytes; k=10, block=8 needs 16$",
        ):
            q.decode(bad, codes, 10, 8)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_a_non_finite_scale_names_its_block(bits: int) -> None:
    q = StochasticQuantizer(bits)
    scales, codes = q.encode(V, 8, np.random.default_rng(0))
    for pos, block in ((0, 0), (1, 0), (2, 1), (3, 1)):
        for bad in (np.nan, np.inf, -np.inf):
            sc = np.frombuffer(scales, "<f4").copy()
            sc[pos] = bad
            with pytest.raises(NonFiniteValues, match=rf"^non-finite scale in block {block}$"):
                q.decode(sc.tobytes(), codes, 10, 8)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_lo_above_hi_is_refused_but_lo_equal_hi_decodes(bits: int) -> None:
    q = StochasticQuantizer(bits)
    _, codes = q.encode(V, 8, np.random.default_rng(0))
    equal = np.array([1.0, 1.0, 2.0, 2.0], "<f4").tobytes()
    out = q.decode(equal, codes, 10, 8)
    assert np.all(np.abs(out) == np.array([1.0] * 8 + [2.0] * 2, np.float32))
    above = np.array([1.0, 2.0, 2.0, np.nextafter(np.float32(2), np.float32(0))], "<f4")
    with pytest.raises(MalformedSection, match=r"^block 1 has lo > hi$"):
        q.decode(above.tobytes(), codes, 10, 8)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_a_negative_magnitude_scale_is_refused_and_zero_is_not(bits: int) -> None:
    q = StochasticQuantizer(bits)
    _, codes = q.encode(V, 8, np.random.default_rng(0))
    zero = np.array([0.0, 1.0, -0.0, 1.0], "<f4").tobytes()
    assert np.all(np.isfinite(q.decode(zero, codes, 10, 8)))
    neg = np.array([0.0, 1.0, -1e-30, 1.0], "<f4").tobytes()
    with pytest.raises(MalformedSection, match=r"^block 1 has a negative magnitude scale$"):
        q.decode(neg, codes, 10, 8)


def test_one_bit_levels_may_be_negative() -> None:
    q = StochasticQuantizer(1)
    _, codes = q.encode(V, 8, np.random.default_rng(0))
    out = q.decode(np.array([-3.0, -1.0, -2.0, -2.0], "<f4").tobytes(), codes, 10, 8)
    assert (
        out.tolist() == np.where(V >= 0, [-1.0] * 8 + [-2.0] * 2, [-3.0] * 8 + [-2.0] * 2).tolist()
    )


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_a_constant_block_at_the_float32_maximum_decodes(bits: int) -> None:
    q = StochasticQuantizer(bits)
    big = np.finfo(np.float32).max
    top = (1 << (bits - 1)) - 1
    hostile = np.array([big, big], "<f4").tobytes()
    all_top = pack_fixed(np.full(8, top << 1, np.int64), bits)
    np.testing.assert_array_equal(q.decode(hostile, all_top, 8, 8), big)
    # step 0: the top level is lo itself.
    refuse_overflowing_top(np.array([big], np.float32), np.zeros(1, np.float32), top, bits)


def test_a_top_level_overflowing_float32_is_refused_both_ways() -> None:
    # 8 bits, lo = 0, hi = max: 127 * (max / 127) rounds to +inf in float32.
    q = StochasticQuantizer(8)
    big = np.finfo(np.float32).max
    lo, step = np.zeros(1, np.float32), np.array([big / np.float32(127)], np.float32)
    with pytest.raises(ValueError, match=r"for 8-bit levels \(the top level lo \+ 127 \* step"):
        refuse_overflowing_top(lo, step, 127, 8)
    with pytest.raises(ValueError, match=r"for 8-bit levels"):
        q.encode(np.array([big, 0.0, 1.0], np.float32), 8, np.random.default_rng(0))
    sc = np.array([0.0, big], "<f4").tobytes()
    codes = np.full(3, 0, np.int64)
    assert q.decode(sc, pack_fixed(codes, 8), 3, 8).tolist() == [0.0, 0.0, 0.0]
    codes[1] = 127 << 1
    with pytest.raises(NonFiniteValues, match=r"^a dequantized value overflows float32$"):
        q.decode(sc, pack_fixed(codes, 8), 3, 8)
    # One level below the top is finite.
    codes[1] = 126 << 1
    assert np.isfinite(q.decode(sc, pack_fixed(codes, 8), 3, 8)).all()


def test_fp16_range_edges() -> None:
    f = Fp16Values()
    rng = np.random.default_rng(0)
    ok = np.array([65504.0, -65504.0, 65519.0], np.float32)
    _, codes = f.encode(ok, 0, rng)
    assert f.decode(b"", codes, 3, 0).tolist() == [65504.0, -65504.0, 65504.0]
    for v in (65520.0, -65520.0, np.inf, np.nan):
        with pytest.raises(
            ValueError, match=r"beyond the fp16 range \(\|v\| >= 65520; the largest"
        ):
            f.encode(np.array([1.0, v], np.float32), 0, rng)


@pytest.mark.parametrize(("coding", "width"), [(Fp16Values(), 2), (Fp32Values(), 4)])
def test_float_sections_must_be_exact(coding: Fp16Values | Fp32Values, width: int) -> None:
    _, codes = coding.encode(V[:3], 0, np.random.default_rng(0))
    assert len(codes) == 3 * width
    assert coding.decode(b"", codes, 3, 0).tolist() == V[:3].tolist()
    name = "fp16" if width == 2 else "fp32"
    for scales, vals in ((b"\0", codes), (b"", codes[:-1]), (b"", codes + b"\0")):
        with pytest.raises(
            MalformedSection,
            match=rf"^{name} values: {len(scales)} scale and {len(vals)} value bytes for k=3$",
        ):
            coding.decode(scales, vals, 3, 0)
    nan = np.array([1.0, np.nan, 2.0], "<f2" if width == 2 else "<f4").tobytes()
    with pytest.raises(NonFiniteValues, match=r"^NaN or Inf at value 1$"):
        coding.decode(b"", nan, 3, 0)
