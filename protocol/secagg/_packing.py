"""Bit-packing of ring elements: uint64 values of m bits each, little-endian bit order."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ._errors import MalformedMessage

__all__ = ["packed_size", "pack_bits", "unpack_bits"]

# Values are packed in blocks so the n x m bit matrix stays small (a few MB) for long vectors.
_BLOCK = 1 << 15


def packed_size(count: int, bits: int) -> int:
    """Bytes taken by `count` values of `bits` bits: ceil(count * bits / 8)."""
    return (count * bits + 7) // 8


def pack_bits(values: npt.NDArray[np.uint64], bits: int) -> bytes:
    """Pack `values` (uint64[n], each < 2^bits) into ceil(n * bits / 8) bytes."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits={bits}, expected 1..64")
    v = np.ascontiguousarray(values, dtype=np.uint64).reshape(-1)
    if bits < 64 and v.size and int(v.max()) >> bits:
        raise ValueError(f"a value does not fit in {bits} bits")
    shifts = np.arange(bits, dtype=np.uint64)
    # Block length is a multiple of 8, so every block but the last ends on a byte boundary.
    parts = []
    for start in range(0, v.size, _BLOCK):
        block = v[start : start + _BLOCK]
        bitmat = ((block[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        parts.append(bitmat.reshape(-1))
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)
    return np.packbits(flat, bitorder="little").tobytes()


def unpack_bits(data: bytes, count: int, bits: int) -> npt.NDArray[np.uint64]:
    """Inverse of `pack_bits`. The byte length must be exact and the padding bits zero."""
    if not 1 <= bits <= 64:
        raise MalformedMessage(f"bits={bits}, expected 1..64")
    if count < 0 or len(data) != packed_size(count, bits):
        raise MalformedMessage(
            f"{len(data)} bytes for {count} values of {bits} bits, "
            f"expected {packed_size(count, bits)}"
        )
    allbits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    if np.any(allbits[count * bits :]):
        raise MalformedMessage("non-zero padding bits")
    weights = np.left_shift(np.uint64(1), np.arange(bits, dtype=np.uint64))
    out = np.empty(count, dtype=np.uint64)
    for start in range(0, count, _BLOCK):
        stop = min(count, start + _BLOCK)
        bitmat = allbits[start * bits : stop * bits].reshape(-1, bits).astype(np.uint64)
        out[start:stop] = (bitmat * weights).sum(axis=1, dtype=np.uint64)
    return out
