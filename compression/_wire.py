"""Wire format v1 of an update frame: constants, header layout and header checks (see docs)."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ._config import MAX_BLOCK, MAX_WEIGHT, MIN_BLOCK, QUANTIZED_BITS, VALID_BITS, DecodeLimits
from ._errors import (
    BadMagic,
    ChecksumMismatch,
    HeaderTooLarge,
    MalformedHeader,
    SizeLimitExceeded,
    SpecMismatch,
    TrailingBytes,
    TruncatedFrame,
    UnsupportedVersion,
)
from ._index import INDEX_CODINGS
from ._quant import VALUE_CODINGS
from ._spec import ModelSpec

__all__ = [
    "UPDATE_MAGIC",
    "SNAPSHOT_MAGIC",
    "RESIDUAL_MAGIC",
    "WIRE_VERSION",
    "HEADER_LEN",
    "CRC_LEN",
    "FLAG_ZSTD",
    "FrameHeader",
    "byte_view",
    "check_frame_fits",
    "check_size",
    "check_u32",
    "pack_header",
    "parse_header",
]

UPDATE_MAGIC = b"PLMU"
SNAPSHOT_MAGIC = b"PLMS"
RESIDUAL_MAGIC = b"PLMR"
WIRE_VERSION = 1
FLAG_ZSTD = 0x01
CRC_LEN = 4

# magic, version, flags, header_len | fingerprint | d, k | bits, index, index_param, reserved |
# block | weight | index, scale, value, payload bytes
_HEADER = struct.Struct("<4sBBH8sIIBBBBIdIIII")
HEADER_LEN = _HEADER.size  # 56
_PREFIX = struct.Struct("<4sBBH")


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """The decoded v1 header. Sizes in bytes; `payload_bytes` is what is stored (zstd or raw)."""

    version: int
    flags: int
    fingerprint: bytes
    size: int
    nnz: int
    bits: int
    index_coding: str
    index_param: int
    block: int
    weight: float
    index_bytes: int
    scale_bytes: int
    value_bytes: int
    payload_bytes: int

    @property
    def compressed(self) -> bool:
        """Whether the payload is one zstd frame (else the raw sections)."""
        return bool(self.flags & FLAG_ZSTD)

    @property
    def raw_bytes(self) -> int:
        """Sections total before zstd."""
        return self.index_bytes + self.scale_bytes + self.value_bytes

    @property
    def frame_bytes(self) -> int:
        return HEADER_LEN + self.payload_bytes + CRC_LEN


def check_u32(value: int, what: str) -> int:
    """`value` if it fits a u32 length field, else a ValueError (struct.error is no ValueError).

    ModelSpec allows up to 2**31 scalars, so a dense fp32 section (4 bytes each) can pass
    the 4 GiB that a v1 length field holds."""
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(
            f"{what} of {value} bytes does not fit a v1 u32 length field (4 GiB); send fewer "
            "bits or coordinates"
        )
    return value


def pack_header(h: FrameHeader, index_id: int) -> bytes:
    for what, value in (
        ("index section", h.index_bytes),
        ("scale section", h.scale_bytes),
        ("value section", h.value_bytes),
        ("payload", h.payload_bytes),
    ):
        check_u32(value, what)
    return _HEADER.pack(
        UPDATE_MAGIC,
        h.version,
        h.flags,
        HEADER_LEN,
        h.fingerprint,
        h.size,
        h.nnz,
        h.bits,
        index_id,
        h.index_param,
        0,
        h.block,
        h.weight,
        h.index_bytes,
        h.scale_bytes,
        h.value_bytes,
        h.payload_bytes,
    )


def byte_view(data: object, what: str) -> memoryview:
    """`data` (bytes, bytearray or a contiguous memoryview) as a flat byte view, not a copy.

    Decoders check the length of this view against their cap before copying anything: a 4 GB
    bytearray is refused without a second 4 GB, and an int is a TypeError, not `bytes(n)`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, got {type(data).__name__}")
    view = memoryview(data)
    if not view.c_contiguous:
        # cast() would raise Python's own TypeError, which names neither the input nor the fix.
        raise TypeError(
            f"{what} must be bytes, a bytearray or a contiguous memoryview; got a non-contiguous "
            "memoryview (copy it with bytes(view))"
        )
    return view.cast("B")


def check_frame_fits(payload_bytes: int, cap: int) -> None:
    """The encoders' refusal (ValueError) of a frame of `payload_bytes` stored payload bytes
    that is longer than `cap` (the codec's `DecodeLimits.frame_cap`), which step 1 of the
    decoder with those limits refuses: called before the frame is assembled, so nothing is
    written and no error-feedback residual changes."""
    total = HEADER_LEN + payload_bytes + CRC_LEN
    if total > cap:
        raise ValueError(
            f"the update frame of {total} bytes is above the cap of {cap} bytes of this codec's "
            "DecodeLimits (max_frame_bytes), which its decoder refuses: raise the cap, or send "
            "fewer coordinates or bits"
        )


def check_size(nbytes: int, cap: int, what: str) -> None:
    """Step 1 of every decoder: the whole input against its cap, before anything else."""
    if nbytes > cap:
        raise SizeLimitExceeded(f"{what} of {nbytes} bytes above the cap of {cap}")


def check_prefix(frame: bytes, magic: bytes, what: str, max_header: int) -> int:
    """Checks magic, version and the declared header length; returns the header length."""
    if len(frame) < _PREFIX.size:
        raise TruncatedFrame(
            f"{what} of {len(frame)} bytes is shorter than the {_PREFIX.size}-byte prefix"
        )
    got, version, _flags, header_len = _PREFIX.unpack_from(frame)
    if got != magic:
        others = {
            UPDATE_MAGIC: "an update frame",
            SNAPSHOT_MAGIC: "a snapshot",
            RESIDUAL_MAGIC: "a residual",
        }
        hint = f" (it is {others[got]})" if got in others else ""
        raise BadMagic(f"{what} must start with {magic!r}, got {got!r}{hint}")
    if version != WIRE_VERSION:
        raise UnsupportedVersion(
            f"{what} version {version}; this build speaks version {WIRE_VERSION}"
        )
    if header_len > max_header:
        raise HeaderTooLarge(f"{what} header declares {header_len} bytes; the cap is {max_header}")
    return int(header_len)


def parse_header(frame: bytes, spec: ModelSpec, limits: DecodeLimits) -> FrameHeader:
    """Checks the frame's envelope (lengths, CRC) and every header field against the spec and
    limits, in the order of docs/wire-format.md; allocates nothing."""
    check_size(len(frame), limits.frame_cap(spec), "frame")
    header_len = check_prefix(frame, UPDATE_MAGIC, "update frame", limits.max_header_bytes)
    if header_len != HEADER_LEN:
        raise MalformedHeader(f"v1 header is {HEADER_LEN} bytes, frame declares {header_len}")
    if len(frame) < HEADER_LEN:
        raise TruncatedFrame(
            f"frame of {len(frame)} bytes ends inside the {HEADER_LEN}-byte header"
        )
    payload_declared = int.from_bytes(frame[HEADER_LEN - 4 : HEADER_LEN], "little")
    total = HEADER_LEN + payload_declared + CRC_LEN
    if len(frame) < total:
        raise TruncatedFrame(f"frame of {len(frame)} bytes; its header declares {total}")
    if len(frame) > total:
        raise TrailingBytes(f"{len(frame) - total} bytes after the declared {total}-byte frame")
    crc = zlib.crc32(memoryview(frame)[: total - CRC_LEN])
    stored = int.from_bytes(frame[total - CRC_LEN : total], "little")
    if crc != stored:
        raise ChecksumMismatch(f"CRC-32 {stored:08x} stored, {crc:08x} computed")
    (
        _m, version, flags, _hl, fingerprint, d, k, bits, index_id, param, reserved, block,
        weight, index_bytes, scale_bytes, value_bytes, payload_bytes,
    ) = _HEADER.unpack_from(frame)  # fmt: skip
    if flags & ~FLAG_ZSTD:
        raise MalformedHeader(f"unknown flag bits 0x{flags & ~FLAG_ZSTD:02x}")
    if reserved != 0:
        raise MalformedHeader(f"reserved header byte is {reserved}, must be 0")
    if fingerprint != spec.fingerprint:
        raise SpecMismatch(
            f"frame is for spec {fingerprint.hex()}, this decoder has {spec.fingerprint.hex()}"
        )
    if d != spec.size:
        raise SpecMismatch(f"frame declares d={d}; the spec has {spec.size} scalars")
    if k > d:
        raise SizeLimitExceeded(f"frame declares k={k} values, above the model's d={d}")
    if bits not in VALID_BITS:
        raise MalformedHeader(f"bits={bits} is not one of {VALID_BITS}")
    coding = INDEX_CODINGS.get(index_id)
    if coding is None:
        raise MalformedHeader(f"unknown index coding id {index_id}")
    if not coding.param_ok(d, param):
        raise MalformedHeader(f"index coding {coding.name!r} parameter {param} invalid for d={d}")
    if index_id == 0 and k != d:
        raise MalformedHeader(f"index coding 'all' with k={k} != d={d}")
    if bits in QUANTIZED_BITS:
        if not MIN_BLOCK <= block <= MAX_BLOCK:
            raise MalformedHeader(f"block={block} outside [{MIN_BLOCK}, {MAX_BLOCK}]")
    elif block != 0:
        raise MalformedHeader(f"block={block} with unquantized bits={bits}; must be 0")
    if not (0 <= weight <= MAX_WEIGHT):  # also refuses NaN
        raise MalformedHeader(f"weight {weight!r} is not a number in [0, 2^53]")
    vc = VALUE_CODINGS[bits]
    want_scale, want_value = vc.scale_bytes(k, max(block, 1)), vc.value_bytes(k)
    if scale_bytes != want_scale:
        raise MalformedHeader(
            f"scale section of {scale_bytes} bytes; k={k}, block={block} needs {want_scale}"
        )
    if value_bytes != want_value:
        raise MalformedHeader(
            f"value section of {value_bytes} bytes; k={k}, bits={bits} needs {want_value}"
        )
    lo, hi = coding.length_bounds(k, d, param)
    if not lo <= index_bytes <= hi:
        raise MalformedHeader(
            f"{coding.name} index section of {index_bytes} bytes; k={k}, d={d} allow [{lo}, {hi}]"
        )
    raw = index_bytes + scale_bytes + value_bytes
    if not flags & FLAG_ZSTD and payload_bytes != raw:
        raise MalformedHeader(f"raw payload of {payload_bytes} bytes; the sections total {raw}")
    if flags & FLAG_ZSTD and payload_bytes >= raw:
        # The encoder keeps zstd only when it shrinks the payload, so every frame has one form.
        raise MalformedHeader(
            f"zstd payload of {payload_bytes} bytes is not smaller than its {raw} raw bytes"
        )
    return FrameHeader(
        version=version,
        flags=flags,
        fingerprint=fingerprint,
        size=d,
        nnz=k,
        bits=bits,
        index_coding=coding.name,
        index_param=param,
        block=block,
        weight=weight + 0.0,  # -0.0 (in range as a number) decodes as +0.0: one weight zero
        index_bytes=index_bytes,
        scale_bytes=scale_bytes,
        value_bytes=value_bytes,
        payload_bytes=payload_bytes,
    )
