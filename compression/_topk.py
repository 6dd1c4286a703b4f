"""Top-k by magnitude: exact (argpartition) or sampled threshold (DGC), global or per tensor."""

from __future__ import annotations

import heapq
import math

import numpy as np
import numpy.typing as npt

from ._spec import ModelSpec

__all__ = ["select_topk", "split_k", "exact_topk", "sampled_topk"]

Indices = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]

# Below this many scalars a plain argpartition is as fast as any prefilter.
_PREFILTER_MIN = 1 << 16
_SAMPLE = 1 << 14


def _argpartition_top(mag: F32, k: int) -> Indices:
    n = mag.shape[0]
    if k >= n:
        return np.arange(n, dtype=np.int64)
    part = np.argpartition(mag, n - k)[n - k :]
    return np.sort(part).astype(np.int64, copy=False)


def _threshold(sample: F32, n: int, target: float) -> np.float32:
    """The sample's magnitude with about `target` of the n scalars above it."""
    m = sample.shape[0]
    rank = min(m - 1, max(0, m - 1 - int(math.ceil(target * m / n))))
    return np.float32(np.partition(sample, rank)[rank])


def exact_topk(mag: F32, k: int) -> Indices:
    """Sorted indices of the k largest `mag` (ties at the k-th value broken arbitrarily).

    On big vectors a threshold from a strided sample, set low enough to keep about 1.5k + 64
    candidates, prefilters the vector so argpartition runs on the candidates only; the result
    is still exact, and a too-high threshold falls back to the full argpartition.
    """
    n = int(mag.shape[0])
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if n < _PREFILTER_MIN or 4 * k > n:
        return _argpartition_top(mag, k)
    stride = max(1, n // _SAMPLE)
    t = _threshold(np.ascontiguousarray(mag[::stride]), n, 1.5 * k + 64 * stride)
    cand = np.flatnonzero(mag >= t)
    if cand.shape[0] < k:
        return _argpartition_top(mag, k)
    return cand[_argpartition_top(mag[cand], k)].astype(np.int64, copy=False)


def sampled_topk(mag: F32, k: int, rng: np.random.Generator) -> Indices:
    """DGC-style: threshold from a random sample, refined until the count is in [0.9k, k].

    More than k above the threshold: the k largest of those are kept (exact on a small set).
    Fewer than 0.9k: the threshold is re-estimated for proportionally more, up to 3 times,
    and then falls back to exact top-k.
    """
    n = int(mag.shape[0])
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if 4 * k > n or n < 4 * _SAMPLE:
        return _argpartition_top(mag, k)
    sample = mag[rng.integers(0, n, size=_SAMPLE)]
    target = float(k)
    for _ in range(3):
        t = _threshold(sample, n, target)
        cand = np.flatnonzero(mag >= t)
        c = int(cand.shape[0])
        if c > k:
            return cand[_argpartition_top(mag[cand], k)].astype(np.int64, copy=False)
        if c >= 0.9 * k:
            return cand.astype(np.int64, copy=False)
        target *= 1.1 * k / max(c, 1)
    return exact_topk(mag, k)


def split_k(spec: ModelSpec, k: int, mag: F32 | None = None) -> list[int]:
    """Each tensor's share of k for scope="per_tensor": min(k, d) in all, none above its size.

    In proportion to the sizes, largest remainders first (ties to the earlier tensor). A small
    tensor's proportional share can round to 0, and then it would get 0 every round: error
    feedback would only grow its residual and it would never be sent. So a non-empty tensor is
    left at 0 only when k cannot give every one of them a coordinate:

    - k >= the number of non-empty tensors: each that got 0 gets 1, taken (one at a time, in
      tensor order) from the tensor with the largest share at that moment, the earlier of
      equals. A split with no zero share is the proportional one unchanged.
    - k < that number: 1 each for the k tensors whose largest magnitude in `mag` (|u|, d
      values) is largest, the earlier of equals: global top-k with at most one coordinate per
      tensor. A tensor left out keeps its update in the error-feedback residual, and an update
      that keeps its sign grows it until its largest magnitude ranks: no tensor is left out
      for its size alone, but it can wait many rounds; global scope spends such a small k
      better. Without `mag`: the k largest tensors.
    """
    d = spec.size
    shares = [k * e.size / d for e in spec.entries]
    ks = [min(e.size, int(s)) for e, s in zip(spec.entries, shares, strict=True)]
    order = sorted(range(len(ks)), key=lambda i: shares[i] - int(shares[i]), reverse=True)
    rest = k - sum(ks)
    while rest > 0:
        moved = False
        for i in order:
            if rest and ks[i] < spec.entries[i].size:
                ks[i] += 1
                rest -= 1
                moved = True
        if not moved:
            break
    nonempty = [i for i, e in enumerate(spec.entries) if e.size > 0]
    starved = [i for i in nonempty if ks[i] == 0]
    if not starved:
        return ks
    if k >= len(nonempty):
        # sum(ks) == k >= len(nonempty) here (k < d, or no share would be 0), so while a
        # tensor is still at 0 another has at least 2: the heap is never empty when popped.
        heap = [(-kt, i) for i, kt in enumerate(ks) if kt > 1]
        heapq.heapify(heap)
        for i in starved:
            _, j = heapq.heappop(heap)
            ks[j] -= 1
            if ks[j] > 1:
                heapq.heappush(heap, (-ks[j], j))
            ks[i] = 1
        return ks
    entries = [spec.entries[i] for i in nonempty]
    if mag is None:
        rank = [float(e.size) for e in entries]
    else:
        rank = [float(mag[e.offset : e.offset + e.size].max()) for e in entries]
    top = sorted(range(len(nonempty)), key=lambda j: -rank[j])[: max(0, k)]
    ks = [0] * len(spec.entries)
    for j in top:
        ks[nonempty[j]] = 1
    return ks


def select_topk(
    u: F32, k: int, spec: ModelSpec, mode: str, scope: str, rng: np.random.Generator
) -> Indices:
    """Sorted int64 indices of (about, for "sampled") the k largest |u|, globally or per tensor."""
    mag = np.abs(u)
    if k >= u.shape[0]:
        return np.arange(u.shape[0], dtype=np.int64)

    def pick(m: F32, kk: int) -> Indices:
        return exact_topk(m, kk) if mode == "exact" else sampled_topk(m, kk, rng)

    if scope == "global":
        return pick(mag, k)
    parts = [
        pick(mag[e.offset : e.offset + e.size], kt) + e.offset
        for e, kt in zip(spec.entries, split_k(spec, k, mag), strict=True)
        if kt > 0
    ]
    return np.concatenate(parts).astype(np.int64, copy=False) if parts else np.zeros(0, np.int64)
