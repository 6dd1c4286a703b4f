"""Golden bytes: the exact v1 frames of small fixed inputs (docs/wire-format.md shows the first)."""

from __future__ import annotations

import numpy as np
import pytest

from compression import (
    CodecConfig,
    ErrorFeedback,
    ModelSpec,
    UpdateCodec,
    decode_snapshot,
    encode_snapshot,
)

SPEC = ModelSpec.from_shapes([("w", (4, 4)), ("b", (4,))])
U = np.array(
    [0.5, -0.02, 0.01, -1.25, 0.0, 0.03, 0.75, -0.04, 0.02, -0.6,
     0.01, 0.0, 0.05, 0.9, -0.03, 0.02, 0.01, -0.01, 0.04, 0.3],
    dtype=np.float32,
)  # fmt: skip

# The worked example of docs/wire-format.md.
GOLDEN_RICE = (
    "504c4d55" "01" "00" "3800" "5b958b4436e245f7" "14000000" "05000000"
    "04" "02" "00" "00" "08000000" "0000000000004040"
    "02000000" "08000000" "03000000" "0d000000"
    "4922" "0000003f0000a03f" "f03608" "2cad2d97"
)  # fmt: skip
GOLDEN_BITMAP = (
    "504c4d55010038005b958b4436e245f71400000005000000040100000800000000000000000040400300000008"
    "000000030000000e0000004922000000003f0000a03ff036082c865d1a"
)
GOLDEN_EF = (
    "504c4d55010038005b958b4436e245f71400000005000000040300000800000000000000000040400300000008"
    "000000030000000e0000001111020000003f0000a03ff03608201adac4"
)


def test_spec_fingerprint_is_stable() -> None:
    assert SPEC.fingerprint.hex() == "5b958b4436e245f7"


@pytest.mark.parametrize(
    ("index", "golden"), [("auto", GOLDEN_RICE), ("bitmap", GOLDEN_BITMAP), ("ef", GOLDEN_EF)]
)
def test_update_frame_bytes(index: str, golden: str) -> None:
    # Prepare
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.25, bits=4, block=8, index=index))
    # Execute
    frame, _ = codec.encode(U, np.random.default_rng(7), weight=32.0)
    # Assert
    assert frame.hex() == golden
    got = codec.decode_frame(frame)
    np.testing.assert_array_equal(got.update.indices, [0, 3, 6, 9, 13])
    # the decoder's float32 formula: lo + j * ((hi - lo) / 7), block (lo, hi) = (0.5, 1.25)
    lo, step = np.float32(0.5), np.float32(1.25 - 0.5) / np.float32(7)
    mag = lo + np.array([0, 7, 3, 1, 4], np.float32) * step
    np.testing.assert_array_equal(got.update.values, mag * np.array([1, -1, 1, -1, 1], np.float32))


def test_decode_of_golden_needs_no_config() -> None:
    frame = bytes.fromhex(GOLDEN_RICE)
    got = UpdateCodec(SPEC, CodecConfig.dense()).decode_frame(frame)
    assert (got.header.bits, got.header.block, got.header.index_coding, got.weight) == (
        4,
        8,
        "rice",
        32.0,
    )


def test_dense_fp32_frame_bytes() -> None:
    spec = ModelSpec.from_shapes([("w", (3,))])
    u = np.array([1.0, -2.0, 0.5], np.float32)
    frame, _ = UpdateCodec(spec, CodecConfig.dense()).encode(u, np.random.default_rng(0))
    # raw payload (zstd would be longer): 12 bytes of little-endian fp32, no index section
    assert frame.hex() == (
        "504c4d5501003800" + spec.fingerprint.hex() + "03000000" "03000000" "20000000" "00000000"
        "000000000000f03f" "00000000" "00000000" "0c000000" "0c000000"
        "0000803f000000c00000003f" + frame[-4:].hex()
    )  # fmt: skip
    assert frame[-4:].hex() == "23e013c5"


def test_snapshot_bytes() -> None:
    spec = ModelSpec.from_shapes([("w", (3,))])
    data = encode_snapshot(np.array([1.0, -2.0, 0.5], np.float32), spec, dtype="fp16")
    assert data.hex() == (
        "504c4d5301013800" + spec.fingerprint.hex() + "03000000" "0f000000"
        # SHA-256 of the canonical fp32 bytes 0000803f 000000c0 0000003f
        "2ce4bdb6b34a50ac7092eb9fee94337a27498e9eb9bae44192f15b88831b2422"
        # one zstd frame: single segment, content size 6, one raw block of fp16 1.0, -2.0, 0.5
        "28b52ffd" "20" "06" "310000" "003c00c00038"
    )  # fmt: skip
    np.testing.assert_array_equal(decode_snapshot(data, spec), [1.0, -2.0, 0.5])


def test_residual_bytes() -> None:
    ef = ErrorFeedback(2)
    ef.residual = np.array([0.25, -1.0], np.float32)
    assert ef.to_bytes().hex() == "504c4d5201001000" "02000000" "00fbde05" "0000803e000080bf"  # fmt: skip
