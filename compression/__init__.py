"""Plume's codecs and wire format: numpy arrays in, bytes out. No torch, no I/O."""

from ._errors import (
    BadMagic,
    CodecError,
    DecompressionError,
    HeaderTooLarge,
    MalformedHeader,
    NonFiniteValues,
    SizeLimitExceeded,
    SpecMismatch,
    TrailingBytes,
    TruncatedFrame,
    InvalidIndices,
    UnsupportedVersion,
)
from ._sparse import SparseUpdate
from ._spec import ModelSpec, TensorEntry

__all__ = [
    "BadMagic",
    "CodecError",
    "DecompressionError",
    "HeaderTooLarge",
    "InvalidIndices",
    "MalformedHeader",
    "ModelSpec",
    "NonFiniteValues",
    "SizeLimitExceeded",
    "SparseUpdate",
    "SpecMismatch",
    "TensorEntry",
    "TrailingBytes",
    "TruncatedFrame",
    "UnsupportedVersion",
]
