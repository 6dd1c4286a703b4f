"""compression/_wire.py and compression/_quant.py pinned where a mutant got through (helper
s67a's mutation pass).

Each test fails against a mutant of one of the two files that the rest of tests/compression
let through, and passes on main. Frames and residuals are built here with struct.pack from
docs/wire-format.md's tables (not by the encoder), and the figures they are checked against
are derived by hand in the comments. Mutants run in a private copy of the tree against
tests/compression; 134 mutants, 22 survivors killed here, 4 equivalent (listed in s67a's
report: a u32 read as signed where only a > 2 GiB frame differs, `max(block, 1)` as
`block or 1`, the step divided in float64 then rounded to float32, a no-op slice).
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib

import numpy as np
import pytest

from compression import (
    ChecksumMismatch,
    CodecConfig,
    ErrorFeedback,
    MalformedHeader,
    MalformedSection,
    ModelSpec,
    NonFiniteValues,
    SizeLimitExceeded,
    SpecMismatch,
    TruncatedFrame,
    UpdateCodec,
)
from compression._quant import VALUE_CODINGS

# One tensor "w" of 16 scalars.
SPEC = ModelSpec.from_shapes([("w", (16,))])
D = 16
# docs/wire-format.md, conventions: SHA-256("plume-spec-v1\0float32\0" + "w\0" + "16\0")[:8].
FINGERPRINT = hashlib.sha256(b"plume-spec-v1\x00float32\x00w\x0016\x00").digest()[:8]
# Section 1.1, in field order; 56 bytes.
HEADER = "<4sBBH8sIIBBBBIdIIII"
# The decoder reads everything from the frame; the config only matters to the encoder.
CODEC = UpdateCodec(SPEC, CodecConfig.dense())


def _seal(body: bytes) -> bytes:
    """`body` and its CRC-32 (zlib's, little-endian): section 1.1's last four bytes."""
    return body + struct.pack("<I", zlib.crc32(body))


def _frame(
    *,
    d: int = D,
    k: int = D,
    bits: int = 32,
    index_id: int = 0,
    param: int = 0,
    block: int = 0,
    weight: float = 1.0,
    sections: tuple[bytes, bytes, bytes] | None = None,
    flags: int = 0,
    fingerprint: bytes = FINGERPRINT,
    tail: bytes = b"",
) -> bytes:
    """A raw-payload v1 update frame from section 1.1's table: a dense fp32 frame of the values
    0.0, 1.0, ..., 15.0 unless told otherwise. `tail` is stored after the sections (counted in
    payload_bytes, in no section)."""
    if sections is None:
        sections = (b"", b"", struct.pack(f"<{D}f", *range(D)))
    index, scales, values = sections
    payload = index + scales + values + tail
    header = struct.pack(
        HEADER, b"PLMU", 1, flags, 56, fingerprint, d, k, bits, index_id, param, 0, block,
        weight, len(index), len(scales), len(values), len(payload),
    )  # fmt: skip
    return _seal(header + payload)


def test_the_hand_built_frame_decodes() -> None:
    # The builder itself: the dense fp32 frame of 0..15 is what the decoder reads.
    got = CODEC.decode_frame(_frame())
    assert got.update.to_dense().tolist() == [float(i) for i in range(D)]
    assert got.weight == 1.0


def test_a_d_above_the_i32_range_is_named_as_sent() -> None:
    # d is a u32 (1.1): 0x80000000 is 2147483648, which a signed read would name -2147483648.
    with pytest.raises(SpecMismatch, match=r"frame declares d=2147483648; the spec has 16 "):
        CODEC.decode_frame(_frame(d=1 << 31))


def test_a_frame_of_exactly_the_header_is_short_of_its_declared_total() -> None:
    # Step 7 passes (56 bytes are the whole header), step 8 refuses: the header declares
    # 56 + payload_bytes + 4 = 56 + 64 + 4 = 124 bytes.
    with pytest.raises(TruncatedFrame, match=r"^frame of 56 bytes; its header declares 124$"):
        CODEC.decode_frame(_frame()[:56])


def test_a_frame_one_byte_short_of_the_header_ends_inside_it() -> None:
    # 55 bytes: step 7, before payload_bytes (bytes 52-55) is read from three of its bytes.
    with pytest.raises(TruncatedFrame, match=r"^frame of 55 bytes ends inside the 56-byte header$"):
        CODEC.decode_frame(_frame()[:55])


def test_a_checksum_mismatch_names_the_stored_and_the_computed_crc() -> None:
    good = _frame()
    body = good[:-4]
    crc = zlib.crc32(body)
    bad = body + struct.pack("<I", 0x01020304)
    with pytest.raises(ChecksumMismatch, match=rf"^CRC-32 01020304 stored, {crc:08x} computed$"):
        CODEC.decode_frame(bad)


def test_a_residual_read_through_a_memoryview_of_wider_items() -> None:
    # Section 3's example, [0.25, -1.0], from its table: magic, version 1, flags 0,
    # header_len 16, d = 2, the CRC-32 of the values, then the values.
    values = struct.pack("<2f", 0.25, -1.0)
    blob = struct.pack("<4sBBHII", b"PLMR", 1, 0, 16, 2, zlib.crc32(values)) + values
    assert blob.hex() == "504c4d52010010000200000000fbde050000803e000080bf"
    # A contiguous memoryview is accepted whatever its item size: its bytes are what count.
    view = memoryview(blob).cast("I")
    # (from_bytes is annotated `bytes`; section 3 accepts any contiguous memoryview.)
    restored = ErrorFeedback.from_bytes(view, 2)
    assert restored.residual.tolist() == [0.25, -1.0]


@pytest.mark.parametrize("bits", [16, 32])
def test_an_unquantized_frame_with_a_block_of_one_is_malformed(bits: int) -> None:
    # Step 13: block is 0 when bits is 16 or 32, so 1 is refused as any other non-zero block.
    values = struct.pack(f"<{D}e", *range(D)) if bits == 16 else struct.pack(f"<{D}f", *range(D))
    frame = _frame(bits=bits, block=1, sections=(b"", b"", values))
    with pytest.raises(
        MalformedHeader, match=rf"^block=1 with unquantized bits={bits}; must be 0$"
    ):
        CODEC.decode_frame(frame)
    # The same frame with block 0 decodes: the block alone is what step 13 refuses.
    assert CODEC.decode_frame(_frame(bits=bits, sections=(b"", b"", values))).update.nnz == D


def _four_bit_frame(scales: list[float], codes: bytes = bytes(8)) -> bytes:
    """A dense (index 'all') 4-bit frame of two blocks of 8, scales (lo, hi) per block."""
    sections = (b"", struct.pack(f"<{len(scales)}f", *scales), codes)
    return _frame(bits=4, block=8, sections=sections)


def test_lo_above_hi_is_named_by_its_block() -> None:
    # Block 0 has lo == hi (legal), block 1 has lo = 2 > hi = 1.
    with pytest.raises(MalformedSection, match=r"^block 1 has lo > hi$"):
        CODEC.decode_frame(_four_bit_frame([1.0, 1.0, 2.0, 1.0]))


def test_negative_zero_is_sent_with_its_sign_bit() -> None:
    # 1.4: s = 1 for a value with its sign bit set. Block [-0.0, 1.0 x 7]: lo = 0, hi = 1,
    # x = 0 for -0.0, so j = floor(0 + U) = 0 and its code is (0 << 1) | 1 = 1, the low nibble
    # of the first value byte; it decodes to -(0 + 0 * step) = -0.0.
    values = np.array([-0.0] + [1.0] * 7, dtype=np.float32)
    coding = VALUE_CODINGS[4]
    scales, codes = coding.encode(values, 8, np.random.default_rng(0))
    assert struct.unpack("<2f", scales) == (0.0, 1.0)
    assert codes[0] & 0x0F == 1
    decoded = coding.decode(scales, codes, 8, 8)
    assert decoded[0] == 0.0 and np.signbit(decoded[0])


def _patched(frame: bytes, offset: int, fmt: str, value: int) -> bytes:
    """`frame` with the header field at `offset` (section 1.1's table) rewritten, CRC redone."""
    body = bytearray(frame[:-4])
    struct.pack_into("<" + fmt, body, offset, value)
    return _seal(bytes(body))


# Frames refused by one check each, and the refusal's exact text: the values it names are the
# ones in the frame (and the spec's d = 16, the default cap 4 * 16 + 2 + 1024 = 1090 bytes).
_REFUSALS = {
    "header_len": (_patched(_frame(), 6, "H", 57), MalformedHeader,
                   "v1 header is 56 bytes, frame declares 57"),
    # Step 11: the fingerprint, then d; a frame wrong in both is refused for its fingerprint.
    "spec": (_frame(fingerprint=bytes(8), d=17), SpecMismatch,
             f"frame is for spec 0000000000000000, this decoder has {FINGERPRINT.hex()}"),
    # k = 17 > d and bits = 3 (not a coding): step 12 comes before step 13.
    "k above d": (_patched(_patched(_frame(), 20, "I", 17), 24, "B", 3), SizeLimitExceeded,
                  "frame declares k=17 values, above the model's d=16"),
    # Three blocks of scales for two blocks of values, the payload consistent with them.
    "scale bytes": (_four_bit_frame([0.0, 1.0] * 3), MalformedHeader,
                    "scale section of 24 bytes; k=16, block=8 needs 16"),
    # A bitmap of d = 16 bits is 2 bytes: one byte is below the coding's length (1.3), the
    # payload consistent with it.
    "index bytes": (
        _frame(k=2, index_id=1, sections=(b"\x03", b"", struct.pack("<2f", 1.0, 2.0))),
        MalformedHeader,
        "bitmap index section of 1 bytes; k=2, d=16 allow [2, 2]",
    ),
    # 17 fp32 values for k = 16, the payload consistent with them: only step 14 refuses.
    "value bytes": (_frame(sections=(b"", b"", bytes(68))), MalformedHeader,
                    "value section of 68 bytes; k=16, bits=32 needs 64"),
    "raw payload": (_frame(tail=bytes(4)), MalformedHeader,
                    "raw payload of 68 bytes; the sections total 64"),
    "cap": (_frame() + bytes(1090 - 124 + 1), SizeLimitExceeded,
            "frame of 1091 bytes above the cap of 1090"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(_REFUSALS))
def test_a_refusal_names_the_values_the_frame_holds(case: str) -> None:
    frame, error, text = _REFUSALS[case]
    with pytest.raises(error, match=f"^{re.escape(text)}$"):
        CODEC.decode_frame(frame)


def test_step_23_checks_the_scales_before_the_codes() -> None:
    # k = 7 codes of 4 bits in 4 bytes: the last nibble is padding, here 0xF (not zero). A
    # non-finite scale is found first (docs/wire-format.md 1.5, step 23's order), before the
    # k codes are unpacked.
    codes = b"\x00\x00\x00\xf0"
    nan_scale = struct.pack("<2f", 0.0, float("nan"))
    with pytest.raises(NonFiniteValues, match="^non-finite scale in block 0$"):
        VALUE_CODINGS[4].decode(nan_scale, codes, 7, 8)
