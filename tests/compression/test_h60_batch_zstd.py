"""decode_many and decode_frame agree on hostile sections behind a sound zstd payload.

The batch decoder inflates zstd payloads into a second buffer and reads the sections there;
hostile content (damaged index streams, NaN/Inf/negative/huge scales, non-zero padding, NaN in
fp16/fp32 values) must get the single decoder's exact verdict there too, as it does for raw
payloads (`test_review_codecs.py` covers those).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import CodecConfig, CodecError, ModelSpec, UpdateCodec
from compression._index import INDEX_CODINGS

SPEC = ModelSpec.from_shapes([("w", (12, 25))])  # d = 300: every frame takes the batch path
F32_MAX = float(np.finfo(np.float32).max)
SCALES = [0.0, -0.0, 0.5, 1.0, -1.0, 3.0e38, F32_MAX, np.inf, -np.inf, np.nan, 1e-45]


def _frame(
    k: int,
    bits: int,
    index_id: int,
    param: int,
    block: int,
    sections: tuple[bytes, bytes, bytes],
    weight: float,
) -> bytes:
    """A v1 frame whose payload is zstd when that is shorter (as the encoder decides), with a
    correct CRC: built by the documented layout, not by the package."""
    index, scales, values = sections
    raw = index + scales + values
    packed = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(raw)
    flags, payload = (1, packed) if len(packed) < len(raw) else (0, raw)
    head = struct.pack(
        "<4sBBH8sIIBBBBIdIIII",
        b"PLMU", 1, flags, 56, SPEC.fingerprint, SPEC.size, k, bits, index_id, param, 0,
        block, weight, len(index), len(scales), len(values), len(payload),
    )  # fmt: skip
    body = head + payload
    return body + zlib.crc32(body).to_bytes(4, "little")


@st.composite
def compressible_hostile_frames(draw: st.DrawFn) -> bytes:
    d = SPEC.size
    bits = draw(st.sampled_from([1, 2, 4, 8, 16, 32]))
    index_id = draw(st.sampled_from([0, 1, 2, 3]))
    k = d if index_id == 0 else draw(st.integers(1, d))
    param = draw(st.integers(0, d.bit_length() - 1)) if index_id >= 2 else 0
    block = draw(st.sampled_from([8, 16, 64])) if bits <= 8 else 0
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    idx = np.sort(rng.choice(d, size=k, replace=False)).astype(np.int64)
    index = INDEX_CODINGS[index_id].encode(idx, d, param) if index_id else b""
    if index and draw(st.booleans()):
        damaged = bytearray(index)
        damaged[draw(st.integers(0, len(damaged) - 1))] ^= 1 << draw(st.integers(0, 7))
        index = bytes(damaged)
    # Repetitive sections (one scale pair, one code byte, one value repeated) so that zstd
    # shrinks most of them, with one hostile spot.
    if bits <= 8:
        nb = -(-k // block)
        pair = [draw(st.sampled_from(SCALES[:7])), draw(st.sampled_from(SCALES[:7]))]
        pair.sort(key=lambda x: (np.isnan(x), x))
        pairs = np.array(pair * nb, "<f4")
        if draw(st.booleans()):
            pairs[draw(st.integers(0, 2 * nb - 1))] = draw(st.sampled_from(SCALES))
        scales = pairs.tobytes()
        code = draw(st.integers(0, 255))
        values = bytearray([code]) * (-(-k * bits // 8))
        if draw(st.booleans()):
            values[-1] = draw(st.integers(0, 255))  # maybe non-zero padding
        values = bytes(values)
    else:
        scales = b""
        fill = draw(st.sampled_from([0.0, 1.0, -2.5, 1e-45, 65504.0]))
        vals = np.full(k, fill, np.float32)
        if draw(st.booleans()):
            vals[draw(st.integers(0, k - 1))] = draw(st.sampled_from(SCALES))
        with np.errstate(over="ignore"):
            values = vals.astype("<f2" if bits == 16 else "<f4").tobytes()
    weight = draw(st.sampled_from([0.0, -0.0, 1.0, 600.0, 2.0**53, 2.0**53 + 2, np.nan]))
    return _frame(k, bits, index_id, param, block, (index, scales, values), weight)


@settings(derandomize=True, max_examples=250, deadline=None)
@given(frames=st.lists(compressible_hostile_frames(), min_size=1, max_size=5))
def test_hostile_sections_behind_zstd_single_and_batch_agree(frames: list[bytes]) -> None:
    # Prepare
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.1, bits=4))
    # Execute
    batch = codec.decode_many(frames)
    # Assert
    for frame, got in zip(frames, batch, strict=True):
        try:
            want = codec.decode_frame(frame)
        except CodecError as exc:
            assert type(got) is type(exc) and str(got) == str(exc)
            continue
        assert not isinstance(got, CodecError), got
        want.update.validate()
        assert np.array_equal(got.update.indices, want.update.indices)
        assert np.array_equal(got.update.values.view(np.uint32), want.update.values.view(np.uint32))
        assert got.weight == want.weight and got.header == want.header


def test_the_strategy_reaches_compressed_frames_that_decode_and_that_are_refused() -> None:
    # The property above means something only if both kinds occur behind zstd.
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.1, bits=4))
    seen = {"ok": 0, "refused": 0}

    @settings(derandomize=True, max_examples=250, deadline=None)
    @given(frame=compressible_hostile_frames())
    def count(frame: bytes) -> None:
        if not frame[5] & 1:
            return
        try:
            codec.decode_frame(frame)
            seen["ok"] += 1
        except CodecError:
            seen["refused"] += 1

    count()
    assert seen["ok"] >= 10 and seen["refused"] >= 10, seen
