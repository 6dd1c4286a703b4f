"""Decoding valid frames whose numeric header fields, block scales or codes are rewritten to
extremes (0, 2^31, 2^32 - 1, 255, 5e-324, 1e308, -0.0, NaN, Inf, float32's max, subnormals),
with the CRC fixed so the decoder reaches the field's own check: a `CodecError` subclass or
finite values with a weight in [0, 2^53], never another exception, a RuntimeWarning or an
allocation by the declared size; `decode_many` agrees (stop 57, helper C)."""

from __future__ import annotations

import math
import struct
import tracemalloc

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from compression import CodecConfig, CodecError, ModelSpec, UpdateCodec
from compression._config import QUANTIZED_BITS, VALID_BITS
from compression._wire import FrameHeader
from compression._zstd import ZstdCodec
from tests.compression._craft import OFFSETS, payload_of, with_field, with_payload, zstd_rle_frame

SPEC = ModelSpec.from_shapes([("a", (8,)), ("b", (32,))])
D = SPEC.size
U = np.random.default_rng(0).standard_normal(D).astype(np.float32)


def _frame(bits: int, topk: float, index: str) -> bytes:
    codec = UpdateCodec(SPEC, CodecConfig(topk=topk, bits=bits, block=8, index=index))
    return codec.encode(U, np.random.default_rng(1), weight=3.0)[0]


FRAMES = [
    _frame(bits, topk, index)
    for bits in VALID_BITS
    for topk in (0.1, 0.5, 1.0)
    for index in ("rice", "ef", "bitmap")
]
CODEC = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=4))

U8 = [0, 1, 2, 3, 4, 7, 8, 9, 15, 16, 31, 32, 33, 63, 64, 127, 128, 254, 255]
U32 = [0, 1, 7, 8, 9, D - 1, D, D + 1, 2**16, 2**20, 2**20 + 1, 2**31 - 1, 2**31, 2**32 - 1]
F64 = [
    0.0,
    -0.0,
    5e-324,
    -5e-324,
    1e-300,
    2.0**53,
    float(np.nextafter(2.0**53, math.inf)),
    2.0**63,
    1e308,
    -1e308,
    1.7976931348623157e308,
    math.nan,
    -math.nan,
    math.inf,
    -math.inf,
]
NUMERIC = {name: fmt for name, (_, fmt) in OFFSETS.items() if fmt in ("B", "I", "d")}


@st.composite
def _mutation(draw: st.DrawFn) -> tuple[str, object]:
    name = draw(st.sampled_from(sorted(NUMERIC)))
    fmt = NUMERIC[name]
    pool = U8 if fmt == "B" else U32 if fmt == "I" else F64
    return name, draw(st.sampled_from(pool))


def _outcome(frame: bytes) -> str:
    """The decoder's answer, checked: a CodecError's name, or "ok" for finite values."""
    try:
        got = CODEC.decode_frame(frame)
    except CodecError as exc:
        return type(exc).__name__
    assert np.all(np.isfinite(got.update.values))
    assert math.isfinite(got.weight) and 0.0 <= got.weight <= 2.0**53
    assert math.copysign(1.0, got.weight) == 1.0  # -0.0 decodes as +0.0
    got.update.validate()
    return "ok"


def _many(frame: bytes) -> str:
    got = CODEC.decode_many([frame])[0]
    return type(got).__name__ if isinstance(got, CodecError) else "ok"


@settings(max_examples=400)
@given(frame=st.sampled_from(FRAMES), mutation=_mutation(), as_bytearray=st.booleans())
def test_mutated_header_field_is_refused_typed_or_decodes_finite(
    frame: bytes, mutation: tuple[str, object], as_bytearray: bool
) -> None:
    name, value = mutation
    bad = with_field(frame, name, value)
    tracemalloc.start()
    try:
        outcome = _outcome(bytearray(bad) if as_bytearray else bad)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Frames here are under 300 bytes: a decoder that allocated by a declared size (k, a
    # section length or a block up to 2^32 - 1) would peak far above this.
    assert peak < 256 * 1024, (name, value, outcome, peak)
    assert _many(bad) == outcome


F32_MAX = float(np.finfo(np.float32).max)
F32 = [
    0.0,
    -0.0,
    1e-45,
    -1e-45,
    float(np.finfo(np.float32).tiny),
    1.0,
    -1.0,
    1e38,
    1.7e38,
    F32_MAX,
    -F32_MAX,
    math.nan,
    math.inf,
    -math.inf,
]
QUANTIZED = [
    (f, h)
    for f in FRAMES
    for h in [CODEC.decode_frame(f).header]
    if h.bits in QUANTIZED_BITS and h.nnz > 0
]


EIGHT_BIT = next(q for q in QUANTIZED if q[1].bits == 8 and not q[1].compressed)


@settings(max_examples=400)
# Scales in range whose top 8-bit level, 0 + 127 * (max / 127), rounds past float32's max.
@example(which=EIGHT_BIT, lo=0.0, hi=F32_MAX, fill=0xFF)
@given(
    which=st.sampled_from(QUANTIZED),
    lo=st.sampled_from(F32),
    hi=st.sampled_from(F32),
    fill=st.sampled_from([None, 0x00, 0xFF, 0x55]),
)
def test_extreme_block_scales_are_refused_typed_or_decode_finite(
    which: tuple[bytes, FrameHeader], lo: float, hi: float, fill: int | None
) -> None:
    frame, h = which
    raw = payload_of(frame)
    if h.compressed:
        raw = ZstdCodec().decompress(raw, h.raw_bytes)
    sections = bytearray(raw)
    at = h.index_bytes
    struct.pack_into("<ff", sections, at, lo, hi)  # block 0's scales
    if fill is not None:
        start = at + h.scale_bytes
        n = h.value_bytes
        sections[start : start + n] = bytes([fill]) * n
        used = h.nnz * h.bits % 8
        if used:  # the padding bits after the last code stay zero
            sections[start + n - 1] &= (1 << used) - 1
    bad = with_payload(frame, bytes(sections), flags=0)  # raw payload, fresh CRC
    outcome = _outcome(bad)
    assert _many(bad) == outcome
    if not (math.isfinite(lo) and math.isfinite(hi)):
        assert outcome == "NonFiniteValues"
    elif (lo, hi, fill, h.bits) == (0.0, F32_MAX, 0xFF, 8):
        assert outcome == "NonFiniteValues"  # the dequantized top level overflows
    elif lo > hi:
        assert outcome == "MalformedSection"


DENSE = UpdateCodec(SPEC, CodecConfig(topk=1.0, bits=32)).encode(
    np.ones(D, np.float32), np.random.default_rng(0)
)[0]
RAW_TOTAL = 4 * D  # a dense fp32 frame's sections: no index, no scales


@settings(max_examples=200)
@given(
    declared=st.sampled_from(
        [
            None,
            0,
            1,
            RAW_TOTAL - 1,
            RAW_TOTAL,
            RAW_TOTAL + 1,
            2**31,
            2**32 - 1,
            2**32,
            2**63,
            2**64 - 1,
        ]
    ),
    window_log=st.integers(10, 41),
    blocks=st.lists(
        st.tuples(st.integers(0, 255), st.integers(0, 2 * RAW_TOTAL)), min_size=1, max_size=3
    ),
)
def test_zstd_payload_declaring_extreme_sizes_is_refused_typed(
    declared: int | None, window_log: int, blocks: list[tuple[int, int]]
) -> None:
    bad = with_payload(DENSE, zstd_rle_frame(blocks, declared, window_log), flags=1)
    tracemalloc.start()
    try:
        outcome = _outcome(bad)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, (declared, window_log, blocks, outcome, peak)
    assert _many(bad) == outcome
    if declared != RAW_TOTAL:
        assert outcome != "ok"
