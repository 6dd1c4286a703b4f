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
