"""Plume's codecs and wire format: numpy arrays in, bytes out. No torch, no I/O."""

from ._batch import feedback_step_many
from ._codec import DecodedFrame, EncodeReport, StageReport, UpdateCodec
from ._config import CodecConfig, DecodeLimits
from ._errors import (
    BadMagic,
    ChecksumMismatch,
    CodecError,
    DecompressionError,
    HeaderTooLarge,
    InvalidIndices,
    MalformedHeader,
    MalformedSection,
    NonFiniteValues,
    SizeLimitExceeded,
    SpecMismatch,
    TrailingBytes,
    TruncatedFrame,
    UnsupportedVersion,
)
from ._feedback import ErrorFeedback
from ._snapshot import canonical_bytes, decode_snapshot, encode_snapshot, model_digest
from ._sparse import SparseUpdate
from ._spec import ModelSpec, TensorEntry
from ._wire import FrameHeader
from ._zstd import ZstdCodec

__all__ = [
    "BadMagic",
    "ChecksumMismatch",
    "CodecConfig",
    "CodecError",
    "DecodeLimits",
    "DecodedFrame",
    "DecompressionError",
    "EncodeReport",
    "ErrorFeedback",
    "FrameHeader",
    "HeaderTooLarge",
    "InvalidIndices",
    "MalformedHeader",
    "MalformedSection",
    "ModelSpec",
    "NonFiniteValues",
    "SizeLimitExceeded",
    "SparseUpdate",
    "SpecMismatch",
    "StageReport",
    "TensorEntry",
    "TrailingBytes",
    "TruncatedFrame",
    "UnsupportedVersion",
    "UpdateCodec",
    "ZstdCodec",
    "canonical_bytes",
    "decode_snapshot",
    "encode_snapshot",
    "feedback_step_many",
    "model_digest",
]
