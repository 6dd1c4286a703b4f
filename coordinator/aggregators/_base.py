"""Aggregation as composable value objects (factory -> process), after TFF's aggregator factories.

A factory holds configuration only. `create(size)` returns a process for vectors of `size`
float32 scalars, with `initialize() -> state` and `next(state, updates) -> AggregateOutput`.
Wrappers take the wrapped factory in an `inner` slot and nest measurements under `"inner"`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from compression import SparseUpdate

__all__ = [
    "ClientUpdate",
    "AggregateOutput",
    "AggregationProcess",
    "AggregatorFactory",
    "Measurements",
    "NonFiniteReportError",
    "check_finite_reports",
    "saturate_f32",
    "sparse_weighted_sum",
    "stages",
]

Measurements = dict[str, Any]


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


def sparse_weighted_sum(
    updates: Sequence[SparseUpdate], weights: Sequence[float], size: int
) -> npt.NDArray[np.float64] | None:
    """`acc = zeros(size); for u, w: u.add_to(acc, w)` in one pass, bit for bit, or None.

    `add_to` adds the float32 product `w * values` into a float64 accumulator, update after
    update; `np.bincount` adds the same products in the same order, starting from the same
    zeros, so the sums are identical. Returns None (the caller loops instead) when a row is
    not a plain `SparseUpdate` with strictly increasing indices in [0, size), where `add_to`'s
    fancy-index semantics could differ from a sum.
    """
    if not updates:
        return np.zeros(size, dtype=np.float64)
    for u in updates:
        if type(u) is not SparseUpdate or u.indices.ndim != 1:
            return None
    idx = np.concatenate([u.indices for u in updates])
    if idx.shape[0] == 0:
        return np.zeros(size, dtype=np.float64)
    if idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= size:
        return None
    lengths = np.fromiter((u.indices.shape[0] for u in updates), dtype=np.int64)
    step = np.diff(idx)
    # Within every row the indices must increase; row boundaries may go down.
    first = np.cumsum(lengths)[:-1] - 1
    step[first[(first >= 0) & (first < step.shape[0])]] = 1
    if np.any(step <= 0):
        return None
    products = np.concatenate([w * u.values for u, w in zip(updates, weights, strict=True)])
    if products.shape != idx.shape:
        return None
    acc = np.bincount(idx, weights=products.astype(np.float64), minlength=size)
    return np.asarray(acc, dtype=np.float64)
