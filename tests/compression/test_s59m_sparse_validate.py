"""`SparseUpdate.validate()`, the check of the decoders' invariants for updates built by hand.

No compression test ran any of its four refusals (stop 59's mutation hunt: each raise removed,
`or` made `and`, `>= size` made `> size`, `<= 0` made `< 0`, all let through). Each case here is
one invariant broken by the smallest step from a valid update.
"""

from __future__ import annotations

import numpy as np
import pytest

from compression import SparseUpdate


def _update(indices: list[int], values: list[float], size: int = 10) -> SparseUpdate:
    return SparseUpdate(np.array(indices, np.int64), np.array(values, np.float32), size)


@pytest.mark.parametrize(
    "update",
    [
        _update([], []),
        _update([0], [1.0]),
        _update([9], [-1.0]),  # the last coordinate
        _update([0, 1, 9], [1.0, 0.0, -2.5]),
        SparseUpdate.from_dense(np.arange(4, dtype=np.float32)),
    ],
)
def test_a_valid_update_passes(update: SparseUpdate) -> None:
    update.validate()


@pytest.mark.parametrize(
    ("update", "message"),
    [
        (_update([0, 1], [1.0]), "indices and values must be 1-D and of equal length"),
        (
            SparseUpdate(np.zeros((1, 2), np.int64), np.zeros((1, 2), np.float32), 10),
            "indices and values must be 1-D and of equal length",
        ),
        (_update([-1, 3], [1.0, 2.0]), "index out of range"),
        (_update([3, 10], [1.0, 2.0]), "index out of range"),  # == size
        (_update([3, 3], [1.0, 2.0]), "indices not strictly increasing"),  # a repeat
        (_update([4, 3], [1.0, 2.0]), "indices not strictly increasing"),
        (_update([3], [np.nan]), "non-finite value"),
        (_update([3], [np.inf]), "non-finite value"),
    ],
)
def test_each_broken_invariant_is_refused(update: SparseUpdate, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        update.validate()
