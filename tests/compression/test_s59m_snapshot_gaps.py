"""Snapshot behaviour that no test pinned down (stop 59's mutation hunt over _snapshot.py).

Each test fails against a mutant of `compression/_snapshot.py` that the rest of the suite let
through (a check removed, `or` made `and`, a bound moved by one) or that no test ran at all:
the params checks of `encode_snapshot` and `canonical_bytes`, the receiver's cap at exactly its
value, `snapshot_dtype` (which the SDK uses to tell an fp16 download), and a snapshot that is
its 56-byte header alone.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from compression import (
    DecodeLimits,
    DecompressionError,
    ModelSpec,
    SizeLimitExceeded,
    canonical_bytes,
    decode_snapshot,
    encode_snapshot,
    model_digest,
)
from compression._snapshot import SNAPSHOT_HEADER_LEN, snapshot_dtype

SPEC = ModelSpec.from_shapes([("w", (3,))])
PARAMS = np.array([1.0, -2.0, 0.5], dtype=np.float32)


@pytest.mark.parametrize(
    "params",
    [
        np.array([1.0, -2.0, 0.5], dtype=np.float64),  # 1-D, not float32
        PARAMS.reshape(1, 3),  # float32, not 1-D
    ],
    ids=["float64", "2-D"],
)
def test_params_must_be_one_dimensional_float32(params: np.ndarray) -> None:
    want = rf"^params must be a 1-D float32 array, got {params.dtype}\[.*\]$"
    for call in (
        lambda: encode_snapshot(params, SPEC),
        lambda: canonical_bytes(params),
        lambda: model_digest(params),
    ):
        with pytest.raises(ValueError, match=want):
            call()


def test_params_of_another_size_than_the_spec_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^params have 4 scalars; the spec has 3$"):
        encode_snapshot(np.zeros(4, np.float32), SPEC)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_non_finite_params_are_refused(bad: float, dtype: str) -> None:
    params = PARAMS.copy()
    params[1] = bad
    with pytest.raises(ValueError, match=r"^params contain NaN or Inf$"):
        encode_snapshot(params, SPEC, dtype)


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_a_snapshot_of_exactly_the_cap_is_written_and_read(dtype: str) -> None:
    # Prepare: the snapshot's length under the default limits, then a cap of exactly that
    blob = encode_snapshot(PARAMS, SPEC, dtype)
    at_cap = DecodeLimits(max_frame_bytes=len(blob))
    below = DecodeLimits(max_frame_bytes=len(blob) - 1)
    # Execute / Assert: at the cap both sides take it; one byte below both refuse it
    assert encode_snapshot(PARAMS, SPEC, dtype, limits=at_cap) == blob
    np.testing.assert_array_equal(decode_snapshot(blob, SPEC, at_cap), PARAMS)
    with pytest.raises(ValueError, match=rf"^the {dtype} snapshot of {len(blob)} bytes is above"):
        encode_snapshot(PARAMS, SPEC, dtype, limits=below)
    with pytest.raises(SizeLimitExceeded):
        decode_snapshot(blob, SPEC, below)


def test_only_an_fp32_snapshot_above_the_cap_suggests_fp16() -> None:
    tight = DecodeLimits(max_frame_bytes=64)
    with pytest.raises(ValueError) as fp32:
        encode_snapshot(PARAMS, SPEC, "fp32", limits=tight)
    with pytest.raises(ValueError) as fp16:
        encode_snapshot(PARAMS, SPEC, "fp16", limits=tight)
    assert str(fp32.value).endswith(": raise the cap, or use dtype='fp16'")
    assert str(fp16.value).endswith(": raise the cap")


def test_snapshot_dtype_reads_the_id_alone() -> None:
    fp16 = encode_snapshot(PARAMS, SPEC, "fp16")
    fp32 = encode_snapshot(PARAMS, SPEC, "fp32")
    assert snapshot_dtype(fp16) == "fp16"
    assert snapshot_dtype(fp32) == "fp32"
    # the id is byte 5: six bytes are enough, five are not (None, not an IndexError)
    assert snapshot_dtype(fp16[:6]) == "fp16"
    assert snapshot_dtype(fp32[:6]) == "fp32"
    for n in range(6):
        assert snapshot_dtype(fp16[:n]) is None
    for unknown in (0, 3, 255):
        assert snapshot_dtype(fp16[:5] + bytes([unknown]) + fp16[6:]) is None


def test_a_snapshot_that_is_its_header_alone_fails_at_the_zstd_magic() -> None:
    # A 56-byte snapshot declaring a 0-byte payload holds its whole header and has the length
    # it declares: the first check it fails is the zstd magic (step 16), not a truncation.
    blob = encode_snapshot(PARAMS, SPEC, "fp16")
    header = bytearray(blob[:SNAPSHOT_HEADER_LEN])
    struct.pack_into("<I", header, 20, 0)
    with pytest.raises(DecompressionError, match="does not start with the zstd magic"):
        decode_snapshot(bytes(header), SPEC)
