"""Encoding finite float32 updates at the edges of float32 (3.4e38, 1e38, 1e-45, -0.0, ...)
at every bit width and top-k setting: the frame decodes to finite values, exactly the ones
`roundtrip` reports, and the error-feedback residual stays finite, or the encoder refuses
with one of the ValueErrors docs/wire-format.md names (stop 57, helper C)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from compression import CodecConfig, ErrorFeedback, ModelSpec, UpdateCodec
from compression._config import VALID_BITS
from compression._feedback import SUM_OVERFLOW

SPEC = ModelSpec.from_shapes([("a", (8,)), ("b", (16,))])
D = SPEC.size
F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal
SUB = float(np.float32(1e-45))  # 2**-149, the smallest subnormal
EXTREMES = [
    F32_MAX,
    float(np.nextafter(np.float32(F32_MAX), np.float32(0))),
    F32_MAX / 2,
    1e38,
    65504.0,
    65520.0,
    1.0,
    F32_TINY,
    SUB,
    3 * SUB,
    0.0,
]
VALUE = st.one_of(
    st.sampled_from(EXTREMES + [-x for x in EXTREMES]),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
)
UPDATE = arrays(np.float32, D, elements=VALUE)
# k = 1, a quarter, a half (of each tensor, per_tensor), and every coordinate.
TOPKS = [1 / D, 0.25, 0.5, 1.0]
CONFIG = st.builds(
    CodecConfig,
    topk=st.sampled_from(TOPKS),
    bits=st.sampled_from(VALID_BITS),
    block=st.just(8),
    scope=st.sampled_from(["global", "per_tensor"]),
)

# The encoder's documented refusals of finite input (docs/wire-format.md 1.4 and 5).
FP16_RANGE = "rounds beyond the fp16 range"
TOP_LEVEL = "too close to the float32 maximum"


def _documented_refusal(exc: ValueError, config: CodecConfig) -> bool:
    text = str(exc)
    if config.bits == 16:
        return FP16_RANGE in text
    return config.bits in (2, 4, 8) and TOP_LEVEL in text


@settings(max_examples=400)
@given(u=UPDATE, config=CONFIG, seed=st.integers(0, 2**32 - 1))
def test_finite_update_decodes_finite_or_is_refused_as_documented(
    u: np.ndarray, config: CodecConfig, seed: int
) -> None:
    codec = UpdateCodec(SPEC, config)
    try:
        frame, decoded, _ = codec.roundtrip(u, np.random.default_rng(seed))
    except ValueError as exc:
        assert _documented_refusal(exc, config), exc
        return
    assert decoded.dtype == np.float32 and np.all(np.isfinite(decoded))
    got = codec.decode_frame(frame)
    assert np.array_equal(got.update.to_dense(), decoded)
    # The residual error feedback would keep is finite: no coding's error passes float32.
    with np.errstate(over="raise"):
        residual = u - decoded
    assert np.all(np.isfinite(residual))


@settings(max_examples=200)
@given(u=UPDATE, config=CONFIG, seed=st.integers(0, 2**32 - 1))
def test_error_feedback_residual_stays_finite(
    u: np.ndarray, config: CodecConfig, seed: int
) -> None:
    codec = UpdateCodec(SPEC, config)
    ef = ErrorFeedback(D)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        before = ef.residual.copy()
        try:
            frame, _ = ef.step(u, codec, rng)
        except ValueError as exc:
            # The same delta again can push delta + residual past float32 (documented, 5).
            assert SUM_OVERFLOW in str(exc) or _documented_refusal(exc, config), exc
            assert np.array_equal(ef.residual, before)  # a refused step keeps its residual
            return
        assert np.all(np.isfinite(ef.residual))
        assert np.all(np.isfinite(codec.decode(frame).values))


@settings(max_examples=100)
@given(
    rows=st.lists(UPDATE, min_size=1, max_size=3),
    config=CONFIG,
    seed=st.integers(0, 2**32 - 1),
)
def test_batch_encoder_matches_single_on_extremes(
    rows: list[np.ndarray], config: CodecConfig, seed: int
) -> None:
    codec = UpdateCodec(SPEC, config)
    batch = np.stack(rows)
    n = len(rows)
    try:
        frames, decoded = codec.roundtrip_many(
            batch, [np.random.default_rng(seed + i) for i in range(n)], [1.0] * n
        )
    except ValueError as exc:
        assert _documented_refusal(exc, config), exc
        with pytest.raises(ValueError):  # some row alone is refused the same way
            for i in range(n):
                codec.roundtrip(batch[i], np.random.default_rng(seed + i))
        return
    assert np.all(np.isfinite(decoded))
    for i in range(n):
        frame, single, _ = codec.roundtrip(batch[i], np.random.default_rng(seed + i))
        assert frames[i] == frame and np.array_equal(decoded[i], single)
