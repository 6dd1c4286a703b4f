"""Aggregation as composable value objects (factory -> process), after TFF's aggregator factories.

A factory holds configuration only. `create(size)` returns a process for vectors of `size`
float32 scalars, with `initialize() -> state` and `next(state, updates) -> AggregateOutput`.
Wrappers take the wrapped factory in an `inner` slot and nest measurements under `"inner"`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from compression import SparseUpdate
from compression._config import LARGE_WHOLE, short_digits, short_whole

__all__ = [
    "ClientUpdate",
    "AggregateOutput",
    "AggregationProcess",
    "AggregatorFactory",
    "Measurements",
    "NonFiniteReportError",
    "check_finite_reports",
    "finite_number",
    "saturate_f32",
    "short_digits",
    "shown",
    "sparse_weighted_sum",
    "stages",
]

Measurements = dict[str, Any]


def finite_number(v: float) -> bool:
    """v is a finite number a float can hold. An int past float's range (10**400) is not:
    math.isfinite of one raises OverflowError, and np.isfinite of one TypeError, instead of
    answering, so a parameter check on either was a traceback, not its ValueError."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def shown(v: object) -> str:
    """`v` as a refusal message writes it: `repr(v)` (a number's `str`), except that an int of 16 digits or more
    is written with 6 significant digits in exponent form (1e+308, -1.23457e+400), never its
    every digit: a spec's `geomed:max_iter=1e308` reaches its check as int(1e308), and its
    refusal printed all 309 digits (an int past 4,300 digits could not be printed at all:
    Python's int-to-text limit raised ValueError instead of the refusal). The shortening is
    compression's (`short_whole`), whose own refusals write numbers the same way."""
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= LARGE_WHOLE:
        return short_whole(v)  # from the int's binary digits: no int-to-text limit
    if isinstance(v, float | np.floating | np.integer) and not isinstance(v, bool):
        return str(v)  # 2.5, not numpy's np.float64(2.5)
    return repr(v)


@dataclass(frozen=True, slots=True)
class ClientUpdate:
    """One device's decoded update for a round. `weight` is its example count (FedAvg weight)."""

    device_id: str
    update: SparseUpdate
    weight: float


@dataclass(slots=True)
class AggregateOutput:
    """What a process returns: new state, the aggregate float32[d], and nested measurements."""

    state: Any
    result: npt.NDArray[np.float32]
    measurements: Measurements = field(default_factory=dict)


class AggregationProcess(Protocol):
    def initialize(self) -> Any: ...

    def next(self, state: Any, updates: Sequence[ClientUpdate]) -> AggregateOutput: ...


class AggregatorFactory(Protocol):
    def create(self, size: int) -> AggregationProcess: ...


class NonFiniteReportError(ValueError):
    """A report handed to an aggregator holds NaN or infinity.

    Decoders refuse such frames (`compression.NonFiniteValues`), so this means a caller built a
    `ClientUpdate` by hand; the robust aggregators and screens refuse it before any arithmetic,
    so no state is touched and the engine keeps its model.
    """


def stages(factory: object) -> list[object]:
    """`factory`'s stages, outermost first, found through wrappers' `.inner` (a server
    optimizer, a screen, a clip around a mean: the chains `build_aggregator` makes are a few
    stages deep; at most 64 are followed)."""
    out: list[object] = []
    node: object | None = factory
    while node is not None and len(out) < 64:
        out.append(node)
        node = getattr(node, "inner", None)
    return out


def check_finite_reports(updates: Sequence[ClientUpdate]) -> None:
    """Raise NonFiniteReportError naming the first report with a NaN or infinite value."""
    for cu in updates:
        if not np.all(np.isfinite(cu.update.values)):
            raise NonFiniteReportError(f"report from {cu.device_id} holds NaN or infinity")


_F32_MAX = np.float32(np.finfo(np.float32).max)


def saturate_f32(x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """x as float32, values past float32's range (an overflow, inf) clipped to +-max. Finite
    in-range values keep their bits (float64 ones round as a plain cast would)."""
    out: npt.NDArray[np.float32] = np.clip(x, -_F32_MAX, _F32_MAX).astype(np.float32, copy=False)
    return out


# Coordinates summed per `np.add.at` call in `sparse_weighted_sum`: its temporaries are two
# buffers of this many int64 and float64 and one row piece's products, whatever the number of
# clients (a single pass over all rows took about 28 bytes per stored value: 359 MB at the
# close of 64 dense 199k-parameter updates).
SUM_CHUNK = 1 << 16


def _summable(u: SparseUpdate, size: int) -> bool:
    """Whether `add_to` on this row is a plain sum: a `SparseUpdate` whose indices are 1-D
    integers, strictly increasing, in [0, size), with one value each."""
    if type(u) is not SparseUpdate:
        return False
    idx, vals = u.indices, u.values
    if not isinstance(idx, np.ndarray) or not isinstance(vals, np.ndarray):
        return False
    if idx.ndim != 1 or idx.dtype.kind not in "iu" or vals.shape != idx.shape:
        return False
    k = idx.shape[0]
    if k == 0:
        return True
    # More than size strictly increasing indices cannot fit in [0, size): checked first, so the
    # comparison below allocates at most size bytes.
    if k > size or idx[0] < 0 or idx[-1] >= size:
        return False
    return bool(np.all(idx[1:] > idx[:-1]))


def sparse_weighted_sum(
    updates: Sequence[SparseUpdate], weights: Sequence[float], size: int
) -> npt.NDArray[np.float64] | None:
    """`acc = zeros(size); for u, w: u.add_to(acc, w)`, bit for bit, or None.

    `add_to` adds the product `w * values` (float32 for float32 values) into a float64
    accumulator, update after update. Here the same products, cast to float64, go through
    `np.add.at` in chunks of `SUM_CHUNK` coordinates taken in row order, so each coordinate
    receives the same additions in the same order from the same zeros and the sums are
    identical. Memory: the float64[size] accumulator plus at most 24 · SUM_CHUNK bytes (1.5 MB:
    the int64 and float64 buffers and one piece's products), whatever the number of rows.
    Returns None (the caller loops instead) when a row is not a plain `SparseUpdate` with
    strictly increasing integer indices in [0, size) and as many values, or its products are
    not floats of at most 64 bits, where `add_to`'s fancy-index semantics or rounding could
    differ from this sum.
    """
    rows = list(zip(updates, weights, strict=True))
    if not all(_summable(u, size) for u, _ in rows):
        return None
    acc = np.zeros(size, dtype=np.float64)
    chunk = min(sum(u.indices.shape[0] for u, _ in rows), SUM_CHUNK)
    if chunk == 0:
        return acc
    idx_buf = np.empty(chunk, dtype=np.int64)
    val_buf = np.empty(chunk, dtype=np.float64)
    fill = 0
    for u, w in rows:
        k = u.indices.shape[0]
        start = 0
        while start < k:
            take = min(k - start, chunk - fill)
            # Elementwise, so a piece's products are the whole row's, bit for bit.
            products = w * u.values[start : start + take]
            if products.dtype.kind != "f" or products.dtype.itemsize > 8:
                # A long double product would be added unrounded by add_to: not a float64 sum.
                return None
            idx_buf[fill : fill + take] = u.indices[start : start + take]
            val_buf[fill : fill + take] = products
            del products  # freed before the next piece's products exist
            fill += take
            start += take
            if fill == chunk:
                _add_at(acc, idx_buf, val_buf)
                fill = 0
    if fill:
        _add_at(acc, idx_buf[:fill], val_buf[:fill])
    return acc


def _add_at(
    acc: npt.NDArray[np.float64], idx: npt.NDArray[np.int64], values: npt.NDArray[np.float64]
) -> None:
    # Two float32 products that overflowed to +inf and -inf make a NaN: the caller checks the
    # sum (FedAvg redoes it in float64), and np.bincount, used before, added silently too.
    with np.errstate(invalid="ignore"):
        np.add.at(acc, idx, values)
