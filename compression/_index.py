"""Index codings for the sorted coordinates of a sparse update, in a registry keyed by wire id."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import numpy.typing as npt

from ._bits import ByteView, pack_fixed, pack_positions, packed_len, unpack_fixed, unpack_positions
from ._errors import InvalidIndices, MalformedSection

__all__ = [
    "IndexCoding",
    "AllCoding",
    "BitmapCoding",
    "RiceCoding",
    "EliasFanoCoding",
    "INDEX_CODINGS",
    "INDEX_BY_NAME",
]

Indices = npt.NDArray[np.int64]
_SLICE = 1 << 16  # elements per slice of an in-place pass over k indices


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class IndexCoding(ABC):
    """One way to write k sorted coordinates out of d.

    Maps `idx: int64[k]` (strictly increasing, in [0, d)) to bytes and back, vectorised in
    numpy. `plan` gives the exact size in bytes at the best parameter, so the encoder can pick
    the smallest coding without encoding them all.
    """

    wire_id: int
    name: str

    @abstractmethod
    def plan(self, idx: Indices, d: int) -> tuple[int, int]:
        """`(bytes, param)` of the smallest encoding of `idx` this coding offers."""

    @abstractmethod
    def encode(self, idx: Indices, d: int, param: int) -> bytes: ...

    @abstractmethod
    def decode(self, buf: ByteView, k: int, d: int, param: int) -> Indices:
        """Indices from `buf`; raises `InvalidIndices`/`MalformedSection` on bad content."""

    @abstractmethod
    def length_bounds(self, k: int, d: int, param: int) -> tuple[int, int]:
        """Smallest and largest legal section length for (k, d, param); checked before inflating."""

    def param_ok(self, d: int, param: int) -> bool:
        return param == 0


def _check_range(idx: Indices, d: int) -> Indices:
    if idx.shape[0] and (idx[0] < 0 or idx[-1] >= d):
        raise InvalidIndices(f"index {int(idx[-1])} out of range for a model of {d} scalars")
    return idx


class AllCoding(IndexCoding):
    """k == d: every coordinate, nothing sent."""

    wire_id = 0
    name = "all"

    def plan(self, idx: Indices, d: int) -> tuple[int, int]:
        return 0, 0

    def encode(self, idx: Indices, d: int, param: int) -> bytes:
        return b""

    def decode(self, buf: ByteView, k: int, d: int, param: int) -> Indices:
        if k != d:
            raise InvalidIndices(f"index coding 'all' needs k == d, got k={k}, d={d}")
        return np.arange(d, dtype=np.int64)

    def length_bounds(self, k: int, d: int, param: int) -> tuple[int, int]:
        return 0, 0


class BitmapCoding(IndexCoding):
    """d bits, bit i set when coordinate i is kept."""

    wire_id = 1
    name = "bitmap"

    def plan(self, idx: Indices, d: int) -> tuple[int, int]:
        return _ceil_div(d, 8), 0

    def encode(self, idx: Indices, d: int, param: int) -> bytes:
        bits = np.zeros(d, dtype=np.uint8)
        bits[idx] = 1
        return np.packbits(bits, bitorder="little").tobytes()

    def decode(self, buf: ByteView, k: int, d: int, param: int) -> Indices:
        if len(buf) != _ceil_div(d, 8):
            raise MalformedSection(f"bitmap of {len(buf)} bytes for d={d}")
        if d % 8 and buf[-1] >> (d % 8):
            raise InvalidIndices(f"bitmap sets a bit at or beyond d={d}")
        bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), count=d, bitorder="little")
        idx = np.flatnonzero(bits.view(np.bool_)).astype(np.int64, copy=False)
        if idx.shape[0] != k:
            raise InvalidIndices(f"bitmap sets {idx.shape[0]} bits; the header declares k={k}")
        return idx

    def length_bounds(self, k: int, d: int, param: int) -> tuple[int, int]:
        n = _ceil_div(d, 8)
        return n, n


def _gaps(idx: Indices) -> Indices:
    """g_0 = idx_0, g_i = idx_i - idx_{i-1} - 1 (>= 0 for strictly increasing indices)."""
    return np.diff(idx, prepend=np.int64(-1)) - 1


class RiceCoding(IndexCoding):
    """Golomb-Rice of the gaps with parameter r: k low fields of r bits, then the quotients
    `g >> r` in unary (q zeros then a one), the two streams back to back."""

    wire_id = 2
    name = "rice"

    def plan(self, idx: Indices, d: int) -> tuple[int, int]:
        k = int(idx.shape[0])
        if k == 0:
            return 0, 0
        gaps = _gaps(idx)
        mean = max(1.0, float(gaps.mean()))
        r0 = max(0, int(np.log2(mean)))
        best: tuple[int, int] | None = None
        for r in range(max(0, r0 - 2), min(r0 + 3, d.bit_length() - 1) + 1):
            size = packed_len(k, r) + _ceil_div(k + int(np.sum(gaps >> r)), 8)
            if best is None or size < best[0]:
                best = (size, r)
        assert best is not None
        return best

    def encode(self, idx: Indices, d: int, param: int) -> bytes:
        gaps = _gaps(idx)
        low = pack_fixed(gaps & ((1 << param) - 1), param)
        ones = np.cumsum((gaps >> param) + 1) - 1
        return low + pack_positions(ones)

    def decode(self, buf: ByteView, k: int, d: int, param: int) -> Indices:
        nlow = packed_len(k, param)
        # At param 0 there are no low fields (and no padding to check): no k zeros to OR in.
        low = unpack_fixed(buf[:nlow], k, param, "rice low bits") if param else None
        ones = unpack_positions(buf[nlow:], k, "rice unary stream")
        # In place: at k = d these are 13 MB arrays, and a hostile frame may ask for k = d.
        # q_i + 1 = p_i - p_{i-1} with p_{-1} = -1, over slices from the end, so each slice
        # still reads the unchanged positions before it (np.diff would allocate k more int64,
        # its prepend another k).
        idx = ones
        for stop in range(k, 0, -_SLICE):
            start = max(1, stop - _SLICE)
            idx[start:stop] -= idx[start - 1 : stop - 1]
        if k:
            idx[0] += 1
        idx -= 1
        idx <<= param
        if low is not None:
            idx |= low
            del low
        idx += 1
        np.cumsum(idx, out=idx)
        idx -= 1
        return _check_range(idx, d)

    def length_bounds(self, k: int, d: int, param: int) -> tuple[int, int]:
        # sum(g >> r) <= (sum g) >> r <= (d - k) >> r: the unary stream is at most that + k bits.
        nlow = packed_len(k, param)
        return nlow + _ceil_div(k, 8), nlow + _ceil_div(k + (max(d - k, 0) >> param), 8)

    def param_ok(self, d: int, param: int) -> bool:
        # 2**param <= d keeps every partial sum below 2**62 (k <= d <= 2**31): no int64 overflow.
        return 0 <= param < d.bit_length()


class EliasFanoCoding(IndexCoding):
    """Elias-Fano with L low bits: k low fields of L bits, then the upper bits of index i as a
    one at position (idx_i >> L) + i."""

    wire_id = 3
    name = "ef"

    def plan(self, idx: Indices, d: int) -> tuple[int, int]:
        k = int(idx.shape[0])
        if k == 0:
            return 0, 0
        last = int(idx[-1])
        l0 = max(0, int(np.log2(max(1.0, d / k))))
        best: tuple[int, int] | None = None
        for low in range(max(0, l0 - 2), min(l0 + 3, d.bit_length() - 1) + 1):
            size = packed_len(k, low) + _ceil_div((last >> low) + k, 8)
            if best is None or size < best[0]:
                best = (size, low)
        assert best is not None
        return best

    def encode(self, idx: Indices, d: int, param: int) -> bytes:
        k = idx.shape[0]
        low = pack_fixed(idx & ((1 << param) - 1), param)
        ones = (idx >> param) + np.arange(k, dtype=np.int64)
        return low + pack_positions(ones)

    def decode(self, buf: ByteView, k: int, d: int, param: int) -> Indices:
        nlow = packed_len(k, param)
        # At param 0 there are no low fields (and no padding to check): no k zeros to OR in.
        low = unpack_fixed(buf[:nlow], k, param, "elias-fano low bits") if param else None
        ones = unpack_positions(buf[nlow:], k, "elias-fano upper bits")
        idx = ones
        # idx_i = p_i - i, in slices: a whole arange(k) would be one more k-sized int64 array.
        for start in range(0, k, _SLICE):
            stop = min(k, start + _SLICE)
            idx[start:stop] -= np.arange(start, stop, dtype=np.int64)
        idx <<= param
        if low is not None:
            idx |= low
            del low
        rising = idx[1:] > idx[:-1] if k > 1 else None
        if rising is not None and not rising.all():
            # argmin finds the first False without an array of every bad position.
            bad = int(np.argmin(rising))
            raise InvalidIndices(
                f"indices not strictly increasing at position {bad + 1}: "
                f"{int(idx[bad])} then {int(idx[bad + 1])}"
            )
        return _check_range(idx, d)

    def length_bounds(self, k: int, d: int, param: int) -> tuple[int, int]:
        nlow = packed_len(k, param)
        return nlow + _ceil_div(k, 8), nlow + _ceil_div(k + (max(d - 1, 0) >> param), 8)

    def param_ok(self, d: int, param: int) -> bool:
        # 2**param <= d keeps every partial sum below 2**62 (k <= d <= 2**31): no int64 overflow.
        return 0 <= param < d.bit_length()


INDEX_CODINGS: dict[int, IndexCoding] = {
    c.wire_id: c for c in (AllCoding(), BitmapCoding(), RiceCoding(), EliasFanoCoding())
}
INDEX_BY_NAME: dict[str, IndexCoding] = {c.name: c for c in INDEX_CODINGS.values()}
