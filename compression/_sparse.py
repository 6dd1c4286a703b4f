"""A decoded update: sorted coordinates and their float32 values."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["SparseUpdate"]


@dataclass(frozen=True, slots=True)
class SparseUpdate:
    """`values[i]` belongs at flat coordinate `indices[i]` of a vector of `size` scalars.

    indices: int64[k], strictly increasing, in [0, size). values: float32[k], finite.
    Decoders guarantee both invariants; `validate()` checks them for updates built by hand.
    """

    indices: npt.NDArray[np.int64]
    values: npt.NDArray[np.float32]
    size: int

    @property
    def nnz(self) -> int:
        return int(self.indices.shape[0])

    @classmethod
    def from_dense(cls, dense: npt.NDArray[np.floating]) -> SparseUpdate:
        """All coordinates, including zeros (a dense update in sparse clothing)."""
        v = np.ascontiguousarray(dense, dtype=np.float32).reshape(-1)
        return cls(np.arange(v.shape[0], dtype=np.int64), v, int(v.shape[0]))

    def validate(self) -> None:
        if self.indices.shape != self.values.shape or self.indices.ndim != 1:
            raise ValueError("indices and values must be 1-D and of equal length")
        if self.nnz:
            if self.indices[0] < 0 or self.indices[-1] >= self.size:
                raise ValueError("index out of range")
            if np.any(np.diff(self.indices) <= 0):
                raise ValueError("indices not strictly increasing")
        if not np.all(np.isfinite(self.values)):
            raise ValueError("non-finite value")

    def to_dense(self) -> npt.NDArray[np.float32]:
        out = np.zeros(self.size, dtype=np.float32)
        out[self.indices] = self.values
        return out

    def add_to(self, acc: npt.NDArray[np.floating], scale: float = 1.0) -> None:
        """`acc[indices] += scale * values`, in place (indices are unique, so no collisions)."""
        acc[self.indices] += scale * self.values

    def squared_norm(self) -> float:
        v = self.values.astype(np.float64)
        return float(v @ v)
