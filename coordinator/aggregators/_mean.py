"""FedAvg: the example-weighted mean of decoded (sparse) updates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._base import AggregateOutput, ClientUpdate

__all__ = ["FedAvg"]


@dataclass(frozen=True, slots=True)
class FedAvg:
    """Weighted mean, sum_i w_i u_i / sum_i w_i, accumulated sparsely in float64.

    Memory: one float64[d] accumulator, whatever the number of clients.
    `uniform=True` ignores example counts (every device weighs 1).
    """

    uniform: bool = False

    def create(self, size: int) -> _FedAvgProcess:
        return _FedAvgProcess(size, self.uniform)


class _FedAvgProcess:
    def __init__(self, size: int, uniform: bool) -> None:
        self.size = size
        self.uniform = uniform

    def initialize(self) -> Any:
        return ()

    def next(self, state: Any, updates: Sequence[ClientUpdate]) -> AggregateOutput:
        acc = np.zeros(self.size, dtype=np.float64)
        total = 0.0
        for cu in updates:
            if cu.update.size != self.size:
                raise ValueError(f"update of size {cu.update.size}, expected {self.size}")
            w = 1.0 if self.uniform else float(cu.weight)
            if not np.isfinite(w) or w < 0:
                raise ValueError(f"invalid weight {cu.weight!r} from {cu.device_id}")
            cu.update.add_to(acc, w)
            total += w
        result = (acc / total).astype(np.float32) if total > 0 else acc.astype(np.float32)
        return AggregateOutput(state, result, {"clients": len(updates), "total_weight": total})
