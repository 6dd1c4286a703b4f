"""The residual file's header length is refused as the update frame's and the snapshot's are:
`MalformedHeader` for any length but its fixed one up to the 4096-byte header cap, and
`HeaderTooLarge` only above that cap (docs/wire-format.md sections 1.5 and 3)."""

from __future__ import annotations

import struct
import zlib

import pytest

from compression import (
    BadMagic,
    ChecksumMismatch,
    CodecConfig,
    DecodeLimits,
    ErrorFeedback,
    HeaderTooLarge,
    MalformedHeader,
    ModelSpec,
    NonFiniteValues,
    SpecMismatch,
    TrailingBytes,
    TruncatedFrame,
    UnsupportedVersion,
    UpdateCodec,
    decode_snapshot,
)
from compression._snapshot import SNAPSHOT_HEADER_LEN
from compression._wire import HEADER_LEN

CAP = DecodeLimits().max_header_bytes  # 4096


def _residual(header_len: int) -> bytes:
    """A residual of size 2 (zero values, CRC 0) whose header declares `header_len`."""
    return b"PLMR\x01\x00" + struct.pack("<H", header_len) + struct.pack("<II", 2, 0) + bytes(8)


@pytest.mark.parametrize("header_len", [0, 8, 15, 17, 56, 1000, CAP])
def test_a_wrong_residual_header_length_up_to_the_cap_is_malformed(header_len: int) -> None:
    # Prepare: the brief's repro is header_len 17 (0x11): HeaderTooLarge before the fix.
    data = _residual(header_len)
    # Execute / Assert
    with pytest.raises(MalformedHeader, match=f"got {header_len}"):
        ErrorFeedback.from_bytes(data, 2)


@pytest.mark.parametrize("header_len", [CAP + 1, 0xFFFF])
def test_a_residual_header_above_the_cap_is_too_large(header_len: int) -> None:
    # Execute / Assert: the same class as an update frame or snapshot declaring it.
    with pytest.raises(HeaderTooLarge, match=str(CAP)):
        ErrorFeedback.from_bytes(_residual(header_len), 2)


@pytest.mark.parametrize("header_len", [17, 1000, CAP, CAP + 1])
def test_the_three_formats_refuse_a_header_length_alike(header_len: int) -> None:
    # Prepare: the same declared header length in each format's prefix.
    spec = ModelSpec.from_shapes([("w", (2,))])
    frame = b"PLMU\x01\x00" + struct.pack("<H", header_len) + bytes(HEADER_LEN)
    snap = b"PLMS\x01\x01" + struct.pack("<H", header_len) + bytes(SNAPSHOT_HEADER_LEN)
    want = HeaderTooLarge if header_len > CAP else MalformedHeader
    # Execute / Assert: one class for all three.
    with pytest.raises(want):
        UpdateCodec(spec, CodecConfig.dense()).decode(frame)
    with pytest.raises(want):
        decode_snapshot(snap, spec)
    with pytest.raises(want):
        ErrorFeedback.from_bytes(_residual(header_len), 2)


def test_the_saved_residual_still_loads() -> None:
    # The honest 16-byte header is untouched.
    ef = ErrorFeedback(2)
    ef.residual[:] = [0.25, -1.0]
    data = ef.to_bytes()
    assert data.hex() == "504c4d52010010000200000000fbde050000803e000080bf"
    assert ErrorFeedback.from_bytes(data, 2).residual.tolist() == [0.25, -1.0]


def _raw(
    *,
    magic: bytes = b"PLMR",
    version: int = 1,
    flags: int = 0,
    header_len: int = 16,
    d: int = 2,
    values: bytes = bytes(8),
    crc: int | None = None,
) -> bytes:
    crc = zlib.crc32(values) if crc is None else crc
    return struct.pack("<4sBBHII", magic, version, flags, header_len, d, crc) + values


_NAN = struct.pack("<ff", float("nan"), 0.0)
# Each input fails the documented check it is named after and the next one too: the error is
# the earlier check's, so these pin the order of the table in docs/wire-format.md section 3.
ORDER = [
    ("1 length < 8", _raw()[:7], TruncatedFrame),
    ("2 magic, version", _raw(magic=b"PLMS", version=2), BadMagic),
    ("3 version, header cap", _raw(version=2, header_len=CAP + 1), UnsupportedVersion),
    ("4 header cap, < 16 bytes", _raw(header_len=CAP + 1)[:8], HeaderTooLarge),
    ("5 header_len, < 16 bytes", _raw(header_len=17)[:8], MalformedHeader),
    ("6 < 16 bytes, flags", _raw(flags=1)[:12], TruncatedFrame),
    ("7 flags, d", _raw(flags=1, d=3), MalformedHeader),
    ("8 d, length", _raw(d=3) + b"\0", SpecMismatch),
    ("9 longer, CRC", _raw(crc=1) + b"\0", TrailingBytes),
    ("9 shorter, CRC", _raw(crc=1)[:-1], TruncatedFrame),
    ("10 CRC, NaN", _raw(values=_NAN, crc=1), ChecksumMismatch),
    ("11 NaN", _raw(values=_NAN), NonFiniteValues),
]


@pytest.mark.parametrize(("name", "data", "error"), ORDER, ids=[c[0] for c in ORDER])
def test_residual_checks_run_in_the_documented_order(
    name: str, data: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        ErrorFeedback.from_bytes(data, 2)
    assert type(info.value) is error, name
