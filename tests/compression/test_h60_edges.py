"""Edge values at the ends of float32: the encoder never writes a frame its decoder refuses, and
error feedback never keeps a residual it could not encode again."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import (
    CodecConfig,
    ErrorFeedback,
    ModelSpec,
    UpdateCodec,
    feedback_step_many,
)
from compression._feedback import checked_residual
from compression._quant import VALUE_CODINGS, error_bound

SPEC = ModelSpec.from_shapes([("w", (16,))])
FMAX = np.finfo(np.float32).max
TINY = np.float32(2.0**-149)  # the smallest subnormal: one unit of the subnormal grid


def _below_max(ulps: int) -> np.float32:
    """The float32 `ulps` steps below float32's maximum."""
    bits = np.array([FMAX], np.float32).view(np.uint32) - np.uint32(ulps)
    return np.float32(bits.view(np.float32)[0])


def _update(hi: np.float32, lo: np.float32) -> np.ndarray:
    u = np.full(16, lo, np.float32)
    u[0] = hi
    u[5] = -hi
    u[9] = np.float32(hi) / np.float32(2)
    return u


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_a_block_whose_top_level_overflows_is_refused_by_the_encoder(bits: int) -> None:
    # Prepare: a block with |v| up to float32's max (hi) and a lo for which the decoder's top
    # level lo + steps * step (float32, as docs/wire-format.md 1.4 writes it) rounds to +inf.
    lo = np.float32({2: 9.180365197551564e37, 4: 1.2599594090944767e38, 8: 0.5}[bits])
    hi = np.float32(FMAX)
    u = _update(hi, lo)
    steps = np.float32((1 << (bits - 1)) - 1)
    with np.errstate(over="ignore"):
        top = steps * ((hi - lo) / steps).astype(np.float32) + lo
    assert not np.isfinite(top)
    codec = UpdateCodec(SPEC, CodecConfig(topk=1.0, bits=bits, block=8))
    # Execute / Assert: a clear ValueError at encode time, from every encoder entry point
    # (before, encode returned a frame that its own decode refused with NonFiniteValues).
    with pytest.raises(ValueError, match="float32 maximum"):
        codec.encode(u, np.random.default_rng(0))
    with pytest.raises(ValueError, match="float32 maximum"):
        codec.roundtrip(u, np.random.default_rng(0))
    with pytest.raises(ValueError, match="float32 maximum"):
        codec.encode_many(u[None, :], [np.random.default_rng(0)], [1.0])
    with pytest.raises(ValueError, match="float32 maximum"):
        codec.roundtrip_many(u[None, :], [np.random.default_rng(0)], [1.0])


@settings(derandomize=True, max_examples=150, deadline=None)
@given(
    bits=st.sampled_from([2, 4, 8]),
    ulps=st.integers(0, 3),
    lo_frac=st.sampled_from([0.0, 1e-30, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999]),
    seed=st.integers(0, 2**32 - 1),
    batch=st.booleans(),
)
def test_near_the_float32_maximum_a_frame_is_refused_or_decodes(
    bits: int, ulps: int, lo_frac: float, seed: int, batch: bool
) -> None:
    # Prepare
    hi = _below_max(ulps)
    lo = np.float32(hi * np.float32(lo_frac)) if lo_frac else np.float32(2.0**-100)
    u = _update(hi, lo)
    codec = UpdateCodec(SPEC, CodecConfig(topk=1.0, bits=bits, block=8))
    # Execute
    try:
        if batch:
            frame = codec.encode_many(u[None, :], [np.random.default_rng(seed)], [1.0])[0]
        else:
            frame, _ = codec.encode(u, np.random.default_rng(seed))
    except ValueError as exc:
        assert "float32 maximum" in str(exc)
        return
    # Assert: whatever the encoder writes, its own decoder takes, within the stated bound
    # plus a few ulps of hi (docs/wire-format.md 1.4)
    got = codec.decode(frame)
    assert np.all(np.isfinite(got.values))
    err = np.abs(got.values.astype(np.float64) - u.astype(np.float64))
    ulp = 2.0 ** (np.frexp(np.float64(hi))[1] - 24)  # one float32 ulp at hi
    bound = error_bound(u, bits, 8).astype(np.float64) + 4 * ulp
    assert np.all(err <= bound)


@pytest.mark.parametrize("batch", [False, True])
def test_a_one_bit_block_spanning_float32s_range_keeps_a_finite_residual(batch: bool) -> None:
    # Prepare: one 1-bit block from -max to +max. Before 2026-12-03 the 1-bit encoder rounded
    # 0.5 * max to lo = -max for some draws, leaving u - decoded = 1.5 * max = +inf (refused,
    # residual kept). The sign-and-mean encoder sends each value as its sign group's mean, so
    # |u - decoded| <= max |u| and no seed overflows.
    u = np.zeros(16, np.float32)
    u[:4] = [FMAX, -FMAX, 0.5 * FMAX, -0.5 * FMAX]
    codec = UpdateCodec(SPEC, CodecConfig(topk=1.0, bits=1, block=16))
    for seed in range(12):
        ef = ErrorFeedback(16)
        old = np.arange(16, dtype=np.float32) * np.float32(1e-3)
        ef.residual = old.copy()
        delta = u - old
        rng = np.random.default_rng(seed)
        # Execute
        if batch:
            feedback_step_many([ef], delta[None, :], codec, [rng], [1.0])
        else:
            ef.step(delta, codec, rng)
        # Assert
        assert np.all(np.isfinite(ef.residual))
        assert np.abs(ef.residual).max() <= FMAX


def test_a_residual_that_would_overflow_is_refused_and_the_old_one_kept() -> None:
    # The refusal itself (no codec reaches it now: every value coding's error is at most the
    # largest magnitude it codes): u - decoded beyond float32 is a ValueError, not an inf kept.
    u = np.array([FMAX, 0.0], np.float32)
    with pytest.raises(ValueError, match="residual.*overflow"):
        checked_residual(u, np.array([-FMAX, 0.0], np.float32))
    np.testing.assert_array_equal(checked_residual(u, u), np.zeros(2, np.float32))


def test_error_feedback_keeps_its_invariant_at_huge_magnitudes() -> None:
    # Prepare: magnitudes near float32's max at every width that can carry them
    rng = np.random.default_rng(3)
    u = (rng.standard_normal(16) * 1e37).astype(np.float32)
    for bits in (1, 2, 4, 8, 32):
        codec = UpdateCodec(SPEC, CodecConfig(topk=1.0, bits=bits, block=8))
        ef = ErrorFeedback(16)
        # Execute
        frame, _ = ef.step(u, codec, np.random.default_rng(bits))
        # Assert: residual == u - decoded bit for bit, so encoded + residual == u up to the
        # float32 rounding of that subtraction (half an ulp of the residual)
        dense = codec.decode(frame).to_dense()
        assert np.all(np.isfinite(ef.residual))
        np.testing.assert_array_equal(ef.residual, u - dense)
        total = dense.astype(np.float64) + ef.residual.astype(np.float64)
        half_ulp = np.spacing(np.abs(ef.residual)).astype(np.float64) / 2
        assert np.all(np.abs(total - u.astype(np.float64)) <= half_ulp)


@pytest.mark.parametrize("bits", [4, 8])
def test_a_subnormal_step_stays_within_the_documented_tolerance(bits: int) -> None:
    # Prepare: magnitudes 1..190 units of 2**-149 in one block. step = 189/127 units
    # rounds to 1 unit at 8 bits, so the levels stop at lo + 127 units, short of hi.
    v = (np.array([1, 190, 100, 50, 3, 7, 189, 2], np.float32) * TINY).astype(np.float32)
    vc = VALUE_CODINGS[bits]
    steps = (1 << (bits - 1)) - 1
    # Execute
    scales, codes = vc.encode(v, 8, np.random.default_rng(0))
    out = vc.decode(scales, codes, 8, 8)
    # Assert: docs/wire-format.md 1.4: bound + (2**(bits-1) - 1) / 2 units of 2**-149
    err = np.abs(out.astype(np.float64) - v.astype(np.float64))
    span = float(np.max(v)) - float(np.min(v))
    assert np.all(err <= span / steps + steps / 2 * float(TINY))
    if bits == 8:  # the plain bound alone does not hold here: the excess is real
        assert np.any(err > error_bound(v, bits, 8).astype(np.float64) + 4 * float(TINY))


@settings(derandomize=True, max_examples=80, deadline=None)
@given(
    bits=st.sampled_from([2, 4, 8]),
    units=st.lists(st.integers(0, 1 << 20), min_size=1, max_size=40),
    seed=st.integers(0, 2**32 - 1),
)
def test_tiny_blocks_stay_within_the_documented_tolerance(
    bits: int, units: list[int], seed: int
) -> None:
    # Prepare: magnitudes on the subnormal grid (and just above it), both signs
    mags = np.array(units, np.float64) * float(TINY)
    signs = np.where(np.arange(len(units)) % 3 == 0, -1.0, 1.0)
    v = (mags * signs).astype(np.float32)
    vc = VALUE_CODINGS[bits]
    steps = (1 << (bits - 1)) - 1
    # Execute
    scales, codes = vc.encode(v, 8, np.random.default_rng(seed))
    out = vc.decode(scales, codes, v.shape[0], 8)
    # Assert: per block, |q - v| <= (hi - lo) / steps + steps / 2 units + a few ulps of hi
    err = np.abs(out.astype(np.float64) - v.astype(np.float64))
    for start in range(0, v.shape[0], 8):
        blk = np.abs(v[start : start + 8]).astype(np.float64)
        span = blk.max() - blk.min()
        tol = span / steps + steps / 2 * float(TINY) + 4 * float(np.spacing(np.float32(blk.max())))
        assert np.all(err[start : start + 8] <= tol)


def test_fp16_takes_what_rounds_into_range_and_refuses_the_rest() -> None:
    # docs/wire-format.md 1.4: values that round to a finite fp16 (|v| < 65520) are taken.
    codec = UpdateCodec(SPEC, CodecConfig(topk=1.0, bits=16))
    u = np.zeros(16, np.float32)
    u[0], u[1] = 65519.0, -65519.0
    frame, _ = codec.encode(u, np.random.default_rng(0))
    np.testing.assert_array_equal(codec.decode(frame).values[:2], [65504.0, -65504.0])
    u[1] = -65520.0
    with pytest.raises(ValueError, match="fp16 range"):
        codec.encode(u, np.random.default_rng(0))


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("bad", ["overflow", "nan"])
def test_a_delta_plus_residual_that_is_not_finite_is_refused_naming_the_residual(
    batch: bool, bad: str
) -> None:
    # Prepare: a finite delta whose sum with the held residual overflows float32 (before: a
    # RuntimeWarning from the add, then the codec's "update contains NaN or Inf"), or a NaN
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=8, block=8))
    ef = ErrorFeedback(16)
    old = np.full(16, FMAX / 2, np.float32)
    ef.residual = old.copy()
    delta = np.full(16, FMAX, np.float32)
    if bad == "nan":
        delta = np.zeros(16, np.float32)
        delta[3] = np.nan
    # Execute / Assert: a ValueError that says what happened, the residual kept
    with pytest.raises(ValueError, match="delta \\+ residual is not finite"):
        if batch:
            feedback_step_many([ef], delta[None, :], codec, [np.random.default_rng(0)], [1.0])
        else:
            ef.step(delta, codec, np.random.default_rng(0))
    np.testing.assert_array_equal(ef.residual, old)


@pytest.mark.parametrize("entry", ["step", "step_many", "to_bytes"])
@pytest.mark.parametrize(
    "held",
    [np.zeros(1, np.float32), np.zeros(17, np.float32), np.zeros(16, np.float64), [0.0] * 16],
    ids=["shape-1", "shape-17", "float64", "list"],
)
def test_a_residual_set_to_another_shape_or_dtype_is_refused(entry: str, held: object) -> None:
    # Prepare: `residual` is a public attribute. Before, a (1,) residual broadcast over every
    # coordinate in step (no error), and to_bytes wrote a file from_bytes then refused.
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=8, block=8))
    ef = ErrorFeedback(16)
    ef.residual = held  # type: ignore[assignment]
    delta = np.ones(16, np.float32)
    # Execute / Assert
    with pytest.raises(ValueError, match=r"residual must be float32\[16\]"):
        if entry == "step":
            ef.step(delta, codec, np.random.default_rng(0))
        elif entry == "step_many":
            feedback_step_many([ef], delta[None, :], codec, [np.random.default_rng(0)], [1.0])
        else:
            ef.to_bytes()
    assert ef.residual is held


@pytest.mark.parametrize("field", ["value_bytes", "payload_bytes", "index_bytes"])
def test_a_section_above_the_u32_length_field_is_a_value_error(field: str) -> None:
    # Prepare: ModelSpec allows 2**31 scalars, so a dense fp32 section can need 2**33 bytes,
    # more than a v1 u32 length holds. Before, the header packing raised struct.error (not a
    # ValueError). The header alone shows it; no 8 GiB update is needed.
    from dataclasses import replace

    from compression._stages import FrameStage

    codec = UpdateCodec(SPEC, CodecConfig(topk=1.0, bits=32))
    frame, _ = codec.encode(np.ones(16, np.float32), np.random.default_rng(0))
    header = replace(codec.decode_frame(frame).header, **{field: 1 << 32})
    # Execute / Assert
    with pytest.raises(ValueError, match="u32 length field"):
        FrameStage.encode(header, 0, b"")


def test_a_snapshot_payload_above_the_u32_length_field_is_a_value_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: a zstd stage that returns a 4 GiB payload (only its length is read), as a
    # 2**31-scalar fp32 model would; before, encode_snapshot raised struct.error.
    import compression._snapshot as snapshot

    class Huge:
        def __len__(self) -> int:
            return 1 << 32

    class BigZstd:
        def compress(self, data: bytes) -> Huge:
            return Huge()

    monkeypatch.setattr(snapshot, "_zstd", lambda level, *window: BigZstd())
    # Execute / Assert: past a receiver's cap that would take it (the default cap, derived
    # from the spec, refuses it first since 966154c)
    limits = snapshot.DecodeLimits(max_frame_bytes=1 << 40)
    with pytest.raises(ValueError, match="u32 length field"):
        snapshot.encode_snapshot(np.ones(16, np.float32), SPEC, "fp32", limits=limits)
    with pytest.raises(ValueError, match="above the receiver's cap"):
        snapshot.encode_snapshot(np.ones(16, np.float32), SPEC, "fp32")
