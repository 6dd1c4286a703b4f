"""A frame whose weight field is -0.0 (sign bit set, in [0, 2^53] as a number) decodes to the
weight +0.0 in the single and the batch decoder, so weight zero has one decoded value."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import pytest

from compression import CodecConfig, DecodedFrame, ModelSpec, UpdateCodec

WEIGHT_AT = 32  # offset of the f64 weight in the v1 header (docs/wire-format.md 1.1)


def _with_weight(frame: bytes, weight: float) -> bytes:
    """`frame` with its weight field set to `weight` and its CRC-32 recomputed."""
    body = frame[:WEIGHT_AT] + struct.pack("<d", weight) + frame[WEIGHT_AT + 8 : -4]
    return body + zlib.crc32(body).to_bytes(4, "little")


def _positive_zero(w: float) -> bool:
    return w == 0.0 and math.copysign(1.0, w) == 1.0


@pytest.mark.parametrize(
    ("d", "config"),
    [
        (20, CodecConfig(topk=0.25, bits=4, block=8)),  # small: decode_many's batch path
        (20, CodecConfig.dense()),
        (5_000, CodecConfig.dense()),  # sections above 4 KiB: decode_many's single path
    ],
)
def test_a_negative_zero_weight_decodes_as_positive_zero(d: int, config: CodecConfig) -> None:
    # Prepare: an honest frame, then the same with weight -0.0 (what encode(weight=-0.0) writes:
    # check_weight accepts it, being 0 as a number).
    spec = ModelSpec.from_shapes([("w", (d,))])
    codec = UpdateCodec(spec, config)
    u = np.random.default_rng(3).standard_normal(d).astype(np.float32)
    honest, _ = codec.encode(u, np.random.default_rng(4), weight=1.0)
    frame = _with_weight(honest, -0.0)
    assert frame == codec.encode(u, np.random.default_rng(4), weight=-0.0)[0]
    assert frame[WEIGHT_AT + 7] == 0x80
    # Execute
    single = codec.decode_frame(frame)
    batch = codec.decode_many([frame, honest, frame])
    # Assert: +0.0 in the decoded weight and the header, from both decoders; the update is
    # the honest frame's.
    assert _positive_zero(single.weight) and _positive_zero(single.header.weight)
    for got in (batch[0], batch[2]):
        assert isinstance(got, DecodedFrame)
        assert _positive_zero(got.weight) and _positive_zero(got.header.weight)
        assert got.header == single.header
    assert isinstance(batch[1], DecodedFrame) and batch[1].weight == 1.0
    want = codec.decode(honest).to_dense()
    assert np.array_equal(single.update.to_dense(), want)


def test_other_weights_are_returned_as_written() -> None:
    spec = ModelSpec.from_shapes([("w", (20,))])
    codec = UpdateCodec(spec, CodecConfig(topk=0.25, bits=4, block=8))
    honest, _ = codec.encode(np.linspace(-1, 1, 20, dtype=np.float32), np.random.default_rng(0))
    for w in (0.0, 5e-324, 1.0, 600.0, float(1 << 53)):
        frame = _with_weight(honest, w)
        got = codec.decode_many([frame])[0]
        assert isinstance(got, DecodedFrame)
        assert codec.decode_frame(frame).weight == got.weight == w
        assert _positive_zero(got.weight) == (w == 0.0)
