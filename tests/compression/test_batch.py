"""Batched codec: `encode_many`/`roundtrip_many`/`decode_many` equal loops of the single calls."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import (
    CodecConfig,
    CodecError,
    DecodedFrame,
    DecodeLimits,
    ErrorFeedback,
    ModelSpec,
    SizeLimitExceeded,
    UpdateCodec,
    feedback_step_many,
)

from ._craft import OFFSETS, with_field, with_payload

SPECS = [
    ModelSpec.from_shapes([("w", (4, 4)), ("b", (4,))]),  # the worked example's d = 20
    ModelSpec.from_shapes([("w", (7, 9)), ("b", (3,))]),  # d = 66, not a multiple of 8
    ModelSpec.from_shapes([("fc1", (64, 32)), ("b1", (32,)), ("fc2", (32, 10)), ("b2", (10,))]),
]

configs = st.builds(
    CodecConfig,
    topk=st.sampled_from([0.01, 0.05, 0.2, 0.5, 0.9, 1.0]),
    bits=st.sampled_from([1, 2, 4, 8, 16, 32]),
    block=st.sampled_from([8, 16, 256]),
    index=st.sampled_from(["auto", "bitmap", "rice", "ef"]),
    topk_mode=st.sampled_from(["exact", "exact", "sampled"]),
    scope=st.sampled_from(["global", "global", "per_tensor"]),
)


def _batch(spec: ModelSpec, n: int, seed: int, kind: str) -> np.ndarray:
    """float32[n, d]: smooth values, or small integers (many ties and exact zeros)."""
    rng = np.random.default_rng(seed)
    if kind == "ties":
        u = rng.integers(-3, 4, size=(n, spec.size)).astype(np.float32)
    else:
        u = (rng.standard_normal((n, spec.size)) * 0.01).astype(np.float32)
    if n > 1:
        u[1] = 0.0  # an all-zero update: a frame with k = 0
    return u


def _same_decoded(a: DecodedFrame | CodecError, b: DecodedFrame | CodecError) -> None:
    if isinstance(a, CodecError):
        assert type(b) is type(a) and str(b) == str(a)
        return
    assert isinstance(b, DecodedFrame)
    assert b.header == a.header and b.weight == a.weight
    assert b.update.size == a.update.size
    assert b.update.indices.dtype == a.update.indices.dtype
    assert b.update.values.dtype == a.update.values.dtype
    np.testing.assert_array_equal(b.update.indices, a.update.indices)
    np.testing.assert_array_equal(b.update.values, a.update.values)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(
    spec_i=st.integers(0, len(SPECS) - 1),
    cfg=configs,
    n=st.integers(0, 9),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["smooth", "ties"]),
)
def test_encode_many_equals_single_encodes(
    spec_i: int, cfg: CodecConfig, n: int, seed: int, kind: str
) -> None:
    # Prepare
    spec = SPECS[spec_i]
    codec = UpdateCodec(spec, cfg)
    u = _batch(spec, n, seed, kind)
    weights = [float(i * 3) for i in range(n)]

    # Execute
    single = [codec.roundtrip(u[i], np.random.default_rng([seed, i]), weights[i]) for i in range(n)]
    frames = codec.encode_many(u, [np.random.default_rng([seed, i]) for i in range(n)], weights)
    frames2, dense = codec.roundtrip_many(
        u, [np.random.default_rng([seed, i]) for i in range(n)], weights
    )

    # Assert
    assert frames == [s[0] for s in single]
    assert frames2 == frames
    assert dense.shape == (n, spec.size) and dense.dtype == np.float32
    for i in range(n):
        np.testing.assert_array_equal(dense[i], single[i][1])


def test_a_shared_rng_is_drawn_in_row_order() -> None:
    # Prepare
    spec = SPECS[2]
    codec = UpdateCodec(spec, CodecConfig(topk=0.05, bits=2, block=8))
    u = _batch(spec, 6, 3, "smooth")
    a, b = np.random.default_rng(9), np.random.default_rng(9)

    # Execute
    looped = [codec.encode(u[i], a, 1.0)[0] for i in range(6)]
    batched = codec.encode_many(u, [b] * 6, [1.0] * 6)

    # Assert
    assert batched == looped
    assert a.random() == b.random()


def test_worked_example_bytes() -> None:
    # Prepare: docs/wire-format.md 1.6, through the batch path
    u = np.array(
        [0.5, -0.02, 0.01, -1.25, 0.0, 0.03, 0.75, -0.04, 0.02, -0.6,
         0.01, 0.0, 0.05, 0.9, -0.03, 0.02, 0.01, -0.01, 0.04, 0.3],
        dtype=np.float32,
    )  # fmt: skip
    codec = UpdateCodec(SPECS[0], CodecConfig(topk=0.25, bits=4, block=8))

    # Execute
    (frame,) = codec.encode_many(u[None, :], [np.random.default_rng(7)], [32.0])

    # Assert
    assert frame.hex() == (
        "504c4d55010038005b958b4436e245f71400000005000000040200000800000000000000000040400200000008"
        "000000030000000d0000004922"
        "0000003f0000a03f"
        "f03608"
        "2cad2d97"
    )


def _mutations(frame: bytes, draw: Callable[[st.SearchStrategy[Any]], Any]) -> bytes:
    """One hostile change: a header field (CRC fixed), a flipped byte, a cut, an extra byte,
    a payload replaced, or nothing."""
    kind = draw(st.sampled_from(["field", "flip", "cut", "append", "payload", "none"]))
    if kind == "field":
        name = draw(st.sampled_from(sorted(set(OFFSETS) - {"magic", "fingerprint"})))
        fmt = OFFSETS[name][1]
        if fmt == "d":
            value: object = draw(
                st.sampled_from(
                    [-1.0, 0.0, 2.5, 2.0**53, 2.0**54, 1.7e308, float("inf"), float("nan")]
                )
            )
        else:
            top = {"B": 255, "H": 65535, "I": 2**32 - 1}[fmt]
            value = draw(st.one_of(st.integers(0, 20), st.integers(0, top)))
        return with_field(frame, name, value)
    if kind == "flip":
        pos = draw(st.integers(0, len(frame) - 1))
        return frame[:pos] + bytes([frame[pos] ^ (1 << draw(st.integers(0, 7)))]) + frame[pos + 1 :]
    if kind == "cut":
        return frame[: draw(st.integers(0, len(frame) - 1))]
    if kind == "append":
        return frame + b"\x00"
    if kind == "payload":
        body = frame[56:-4]
        pos = draw(st.integers(0, max(len(body) - 1, 0)))
        new = body[:pos] + bytes([draw(st.integers(0, 255))]) + body[pos + 1 :]
        return with_payload(frame, new, flags=draw(st.sampled_from([None, 0, 1])))
    return frame


@settings(derandomize=True, max_examples=60, deadline=None)
@given(
    spec_i=st.integers(0, len(SPECS) - 1),
    cfg=configs,
    n=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_decode_many_equals_single_decodes_with_bad_frames_mixed_in(
    spec_i: int, cfg: CodecConfig, n: int, seed: int, data: st.DataObject
) -> None:
    # Prepare: valid frames of two configs, some of them damaged
    spec = SPECS[spec_i]
    codec = UpdateCodec(spec, cfg)
    other = UpdateCodec(spec, CodecConfig(topk=0.3, bits=8, block=8))
    u = _batch(spec, n, seed, data.draw(st.sampled_from(["smooth", "ties"])))
    frames = []
    for i in range(n):
        enc = codec if i % 3 else other
        frame, _ = enc.encode(u[i], np.random.default_rng([seed, i]), float(i))
        frames.append(frame)
    frames = [_mutations(f, data.draw) if i % 2 else f for i, f in enumerate(frames)]

    # Execute
    expected: list[DecodedFrame | CodecError] = []
    for f in frames:
        try:
            expected.append(codec.decode_frame(f))
        except CodecError as exc:
            expected.append(exc)
    got = codec.decode_many(frames)

    # Assert
    assert len(got) == n
    for a, b in zip(expected, got, strict=True):
        _same_decoded(a, b)


def test_decode_many_applies_the_codec_limits() -> None:
    # Prepare
    spec = SPECS[2]
    frames = UpdateCodec(spec, CodecConfig(topk=0.5, bits=32)).encode_many(
        _batch(spec, 3, 0, "smooth"), [np.random.default_rng(i) for i in range(3)], [1.0] * 3
    )
    tight = UpdateCodec(spec, CodecConfig(topk=0.5, bits=32), DecodeLimits(max_frame_bytes=100))

    # Execute
    got = tight.decode_many(frames)

    # Assert: the frames over the cap are refused with the single decoder's error
    assert [len(f) > 100 for f in frames] == [True, False, True]  # row 1 is all zeros
    for f, g in zip(frames, got, strict=True):
        if len(f) > 100:
            with pytest.raises(CodecError) as err:
                tight.decode_frame(f)
            assert type(g) is err.type and str(g) == str(err.value)
        else:
            _same_decoded(tight.decode_frame(f), g)


def test_decode_many_never_copies_a_frame_above_the_cap() -> None:
    # Prepare: one small valid frame (a batch candidate) and an 8 MB bytes object far above
    # the 900-byte spec's cap. The batch buffer used to join every frame, so the oversized
    # one was copied whole (peak 8 MB) before the single decoder refused it by its length.
    spec = SPECS[1]
    codec = UpdateCodec(spec, CodecConfig(topk=0.2, bits=4))
    small = codec.encode_many(_batch(spec, 1, 0, "smooth"), [np.random.default_rng(0)], [1.0])
    huge = b"PLMU" + bytes(8 << 20)

    # Execute
    tracemalloc.start()
    try:
        got = codec.decode_many([small[0], huge])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Assert
    assert isinstance(got[0], DecodedFrame) and isinstance(got[1], SizeLimitExceeded)
    assert peak < 1 << 20, f"decode_many allocated {peak} bytes"


def test_decode_many_refuses_non_bytes_before_decoding() -> None:
    codec = UpdateCodec(SPECS[0], CodecConfig(topk=0.5, bits=4))
    with pytest.raises(TypeError, match="bytes"):
        codec.decode_many([b"", "not bytes"])  # type: ignore[list-item]


@settings(derandomize=True, max_examples=25, deadline=None)
@given(cfg=configs, seed=st.integers(0, 2**32 - 1), rounds=st.integers(1, 3))
def test_feedback_step_many_equals_single_steps(cfg: CodecConfig, seed: int, rounds: int) -> None:
    # Prepare
    spec = SPECS[1]
    codec = UpdateCodec(spec, cfg)
    n = 5
    ref = [ErrorFeedback(spec.size) for _ in range(n)]
    fbs = [ErrorFeedback(spec.size) for _ in range(n)]

    for r in range(rounds):
        deltas = _batch(spec, n, seed + r, "smooth")
        before = [fb.residual.copy() for fb in ref]

        # Execute
        looped = [
            ref[i].step(deltas[i], codec, np.random.default_rng([seed, r, i]), 2.0)[0]
            for i in range(n)
        ]
        frames, u = feedback_step_many(
            fbs, deltas, codec, [np.random.default_rng([seed, r, i]) for i in range(n)], [2.0] * n
        )

        # Assert
        assert frames == looped
        for i in range(n):
            np.testing.assert_array_equal(fbs[i].residual, ref[i].residual)
            np.testing.assert_array_equal(u[i], deltas[i] + before[i])


def test_encode_many_refuses_bad_input() -> None:
    # Prepare
    spec = SPECS[0]
    codec = UpdateCodec(spec, CodecConfig(topk=0.5, bits=4))
    good = np.zeros((2, spec.size), dtype=np.float32)
    rngs = [np.random.default_rng(0), np.random.default_rng(1)]

    # Execute / Assert
    with pytest.raises(ValueError, match="shape"):
        codec.encode_many(np.zeros((2, 3), np.float32), rngs, [1.0, 1.0])
    with pytest.raises(ValueError, match="float32"):
        codec.encode_many(good.astype(np.float64), rngs, [1.0, 1.0])
    with pytest.raises(ValueError, match="rngs and weights"):
        codec.encode_many(good, rngs[:1], [1.0, 1.0])
    bad = good.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        codec.encode_many(bad, rngs, [1.0, 1.0])
    with pytest.raises(ValueError, match="weight"):
        codec.encode_many(good, rngs, [1.0, -1.0])
    with pytest.raises(ValueError, match="weight"):
        codec.encode_many(good, rngs, [1.0, 2.0**54])
    with pytest.raises(TypeError, match="Generator"):
        codec.encode_many(good, [rngs[0], 7], [1.0, 1.0])  # type: ignore[list-item]
    fb = ErrorFeedback(spec.size)
    with pytest.raises(ValueError, match="distinct"):
        feedback_step_many([fb, fb], good, codec, rngs, [1.0, 1.0])
    with pytest.raises(ValueError, match="fp16"):
        UpdateCodec(spec, CodecConfig(topk=0.5, bits=16)).encode_many(good + 1e6, rngs, [1, 1])
