"""Codec parameters at their extremes are refused with a ValueError when they are given, not
with another exception (or no check at all) when they are first used (stop 57, helper C)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compression import (
    CodecConfig,
    DecodeLimits,
    ErrorFeedback,
    ModelSpec,
    SizeLimitExceeded,
    UpdateCodec,
    ZstdCodec,
    encode_snapshot,
)

SPEC = ModelSpec.from_shapes([("w", (40,))])
U = np.random.default_rng(0).standard_normal(40).astype(np.float32)


@pytest.mark.parametrize("bits", [4.0, 32.0, np.float64(2.0), 1.0])
def test_whole_float_bits_are_refused_at_config(bits: object) -> None:
    # Before: 4.0 is `in (1, 2, 4, ...)`, so CodecConfig took it, and the first encode raised
    # struct.error ("required argument is not an integer") packing the header's u8.
    with pytest.raises(ValueError, match=r"^bits must be one of \(1, 2, 4, 8, 16, 32\), got "):
        CodecConfig(topk=0.5, bits=bits)  # type: ignore[arg-type]


def test_numpy_integer_bits_still_encode() -> None:
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=np.int64(4)))  # type: ignore[arg-type]
    frame, _ = codec.encode(U, np.random.default_rng(0))
    assert codec.decode_frame(frame).header.bits == 4


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_frame_bytes", math.nan),
        ("max_frame_bytes", math.inf),
        ("max_frame_bytes", 1e308),
        ("max_frame_bytes", 64.5),
        ("max_header_bytes", 64.5),
        ("zstd_max_window_log", 24.5),
        ("zstd_max_window_log", 20.0),
    ],
)
def test_non_integer_limits_are_refused(field: str, value: float) -> None:
    # Before: all accepted; a window log of 24.5 was a TypeError when a codec was built.
    with pytest.raises(ValueError, match=rf"^{field} must be an int, got "):
        DecodeLimits(**{field: value})  # type: ignore[arg-type]


def test_nan_frame_cap_no_longer_disables_step_1() -> None:
    # Before: DecodeLimits(max_frame_bytes=nan) was taken, and `len(frame) > nan` is False, so
    # the decoder's step 1 let a frame of any length through (and copied a bytearray of it).
    with pytest.raises(ValueError, match="max_frame_bytes must be an int"):
        DecodeLimits(max_frame_bytes=math.nan)  # type: ignore[arg-type]
    # The int cap still works, bytearray included.
    frame, _ = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=4)).encode(U, np.random.default_rng(0))
    tight = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=4), DecodeLimits(max_frame_bytes=64))
    with pytest.raises(SizeLimitExceeded):
        tight.decode_frame(bytearray(frame))


def test_numpy_integer_limits_still_work() -> None:
    limits = DecodeLimits(max_header_bytes=np.int64(100), zstd_max_window_log=np.int64(20))  # type: ignore[arg-type]
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=4), limits)
    frame, _ = codec.encode(U, np.random.default_rng(0))
    assert codec.decode(frame).nnz == 20


@pytest.mark.parametrize(
    ("level", "message"),
    [
        (2**63, r"^level must be in \[-7, 22\], got 9\.22337e\+18$"),  # was OverflowError
        (-(2**31), r"^level must be in \[-7, 22\], got -2147483648$"),  # was accepted
        (23, r"^level must be in \[-7, 22\], got 23$"),  # was zstandard's own message
        (3.0, r"^level must be an int, got 3\.0$"),  # was accepted
        (True, r"^level must be an int, got True$"),  # was accepted as level 1
    ],
)
def test_snapshot_level_is_checked_as_codec_config_checks_it(level: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_snapshot(U, SPEC, "fp16", level=level)  # type: ignore[arg-type]


@pytest.mark.parametrize("level", [-7, 22])
def test_snapshot_level_bounds_are_accepted(level: int) -> None:
    assert encode_snapshot(U, SPEC, "fp16", level=level)[:4] == b"PLMS"


@pytest.mark.parametrize("size", [2**31 + 1, 2**32, 2**40])
def test_residual_size_above_the_model_cap_is_refused(size: int) -> None:
    # Before: 2**40 was a MemoryError (4 TiB of zeros), and 2**32 a residual whose to_bytes
    # raised struct.error (its d is a u32).
    with pytest.raises(ValueError, match=r"^size must be an int in \[1, 2\^31\]"):
        ErrorFeedback(size)


def test_residual_size_limit_message_is_short() -> None:
    with pytest.raises(ValueError, match=r"got 1e\+308$"):
        ErrorFeedback(int(1e308))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"level": 2**63}, r"^level must be in \[-7, 22\], got 9\.22337e\+18$"),  # OverflowError
        ({"level": 3.0}, r"^level must be an int, got 3\.0$"),  # TypeError at compress
        ({"level": -(2**31)}, r"^level must be in \[-7, 22\]"),  # was taken
        ({"max_window": 1000}, r"^max_window must be a power of two"),  # zstandard.ZstdError
        ({"max_window": 2**40}, r"^max_window must be a power of two"),  # zstandard.ZstdError
        ({"max_window": 1.5}, r"^max_window must be a power of two"),  # AttributeError
        ({"max_window": math.nan}, r"^max_window must be a power of two"),  # AttributeError
        ({"max_window": 0}, r"^max_window must be a power of two"),  # zstandard.ZstdError
        ({"max_window": True}, r"^max_window must be a power of two"),  # a cap of 1 byte
        ({"max_window": 2**4000}, r"got 1\.31\d*e\+1204$"),  # short, not 1205 digits
    ],
)
def test_zstd_codec_settings_are_checked_when_given(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ZstdCodec(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("log", [10, 24, 31, np.int64(16)])
def test_zstd_codec_takes_every_window_decode_limits_allows(log: int) -> None:
    window = DecodeLimits(zstd_max_window_log=log).zstd_max_window
    codec = ZstdCodec(-7, window)
    data = bytes(range(256)) * 64
    assert codec.decompress(codec.compress(data), len(data)) == data


@pytest.mark.parametrize(
    "shapes",
    [
        [("w", (10**5000,))],  # was Python's "Exceeds the limit (4300 digits)" message
        [("w", (10**5000, 0)), ("b", (3,))],  # was accepted; its fingerprint raised that
        [("w", (2**31 + 1, 0)), ("b", (3,))],  # was accepted
    ],
)
def test_dimension_above_the_model_cap_is_refused(
    shapes: list[tuple[str, tuple[int, ...]]],
) -> None:
    with pytest.raises(ValueError, match=r"^tensor 'w': a dimension is above 2147483648 \(2\^31"):
        ModelSpec.from_shapes(shapes).fingerprint  # noqa: B018


def test_dimension_at_the_model_cap_is_accepted() -> None:
    spec = ModelSpec.from_shapes([("w", (2**31, 0)), ("b", (3,))])
    assert spec.size == 3 and len(spec.fingerprint) == 8
