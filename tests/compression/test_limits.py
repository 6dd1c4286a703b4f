"""Hostile frames: each is refused with its own CodecError subclass, without big allocations."""

from __future__ import annotations

import math
import struct
import tracemalloc
from typing import Any

import numpy as np
import pytest
import zstandard

from compression import (
    BadMagic,
    ChecksumMismatch,
    CodecConfig,
    CodecError,
    DecodeLimits,
    DecompressionError,
    HeaderTooLarge,
    InvalidIndices,
    MalformedHeader,
    MalformedSection,
    ModelSpec,
    NonFiniteValues,
    SizeLimitExceeded,
    SpecMismatch,
    TrailingBytes,
    TruncatedFrame,
    UnsupportedVersion,
    UpdateCodec,
    encode_snapshot,
)
from compression._index import EliasFanoCoding, RiceCoding

from ._craft import make_frame, payload_of, reseal, unseal, with_field, with_payload, zstd_rle_frame

SPEC = ModelSpec.from_shapes([("w", (64, 64)), ("b", (64,))])  # d = 4160
D = SPEC.size
FP = SPEC.fingerprint
# Everything a refused decode may allocate: a few copies of the small frames used here.
ALLOC_CAP = 256 * 1024


def refused(codec: UpdateCodec, frame: bytes, exc: type[CodecError], cap: int = ALLOC_CAP) -> str:
    """Decode `frame`, expect `exc`, and check the traced peak allocation stayed under `cap`."""
    tracemalloc.start()
    try:
        with pytest.raises(exc) as info:
            codec.decode(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < cap, f"decoder allocated {peak} bytes before refusing"
    return str(info.value)


def decoded_peak(codec: UpdateCodec, frame: bytes) -> tuple[Any, int]:
    """Decode `frame` (it must decode); returns (the update, the traced peak allocation)."""
    tracemalloc.start()
    try:
        out = codec.decode(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak


@pytest.fixture(scope="module")
def codec() -> UpdateCodec:
    return UpdateCodec(SPEC, CodecConfig(topk=0.05, bits=4, block=32))


@pytest.fixture(scope="module")
def update() -> np.ndarray:
    return np.random.default_rng(0).standard_t(3, size=D).astype(np.float32)


@pytest.fixture(scope="module")
def frame(codec: UpdateCodec, update: np.ndarray) -> bytes:
    f, _ = codec.encode(update, np.random.default_rng(1), weight=5.0)
    return f


@pytest.fixture(scope="module")
def dense_codec() -> UpdateCodec:
    return UpdateCodec(SPEC, CodecConfig.dense())


def test_valid_frame_decodes(codec: UpdateCodec, frame: bytes) -> None:
    # Prepare / Execute
    out = codec.decode_frame(frame)
    # Assert: the control case for every refusal below
    out.update.validate()
    assert out.weight == 5.0 and out.update.nnz == CodecConfig(0.05, 4).k_for(D)


@pytest.mark.parametrize("compressed", [False, True])
def test_every_prefix_is_truncated(
    codec: UpdateCodec, update: np.ndarray, compressed: bool
) -> None:
    # Prepare: a raw frame and a zstd frame (zeros compress)
    u = update if not compressed else np.where(np.arange(D) % 7 == 0, update, 0).astype(np.float32)
    cfg = CodecConfig(topk=0.05, bits=4, block=32) if not compressed else CodecConfig(1.0, 32)
    f, report = UpdateCodec(SPEC, cfg).encode(u, np.random.default_rng(2))
    assert report.compressed is compressed
    # Execute / Assert
    for n in range(len(f)):
        with pytest.raises(TruncatedFrame):
            codec.decode(f[:n])


def test_wrong_magic(codec: UpdateCodec, frame: bytes) -> None:
    msg = refused(codec, b"XXXX" + frame[4:], BadMagic)
    assert "PLMU" in msg
    snap = encode_snapshot(np.zeros(D, np.float32), SPEC)
    assert "snapshot" in refused(codec, snap, BadMagic)


def test_unsupported_version(codec: UpdateCodec, frame: bytes) -> None:
    assert "version 2" in refused(codec, frame[:4] + b"\x02" + frame[5:], UnsupportedVersion)


def test_oversized_header(codec: UpdateCodec, frame: bytes) -> None:
    big = frame[:6] + struct.pack("<H", 60000) + frame[8:]
    assert "60000" in refused(codec, big, HeaderTooLarge)
    other = frame[:6] + struct.pack("<H", 64) + frame[8:]
    refused(codec, other, MalformedHeader)


def test_tighter_header_cap_applies(frame: bytes) -> None:
    tight = UpdateCodec(SPEC, CodecConfig(0.05, 4), DecodeLimits(max_header_bytes=64))
    tight.decode(frame)  # 56 <= 64
    assert "cap is 64" in refused(
        tight, frame[:6] + struct.pack("<H", 65) + frame[8:], HeaderTooLarge
    )


def test_element_count_above_spec(codec: UpdateCodec, frame: bytes) -> None:
    assert f"d={D}" in refused(codec, with_field(frame, "k", D + 1), SizeLimitExceeded)
    refused(codec, with_field(frame, "k", 2**32 - 1), SizeLimitExceeded)


def test_other_spec_is_spec_mismatch(frame: bytes) -> None:
    other = ModelSpec.from_shapes([("w", (64, 64)), ("bias", (64,))])
    refused(UpdateCodec(other, CodecConfig(0.05, 4)), frame, SpecMismatch)
    refused(UpdateCodec(SPEC, CodecConfig(0.05, 4)), with_field(frame, "d", D - 1), SpecMismatch)


def test_frame_above_frame_cap(codec: UpdateCodec, frame: bytes) -> None:
    small = UpdateCodec(SPEC, CodecConfig(0.05, 4), DecodeLimits(max_frame_bytes=len(frame) - 1))
    refused(small, frame, SizeLimitExceeded)
    default_cap = DecodeLimits().frame_cap(SPEC)
    assert default_cap == 4 * D + math.ceil(D / 8) + 1024
    refused(codec, bytes(default_cap + 1), SizeLimitExceeded)


def test_trailing_bytes(codec: UpdateCodec, frame: bytes) -> None:
    assert "1 bytes after" in refused(codec, frame + b"\x00", TrailingBytes)


def test_crc_mismatch(codec: UpdateCodec, frame: bytes) -> None:
    flipped = bytearray(frame)
    flipped[60] ^= 0x10
    refused(codec, bytes(flipped), ChecksumMismatch)


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("flags", 0x02, "flag"),
        ("reserved", 1, "reserved"),
        ("bits", 3, "bits=3"),
        ("index_id", 9, "index coding id 9"),
        ("index_param", 40, "parameter 40"),
        ("block", 4, "block=4"),
        ("weight", math.nan, "weight"),
        ("weight", -1.0, "weight"),
        ("weight", math.inf, "weight"),
        ("weight", 2.0**54, "weight"),  # above MAX_WEIGHT = 2^53
        ("weight", 1.7e308, "weight"),  # finite, but FedAvg's weight x value would overflow
        ("scale_bytes", 0, "scale section"),
        ("value_bytes", 7, "value section"),
        ("index_bytes", 10**6, "index section"),
    ],
)
def test_malformed_header_fields(
    codec: UpdateCodec, frame: bytes, field: str, value: object, needle: str
) -> None:
    assert needle in refused(codec, with_field(frame, field, value), MalformedHeader)


def test_the_largest_weight_decodes_and_the_encoder_refuses_more(
    codec: UpdateCodec, frame: bytes
) -> None:
    # Execute
    top = codec.decode_frame(with_field(frame, "weight", 2.0**53))

    # Assert
    assert top.weight == 2.0**53
    with pytest.raises(ValueError, match="weight"):
        codec.encode(np.zeros(D, np.float32), np.random.default_rng(0), 2.0**54)


# -- zstd ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zero_frame(dense_codec: UpdateCodec) -> bytes:
    """A dense fp32 frame of zeros (raw sections: 4*D bytes), zstd-compressed by the encoder."""
    f, report = dense_codec.encode(np.zeros(D, np.float32), np.random.default_rng(0))
    assert report.compressed
    return f


def test_handmade_rle_zstd_decodes(dense_codec: UpdateCodec, zero_frame: bytes) -> None:
    # Positive control for the hand-made zstd frames used below.
    good = with_payload(zero_frame, zstd_rle_frame([(0, 4 * D)], declared=4 * D))
    assert not np.any(dense_codec.decode(good).values)


def test_zstd_declaring_2_pow_36(dense_codec: UpdateCodec, zero_frame: bytes) -> None:
    bomb = with_payload(zero_frame, zstd_rle_frame([(0, 4 * D)], declared=2**36))
    assert str(2**36) in refused(dense_codec, bomb, SizeLimitExceeded)


def test_zstd_bomb_without_declared_size(dense_codec: UpdateCodec, zero_frame: bytes) -> None:
    # 1024 RLE blocks of 128 KiB: 4 KiB that would inflate to 128 MiB.
    payload = zstd_rle_frame([(0, 1 << 17)] * 1024, declared=None)
    assert len(payload) < 4 * D
    msg = refused(dense_codec, with_payload(zero_frame, payload), DecompressionError)
    assert "does not declare" in msg


def test_zstd_bomb_lying_about_its_size(dense_codec: UpdateCodec, zero_frame: bytes) -> None:
    payload = zstd_rle_frame([(0, 1 << 17)] * 512, declared=4 * D)
    refused(dense_codec, with_payload(zero_frame, payload), DecompressionError)


def test_zstd_declared_smaller_than_header(dense_codec: UpdateCodec, zero_frame: bytes) -> None:
    payload = zstd_rle_frame([(0, 100)], declared=100)
    refused(dense_codec, with_payload(zero_frame, payload), DecompressionError)


def test_zstd_window_above_cap(dense_codec: UpdateCodec, zero_frame: bytes) -> None:
    payload = zstd_rle_frame([(0, 4 * D)], declared=4 * D, window_log=27)
    assert "window" in refused(dense_codec, with_payload(zero_frame, payload), DecompressionError)
    relaxed = UpdateCodec(SPEC, CodecConfig.dense(), DecodeLimits(zstd_max_window_log=27))
    relaxed.decode(with_payload(zero_frame, payload))


def test_zstd_trailing_bytes_inside_payload(dense_codec: UpdateCodec, zero_frame: bytes) -> None:
    payload = zstd_rle_frame([(0, 4 * D)], declared=4 * D) + b"\x00\x00"
    refused(dense_codec, with_payload(zero_frame, payload), TrailingBytes)


def test_zstd_skippable_frame_is_refused(dense_codec: UpdateCodec, zero_frame: bytes) -> None:
    skippable = bytes.fromhex("502a4d18") + (4 * D).to_bytes(4, "little") + bytes(4 * D)
    skippable = skippable[: 4 * D - 1]  # shorter than the raw sections, as zstd payloads must be
    assert "magic" in refused(dense_codec, with_payload(zero_frame, skippable), DecompressionError)


def test_zstd_garbage_is_decompression_error(dense_codec: UpdateCodec, zero_frame: bytes) -> None:
    refused(dense_codec, with_payload(zero_frame, b"not zstd at all"), DecompressionError)
    real = zstandard.ZstdCompressor().compress(bytes(4 * D))
    corrupt = real[:-3] + bytes(b ^ 0xFF for b in real[-3:])
    with pytest.raises(CodecError):
        dense_codec.decode(with_payload(zero_frame, corrupt))


def test_zstd_flag_on_a_payload_not_smaller(dense_codec: UpdateCodec, zero_frame: bytes) -> None:
    raw_size = 4 * D
    payload = zstandard.ZstdCompressor().compress(bytes(raw_size))
    padded = payload + bytes(raw_size - len(payload))
    refused(dense_codec, with_payload(zero_frame, padded), MalformedHeader)


# -- sections -----------------------------------------------------------------------------


def _values4(k: int) -> tuple[bytes, bytes]:
    scales = np.tile(np.array([0.5, 1.0], "<f4"), -(-k // 32)).tobytes()
    return scales, bytes((k * 4 + 7) // 8)


def test_rice_index_out_of_range(codec: UpdateCodec) -> None:
    idx = np.array([5, 100, D + 3], dtype=np.int64)
    big = D + 10
    _, r = RiceCoding().plan(idx, big)
    index = RiceCoding().encode(idx, big, r)
    f = make_frame(FP, D, 3, 4, 2, r, 32, (index, *_values4(3)))
    assert "out of range" in refused(codec, f, InvalidIndices)


def test_ef_indices_not_increasing(codec: UpdateCodec) -> None:
    idx = np.array([5, 9, 9, 40], dtype=np.int64)
    index = EliasFanoCoding().encode(idx, D, 4)
    f = make_frame(FP, D, 4, 4, 3, 4, 32, (index, *_values4(4)))
    assert "not strictly increasing" in refused(codec, f, InvalidIndices)
    idx = np.array([5, 9, 8], dtype=np.int64)
    f = make_frame(FP, D, 3, 4, 3, 4, 32, (EliasFanoCoding().encode(idx, D, 4), *_values4(3)))
    refused(codec, f, InvalidIndices)


def test_ef_index_out_of_range(codec: UpdateCodec) -> None:
    idx = np.array([5, D + 1], dtype=np.int64)
    f = make_frame(FP, D, 2, 4, 3, 4, 32, (EliasFanoCoding().encode(idx, D, 4), *_values4(2)))
    refused(codec, f, InvalidIndices)


def test_bitmap_count_and_range(codec: UpdateCodec) -> None:
    bits = np.zeros(-(-D // 8) * 8, np.uint8)
    bits[[1, 2, 3]] = 1
    index = np.packbits(bits, bitorder="little").tobytes()
    f = make_frame(FP, D, 4, 4, 1, 0, 32, (index, *_values4(4)))
    assert "declares k=4" in refused(codec, f, InvalidIndices)
    spec = ModelSpec.from_shapes([("w", (13,))])
    c13 = UpdateCodec(spec, CodecConfig(0.5, 4))
    f = make_frame(spec.fingerprint, 13, 1, 4, 1, 0, 32, (b"\x00\x40", *_values4(1)))
    assert "beyond d=13" in refused(c13, f, InvalidIndices)


def test_rice_stream_with_extra_or_missing_terminators(codec: UpdateCodec) -> None:
    # r = 0: gaps in unary; 0x0f holds 4 terminators but k = 3 (and 0x07 0x00 ends in a zero byte)
    f = make_frame(FP, D, 3, 4, 2, 0, 32, (b"\x0f", *_values4(3)))
    refused(codec, f, MalformedSection)
    f = make_frame(FP, D, 3, 4, 2, 0, 32, (b"\x07\x00", *_values4(3)))
    refused(codec, f, MalformedSection)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_fp32_fp16(bad: float) -> None:
    spec = ModelSpec.from_shapes([("w", (16,))])
    vals = np.ones(16, np.float32)
    vals[3] = bad
    c32 = UpdateCodec(spec, CodecConfig.dense())
    f = make_frame(spec.fingerprint, 16, 16, 32, 0, 0, 0, (b"", b"", vals.astype("<f4").tobytes()))
    assert "value 3" in refused(c32, f, NonFiniteValues)
    f = make_frame(spec.fingerprint, 16, 16, 16, 0, 0, 0, (b"", b"", vals.astype("<f2").tobytes()))
    refused(c32, f, NonFiniteValues)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_scales(codec: UpdateCodec, bad: float) -> None:
    idx = np.array([1, 2], dtype=np.int64)
    index = RiceCoding().encode(idx, D, 0)
    scales = np.array([0.5, bad], "<f4").tobytes()
    f = make_frame(FP, D, 2, 4, 2, 0, 32, (index, scales, b"\x00"))
    assert "block 0" in refused(codec, f, NonFiniteValues)


def test_bad_scales_and_padding(codec: UpdateCodec) -> None:
    index = RiceCoding().encode(np.array([1, 2, 3], dtype=np.int64), D, 0)
    lo_above_hi = np.array([2.0, 1.0], "<f4").tobytes()
    refused(
        codec,
        make_frame(FP, D, 3, 4, 2, 0, 32, (index, lo_above_hi, b"\x00\x00")),
        MalformedSection,
    )
    negative = np.array([-2.0, 1.0], "<f4").tobytes()
    refused(
        codec, make_frame(FP, D, 3, 4, 2, 0, 32, (index, negative, b"\x00\x00")), MalformedSection
    )
    good = np.array([1.0, 2.0], "<f4").tobytes()
    codec.decode(make_frame(FP, D, 3, 4, 2, 0, 32, (index, good, b"\x00\x00")))
    # the fourth 4-bit field is padding and must be zero
    refused(codec, make_frame(FP, D, 3, 4, 2, 0, 32, (index, good, b"\x00\x10")), MalformedSection)


def test_dequantized_overflow_is_non_finite() -> None:
    # lo = 0, hi = float32 max, 8 bits: lo + 127 * (hi / 127) rounds up to +inf.
    spec = ModelSpec.from_shapes([("w", (16,))])
    codec = UpdateCodec(spec, CodecConfig(0.5, 8, block=8))
    index = RiceCoding().encode(np.array([0], dtype=np.int64), 16, 0)
    scales = np.array([0.0, np.finfo(np.float32).max], "<f4").tobytes()
    codec.decode(make_frame(spec.fingerprint, 16, 1, 8, 2, 0, 8, (index, scales, b"\x02")))
    f = make_frame(spec.fingerprint, 16, 1, 8, 2, 0, 8, (index, scales, b"\xfe"))
    assert "overflows" in refused(codec, f, NonFiniteValues)


def test_crafting_helpers_are_faithful(codec: UpdateCodec, frame: bytes) -> None:
    # The rewriting helpers reproduce the encoder's own bytes when nothing changes.
    assert reseal(unseal(frame)) == frame
    assert with_payload(frame, payload_of(frame)) == frame
    assert with_field(frame, "k", int.from_bytes(frame[20:24], "little")) == frame


def test_large_spec_refusals_stay_small() -> None:
    # The MNIST-CNN size: a frame claiming k = d + 1 or a 2**36 zstd payload allocates nothing big.
    spec = ModelSpec.from_shapes([("w", (1_663_370,))])
    codec = UpdateCodec(spec, CodecConfig(0.01, 4))
    f, _ = codec.encode(
        np.random.default_rng(0).standard_normal(spec.size).astype(np.float32),
        np.random.default_rng(0),
    )
    refused(codec, with_field(f, "k", spec.size + 1), SizeLimitExceeded, cap=256 * 1024)
    bomb = with_payload(f, zstd_rle_frame([(0, 16)], declared=2**36), flags=1)
    refused(codec, bomb, SizeLimitExceeded, cap=256 * 1024)


def test_wide_rice_fields_decode_in_bounded_memory() -> None:
    # Prepare: k = d with the widest legal Rice parameter: 20-bit low fields for 1.66M indices.
    # A bit-matrix unpacker would need k * 20 * 8 bytes (266 MB); this frame is legal (every
    # low field 0, every quotient 0: indices 0..d-1), so it must decode, within 36 bytes a
    # scalar: the 6 MB frame, 12 bytes a scalar of output, and int64 temporaries.
    d = 1_663_370
    spec = ModelSpec.from_shapes([("w", (d,))])
    codec = UpdateCodec(spec, CodecConfig(0.01, 4))
    r = d.bit_length() - 1
    index = bytes(-(-d * r // 8)) + b"\xff" * (d // 8) + bytes([(1 << (d % 8)) - 1])
    scales = np.tile(np.array([0.0, 1.0], "<f4"), -(-d // 256)).tobytes()
    frame = make_frame(spec.fingerprint, d, d, 8, 2, r, 256, (index, scales, bytes(d)))
    assert len(frame) < DecodeLimits().frame_cap(spec)
    # Execute
    out, peak = decoded_peak(codec, frame)
    # Assert
    np.testing.assert_array_equal(out.indices, np.arange(d))
    assert peak < 36 * d, f"peak {peak / 1e6:.0f} MB"


def _worst_index_frames(spec: ModelSpec) -> dict[str, bytes]:
    """Legal k = d frames of indices 0..d-1 whose index decode needs the most int64 temporaries."""
    d = spec.size
    unary = b"\xff" * (d // 8) + bytes([(1 << (d % 8)) - 1])  # every Rice quotient 0
    ef_upper = np.packbits(np.arange(2 * d - 1) % 2 == 0, bitorder="little").tobytes()
    fp32 = (np.arange(d) % 251 - 125).astype("<f4").tobytes()  # compresses: fits the cap
    r = d.bit_length() - 1
    wide = (bytes(-(-d * r // 8)) + unary, np.tile(np.array([0.0, 1.0], "<f4"), -(-d // 256)))
    ef_wide = EliasFanoCoding().encode(np.arange(d, dtype=np.int64), d, r)
    frames = {
        "rice_r0_fp32": make_frame(spec.fingerprint, d, d, 32, 2, 0, 0, (unary, b"", fp32)),
        "ef_l0_fp32": make_frame(spec.fingerprint, d, d, 32, 3, 0, 0, (ef_upper, b"", fp32)),
        "rice_r20_8bit": make_frame(
            spec.fingerprint, d, d, 8, 2, r, 256, (wide[0], wide[1].tobytes(), bytes(d))
        ),
        "rice_r20_fp32": make_frame(spec.fingerprint, d, d, 32, 2, r, 0, (wide[0], b"", fp32)),
        "ef_l20_fp32": make_frame(spec.fingerprint, d, d, 32, 3, r, 0, (ef_wide, b"", fp32)),
    }
    # The fp32 ones are above the frame cap raw: stored behind zstd, as a sender would (the
    # inflated sections then count in the peak too).
    for name in ("rice_r0_fp32", "ef_l0_fp32", "rice_r20_fp32", "ef_l20_fp32"):
        f = frames[name]
        frames[name] = with_payload(f, zstandard.ZstdCompressor().compress(payload_of(f)), 1)
    return frames


@pytest.mark.parametrize(
    "name", ["rice_r0_fp32", "ef_l0_fp32", "rice_r20_8bit", "rice_r20_fp32", "ef_l20_fp32"]
)
def test_worst_index_frames_decode_under_25_bytes_a_scalar(name: str) -> None:
    # Prepare: the MNIST-CNN size. At parameter 0 the decoders built k int64 zeros to OR in as
    # low fields, Rice's np.diff(prepend=) copied the k one-positions first, and Elias-Fano
    # subtracted a whole arange(k): 36.1 bytes a scalar for the Rice frame (above the 36 the
    # docs promised), 28.3 and 30.6 for the Elias-Fano ones, 32 for 20-bit Rice fields.
    d = 1_663_370
    spec = ModelSpec.from_shapes([("w", (d,))])
    codec = UpdateCodec(spec, CodecConfig(0.01, 4))
    frame = _worst_index_frames(spec)[name]
    assert len(frame) < DecodeLimits().frame_cap(spec)

    # Execute
    out, peak = decoded_peak(codec, frame)

    # Assert: the same indices, in the output's 12 bytes a scalar plus one int64 temporary
    # and the inflated sections.
    np.testing.assert_array_equal(out.indices, np.arange(d))
    assert peak < 25 * d, f"peak {peak / d:.1f} bytes a scalar"
