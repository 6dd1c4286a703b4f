"""s59q mutation hunt: `decode_many` against `decode_frame` on every header field at its edges
and on every single-bit flip of the sections, for each value coding and index coding.

The hypothesis test in test_batch.py draws a few such frames at random; here each boundary of
`_header_ok` and each check of the batch section decoders meets a frame on both of its sides,
so a batch check that lets a bad frame through (or refuses a good one it should decode
identically) shows as a difference from the single decoder.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from compression import CodecConfig, CodecError, DecodedFrame, ModelSpec, UpdateCodec
from compression._config import MAX_BLOCK, MAX_WEIGHT, MIN_BLOCK
from compression._wire import HEADER_LEN

from ._craft import OFFSETS, payload_of, with_field, with_payload

SPECS = {
    20: ModelSpec.from_shapes([("w", (4, 4)), ("b", (4,))]),
    66: ModelSpec.from_shapes([("w", (7, 9)), ("b", (3,))]),
}


def _same(a: DecodedFrame | CodecError, b: DecodedFrame | CodecError, what: str) -> None:
    if isinstance(a, CodecError):
        assert type(b) is type(a) and str(b) == str(a), what
        return
    assert isinstance(b, DecodedFrame), (what, b)
    assert b.header == a.header and b.weight == a.weight, what
    assert b.update.size == a.update.size, what
    np.testing.assert_array_equal(b.update.indices, a.update.indices, err_msg=what)
    np.testing.assert_array_equal(b.update.values, a.update.values, err_msg=what)


def _single(codec: UpdateCodec, frame: bytes) -> DecodedFrame | CodecError:
    try:
        return codec.decode_frame(frame)
    except CodecError as exc:
        return exc


def _raw(codec: UpdateCodec, frame: bytes) -> bytes:
    """The frame with its sections stored raw (flags 0), whatever the encoder chose."""
    decoded = codec.decode_frame(frame)
    h = decoded.header
    payload = payload_of(frame)
    if h.flags & 1:
        raw_len = h.index_bytes + h.scale_bytes + h.value_bytes
        payload = codec.zstd.zstd.decompress(payload, raw_len)
    return with_payload(frame, payload, flags=0)


def _field_variants(frame: bytes, d: int) -> list[tuple[str, bytes]]:
    """The frame with each header field set to values on both sides of its bounds."""
    out: list[tuple[str, bytes]] = []

    def get(name: str) -> int:
        off, fmt = OFFSETS[name]
        return int.from_bytes(frame[off : off + {"B": 1, "H": 2, "I": 4}[fmt]], "little")

    top = d.bit_length()
    ints: dict[str, list[int]] = {
        "version": [0, 2],
        "flags": [1, 2, 0x80, 0x81],
        "header_len": [HEADER_LEN - 1, HEADER_LEN + 1],
        "d": [d - 1, d + 1],
        "k": [0, 1, d - 1, d, d + 1],
        "bits": [0, 1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 33],
        "index_id": [0, 1, 2, 3, 4],
        "index_param": [0, 1, 2, top - 2, top - 1, top, top + 1],
        "reserved": [1, 128],
        "block": [0, 1, MIN_BLOCK - 1, MIN_BLOCK, MIN_BLOCK + 1, MAX_BLOCK, MAX_BLOCK + 1],
    }
    for name in ("k", "index_param", "block", "index_bytes", "scale_bytes", "value_bytes"):
        v = get(name)
        ints.setdefault(name, []).extend([v - 1, v + 1, 0])
    ints["payload_bytes"] = [get("payload_bytes") - 1, get("payload_bytes") + 1]
    for name, values in ints.items():
        top_v = {"B": 255, "H": 65535, "I": 2**32 - 1}[OFFSETS[name][1]]
        for v in sorted(set(values)):
            if 0 <= v <= top_v:
                out.append((f"{name}={v}", with_field(frame, name, v)))
    for w in (
        -0.0,
        0.0,
        -5e-324,
        5e-324,
        MAX_WEIGHT,
        math.nextafter(MAX_WEIGHT, math.inf),
        -1.0,
        math.inf,
        math.nan,
    ):
        out.append((f"weight={w!r}", with_field(frame, "weight", w)))
    # The frame's length against its payload_bytes.
    out.append(("cut", frame[:-1]))
    out.append(("append", frame + b"\0"))
    out.append(("bad crc", frame[:-1] + bytes([frame[-1] ^ 1])))
    return out


def _flip_variants(frame: bytes) -> list[tuple[str, bytes]]:
    """The frame with each single bit of its payload flipped (CRC fixed)."""
    out = []
    body = bytearray(frame[:-4])
    for pos in range(HEADER_LEN, len(body)):
        for bit in range(8):
            body[pos] ^= 1 << bit
            b = bytes(body)
            out.append((f"flip {pos}.{bit}", b + zlib.crc32(b).to_bytes(4, "little")))
            body[pos] ^= 1 << bit
    return out


CASES = [
    (d, bits, index, topk)
    for d in (20, 66)
    for bits in (1, 2, 4, 8, 16, 32)
    for index, topk in (("bitmap", 0.3), ("rice", 0.1), ("ef", 0.1), ("auto", 1.0))
]


@pytest.mark.parametrize(("d", "bits", "index", "topk"), CASES)
def test_decode_many_equals_decode_frame_at_every_edge(
    d: int, bits: int, index: str, topk: float
) -> None:
    spec = SPECS[d]
    codec = UpdateCodec(spec, CodecConfig(topk=topk, bits=bits, block=8, index=index))
    rng = np.random.default_rng(d * 1000 + bits)
    u = (rng.standard_normal((3, d)) * 0.01).astype(np.float32)
    u[2] = -np.abs(u[2])  # every value negative: the 1-bit hi = lo, magnitudes in order
    frames = [codec.encode(u[i], np.random.default_rng(i), float(i))[0] for i in range(u.shape[0])]
    raws = [_raw(codec, f) for f in frames]
    variants: list[tuple[str, bytes]] = [("as encoded", f) for f in frames]
    variants += [("raw", f) for f in raws]
    for f in raws:
        variants += _field_variants(f, d)
    variants += _flip_variants(raws[0])

    # The valid frames between the bad ones: the batch decodes them in the same groups.
    frames_in = [f for _, f in variants]
    got = codec.decode_many(frames_in)

    assert len(got) == len(frames_in)
    for (what, f), g in zip(variants, got, strict=True):
        _same(_single(codec, f), g, what)
    assert all(isinstance(g, DecodedFrame) for g in got[: 2 * len(frames)])


def _zstd_raw_then_rle(raw_len: int, rle_len: int, byte: int) -> bytes:
    """A zstd frame (content size declared, 4 bytes) of one raw block of `raw_len` copies of
    `byte`, then one RLE block of `rle_len` more: 17 + raw_len bytes for raw_len + rle_len."""
    head = b"\x28\xb5\x2f\xfd" + bytes([0x80, (17 - 10) << 3])
    head += (raw_len + rle_len).to_bytes(4, "little")
    raw_block = ((raw_len << 3) | 0).to_bytes(3, "little") + bytes([byte]) * raw_len
    rle_block = ((rle_len << 3) | (1 << 1) | 1).to_bytes(3, "little") + bytes([byte])
    return head + raw_block + rle_block


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_a_zstd_payload_not_shorter_than_its_sections_is_refused_by_both(extra: int) -> None:
    # fp32, every coordinate sent (no index): 80 bytes of sections, every value 0x3f3f3f3f.
    # A sound zstd frame of them is made 79, 80 or 81 bytes long: only the 79-byte one is
    # legal ("zstd only when strictly shorter", docs/wire-format.md); the batch decoder must
    # refuse the others exactly as the single one, not inflate and accept them.
    spec = SPECS[20]
    codec = UpdateCodec(spec, CodecConfig(topk=1.0, bits=32))
    good = codec.encode(np.ones(20, np.float32), np.random.default_rng(0), 1.0)[0]
    raw = _raw(codec, good)
    assert len(payload_of(raw)) == 80
    packed = _zstd_raw_then_rle(63 + extra, 17 - extra, 0x3F)
    assert len(packed) == 80 + extra
    assert codec.zstd.zstd.decompress(packed, 80) == b"\x3f" * 80
    frame = with_payload(raw, packed, flags=1)
    single = _single(codec, frame)
    if extra < 0:
        assert isinstance(single, DecodedFrame)
    else:
        assert isinstance(single, CodecError)
        assert "is not smaller than its 80 raw bytes" in str(single)
    got = codec.decode_many([frame, raw, frame])
    _same(single, got[0], f"extra={extra}")
    _same(codec.decode_frame(raw), got[1], "raw")
    _same(single, got[2], f"extra={extra}")


def _resized(frame: bytes, section: int, new_len: int) -> bytes:
    """The raw frame with section 0/1/2 (index/scale/value) cut or zero-extended to `new_len`
    bytes, its size field and payload_bytes set to match (CRC fixed): a consistent header."""
    names = ("index_bytes", "scale_bytes", "value_bytes")
    sizes = [int.from_bytes(frame[OFFSETS[n][0] : OFFSETS[n][0] + 4], "little") for n in names]
    payload = payload_of(frame)
    start = sum(sizes[:section])
    old = payload[start : start + sizes[section]]
    new = (old + bytes(max(new_len - len(old), 0)))[:new_len]
    out = with_payload(frame, payload[:start] + new + payload[start + sizes[section] :], flags=0)
    return with_field(out, names[section], new_len)


@pytest.mark.parametrize(
    ("bits", "index"), [(16, "bitmap"), (32, "bitmap"), (16, "ef"), (32, "rice")]
)
def test_decode_many_refuses_a_float_section_sized_for_the_other_float(
    bits: int, index: str
) -> None:
    # An fp32 frame whose value section is 2k bytes, an fp16 one with 4k (headers otherwise
    # consistent): decode_frame refuses both; so must the batch's header check.
    spec = SPECS[20]
    codec = UpdateCodec(spec, CodecConfig(topk=0.3, bits=bits, index=index))
    u = (np.random.default_rng(3).standard_normal((2, 20)) * 0.01).astype(np.float32)
    frames = [_raw(codec, codec.encode(u[i], np.random.default_rng(i), 1.0)[0]) for i in range(2)]
    k = codec.decode_frame(frames[0]).header.nnz
    variants = [("good", f) for f in frames]
    for f in frames:
        for section in (0, 1, 2):
            size = int.from_bytes(f[40 + 4 * section : 44 + 4 * section], "little")
            for new_len in {0, size - 1, size + 1, 2 * k, 4 * k, 8 * k} - {size}:
                if new_len >= 0:
                    variants.append(
                        (f"section {section} -> {new_len}", _resized(f, section, new_len))
                    )
    got = codec.decode_many([f for _, f in variants])
    for (what, f), g in zip(variants, got, strict=True):
        _same(_single(codec, f), g, what)


def test_decode_many_refuses_a_bitmap_section_one_byte_short() -> None:
    # d = 20: the bitmap is 3 bytes. Here it is 2 (header and payload consistent), and the
    # first value byte after it would complete a bitmap of k = 4 ones (3 in the first byte,
    # 1 in the low nibble of the value byte): decode_frame refuses the index section's size,
    # and the batch must not read the bitmap on into the values.
    spec = SPECS[20]
    codec = UpdateCodec(spec, CodecConfig(topk=0.2, bits=32, index="bitmap"))
    u = np.zeros(20, np.float32)
    u[[0, 1, 2, 16]] = [1.0, 2.0, 3.0, 4.0]
    frame = _raw(codec, codec.encode(u, np.random.default_rng(0), 1.0)[0])
    h = codec.decode_frame(frame).header
    assert (h.nnz, h.index_coding, h.index_bytes) == (4, "bitmap", 3)
    values = bytearray(payload_of(frame)[3:])
    values[0] = 0x01  # the low mantissa byte of the first value: still finite
    short = with_field(
        with_payload(frame, bytes([0b111, 0]) + bytes(values), flags=0), "index_bytes", 2
    )
    assert isinstance(_single(codec, short), CodecError)
    got = codec.decode_many([short, frame, short])
    for f, g in zip([short, frame, short], got, strict=True):
        _same(_single(codec, f), g, "short bitmap")
