"""Each lossless pipeline stage on its own: zstd and framing round-trip exactly."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import CodecConfig, DecodeLimits, ModelSpec
from compression._stages import (
    FrameStage,
    IndexStage,
    QuantizeStage,
    Sections,
    TopKStage,
    ZstdStage,
)
from compression._wire import WIRE_VERSION, FrameHeader
from compression._zstd import zstd_frame_length

SPEC = ModelSpec.from_shapes([("w", (40, 25)), ("b", (25,))])


@settings(derandomize=True, max_examples=100, deadline=None)
@given(raw=st.binary(max_size=3000) | st.builds(lambda n: bytes(n), st.integers(0, 50_000)))
def test_zstd_stage_round_trips(raw: bytes) -> None:
    # Prepare
    stage = ZstdStage(3, 1 << 24)
    # Execute
    payload, flags = stage.encode(raw)
    # Assert: zstd kept only when strictly shorter, and decoding restores the bytes exactly
    if flags:
        assert len(payload) < len(raw)
        assert zstd_frame_length(payload) == len(payload)
    else:
        assert payload == raw
    header = _header(flags, index=len(raw), payload=len(payload))
    assert stage.decode(payload, header) == raw


def _header(flags: int, index: int, payload: int, k: int = 0, weight: float = 1.0) -> FrameHeader:
    return FrameHeader(
        version=WIRE_VERSION, flags=flags, fingerprint=SPEC.fingerprint, size=SPEC.size, nnz=k,
        bits=32, index_coding="rice", index_param=0, block=0, weight=weight,
        index_bytes=index, scale_bytes=0, value_bytes=4 * k, payload_bytes=payload,
    )  # fmt: skip


@settings(derandomize=True, max_examples=100, deadline=None)
@given(
    k=st.integers(0, 40),
    weight=st.floats(0, 1e12, allow_nan=False),
    seed=st.integers(0, 2**32 - 1),
)
def test_frame_stage_round_trips(k: int, weight: float, seed: int) -> None:
    # Prepare: real sections for k coordinates with fp32 values
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(SPEC.size, size=k, replace=False)).astype(np.int64)
    coding, param, index = IndexStage(SPEC.size, "rice").encode(idx)
    values = rng.standard_normal(k).astype("<f4").tobytes()
    raw = Sections(index, b"", values).join()
    header = FrameHeader(
        version=WIRE_VERSION, flags=0, fingerprint=SPEC.fingerprint, size=SPEC.size, nnz=k,
        bits=32, index_coding=coding.name, index_param=param, block=0, weight=weight,
        index_bytes=len(index), scale_bytes=0, value_bytes=len(values), payload_bytes=len(raw),
    )  # fmt: skip
    stage = FrameStage(SPEC, DecodeLimits())
    # Execute
    got, payload = stage.decode(stage.encode(header, coding.wire_id, raw))
    # Assert
    assert got == header and payload == raw
    assert Sections.split(payload, got) == Sections(index, b"", values)


def test_topk_stage_scatter_and_quantize_fp32_are_lossless() -> None:
    rng = np.random.default_rng(0)
    u = rng.standard_normal(SPEC.size).astype(np.float32)
    topk = TopKStage(SPEC, CodecConfig(0.1, 32))
    idx, vals = topk.encode(u, rng)
    q = QuantizeStage(32, 256)
    assert q.block == 0
    scales, codes = q.encode(vals, rng)
    back = q.decode(scales, codes, idx.shape[0])
    dense = topk.decode(idx, back)
    np.testing.assert_array_equal(dense[idx], u[idx])
    assert np.count_nonzero(dense) == idx.shape[0] == 102
