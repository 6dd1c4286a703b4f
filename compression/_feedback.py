"""Device-side error feedback: the residual a device carries from one round to the next."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import numpy.typing as npt

from ._bits import ByteView
from ._codec import EncodeReport, UpdateCodec
from ._config import DecodeLimits, _number
from ._errors import (
    ChecksumMismatch,
    MalformedHeader,
    NonFiniteValues,
    SpecMismatch,
    TrailingBytes,
    TruncatedFrame,
)
from ._spec import MAX_MODEL_SIZE
from ._wire import RESIDUAL_MAGIC, WIRE_VERSION, byte_view, check_prefix

__all__ = ["ErrorFeedback"]

F32 = npt.NDArray[np.float32]
# magic, version, flags, header_len | d | CRC-32 of the values
_HEADER = struct.Struct("<4sBBHII")
# The header-length cap of update frames and snapshots (`DecodeLimits.max_header_bytes`): a
# residual declaring more is `HeaderTooLarge`, any other length up to it `MalformedHeader`.
_MAX_HEADER = DecodeLimits().max_header_bytes


RESIDUAL_OVERFLOW = (
    "the new residual u - decoded overflows float32 (a 1-bit block spans more than float32's "
    "range); the residual is unchanged"
)


SUM_OVERFLOW = (
    "delta + residual is not finite (NaN or Inf in the delta, or a sum beyond float32's "
    "range); the residual is unchanged"
)


def checked_sum(delta: F32, residual: F32) -> F32:
    """`delta + residual` (float32, any shape), or a ValueError naming the residual if it is
    not finite: a finite delta can overflow with what compression held back, and the codec's
    own refusal ("update contains NaN or Inf", after a RuntimeWarning) would not say so."""
    with np.errstate(over="ignore"):
        u: F32 = delta + residual
    if not np.all(np.isfinite(u)):
        raise ValueError(SUM_OVERFLOW)
    return u


def checked_residual(u: F32, decoded: F32) -> F32:
    """`u - decoded` (float32, any shape), or a ValueError if it overflows float32.

    No value coding gets there now (each one's error is at most the largest magnitude it
    codes); until 2026-12-03 a 1-bit block did, its two levels being the block's signed min
    and max, so a value rounded from near +max to a lo near -max left a difference above
    float32's range. Kept as a guard: an inf residual would make every later step refuse its
    own input; the caller keeps the old residual instead.
    """
    with np.errstate(over="ignore"):
        residual: F32 = u - decoded
    if not np.all(np.isfinite(residual)):
        raise ValueError(RESIDUAL_OVERFLOW)
    return residual


class ErrorFeedback:
    """`residual: float32[size]`, what compression dropped so far.

    `step` encodes u = delta + residual and keeps residual = u - decoded(u), computed in
    float32 from the very values the server will decode, so nothing is lost for good.
    """

    def __init__(self, size: int) -> None:
        # At most ModelSpec's 2**31 scalars: the file's d is a u32 (to_bytes raised
        # struct.error above 2**32 - 1), and 2**40 was a MemoryError here.
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_MODEL_SIZE:
            raise ValueError(
                f"size must be an int in [1, 2^31] (ModelSpec's largest), got {_number(size)}"
            )
        self.size = size
        self.residual: F32 = np.zeros(size, dtype=np.float32)

    def step(
        self,
        delta: npt.ArrayLike,
        codec: UpdateCodec,
        rng: np.random.Generator,
        weight: float = 1.0,
    ) -> tuple[bytes, EncodeReport]:
        """Encode `delta + residual` (float32[size]) and update the residual; returns the frame."""
        d = np.asarray(delta)
        if d.shape != (self.size,) or d.dtype != np.float32:
            raise ValueError(f"delta must be float32[{self.size}], got {d.dtype}{list(d.shape)}")
        return self.step_sum(checked_sum(d, self.held()), codec, rng, weight)

    def step_sum(
        self,
        u: F32,
        codec: UpdateCodec,
        rng: np.random.Generator,
        weight: float = 1.0,
    ) -> tuple[bytes, EncodeReport]:
        """`step` for a caller that already holds u = `checked_sum(delta, held())` (and keeps
        it): encode u, keep residual = u - decoded(u); returns the frame. A residual that
        overflows is refused (`checked_residual`) and the old one kept."""
        frame, decoded, report = codec.roundtrip(u, rng, weight)
        self.residual = checked_residual(u, decoded)
        return frame, report

    def held(self) -> F32:
        """The residual, checked to be float32[size]: it is a public attribute, and another
        shape would broadcast in `step` (a residual of shape (1,) added to every coordinate)
        or be saved by `to_bytes` as a file that `from_bytes` refuses."""
        r = self.residual
        if not isinstance(r, np.ndarray) or r.shape != (self.size,) or r.dtype != np.float32:
            got = f"{r.dtype}{list(r.shape)}" if isinstance(r, np.ndarray) else type(r).__name__
            raise ValueError(f"residual must be float32[{self.size}], got {got}")
        return r

    def reset(self) -> None:
        self.residual = np.zeros(self.size, dtype=np.float32)

    def to_bytes(self) -> bytes:
        """16-byte header then the residual as little-endian fp32 (see docs/wire-format.md)."""
        return b"".join(self.to_parts())

    def to_parts(self) -> tuple[bytes, memoryview]:
        """`to_bytes` in two parts, for a writer that takes them one after the other: the
        16-byte header, and the residual's little-endian fp32 bytes as a view of its own
        memory (no copy of the residual when it is little-endian float32 already, as it is on
        any phone; `to_bytes` joins them into one copy). The view is valid while the residual
        is not reassigned or written to. A residual holding NaN or Inf is a ValueError."""
        values = np.ascontiguousarray(self.held(), dtype="<f4")
        # A NaN or Inf (the attribute is public) made a file from_bytes refuses at step 11.
        # min and max propagate both and allocate nothing (an isfinite mask is d bytes).
        if not (np.isfinite(values.min()) and np.isfinite(values.max())):
            raise ValueError("residual holds NaN or Inf; from_bytes would refuse the file it makes")
        body = values.data.cast("B")
        header = _HEADER.pack(
            RESIDUAL_MAGIC, WIRE_VERSION, 0, _HEADER.size, self.size, zlib.crc32(body)
        )
        return header, body

    @classmethod
    def from_bytes(cls, data: ByteView, size: int) -> ErrorFeedback:
        """Restore a residual saved by `to_bytes`; refuses anything but exactly one of `size`."""
        # A view: the lengths are checked before the values are copied out of it.
        view = byte_view(data, "residual")
        n = view.nbytes
        head = bytes(view[: _HEADER.size])
        header_len = check_prefix(head, RESIDUAL_MAGIC, "residual", _MAX_HEADER)
        if header_len != _HEADER.size:
            raise MalformedHeader(f"residual header is {_HEADER.size} bytes, got {header_len}")
        if n < _HEADER.size:
            raise TruncatedFrame(f"residual of {n} bytes ends inside its header")
        _m, _v, flags, _hl, d, crc = _HEADER.unpack_from(head)
        if flags:
            raise MalformedHeader(f"residual flags 0x{flags:02x}, must be 0")
        if d != size:
            raise SpecMismatch(f"residual holds {d} scalars; expected {size}")
        want = _HEADER.size + 4 * size
        if n > want:
            raise TrailingBytes(f"{n - want} bytes after the {want}-byte residual")
        if n < want:
            raise TruncatedFrame(f"residual of {n} bytes; {size} scalars need {want}")
        body = view[_HEADER.size :]
        if zlib.crc32(body) != crc:
            raise ChecksumMismatch("residual CRC-32 does not match its bytes")
        values = np.frombuffer(body, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(values)):
            raise NonFiniteValues("residual contains NaN or Inf")
        ef = cls(size)
        ef.residual = values
        return ef
