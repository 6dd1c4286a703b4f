"""Statements of docs/wire-format.md that a port relies on, checked against the encoder (a
reviewer's independent implementation from the doc found them stated wrongly or not at all):
the fingerprint's strings are UTF-8; coding 0 (all) whenever k == d, whatever `index` says; the
1-bit bound is max v - min v, not hi - lo; `roundtrip` returns three values."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from compression import CodecConfig, ModelSpec, UpdateCodec


def test_the_fingerprint_hashes_names_as_utf8() -> None:
    # Prepare: the doc's formula, by hand
    text = "plume-spec-v1\0float32\0" + "é\0" + "2,3\0"
    expected = hashlib.sha256(text.encode("utf-8")).digest()[:8]
    # Assert
    assert ModelSpec.from_shapes([("é", (2, 3))]).fingerprint == expected


@pytest.mark.parametrize("index", ["auto", "rice", "bitmap", "ef"])
def test_a_topk_that_keeps_every_coordinate_uses_coding_0(index: str) -> None:
    # Prepare: topk 0.9 of d = 4 rounds to k = 4
    codec = UpdateCodec(
        ModelSpec.from_shapes([("w", (4,))]), CodecConfig(topk=0.9, bits=4, index=index)
    )
    # Execute
    frame, decoded, _ = codec.roundtrip(
        np.array([1, -2, 3, -4], np.float32), np.random.default_rng(0)
    )
    # Assert: k = d = 4 at offset 20, index_id 0 at offset 25
    assert int.from_bytes(frame[20:24], "little") == 4
    assert frame[25] == 0 and frame[26] == 0


def test_one_bit_error_is_bounded_by_the_block_span_not_hi_minus_lo() -> None:
    # Prepare
    codec = UpdateCodec(
        ModelSpec.from_shapes([("w", (8,))]), CodecConfig(topk=1.0, bits=1, block=8)
    )
    v = np.array([1, 3, 1, 3, 1, 3, 1, 3], np.float32)
    # Execute
    result = codec.roundtrip(v, np.random.default_rng(0))
    # Assert: three values; lo = hi = 2, so every element is off by 1 = (max - min) / 2
    assert len(result) == 3
    decoded = result[1]
    assert np.array_equal(decoded, np.full(8, 2.0, np.float32))
    assert np.max(np.abs(decoded - v)) <= v.max() - v.min()
