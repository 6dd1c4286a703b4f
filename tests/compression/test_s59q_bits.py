"""s59q mutation hunt: `compression._bits` contracts the codec's own callers never break.

The decoders slice each section to its exact length before unpacking, so the length check and
the width bound of `unpack_fixed` were never reached by a frame; they are its documented
contract (exact length, zero padding: one encoding per value), pinned here directly.
"""

from __future__ import annotations

import numpy as np
import pytest

from compression._bits import pack_fixed, packed_len, unpack_fixed, unpack_positions, unpack_small
from compression._errors import MalformedSection


def _reference_fields(raw: bytes, count: int, width: int) -> list[int]:
    bits = [(b >> i) & 1 for b in raw for i in range(8)]  # little-endian bit order
    return [sum(bits[f * width + j] << j for j in range(width)) for f in range(count)]


@pytest.mark.parametrize("width", [1, 3, 7, 8, 9, 12, 17, 31, 33, 56])
@pytest.mark.parametrize("count", [1, 2, 7, 8, 9, 17])
def test_unpack_fixed_inverts_pack_fixed(width: int, count: int) -> None:
    # Values using every bit of the width (the top one too), a different one per field.
    rng = np.random.default_rng(width * 100 + count)
    vals = rng.integers(0, 1 << width, size=count, dtype=np.int64)
    vals[0] = (1 << width) - 1
    packed = pack_fixed(vals, width)
    assert len(packed) == packed_len(count, width) == (count * width + 7) // 8
    assert _reference_fields(packed, count, width) == vals.tolist()
    out = unpack_fixed(packed, count, width, "test")
    assert out.dtype == np.int64
    assert out.tolist() == vals.tolist()


@pytest.mark.parametrize("width", [1, 2, 4, 8, 3, 12, 56])
def test_unpack_fixed_refuses_a_buffer_of_the_wrong_length(width: int) -> None:
    count = 5
    good = pack_fixed(np.ones(count, dtype=np.int64), width)
    for buf in (good[:-1], good + b"\0"):
        with pytest.raises(
            MalformedSection,
            match=rf"^test: {len(buf)} bytes for {count} fields of {width} bits "
            rf"\(needs {len(good)}\)$",
        ):
            unpack_fixed(buf, count, width, "test")


def test_unpack_small_refuses_a_buffer_of_the_wrong_length_even_for_no_fields() -> None:
    with pytest.raises(MalformedSection, match=r"1 bytes for 0 fields of 4 bits"):
        unpack_small(b"\0", 0, 4, "test")
    with pytest.raises(MalformedSection, match=r"1 bytes for 3 fields of 0 bits"):
        unpack_small(b"\0", 3, 0, "test")


@pytest.mark.parametrize("width", [57, 64])
def test_unpack_fixed_refuses_a_width_above_56(width: int) -> None:
    buf = bytes(packed_len(2, width))
    with pytest.raises(ValueError, match=rf"^field width {width} outside 1..56$"):
        unpack_fixed(buf, 2, width, "test")


def test_unpack_fixed_accepts_56_bit_fields() -> None:
    vals = np.array([(1 << 56) - 1, 1, 1 << 55], dtype=np.int64)
    assert unpack_fixed(pack_fixed(vals, 56), 3, 56, "test").tolist() == vals.tolist()


@pytest.mark.parametrize(("width", "count"), [(3, 1), (3, 7), (5, 3), (12, 1), (12, 3), (33, 1)])
def test_unpack_fixed_refuses_non_zero_padding_of_wide_fields(width: int, count: int) -> None:
    # Each bit after the last field, alone: each must be refused (one encoding per value).
    good = pack_fixed(np.zeros(count, dtype=np.int64), width)
    total = count * width
    assert total % 8  # there is padding
    for bit in range(total, 8 * len(good)):
        buf = bytearray(good)
        buf[bit // 8] |= 1 << (bit % 8)
        with pytest.raises(MalformedSection, match=r"^test: non-zero padding bits after"):
            unpack_fixed(bytes(buf), count, width, "test")
    # The last field's own top bit is not padding.
    buf = bytearray(good)
    buf[(total - 1) // 8] |= 1 << ((total - 1) % 8)
    assert unpack_fixed(bytes(buf), count, width, "test")[-1] == 1 << (width - 1)


def test_unpack_fixed_with_no_fields() -> None:
    assert unpack_fixed(b"", 0, 12, "test").tolist() == []
    assert unpack_fixed(b"", 0, 4, "test").tolist() == []
    assert pack_fixed(np.zeros(0, dtype=np.int64), 12) == b""
    assert pack_fixed(np.ones(3, dtype=np.int64), 0) == b""


def test_unpack_positions_refuses_bytes_for_zero_entries() -> None:
    assert unpack_positions(b"", 0, "test").tolist() == []
    with pytest.raises(MalformedSection, match=r"^test: 1 bytes for zero entries$"):
        unpack_positions(b"\1", 0, "test")


@pytest.mark.parametrize("buf", [b"", b"\0", b"\1\0", b"\x80\0"])
def test_unpack_positions_refuses_a_stream_not_ending_in_its_last_one(buf: bytes) -> None:
    with pytest.raises(MalformedSection, match=r"must end in the byte holding its last one"):
        unpack_positions(buf, 1, "test")


def test_unpack_positions_reads_the_top_bit_of_the_last_byte() -> None:
    assert unpack_positions(b"\x81\x80", 3, "test").tolist() == [0, 7, 15]
    with pytest.raises(MalformedSection, match=r"^test: 3 terminator bits, expected 2$"):
        unpack_positions(b"\x81\x80", 2, "test")
