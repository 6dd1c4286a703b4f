"""The fast bit-unpacking paths (1/2/4-bit fields, set-bit positions) against a plain reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression._bits import pack_fixed, unpack_positions, unpack_small
from compression._errors import MalformedSection


def _reference_fields(raw: bytes, count: int, width: int) -> list[int]:
    bits = [(b >> i) & 1 for b in raw for i in range(8)]  # little-endian bit order
    return [sum(bits[f * width + j] << j for j in range(width)) for f in range(count)]


@settings(max_examples=60, deadline=None)
@given(
    width=st.sampled_from([1, 2, 4]),
    values=st.lists(st.integers(0, 255), min_size=1, max_size=300),
)
def test_unpack_small_matches_reference(width: int, values: list[int]) -> None:
    # Prepare
    fields = np.array(values, dtype=np.uint8) & np.uint8((1 << width) - 1)
    packed = pack_fixed(fields, width)
    # Execute
    out = unpack_small(packed, len(values), width, "test")
    # Assert
    assert out.dtype == np.uint8
    assert out.tolist() == fields.tolist() == _reference_fields(packed, len(values), width)


@pytest.mark.parametrize("width", [1, 2, 4])
def test_unpack_small_rejects_padding_bits(width: int) -> None:
    # Prepare: one field, so every other bit of the single byte is padding
    packed = bytes([1 << width])
    # Execute / Assert
    with pytest.raises(MalformedSection, match="padding"):
        unpack_small(packed, 1, width, "test")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 255), min_size=1, max_size=200).filter(lambda v: v[-1] != 0))
def test_unpack_positions_matches_reference(values: list[int]) -> None:
    # Prepare
    raw = bytes(values)
    expected = [8 * n + j for n, b in enumerate(raw) for j in range(8) if (b >> j) & 1]
    # Execute
    pos = unpack_positions(raw, len(expected), "test")
    # Assert
    assert pos.dtype == np.int64
    assert pos.tolist() == expected


def test_unpack_positions_rejects_wrong_count() -> None:
    # Prepare / Execute / Assert
    with pytest.raises(MalformedSection, match="terminator bits"):
        unpack_positions(bytes([0b1011]), 2, "test")
