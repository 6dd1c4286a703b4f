"""Batched update codec: many frames encoded or decoded at once, bit-identical to one at a time.

A simulator round of 1,000 tiny updates (the digits MLP has d = 2,410) spends most of its codec
time in per-call numpy overhead, not in arithmetic. Here top-k, block scales, stochastic
rounding, index planning and bit packing run once over the whole `[n, d]` batch; only what is
really per frame stays per row (its rng draw, the section join, zstd, the header and its CRC).
Decoding checks every header field of the batch with vectorised comparisons, inflates and
unpacks rows that share a layout together, and hands any row that fails a check (or that the
batch path does not cover) to the ordinary single-frame decoder, so every refusal raises exactly
the error `UpdateCodec.decode_frame` would.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ._bits import packed_len
from ._config import MAX_BLOCK, MAX_WEIGHT, MIN_BLOCK, QUANTIZED_BITS, check_weight
from ._errors import CodecError, NonFiniteValues
from ._feedback import RESIDUAL_OVERFLOW, SUM_OVERFLOW
from ._index import INDEX_CODINGS
from ._quant import one_bit_levels, refuse_overflowing_top
from ._sparse import SparseUpdate
from ._topk import _PREFILTER_MIN, _argpartition_top
from ._wire import (
    _HEADER,
    CRC_LEN,
    FLAG_ZSTD,
    HEADER_LEN,
    UPDATE_MAGIC,
    WIRE_VERSION,
    FrameHeader,
    byte_view,
    check_frame_fits,
)

if TYPE_CHECKING:
    from ._codec import DecodedFrame, UpdateCodec
    from ._feedback import ErrorFeedback

__all__ = ["encode_many", "roundtrip_many", "decode_many", "feedback_step_many"]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

_SIGNS = np.array([1.0, -1.0], dtype=np.float32)  # indexed by a code's sign bit
# The v1 header as a numpy record (little-endian, packed: 56 bytes, as `_wire._HEADER`).
_HEADER_DTYPE = np.dtype(
    [
        ("magic", "<u4"),
        ("version", "u1"),
        ("flags", "u1"),
        ("header_len", "<u2"),
        ("fingerprint", "<u8"),
        ("d", "<u4"),
        ("k", "<u4"),
        ("bits", "u1"),
        ("index_id", "u1"),
        ("param", "u1"),
        ("reserved", "u1"),
        ("block", "<u4"),
        ("weight", "<f8"),
        ("index_bytes", "<u4"),
        ("scale_bytes", "<u4"),
        ("value_bytes", "<u4"),
        ("payload_bytes", "<u4"),
    ]
)
assert _HEADER_DTYPE.itemsize == HEADER_LEN
_MAGIC_U32 = int.from_bytes(UPDATE_MAGIC, "little")
_CODING_IDS = {c.name: c.wire_id for c in INDEX_CODINGS.values()}
_AUTO = ("rice", "ef", "bitmap")  # the order "auto" tries them (ties: the earlier one)
_BIG = 1 << 62  # above any section size: "no candidate yet"
# Frames whose sections total more than this many bytes are decoded one by one.
_BATCH_MAX_RAW = 4096


def _ceil_div(a: Any, b: Any) -> Any:
    return -(-a // b)


# -- encoding -------------------------------------------------------------------------------


def _check_batch(
    codec: UpdateCodec,
    updates: npt.ArrayLike,
    rngs: Sequence[np.random.Generator],
    weights: Sequence[float],
) -> F32:
    """The single encoder's input checks, for every row; returns the float32[n, d] batch."""
    arr = np.asarray(updates)
    d = codec.spec.size
    if arr.ndim != 2 or arr.shape[1] != d:
        raise ValueError(f"updates must have shape (n, {d}), got {arr.shape}")
    n = arr.shape[0]
    if len(rngs) != n or len(weights) != n:
        raise ValueError(
            f"{n} updates need {n} rngs and weights, got {len(rngs)} and {len(weights)}"
        )
    for rng in rngs:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if arr.dtype != np.float32:
        raise ValueError(f"update must be float32, got {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("update contains NaN or Inf")
    for weight in weights:
        check_weight(weight)
    return arr


def _batchable(codec: UpdateCodec) -> bool:
    """Whether the vectorised encoder covers this config: exact global top-k, below the size
    where `exact_topk` starts prefiltering (ties would break differently there, and models
    that big gain nothing from batching)."""
    cfg = codec.config
    return cfg.topk_mode == "exact" and cfg.scope == "global" and codec.spec.size < _PREFILTER_MIN


def _pack_rows(vals: npt.NDArray[np.integer], width: int) -> U8:
    """Each row of `vals` (< 2**width) as `pack_fixed` writes it: uint8[n, packed_len(k, width)]."""
    n, k = vals.shape
    if width == 0 or k == 0:
        return np.zeros((n, 0), dtype=np.uint8)
    if width == 8:
        return vals.astype(np.uint8)
    if width in (1, 2, 4):
        per = 8 // width
        pad = (-k) % per
        v = vals.astype(np.uint8)
        if pad:
            v = np.concatenate([v, np.zeros((n, pad), np.uint8)], axis=1)
        v = v.reshape(n, -1, per)
        out = v[:, :, 0].copy()
        for j in range(1, per):
            out |= v[:, :, j] << np.uint8(j * width)
        return out
    shifts = np.arange(width, dtype=np.int64)
    bits = ((vals.astype(np.int64)[:, :, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bits.reshape(n, k * width), axis=1, bitorder="little")


def _pack_positions_rows(ones: I64) -> tuple[U8, list[int]]:
    """Each row's `pack_positions` stream: (uint8[n, max bytes], the bytes each row uses)."""
    n = ones.shape[0]
    nbits = ones[:, -1] + 1
    lengths = ((nbits + 7) // 8).tolist()
    grid = np.zeros((n, int(nbits.max())), dtype=np.uint8)
    grid[np.arange(n)[:, None], ones] = 1
    return np.packbits(grid, axis=1, bitorder="little"), lengths


def _plan_rows(idx: I64, d: int, choice: str) -> tuple[I64, I64]:
    """Per row, the `(wire id, param)` that `IndexStage.choose` picks; idx is int64[n, k], k < d."""
    n, k = idx.shape
    names = _AUTO if choice == "auto" else (choice,)
    best_size = np.full(n, _BIG, dtype=np.int64)
    best_id = np.zeros(n, dtype=np.int64)
    best_param = np.zeros(n, dtype=np.int64)
    top = d.bit_length() - 1
    gaps = np.diff(idx, axis=1, prepend=np.int64(-1)) - 1
    for name in names:
        if name == "bitmap":
            size = np.full(n, _ceil_div(d, 8), dtype=np.int64)
            param = np.zeros(n, dtype=np.int64)
        elif name == "rice":
            # Sums of integers below 2**53 are exact in float64: the same mean as per row.
            mean = np.maximum(1.0, gaps.mean(axis=1))
            r0 = np.maximum(0, np.log2(mean).astype(np.int64))
            lo, hi = np.maximum(0, r0 - 2), np.minimum(r0 + 3, top)
            size = np.full(n, _BIG, dtype=np.int64)
            param = np.zeros(n, dtype=np.int64)
            for r in range(int(lo.min()), int(hi.max()) + 1):
                s = packed_len(k, r) + _ceil_div(k + (gaps >> r).sum(axis=1), 8)
                better = (lo <= r) & (r <= hi) & (s < size)
                size = np.where(better, s, size)
                param = np.where(better, r, param)
        else:  # ef
            l0 = max(0, int(np.log2(max(1.0, d / k))))
            last = idx[:, -1]
            size = np.full(n, _BIG, dtype=np.int64)
            param = np.zeros(n, dtype=np.int64)
            for low in range(max(0, l0 - 2), min(l0 + 3, top) + 1):
                s = packed_len(k, low) + _ceil_div((last >> low) + k, 8)
                better = s < size
                size = np.where(better, s, size)
                param = np.where(better, low, param)
        better = size < best_size
        best_size = np.where(better, size, best_size)
        best_id = np.where(better, _CODING_IDS[name], best_id)
        best_param = np.where(better, param, best_param)
    return best_id, best_param


def _index_sections(idx: I64, d: int, choice: str) -> tuple[list[bytes], I64, I64]:
    """Each row's index section with the coding and parameter the single encoder picks."""
    n, k = idx.shape
    if k == d:
        return [b""] * n, np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    idx = np.ascontiguousarray(idx)
    ids, params = _plan_rows(idx, d, choice)
    out: list[bytes] = [b""] * n
    keys = ids * 64 + params
    for key in np.unique(keys).tolist():
        rows = np.flatnonzero(keys == key)
        wire_id, param = divmod(int(key), 64)
        sub = idx[rows]
        if wire_id == 1:
            grid = np.zeros((rows.shape[0], d), dtype=np.uint8)
            grid[np.arange(rows.shape[0])[:, None], sub] = 1
            packed = np.packbits(grid, axis=1, bitorder="little")
            for j, i in enumerate(rows.tolist()):
                out[i] = packed[j].tobytes()
            continue
        if wire_id == 2:
            gaps = np.diff(sub, axis=1, prepend=np.int64(-1)) - 1
            low = _pack_rows(gaps & ((1 << param) - 1), param)
            ones = np.cumsum((gaps >> param) + 1, axis=1) - 1
        else:
            low = _pack_rows(sub & ((1 << param) - 1), param)
            ones = (sub >> param) + np.arange(k, dtype=np.int64)
        stream, lengths = _pack_positions_rows(ones)
        for j, i in enumerate(rows.tolist()):
            out[i] = low[j].tobytes() + stream[j, : lengths[j]].tobytes()
    return out, ids, params


def _quantize_rows(
    vals: F32, bits: int, block: int, u: F32 | None, want_decoded: bool
) -> tuple[U8 | None, U8, F32 | None]:
    """`(scales uint8[m, 8 nb] or None, value section uint8[m, .], decoded float32[m, k])`,
    as `StochasticQuantizer` / `Fp16Values` / `Fp32Values` write and read them per row."""
    m, k = vals.shape
    if bits == 32:
        raw32 = vals.astype("<f4")
        return None, raw32.view(np.uint8), raw32.astype(np.float32) if want_decoded else None
    if bits == 16:
        with np.errstate(over="ignore"):
            half = vals.astype("<f2")
        if not np.all(np.isfinite(half)):
            raise ValueError(
                "a value rounds beyond the fp16 range (|v| >= 65520; the largest fp16 is "
                "65504); use bits=32"
            )
        return None, half.view(np.uint8), half.astype(np.float32) if want_decoded else None
    assert u is not None

    def expand(per_block: F32) -> F32:
        return _expand_rows(per_block, block, k)

    decoded: F32 | None = None
    if bits == 1:
        lo, hi = one_bit_levels(vals, block)
        codes = (vals >= 0).astype(np.uint8)
        if want_decoded:
            decoded = np.where(codes == 1, expand(hi), expand(lo))
        return _scales(lo, hi), _pack_rows(codes, bits), decoded
    nb = _ceil_div(k, block)
    pad = nb * block - k
    src = np.abs(vals)
    if pad > k:
        # A block far longer than k (up to 2**20): padding every row to it would allocate
        # m * block floats; reduceat gives the same minima and maxima in k-sized memory.
        starts = np.arange(0, k, block)
        lo = np.minimum.reduceat(src, starts, axis=1)
        hi = np.maximum.reduceat(src, starts, axis=1)
    elif pad:
        inf = np.full((m, pad), np.inf, dtype=np.float32)
        lo = np.concatenate([src, inf], axis=1).reshape(m, nb, block).min(axis=2)
        hi = np.concatenate([src, -inf], axis=1).reshape(m, nb, block).max(axis=2)
    else:
        lo = src.reshape(m, nb, block).min(axis=2)
        hi = src.reshape(m, nb, block).max(axis=2)

    steps = (1 << (bits - 1)) - 1
    step = ((hi - lo) / np.float32(steps)).astype(np.float32)
    refuse_overflowing_top(lo, step, steps, bits)
    lo_e, step_e = expand(lo), expand(step)
    x = np.divide(src - lo_e, step_e, out=np.zeros((m, k), dtype=np.float32), where=step_e > 0)
    j = np.clip(np.floor(x + u), 0, steps).astype(np.uint8)
    codes = ((j << 1) | np.signbit(vals).astype(np.uint8)).astype(np.uint8)
    if want_decoded:
        # The decoder's formula, in float32 and in the same order (lo + j * step, then sign).
        with np.errstate(over="ignore"):
            decoded = (codes >> 1).astype(np.float32)
            decoded *= step_e
            decoded += lo_e
            decoded *= _SIGNS[codes & 1]
    return _scales(lo, hi), _pack_rows(codes, bits), decoded


def _scales(lo: F32, hi: F32) -> U8:
    """The scale sections of m rows, (lo, hi) float32[m, nb] interleaved, as bytes."""
    scales = np.empty((lo.shape[0], 2 * lo.shape[1]), dtype="<f4")
    scales[:, 0::2] = lo
    scales[:, 1::2] = hi
    return scales.view(np.uint8)


class _Decoded:
    """The values a batch decodes to, kept sparse: the fast rows as one block (`fast` rows,
    their indices `idx` int64[m, k], or None when every coordinate is sent, and values
    float32[m, k]) and the other rows as `rows[i] = (indices, values)`."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.fast: I64 = np.zeros(0, dtype=np.int64)
        self.idx: I64 | None = None
        self.vals: F32 = np.zeros((0, 0), dtype=np.float32)
        self.rows: dict[int, tuple[I64, F32]] = {}

    def scatter(self, out: F32, *, subtract: bool) -> None:
        """`out[i, indices] = values` (or `-=`) for every row: into zeros, the single path's
        dense vectors; from `u`, `u - dense` computed only where dense is not zero."""
        if self.fast.shape[0]:
            where: Any = self.fast if self.idx is None else (self.fast[:, None], self.idx)
            if subtract:
                out[where] -= self.vals
            else:
                out[where] = self.vals
        for i, (idx, vals) in self.rows.items():
            if subtract:
                out[i, idx] -= vals
            else:
                out[i, idx] = vals


def _expand_rows(per_block: F32, block: int, k: int) -> F32:
    """float32[m, k], column i = per_block[:, i // block] (per_block is float32[m, ceil(k / block)]).

    Sized by k alone: a frame may declare a block of 2**20 values for k = 1, and repeating every
    block in full (then cutting to k) allocated 4 MiB per frame of a decode_many group.
    """
    nb = per_block.shape[1]
    if nb == 0:
        return per_block[:, :0]
    counts = np.full(nb, block, dtype=np.intp)
    counts[-1] = k - block * (nb - 1)
    return np.repeat(per_block, counts, axis=1)


def _topk_rows(mag: F32, k: int) -> I64:
    """Sorted int64[n, k] indices of each row's k largest magnitudes, the set `exact_topk`
    picks for that row (0 < k < d).

    The k-th largest value t comes from a partition of values (several times cheaper than an
    argpartition); when exactly k magnitudes are >= t the set is fixed, whatever the selection
    algorithm. A row with ties at t (more than k at or above it) takes the single encoder's own
    argpartition, so ties are broken exactly as it breaks them.
    """
    n, d = mag.shape
    t = np.partition(mag, d - k, axis=1)[:, d - k : d - k + 1]
    keep = mag >= t
    ties = np.flatnonzero(np.count_nonzero(keep, axis=1) != k)
    idx = np.empty((n, k), dtype=np.int64)
    if ties.shape[0]:
        keep[ties] = False
        for i in ties.tolist():
            idx[i] = _argpartition_top(mag[i], k)
        rest = np.ones(n, dtype=np.bool_)
        rest[ties] = False
        idx[rest] = np.flatnonzero(keep).reshape(-1, k) % d
    else:
        idx[:] = np.flatnonzero(keep).reshape(n, k) % d
    return idx


def _encode_batch(
    codec: UpdateCodec,
    updates: npt.ArrayLike,
    rngs: Sequence[np.random.Generator],
    weights: Sequence[float],
    want_decoded: bool,
) -> tuple[list[bytes], _Decoded | None]:
    arr = _check_batch(codec, updates, rngs, weights)
    n, d = arr.shape
    frames: list[bytes] = [b""] * n
    dense: _Decoded | None = _Decoded(d) if want_decoded else None
    if not _batchable(codec) or n == 0:
        for i in range(n):
            frame, idx, dec, _ = codec._encode(arr[i], rngs[i], float(weights[i]), want_decoded)
            frames[i] = frame
            if dense is not None:
                assert dec is not None
                dense.rows[i] = (idx, dec)
        return frames, dense

    k = codec.topk.k
    if k >= d:
        idx = np.broadcast_to(np.arange(d, dtype=np.int64), (n, d))
        vals = arr
    else:
        idx = _topk_rows(np.abs(arr), k)
        vals = np.take_along_axis(arr, idx, axis=1)
    # Rows with an exact zero among the kept values go through the single encoder (it drops
    # the zeros, or keeps them when every coordinate is sent): their k differs from the batch's.
    slow = ~np.all(vals != 0, axis=1)
    bits, block = codec.quantize.bits, max(codec.quantize.block, 1)
    quantized = bits in QUANTIZED_BITS
    u = np.empty((n, k), dtype=np.float32) if quantized else None
    # Row order, as a loop of single calls would draw (rngs may be shared between rows).
    slow_list = slow.tolist()
    for i in range(n):
        if slow_list[i]:
            frame, sidx, dec, _ = codec._encode(arr[i], rngs[i], float(weights[i]), want_decoded)
            frames[i] = frame
            if dense is not None:
                assert dec is not None
                dense.rows[i] = (sidx, dec)
        elif u is not None:
            rngs[i].random(k, dtype=np.float32, out=u[i])
    fast = np.flatnonzero(~slow)
    if fast.shape[0] == 0:
        return frames, dense
    if fast.shape[0] < n:
        idx, vals = idx[fast], vals[fast]
        u = u[fast] if u is not None else None
    scales, values, decoded = _quantize_rows(vals, bits, block, u, want_decoded)
    if decoded is not None and not np.all(np.isfinite(decoded)):
        # What `roundtrip` raises for such a row: its decoder's overflow check.
        raise NonFiniteValues("a dequantized value overflows float32")
    if dense is not None and decoded is not None:
        dense.fast, dense.idx, dense.vals = fast, (None if k >= d else idx), decoded
    index, ids, params = _index_sections(idx, d, codec.config.index)

    fp = codec.spec.fingerprint
    cap = codec.limits.frame_cap(codec.spec)
    wire_block = codec.quantize.block
    zstd = codec.zstd.zstd
    sb = 0 if scales is None else scales.shape[1]
    vb = values.shape[1]
    ids_l, params_l = ids.tolist(), params.tolist()
    for j, i in enumerate(fast.tolist()):
        ix = index[j]
        sc = b"" if scales is None else scales[j].tobytes()
        raw = b"".join((ix, sc, values[j].tobytes()))
        # ZstdStage.encode: zstd only when strictly shorter.
        payload, flags = raw, 0
        if raw:
            packed = zstd.compress(raw)  # with its window cap, as the single encoder
            if len(packed) < len(raw):
                payload, flags = packed, FLAG_ZSTD
        check_frame_fits(len(payload), cap)  # as the single encoder
        body = (
            _HEADER.pack(
                UPDATE_MAGIC,
                WIRE_VERSION,
                flags,
                HEADER_LEN,
                fp,
                d,
                k,
                bits,
                ids_l[j],
                params_l[j],
                0,
                wire_block,
                float(weights[i]),
                len(ix),
                sb,
                vb,
                len(payload),
            )  # fmt: skip
            + payload
        )
        frames[i] = body + zlib.crc32(body).to_bytes(CRC_LEN, "little")
    return frames, dense


def encode_many(
    codec: UpdateCodec,
    updates: npt.ArrayLike,
    rngs: Sequence[np.random.Generator],
    weights: Sequence[float],
) -> list[bytes]:
    """`[codec.encode(updates[i], rngs[i], weights[i])[0] for i in range(n)]`, byte for byte.

    updates: float32[n, d]; rngs: n generators, drawn in row order (they may be shared);
    weights: n example counts >= 0. Configurations the batch path does not cover (sampled or
    per-tensor top-k, d >= 65,536) run the single encoder row by row.
    """
    frames, _ = _encode_batch(codec, updates, rngs, weights, want_decoded=False)
    return frames


def roundtrip_many(
    codec: UpdateCodec,
    updates: npt.ArrayLike,
    rngs: Sequence[np.random.Generator],
    weights: Sequence[float],
) -> tuple[list[bytes], F32]:
    """`(frames, decoded float32[n, d])`: row i is `codec.roundtrip(updates[i], rngs[i],
    weights[i])` without its report, bit for bit."""
    frames, decoded = _encode_batch(codec, updates, rngs, weights, want_decoded=True)
    assert decoded is not None
    dense = np.zeros((len(frames), codec.spec.size), dtype=np.float32)
    decoded.scatter(dense, subtract=False)
    return frames, dense


def feedback_step_many(
    feedbacks: Sequence[ErrorFeedback],
    deltas: npt.ArrayLike,
    codec: UpdateCodec,
    rngs: Sequence[np.random.Generator],
    weights: Sequence[float],
) -> tuple[list[bytes], F32]:
    """`feedbacks[i].step(deltas[i], codec, rngs[i], weights[i])` for every row, bit for bit.

    Returns the frames and `u = deltas + residuals` (float32[n, d], what each device encoded);
    every feedback's residual becomes `u[i] - decoded[i]` (its own array). The feedbacks must
    be distinct objects (one per device).
    """
    arr = np.asarray(deltas)
    n = len(feedbacks)
    size = codec.spec.size
    if arr.shape != (n, size) or arr.dtype != np.float32:
        raise ValueError(f"deltas must be float32[{n}, {size}], got {arr.dtype}{list(arr.shape)}")
    for fb in feedbacks:
        if fb.size != size:
            raise ValueError(f"delta must be float32[{fb.size}], got float32[{size}]")
    if len({id(fb) for fb in feedbacks}) != n:
        # A loop would chain the steps of a repeated state; a batch cannot.
        raise ValueError("feedbacks must be distinct ErrorFeedback objects")
    u = np.stack([fb.held() for fb in feedbacks]) if n else np.zeros((0, size), np.float32)
    with np.errstate(over="ignore"):
        np.add(arr, u, out=u)  # delta + residual, as ErrorFeedback.step adds them
    if not np.all(np.isfinite(u)):
        raise ValueError(SUM_OVERFLOW)  # as ErrorFeedback.step; no feedback changes
    frames, decoded = _encode_batch(codec, u, rngs, weights, want_decoded=True)
    assert decoded is not None
    # u - decoded, where decoded is zero off its indices: subtracted only there (same floats:
    # x - 0.0 is x), without an [n, d] dense temporary.
    new = u.copy()
    with np.errstate(over="ignore"):
        decoded.scatter(new, subtract=True)
    if not np.all(np.isfinite(new)):
        # What ErrorFeedback.step raises for such a row; here no feedback changes at all.
        raise ValueError(RESIDUAL_OVERFLOW)
    for i, fb in enumerate(feedbacks):
        fb.residual = new[i].copy()
    return frames, u


# -- decoding -------------------------------------------------------------------------------


def _header_ok(h: npt.NDArray[Any], lens: I64, fp: int, d: int) -> npt.NDArray[np.bool_]:
    """Every header check of `parse_header` except the CRC, vectorised (True: passes all)."""
    k = h["k"].astype(np.int64)
    bits = h["bits"].astype(np.int64)
    index_id = h["index_id"].astype(np.int64)
    param = h["param"].astype(np.int64)
    block = h["block"].astype(np.int64)
    ib = h["index_bytes"].astype(np.int64)
    sb = h["scale_bytes"].astype(np.int64)
    vb = h["value_bytes"].astype(np.int64)
    pb = h["payload_bytes"].astype(np.int64)
    weight = h["weight"]
    flags = h["flags"]
    ok = (
        (h["magic"] == _MAGIC_U32)
        & (h["version"] == WIRE_VERSION)
        & (h["header_len"] == HEADER_LEN)
        & (lens == HEADER_LEN + pb + CRC_LEN)
        & ((flags & ~np.uint8(FLAG_ZSTD)) == 0)
        & (h["reserved"] == 0)
        & (h["fingerprint"] == np.uint64(fp))
        & (h["d"] == d)
        & (k <= d)
        & (index_id <= 3)
        & np.where(index_id >= 2, param < d.bit_length(), param == 0)
        & ((index_id != 0) | (k == d))
        & np.isfinite(weight)
        & (weight >= 0)
        & (weight <= MAX_WEIGHT)
    )
    quant = (bits == 1) | (bits == 2) | (bits == 4) | (bits == 8)
    ok &= quant | (bits == 16) | (bits == 32)
    ok &= np.where(quant, (block >= MIN_BLOCK) & (block <= MAX_BLOCK), block == 0)
    safe_block = np.maximum(block, 1)
    want_sb = np.where(quant, 8 * _ceil_div(k, safe_block), 0)
    want_vb = np.where(quant, _ceil_div(k * bits, 8), np.where(bits == 16, 2 * k, 4 * k))
    ok &= (sb == want_sb) & (vb == want_vb)
    nlow = _ceil_div(k * param, 8)
    lo = np.select([index_id == 0, index_id == 1], [0, _ceil_div(d, 8)], nlow + _ceil_div(k, 8))
    span = np.where(index_id == 2, np.maximum(d - k, 0) >> param, max(d - 1, 0) >> param)
    hi = np.select(
        [index_id == 0, index_id == 1], [0, _ceil_div(d, 8)], nlow + _ceil_div(k + span, 8)
    )
    ok &= (lo <= ib) & (ib <= hi)
    raw = ib + sb + vb
    zst = (flags & FLAG_ZSTD) != 0
    ok &= np.where(zst, pb < raw, pb == raw)
    return np.asarray(ok, dtype=np.bool_)


def _gather(buf: U8, starts: I64, width: int) -> U8:
    """uint8[len(starts), width]: `buf[s : s + width]` for each start (all in range)."""
    if width == 0:
        return np.zeros((starts.shape[0], 0), dtype=np.uint8)
    if width > 64:
        # Wide sections: row slices beat an [n, width] int64 index matrix.
        return np.stack([buf[s : s + width] for s in starts.tolist()])
    out: U8 = buf[starts[:, None] + np.arange(width, dtype=np.int64)]
    return out


def _unpack_fields(mat: U8, k: int, width: int) -> tuple[I64, npt.NDArray[np.bool_]]:
    """Rows of `width`-bit fields (LSB first) as int64[g, k], and whether each row's padding
    bits after the last field are zero."""
    g = mat.shape[0]
    if width == 0 or k == 0:
        return np.zeros((g, k), dtype=np.int64), np.ones(g, dtype=np.bool_)
    bits = np.unpackbits(mat, axis=1, bitorder="little")
    pad_ok = ~np.any(bits[:, k * width :], axis=1)
    fields = bits[:, : k * width].reshape(g, k, width)
    # One bit plane at a time: int64 temporaries of [g, k], not one int64 per bit (64 bytes
    # per section bit: 27 MB for a batch of 100 legal 4 kB frames with 12-bit fields).
    vals = fields[:, :, 0].astype(np.int64)
    for j in range(1, width):
        vals |= fields[:, :, j].astype(np.int64) << j
    return vals, pad_ok


def _unpack_small_rows(mat: U8, k: int, width: int) -> tuple[U8, npt.NDArray[np.bool_]]:
    """Rows of 1/2/4/8-bit codes as uint8[g, k] and whether the padding is zero."""
    g = mat.shape[0]
    if width == 8:
        return mat, np.ones(g, dtype=np.bool_)
    per = 8 // width
    mask = np.uint8((1 << width) - 1)
    grid = np.empty((g, mat.shape[1], per), dtype=np.uint8)
    for j in range(per):
        np.bitwise_and(mat >> np.uint8(j * width), mask, out=grid[:, :, j])
    fields = grid.reshape(g, -1)
    return fields[:, :k], ~np.any(fields[:, k:], axis=1)


def _decode_index(
    buf: U8, starts: I64, ib: I64, wire_id: int, k: int, d: int, param: int
) -> tuple[I64, npt.NDArray[np.bool_]]:
    """Index sections of one layout: int64[g, k] and which rows pass every check."""
    g = starts.shape[0]
    ok = np.ones(g, dtype=np.bool_)
    if wire_id == 0:
        return np.tile(np.arange(d, dtype=np.int64), (g, 1)), ok
    if k == 0:
        # Only the single decoder's exact messages matter here; such rows are rare.
        return np.zeros((g, 0), dtype=np.int64), np.zeros(g, dtype=np.bool_)
    if wire_id == 1:
        mat = _gather(buf, starts, _ceil_div(d, 8))
        if d % 8:
            ok &= (mat[:, -1] >> np.uint8(d % 8)) == 0
        bits = np.unpackbits(mat, axis=1, count=d, bitorder="little")
        ok &= bits.sum(axis=1, dtype=np.int64) == k
        bits[~ok] = 0
        idx = np.zeros((g, k), dtype=np.int64)
        idx[ok] = np.flatnonzero(bits.view(np.bool_)).reshape(-1, k) % d
        return idx, ok
    nlow = packed_len(k, param)
    low, pad_ok = _unpack_fields(_gather(buf, starts, nlow), k, param)
    ok &= pad_ok
    ulen = ib - nlow
    width = int(ulen.max())
    ok &= ulen >= 1
    if width == 0:
        return np.zeros((g, k), dtype=np.int64), np.zeros(g, dtype=np.bool_)
    pos = starts[:, None] + nlow + np.arange(width, dtype=np.int64)
    inside = np.arange(width, dtype=np.int64)[None, :] < ulen[:, None]
    mat = np.where(inside, buf[np.minimum(pos, buf.shape[0] - 1)], np.uint8(0)).astype(np.uint8)
    last = mat[np.arange(g), np.maximum(ulen - 1, 0)]
    ok &= last != 0
    bits = np.unpackbits(mat, axis=1, bitorder="little")
    ok &= bits.sum(axis=1, dtype=np.int64) == k
    bits[~ok] = 0
    ones = np.zeros((g, k), dtype=np.int64)
    ones[ok] = np.flatnonzero(bits.view(np.bool_)).reshape(-1, k) % bits.shape[1]
    if wire_id == 2:
        idx = np.diff(ones, axis=1, prepend=np.int64(-1)) - 1
        idx <<= param
        idx |= low
        idx += 1
        np.cumsum(idx, axis=1, out=idx)
        idx -= 1
    else:
        idx = ones - np.arange(k, dtype=np.int64)
        idx <<= param
        idx |= low
        if k > 1:
            ok &= np.all(idx[:, 1:] > idx[:, :-1], axis=1)
    ok &= (idx[:, 0] >= 0) & (idx[:, -1] < d)
    return idx, ok


def _decode_values(
    buf: U8, starts: I64, k: int, bits: int, block: int, sb: int, vb: int
) -> tuple[F32, npt.NDArray[np.bool_]]:
    """Scale and value sections of one layout: float32[g, k] and which rows pass every check."""
    g = starts.shape[0]
    ok = np.ones(g, dtype=np.bool_)
    vmat = _gather(buf, starts + sb, vb)
    if bits in (16, 32):
        out = vmat.view("<f2" if bits == 16 else "<f4").astype(np.float32)
        ok &= np.all(np.isfinite(out), axis=1)
        return out, ok
    sc = _gather(buf, starts, sb).view("<f4").astype(np.float32)
    ok &= np.all(np.isfinite(sc), axis=1)
    sc = np.where(ok[:, None], sc, np.float32(0))
    lo, hi = sc[:, 0::2], sc[:, 1::2]
    ok &= np.all(lo <= hi, axis=1)
    codes, pad_ok = _unpack_small_rows(vmat, k, bits)
    ok &= pad_ok

    def expand(per_block: F32) -> F32:
        return _expand_rows(per_block, block, k)

    if bits == 1:
        out = np.where(codes == 1, expand(hi), expand(lo))
    else:
        ok &= np.all(lo >= 0, axis=1)
        steps = np.float32((1 << (bits - 1)) - 1)
        with np.errstate(over="ignore", invalid="ignore"):
            step = ((hi - lo) / steps).astype(np.float32)
            out = (codes >> 1).astype(np.float32)
            out *= expand(step)
            out += expand(lo)
            out *= _SIGNS[codes & 1]
    ok &= np.all(np.isfinite(out), axis=1)
    return out.astype(np.float32, copy=False), ok


def decode_many(codec: UpdateCodec, frames: Sequence[bytes]) -> list[DecodedFrame | CodecError]:
    """`codec.decode_frame(f)` for every frame, under the same limits: a frame's entry is its
    `DecodedFrame`, or the `CodecError` the single decoder raises for it. One bad frame does
    not affect the others. Raises `TypeError` (before decoding any) if a frame is not bytes."""

    spec, limits = codec.spec, codec.limits
    cap = limits.frame_cap(spec)
    views = [f if isinstance(f, bytes) else byte_view(f, "frame") for f in frames]
    # Other bytes-likes are copied once, unless above the cap: decode_frame refuses those
    # (from the caller's object, below) without a copy.
    oversized = {i for i, v in enumerate(views) if isinstance(v, memoryview) and v.nbytes > cap}
    blobs = [
        v if isinstance(v, bytes) else b"" if i in oversized else bytes(v)
        for i, v in enumerate(views)
    ]
    n = len(blobs)
    out: list[DecodedFrame | CodecError | None] = [None] * n
    lens = np.fromiter(map(len, blobs), dtype=np.int64, count=n)
    # A frame longer than this has a payload, so sections, above _BATCH_MAX_RAW: it would take
    # the single decoder anyway, and joining it into the batch buffer would only copy it.
    longest = min(cap, HEADER_LEN + _BATCH_MAX_RAW + CRC_LEN)
    fits = (lens >= HEADER_LEN + CRC_LEN) & (lens <= longest)
    slow: list[int] = np.flatnonzero(~fits).tolist()
    cand = np.flatnonzero(fits)
    if cand.shape[0]:
        # Its own frame: the batch buffers are freed on return, not kept alive by the
        # tracebacks of the errors the single decoder raises below.
        _decode_batch(codec, [blobs[i] for i in cand.tolist()], cand, lens[cand], out, slow)
    for i in sorted(slow):
        try:
            out[i] = codec.decode_frame(frames[i] if i in oversized else blobs[i])
        except CodecError as exc:
            out[i] = exc
    result: list[DecodedFrame | CodecError] = []
    for r in out:
        assert r is not None
        result.append(r)
    return result


def _decode_batch(
    codec: UpdateCodec,
    blobs: list[bytes],
    cand: I64,
    lens: I64,
    out: list[Any],
    slow: list[int],
) -> None:
    """Decode the candidate frames `blobs` (batch rows `cand`, lengths `lens`) together; the
    rows that fail a check or that the batch path does not cover go to `slow`."""
    spec, d = codec.spec, codec.spec.size
    # One buffer for the candidates only (a frame too long to be one is never copied into it):
    # headers and raw sections are read from it in place.
    joined = b"".join(blobs)
    view = memoryview(joined)
    buf = np.frombuffer(joined, dtype=np.uint8)
    offs = np.cumsum(lens) - lens
    h = _gather(buf, offs, HEADER_LEN).view(_HEADER_DTYPE).reshape(-1)
    ok = _header_ok(h, lens, int.from_bytes(spec.fingerprint, "little"), d)
    stored = _gather(buf, offs + lens - CRC_LEN, CRC_LEN).view("<u4").reshape(-1)
    ends = (offs + lens - CRC_LEN).tolist()
    computed = [zlib.crc32(view[o:e]) for o, e in zip(offs.tolist(), ends, strict=True)]
    ok &= np.array(computed, dtype=np.int64) == stored
    raw_total = (
        h["index_bytes"].astype(np.int64)
        + h["scale_bytes"].astype(np.int64)
        + h["value_bytes"].astype(np.int64)
    )
    # Big frames gain nothing from batching (their per-call overhead is already small
    # next to the work) and would cost extra copies: they take the single decoder.
    big = ok & (raw_total > _BATCH_MAX_RAW)
    ok &= ~big
    slow.extend(cand[~ok].tolist())
    good = np.flatnonzero(ok)
    h = h[good]
    rows = cand[good].tolist()
    starts = offs[good] + HEADER_LEN
    inflated = np.ones(len(rows), dtype=np.bool_)
    packed = np.flatnonzero(h["flags"] & np.uint8(FLAG_ZSTD))
    if packed.shape[0]:
        # Inflated sections go after the frames in a second buffer, one copy in all.
        extra: list[bytes] = []
        tail = buf.shape[0]
        raw_l = (
            h["index_bytes"].astype(np.int64)
            + h["scale_bytes"].astype(np.int64)
            + h["value_bytes"].astype(np.int64)
        ).tolist()
        pb_l = h["payload_bytes"].tolist()
        zstd = codec.zstd.zstd
        for j in packed.tolist():
            o = int(starts[j])
            try:
                sections = zstd.decompress(view[o : o + pb_l[j]], raw_l[j])
            except CodecError:
                inflated[j] = False
                continue
            starts[j] = tail
            tail += len(sections)
            extra.append(sections)
        buf = np.frombuffer(joined + b"".join(extra), dtype=np.uint8)
    _decode_groups(codec, rows, h, buf, starts, inflated, out, slow)


def _decode_groups(
    codec: UpdateCodec,
    rows: list[int],
    h: npt.NDArray[Any],
    buf: U8,
    starts: I64,
    inflated: npt.NDArray[np.bool_],
    out: list[Any],
    slow: list[int],
) -> None:
    """Decode rows that share (k, bits, block, coding, param) together; failures go to `slow`."""
    from ._codec import DecodedFrame

    d = codec.spec.size
    fingerprint = codec.spec.fingerprint
    cols = {name: h[name].tolist() for name in _HEADER_DTYPE.names or ()}
    groups: dict[tuple[int, int, int, int, int], list[int]] = defaultdict(list)
    for j in range(len(rows)):
        if inflated[j] and cols["k"][j] > 0:
            key = (
                cols["k"][j],
                cols["bits"][j],
                cols["block"][j],
                cols["index_id"][j],
                cols["param"][j],
            )
            groups[key].append(j)
        else:
            slow.append(rows[j])
    ib_all = h["index_bytes"].astype(np.int64)
    for (k, bits, block, wire_id, param), members in groups.items():
        sel = np.array(members, dtype=np.int64)
        st, ib = starts[sel], ib_all[sel]
        idx, ok_i = _decode_index(buf, st, ib, wire_id, k, d, param)
        sb, vb = cols["scale_bytes"][members[0]], cols["value_bytes"][members[0]]
        vals, ok_v = _decode_values(buf, st + ib, k, bits, max(block, 1), sb, vb)
        ok = (ok_i & ok_v).tolist()
        name = INDEX_CODINGS[wire_id].name
        for t, j in enumerate(members):
            if not ok[t]:
                slow.append(rows[j])
                continue
            header = FrameHeader(
                version=WIRE_VERSION,
                flags=cols["flags"][j],
                fingerprint=fingerprint,
                size=d,
                nnz=k,
                bits=bits,
                index_coding=name,
                index_param=param,
                block=block,
                weight=cols["weight"][j] + 0.0,  # -0.0 as +0.0, as parse_header returns it
                index_bytes=cols["index_bytes"][j],
                scale_bytes=sb,
                value_bytes=vb,
                payload_bytes=cols["payload_bytes"][j],
            )
            # Copies (k elements each), not row views: one kept update held its whole group's
            # [g, k] arrays alive.
            update = SparseUpdate(idx[t].copy(), vals[t].copy(), d)
            out[rows[j]] = DecodedFrame(update, header.weight, header)
