"""Helpers that build hostile frames: header rewrites with a fresh CRC, hand-made zstd frames."""

from __future__ import annotations

import struct
import zlib

from compression._wire import HEADER_LEN

# Byte offsets of the v1 header fields (docs/wire-format.md).
OFFSETS = {
    "magic": (0, "4s"),
    "version": (4, "B"),
    "flags": (5, "B"),
    "header_len": (6, "H"),
    "fingerprint": (8, "8s"),
    "d": (16, "I"),
    "k": (20, "I"),
    "bits": (24, "B"),
    "index_id": (25, "B"),
    "index_param": (26, "B"),
    "reserved": (27, "B"),
    "block": (28, "I"),
    "weight": (32, "d"),
    "index_bytes": (40, "I"),
    "scale_bytes": (44, "I"),
    "value_bytes": (48, "I"),
    "payload_bytes": (52, "I"),
}


def reseal(body: bytes) -> bytes:
    """`body` (a frame without its CRC) plus a correct CRC-32."""
    return body + zlib.crc32(body).to_bytes(4, "little")


def unseal(frame: bytes) -> bytes:
    return frame[:-4]


def with_field(frame: bytes, name: str, value: object) -> bytes:
    """The frame with one header field rewritten and the CRC fixed."""
    off, fmt = OFFSETS[name]
    body = bytearray(unseal(frame))
    struct.pack_into("<" + fmt, body, off, value)
    return reseal(bytes(body))


def with_payload(frame: bytes, payload: bytes, flags: int | None = None) -> bytes:
    """The frame with its payload replaced (payload_bytes and CRC updated)."""
    head = bytearray(frame[:HEADER_LEN])
    struct.pack_into("<I", head, 52, len(payload))
    if flags is not None:
        head[5] = flags
    return reseal(bytes(head) + payload)


def payload_of(frame: bytes) -> bytes:
    return frame[HEADER_LEN:-4]


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def zstd_rle_frame(
    blocks: list[tuple[int, int]],
    declared: int | None,
    window_log: int = 17,
) -> bytes:
    """A zstd frame of RLE blocks `(byte, length)`, declaring `declared` content bytes (or none).

    Never single-segment, so the window descriptor is always present: window 2**window_log.
    """
    if declared is None:
        fhd, fcs = 0x00, b""
    elif declared < 1 << 32:
        fhd, fcs = 0x80, declared.to_bytes(4, "little")
    else:
        fhd, fcs = 0xC0, declared.to_bytes(8, "little")
    out = bytearray(ZSTD_MAGIC + bytes([fhd, (window_log - 10) << 3]) + fcs)
    for i, (byte, length) in enumerate(blocks):
        last = 1 if i == len(blocks) - 1 else 0
        out += ((length << 3) | (1 << 1) | last).to_bytes(3, "little") + bytes([byte])
    return bytes(out)


def make_frame(
    spec_fingerprint: bytes,
    d: int,
    k: int,
    bits: int,
    index_id: int,
    index_param: int,
    block: int,
    sections: tuple[bytes, bytes, bytes],
    weight: float = 1.0,
) -> bytes:
    """A raw-payload v1 frame from hand-made (index, scale, value) sections, CRC included."""
    index, scales, values = sections
    payload = index + scales + values
    head = struct.pack(
        "<4sBBH8sIIBBBBIdIIII",
        b"PLMU", 1, 0, HEADER_LEN, spec_fingerprint, d, k, bits, index_id, index_param, 0,
        block, weight, len(index), len(scales), len(values), len(payload),
    )  # fmt: skip
    return reseal(head + payload)
