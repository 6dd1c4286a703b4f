"""s60c mutation hunt on compression/_batch.py, after s59q: what the batch codec does itself.

`decode_many` hands a frame that fails one of its vectorised checks to `decode_frame`, so a
check made stricter than the single decoder's (`<=` turned to `<` at an edge) changed no
result: a legal frame at that edge only lost the batch path. Here legal frames sitting on each
edge of `_header_ok` and of the section decoders must be decoded by the batch code alone
(`UpdateCodec.decode_frame` is made to fail while `decode_many` runs) and equal what
`decode_frame` gives. Beside them: frames the single decoder refuses that a loosened batch
check would have decoded, the frame cap, and the encoders' fallback for the top-k modes the
batch encoder does not cover.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from compression import (
    CodecConfig,
    CodecError,
    DecodedFrame,
    DecodeLimits,
    ModelSpec,
    UpdateCodec,
)
from compression._config import MAX_BLOCK, MAX_WEIGHT, MIN_BLOCK
from compression._wire import CRC_LEN, HEADER_LEN

from ._craft import payload_of, with_field, with_payload

SPEC = ModelSpec.from_shapes([("w", (4, 4)), ("b", (4,))])  # d = 20: d % 8 = 4


def _single(codec: UpdateCodec, frames: Sequence[bytes]) -> list[DecodedFrame | CodecError]:
    out: list[DecodedFrame | CodecError] = []
    for f in frames:
        try:
            out.append(codec.decode_frame(f))
        except CodecError as exc:
            out.append(exc)
    return out


def _same(a: DecodedFrame | CodecError, b: DecodedFrame | CodecError) -> None:
    if isinstance(a, CodecError):
        assert type(b) is type(a) and str(b) == str(a)
        return
    assert isinstance(b, DecodedFrame), b
    assert b.header == a.header and b.weight == a.weight
    np.testing.assert_array_equal(b.update.indices, a.update.indices)
    np.testing.assert_array_equal(b.update.values, a.update.values)


def _batch_only(
    codec: UpdateCodec, frames: Sequence[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """decode_many decodes `frames` without the single decoder, as decode_frame does."""
    want = _single(codec, frames)
    assert all(isinstance(w, DecodedFrame) for w in want), want

    def refuse(self: UpdateCodec, frame: bytes) -> DecodedFrame:
        raise AssertionError(f"decode_many took the single decoder for {bytes(frame[:8])!r}")

    with monkeypatch.context() as m:
        m.setattr(UpdateCodec, "decode_frame", refuse)
        got = codec.decode_many(frames)
    for a, b in zip(want, got, strict=True):
        _same(a, b)


def _encode(
    codec: UpdateCodec, u: np.ndarray, weight: float = 1.0, seed: int = 0
) -> tuple[bytes, DecodedFrame]:
    frame = codec.encode(u.astype(np.float32), np.random.default_rng(seed), weight)[0]
    return frame, codec.decode_frame(frame)


def _rising() -> np.ndarray:
    """1..20: the top-k are the last k coordinates."""
    return np.arange(1, SPEC.size + 1, dtype=np.float32)


def test_the_batch_path_is_watched() -> None:
    # The check below means something only if a refused call is seen: a frame that fails a
    # batch check (a bad CRC) does go to decode_frame.
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=4))
    frame, _ = _encode(codec, _rising())
    bad = frame[:-1] + bytes([frame[-1] ^ 1])
    with pytest.raises(AssertionError, match="took the single decoder"):
        with pytest.MonkeyPatch.context() as m:

            def refuse(self: UpdateCodec, frame: bytes) -> DecodedFrame:
                raise AssertionError("decode_many took the single decoder")

            m.setattr(UpdateCodec, "decode_frame", refuse)
            codec.decode_many([bad])


@pytest.mark.parametrize("weight", [0.0, MAX_WEIGHT])
def test_a_frame_at_either_weight_bound_is_decoded_by_the_batch(
    weight: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kills `weight >= 0` flipped to > and `weight <= MAX_WEIGHT` flipped to < (_header_ok).
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=4))
    frame, _ = _encode(codec, _rising(), weight)
    _batch_only(codec, [frame], monkeypatch)


@pytest.mark.parametrize("block", [MIN_BLOCK, MAX_BLOCK])
def test_a_frame_at_either_block_bound_is_decoded_by_the_batch(
    block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kills `block >= MIN_BLOCK` flipped to > and `block <= MAX_BLOCK` flipped to <.
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=4, block=block))
    frame, decoded = _encode(codec, _rising())
    assert decoded.header.block == block
    _batch_only(codec, [frame], monkeypatch)


@pytest.mark.parametrize("bits", [1, 2, 16, 32])
def test_each_value_coding_is_decoded_by_the_batch(
    bits: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kills `bits == 1` / `bits == 2` flipped to != in `quant`, and `bits == 16` flipped to !=
    # in the expected value-section size (fp16 and fp32 swapped).
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=bits, block=8))
    frame, _ = _encode(codec, _rising())
    _batch_only(codec, [frame], monkeypatch)


def test_a_block_whose_values_share_one_magnitude_is_decoded_by_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every block's lo equals its hi (step 0). Kills `lo <= hi` flipped to < (_decode_values).
    codec = UpdateCodec(SPEC, CodecConfig(topk=1.0, bits=4, block=8))
    u = np.where(np.arange(SPEC.size) % 3, 1.0, -1.0)
    frame, decoded = _encode(codec, u)
    assert set(np.abs(decoded.update.values).tolist()) == {1.0}
    _batch_only(codec, [frame], monkeypatch)


def test_a_block_whose_smallest_magnitude_is_zero_is_decoded_by_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The encoder keeps no zero, so a block's lo is never 0 in its frames; written by hand it is
    # a legal frame (lo >= 0, lo <= hi). Kills `lo >= 0` flipped to > (_decode_values).
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=4, block=8, index="bitmap", zstd_level=-7))
    frame, decoded = _encode(codec, _rising())
    assert decoded.header.flags == 0  # stored raw: the payload is the sections
    sections = bytearray(payload_of(frame))
    struct.pack_into("<f", sections, decoded.header.index_bytes, 0.0)  # block 0's lo
    zero = with_payload(frame, bytes(sections))
    assert isinstance(codec.decode_frame(zero), DecodedFrame)
    _batch_only(codec, [zero], monkeypatch)


def test_a_frame_of_every_coordinate_is_decoded_by_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # k == d, index coding "all" (id 0, an empty section). Kills `k <= d` flipped to < and
    # `index_id == 0` flipped to != in the index section's lower bound.
    codec = UpdateCodec(SPEC, CodecConfig(topk=1.0, bits=8, block=8))
    frame, decoded = _encode(codec, _rising())
    assert decoded.header.index_coding == "all"
    _batch_only(codec, [frame], monkeypatch)


def test_a_bitmap_of_a_d_not_a_multiple_of_8_is_decoded_by_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # d = 20: the bitmap's last byte has 4 padding bits, all zero. Kills `(last >> d % 8) == 0`
    # flipped to != (_decode_index), and `index_id == 1` flipped to != in the upper bound.
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=4, index="bitmap"))
    frame, decoded = _encode(codec, _rising())
    assert decoded.header.index_coding == "bitmap"
    _batch_only(codec, [frame], monkeypatch)


def test_an_elias_fano_section_at_its_longest_is_decoded_by_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The last 16 of 20 coordinates, Elias-Fano at L = 0: ones at idx_i + i, up to 19 + 15, a
    # 5-byte stream, above what Rice's bound (d - k) >> L allows (3 bytes). Kills
    # `index_id <= 3` flipped to <, the span's `index_id == 2` flipped to != and
    # max(d - 1, 0) turned to min (both give Elias-Fano the Rice bound).
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.8, bits=4, index="ef"))
    frame, decoded = _encode(codec, _rising())
    h = decoded.header
    assert (h.index_coding, h.index_param, h.index_bytes) == ("ef", 0, 5)
    _batch_only(codec, [frame], monkeypatch)


def test_rice_sections_at_both_length_bounds_are_decoded_by_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.8, bits=4, index="rice"))
    # Longest: the last 16 coordinates at r = 0, gaps (4, 0, ..., 0): k + (d - k) = 20 unary
    # bits, ceil(20 / 8) = 3 bytes, the bound. Kills `ib <= hi` flipped to <.
    longest, decoded = _encode(codec, _rising())
    h = decoded.header
    assert (h.index_param, h.index_bytes) == (0, 3)
    # Shortest: 16 coordinates with every gap 0 (0..15) at r = 0: k unary bits, 2 bytes,
    # nothing but the ones. Kills `lo <= ib` flipped to <.
    u = np.zeros(SPEC.size, dtype=np.float32)
    u[:16] = np.arange(16, 0, -1)
    shortest, decoded = _encode(codec, u)
    h = decoded.header
    assert (h.index_param, h.index_bytes) == (0, 2)
    _batch_only(codec, [longest, shortest], monkeypatch)


def test_a_one_byte_unary_stream_is_decoded_by_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    # 4 of 20 coordinates (the last four) at Rice r = 2: quotients (4, 0, 0, 0), 8 unary bits,
    # a 1-byte stream. Kills `ulen >= 1` flipped to > (_decode_index).
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.2, bits=4, index="rice"))
    frame, decoded = _encode(codec, _rising())
    h = decoded.header
    assert h.index_bytes - -(-h.nnz * h.index_param // 8) == 1
    _batch_only(codec, [frame], monkeypatch)


def test_a_frame_of_exactly_the_batch_s_largest_sections_is_decoded_by_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # d = 1024 dense fp32: 4,096 bytes of sections (the batch's largest, _BATCH_MAX_RAW), stored
    # raw (random bit patterns do not shrink), a frame of 4,156 bytes, the longest the batch joins.
    # Kills `raw_total > _BATCH_MAX_RAW` flipped to >= and `lens <= longest` flipped to <.
    spec = ModelSpec.from_shapes([("w", (1024,))])
    codec = UpdateCodec(spec, CodecConfig.dense())
    raw = np.random.default_rng(3).integers(0, 1 << 32, size=1024, dtype=np.uint32)
    raw[((raw >> 23) & 0xFF) == 0xFF] &= ~np.uint32(1 << 30)  # no inf or NaN
    frame, decoded = _encode(codec, raw.view(np.float32))
    assert decoded.header.flags == 0
    assert len(frame) == HEADER_LEN + 4096 + CRC_LEN
    _batch_only(codec, [frame], monkeypatch)


def _frames_for_hostile() -> Iterator[tuple[str, bytes]]:
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=4, index="bitmap", zstd_level=-7))
    frame, decoded = _encode(codec, _rising())
    assert decoded.header.flags == 0  # stored raw: the payload is the sections
    # A bitmap with a bit set past d = 20 (bit 4 of its last byte) and one of the kept
    # coordinates cleared: still k bits in the first d. decode_frame refuses it.
    sections = bytearray(payload_of(frame))
    sections[2] |= 1 << 4
    sections[2] &= ~(1 << 3)  # coordinate 19
    yield "bitmap bit past d", with_payload(frame, bytes(sections))
    # bits = 3: not a value coding; its 10 codes of 3 bits would fill ceil(30 / 8) = 4 bytes,
    # the size bits = 4 gives at k = 10 except for one byte.
    three = with_field(frame, "bits", 3)
    yield "bits 3", three


@pytest.mark.parametrize("case", [c for c, _ in _frames_for_hostile()])
def test_decode_many_refuses_what_decode_frame_refuses(case: str) -> None:
    # A loosened batch check would decode these: `(last >> d % 8) == 0` flipped to != and
    # `bits == 1` / `== 2` flipped to != (every bits value a quantized one).
    frame = dict(_frames_for_hostile())[case]
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=4))
    want = _single(codec, [frame])
    assert isinstance(want[0], CodecError)
    _same(want[0], codec.decode_many([frame])[0])


def test_decode_many_refuses_a_frame_above_its_cap_that_the_batch_would_fit() -> None:
    # A 100-byte cap: a frame of 120 bytes is below the batch's own size limit
    # (4,156 bytes), yet decode_frame refuses it. Kills min(cap, ...) turned to max.
    big = UpdateCodec(SPEC, CodecConfig(topk=1.0, bits=32))
    frame, _ = _encode(big, _rising())
    assert 100 < len(frame) < HEADER_LEN + 4096 + CRC_LEN
    small = UpdateCodec(SPEC, CodecConfig(topk=1.0, bits=32), DecodeLimits(max_frame_bytes=100))
    want = _single(small, [frame])
    assert isinstance(want[0], CodecError)
    _same(want[0], small.decode_many([frame])[0])


@pytest.mark.parametrize(("mode", "scope"), [("sampled", "global"), ("exact", "per_tensor")])
def test_the_batch_encoders_equal_the_single_one_for_the_top_k_they_do_not_cover(
    mode: str, scope: str
) -> None:
    # Per-tensor top-k picks other coordinates than the batch's global top-k: such configs run
    # the single encoder row by row. Kills `scope == "global"` flipped to != (_batchable).
    # Sampled top-k is exact below 4 * 2**14 scalars, and the batch path stops at 2**16, so
    # `topk_mode == "exact"` flipped to != changes no frame (an equivalent mutant); the
    # sampled case is checked all the same.
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.25, bits=8, block=8, topk_mode=mode, scope=scope))
    u = np.random.default_rng(7).standard_normal((6, SPEC.size)).astype(np.float32)
    u[:, 16:] *= 10  # the bias dominates a global top-k, not a per-tensor one
    many = codec.encode_many(u, [np.random.default_rng(i) for i in range(6)], [1.0] * 6)
    single = [codec.encode(u[i], np.random.default_rng(i), 1.0)[0] for i in range(6)]
    assert many == single
    frames, dense = codec.roundtrip_many(u, [np.random.default_rng(i) for i in range(6)], [1.0] * 6)
    assert frames == single
    for i in range(6):
        np.testing.assert_array_equal(dense[i], codec.decode(single[i]).to_dense())


def test_a_frame_of_one_coordinate_is_decoded_by_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    # k = 1 (k = 0 frames are the ones the batch leaves to decode_frame). Kills `k == 0` turned
    # to `k == 1` in _decode_index.
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.05, bits=4, block=8))
    frame, decoded = _encode(codec, _rising())
    assert decoded.header.nnz == 1
    _batch_only(codec, [frame], monkeypatch)
