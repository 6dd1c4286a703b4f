"""The codec's exception tree. Every decode failure is a `CodecError`.

CodecError (ValueError)
├── TruncatedFrame        the frame ends before a declared field
├── BadMagic              not a Plume frame
├── UnsupportedVersion    a wire version this build does not speak
├── HeaderTooLarge        header length above the cap
├── MalformedHeader       a header field out of its domain
├── SpecMismatch          frame made for another model layout
├── SizeLimitExceeded     a declared size above the spec or the limits
├── DecompressionError    zstd refused the payload (bomb, window, corrupt)
├── TrailingBytes         bytes after the last section
├── InvalidIndices        out of range, not strictly increasing, or inconsistent
├── NonFiniteValues       NaN or Inf in a scale or a value
├── ChecksumMismatch      the frame's CRC-32 does not match its bytes
└── MalformedSection      a section's content breaks its coding (bad scales, padding bits)
"""

from __future__ import annotations

__all__ = [
    "CodecError",
    "TruncatedFrame",
    "BadMagic",
    "UnsupportedVersion",
    "HeaderTooLarge",
    "MalformedHeader",
    "SpecMismatch",
    "SizeLimitExceeded",
    "DecompressionError",
    "TrailingBytes",
    "InvalidIndices",
    "NonFiniteValues",
    "ChecksumMismatch",
    "MalformedSection",
]


class CodecError(ValueError):
    """A frame was refused. The message says exactly which check failed."""


class TruncatedFrame(CodecError):
    pass


class BadMagic(CodecError):
    pass


class UnsupportedVersion(CodecError):
    pass


class HeaderTooLarge(CodecError):
    pass


class MalformedHeader(CodecError):
    pass


class SpecMismatch(CodecError):
    pass


class SizeLimitExceeded(CodecError):
    pass


class DecompressionError(CodecError):
    pass


class TrailingBytes(CodecError):
    pass


class InvalidIndices(CodecError):
    pass


class NonFiniteValues(CodecError):
    pass


class ChecksumMismatch(CodecError):
    pass


class MalformedSection(CodecError):
    pass
