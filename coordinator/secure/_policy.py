"""Shared coordinate set S_r: which k coordinates every device sends in a secure round.

Per-device top-k cannot be masked (masks only cancel where everyone adds), so the coordinator
announces one public set per round. The default mixes exploitation (the top of an exponential
moving average of recent global-update magnitudes) with exploration (uniform coordinates from a
public seed), so coordinates that were never chosen still get their turn and the devices'
error-feedback residuals there are eventually sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from protocol.secagg import prg_bytes

__all__ = ["CoordinatePolicy", "TopKMixPolicy", "RandomPolicy", "public_seed"]


def public_seed(task_seed: int, round_id: int, label: bytes) -> bytes:
    """A 32-byte public seed for one round and use (coordinates, graph, rotation)."""
    base = task_seed.to_bytes(16, "little", signed=False) + round_id.to_bytes(16, "little")
    return prg_bytes(base, 32, b"public-seed-" + label)


def _random_subset(
    seed: bytes, size: int, k: int, exclude: npt.NDArray[np.int64] | None = None
) -> npt.NDArray[np.int64]:
    """k distinct coordinates of 0..size-1 (not in `exclude`), uniform, from the AES-CTR PRG."""
    keys = np.frombuffer(prg_bytes(seed, 8 * size, b"coordinates"), dtype="<u8").copy()
    if exclude is not None and exclude.size:
        keys[exclude] = np.iinfo(np.uint64).max
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.argpartition(keys, k - 1)[:k].astype(np.int64)


class CoordinatePolicy(Protocol):
    def select(
        self, round_id: int, size: int, k: int, score: npt.NDArray[np.float32] | None
    ) -> npt.NDArray[np.int64]:
        """Sorted unique int64[k] coordinates out of `size`; `score` is the coordinator's
        moving average of |global update| (float32[size]) or None before the first update."""
        ...


@dataclass(frozen=True, slots=True)
class TopKMixPolicy:
    """(1 - explore) * k coordinates by top score, the rest uniform from the public seed."""

    explore: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.explore <= 1.0:
            raise ValueError(f"explore must be in [0, 1], got {self.explore}")

    def select(
        self, round_id: int, size: int, k: int, score: npt.NDArray[np.float32] | None
    ) -> npt.NDArray[np.int64]:
        if not 1 <= k <= size:
            raise ValueError(f"k={k} outside 1..{size}")
        top = np.zeros(0, dtype=np.int64)
        if score is not None:
            n_top = min(int(round((1.0 - self.explore) * k)), int(np.count_nonzero(score)))
            if n_top > 0:
                top = np.argpartition(-score, n_top - 1)[:n_top].astype(np.int64)
        rest = _random_subset(public_seed(self.seed, round_id, b"coords"), size, k - top.size, top)
        return np.sort(np.concatenate([top, rest]))


@dataclass(frozen=True, slots=True)
class RandomPolicy:
    """k uniform coordinates from the public seed every round (no memory)."""

    seed: int = 0

    def select(
        self, round_id: int, size: int, k: int, score: npt.NDArray[np.float32] | None
    ) -> npt.NDArray[np.int64]:
        return np.sort(_random_subset(public_seed(self.seed, round_id, b"coords"), size, k))
