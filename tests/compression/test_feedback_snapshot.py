"""ErrorFeedback persistence, snapshots, canonical bytes and the model digest."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from compression import (
    BadMagic,
    ChecksumMismatch,
    CodecConfig,
    CodecError,
    DecodeLimits,
    ErrorFeedback,
    ModelSpec,
    NonFiniteValues,
    SizeLimitExceeded,
    SpecMismatch,
    TrailingBytes,
    TruncatedFrame,
    UpdateCodec,
    canonical_bytes,
    decode_snapshot,
    encode_snapshot,
    model_digest,
)

SPEC = ModelSpec.from_shapes([("w", (50, 40)), ("b", (40,))])
D = SPEC.size


def test_feedback_persistence_round_trip() -> None:
    # Prepare: a residual after two real rounds
    codec = UpdateCodec(SPEC, CodecConfig(0.05, 4, block=16))
    ef = ErrorFeedback(D)
    rng = np.random.default_rng(0)
    for _ in range(2):
        ef.step(rng.standard_normal(D).astype(np.float32), codec, rng)
    # Execute
    restored = ErrorFeedback.from_bytes(ef.to_bytes(), D)
    # Assert: bit-identical, and the next round continues identically
    assert np.array_equal(restored.residual, ef.residual) and restored.size == D
    delta = rng.standard_normal(D).astype(np.float32)
    a = ef.step(delta, codec, np.random.default_rng(1))[0]
    b = restored.step(delta, codec, np.random.default_rng(1))[0]
    assert a == b and np.array_equal(ef.residual, restored.residual)


def test_feedback_reset_and_checks() -> None:
    ef = ErrorFeedback(D)
    ef.residual[:] = 1.0
    ef.reset()
    assert not ef.residual.any()
    with pytest.raises(ValueError):
        ErrorFeedback(0)
    with pytest.raises(ValueError, match="float32"):
        ef.step(
            np.zeros(D, np.float64),
            UpdateCodec(SPEC, CodecConfig(0.1, 4)),
            np.random.default_rng(0),
        )


def test_feedback_from_bytes_refusals() -> None:
    ef = ErrorFeedback(D)
    ef.residual = np.random.default_rng(0).standard_normal(D).astype(np.float32)
    data = ef.to_bytes()
    with pytest.raises(SpecMismatch):
        ErrorFeedback.from_bytes(data, D + 1)
    with pytest.raises(TrailingBytes):
        ErrorFeedback.from_bytes(data + b"\x00", D)
    for n in (0, 5, 15, 16, len(data) - 1):
        with pytest.raises(TruncatedFrame):
            ErrorFeedback.from_bytes(data[:n], D)
    with pytest.raises(BadMagic):
        ErrorFeedback.from_bytes(b"PLMU" + data[4:], D)
    flipped = bytearray(data)
    flipped[100] ^= 1
    with pytest.raises(ChecksumMismatch):
        ErrorFeedback.from_bytes(bytes(flipped), D)


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_snapshot_round_trip(dtype: str) -> None:
    # Prepare
    params = (np.random.default_rng(0).standard_normal(D) * 0.1).astype(np.float32)
    # Execute
    data = encode_snapshot(params, SPEC, dtype=dtype, level=3)
    out = decode_snapshot(data, SPEC)
    # Assert
    assert out.dtype == np.float32 and out.shape == (D,)
    if dtype == "fp32":
        np.testing.assert_array_equal(out, params)
    else:
        np.testing.assert_array_equal(out, params.astype(np.float16).astype(np.float32))
        assert len(data) < 2 * D + 100


def test_snapshot_refusals() -> None:
    params = np.linspace(-1, 1, D, dtype=np.float32)
    data = encode_snapshot(params, SPEC, "fp32")
    for n in range(0, len(data), max(1, len(data) // 50)):
        with pytest.raises(TruncatedFrame):
            decode_snapshot(data[:n], SPEC)
    with pytest.raises(TrailingBytes):
        decode_snapshot(data + b"\x00", SPEC)
    with pytest.raises(SpecMismatch):
        decode_snapshot(data, ModelSpec.from_shapes([("w", (D,))]))
    with pytest.raises(SizeLimitExceeded):
        decode_snapshot(data, SPEC, DecodeLimits(max_frame_bytes=len(data) - 1))
    wrong_digest = bytearray(data)
    wrong_digest[30] ^= 1
    with pytest.raises(ChecksumMismatch):
        decode_snapshot(bytes(wrong_digest), SPEC)
    nan = encode_snapshot(np.zeros(D, np.float32), SPEC, "fp32")
    import zstandard

    payload = zstandard.ZstdCompressor().compress(np.full(D, np.nan, "<f4").tobytes())
    hostile = bytearray(nan[:56] + payload)
    hostile[20:24] = len(payload).to_bytes(4, "little")
    with pytest.raises(NonFiniteValues):
        decode_snapshot(bytes(hostile), SPEC)
    with pytest.raises(ValueError, match="fp16"):
        encode_snapshot(np.full(D, 1e6, np.float32), SPEC, "fp16")
    with pytest.raises(ValueError):
        encode_snapshot(params, SPEC, "bf16")


@settings(derandomize=True, max_examples=50, deadline=None)
@given(
    params=arrays(
        np.float32, 5, elements=st.floats(-(2.0**100), 2.0**100, allow_nan=False, width=32)
    )
)
def test_canonical_bytes_and_digest(params: np.ndarray) -> None:
    raw = canonical_bytes(params)
    assert raw == params.astype("<f4").tobytes() and len(raw) == 20
    assert model_digest(params) == hashlib.sha256(raw).digest()
    big_endian = params.astype(">f4")
    assert canonical_bytes(big_endian.astype(np.float32)) == raw


def test_snapshot_bytes_are_not_an_update() -> None:
    data = encode_snapshot(np.zeros(D, np.float32), SPEC)
    with pytest.raises(CodecError, match="snapshot"):
        UpdateCodec(SPEC, CodecConfig(0.1, 4)).decode(data)


@settings(derandomize=True, max_examples=25, deadline=None)
@given(
    topk=st.floats(0.005, 1.0),
    bits=st.sampled_from([1, 2, 4, 8, 16, 32]),
    mode=st.sampled_from(["exact", "sampled"]),
    scope=st.sampled_from(["global", "per_tensor"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_residual_is_exact_after_every_round(
    topk: float, bits: int, mode: str, scope: str, seed: int
) -> None:
    # Prepare
    codec = UpdateCodec(SPEC, CodecConfig(topk, bits, block=16, topk_mode=mode, scope=scope))
    ef = ErrorFeedback(D)
    rng = np.random.default_rng(seed)
    for _ in range(4):
        delta = (rng.standard_t(3, D) * 0.01).astype(np.float32)
        u = delta + ef.residual
        # Execute
        frame, report = ef.step(delta, codec, rng, weight=1.0)
        # Assert: residual == u - decode(encode(u)), bit for bit
        assert np.array_equal(ef.residual, u - codec.decode(frame).to_dense())
        assert report.frame_bytes == len(frame)
