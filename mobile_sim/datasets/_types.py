"""The result type of every naturally partitioned dataset."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mobile_sim.data import FederatedData

__all__ = ["NaturalSplit"]


@dataclass(frozen=True)
class NaturalSplit:
    """A dataset plus its natural clients.

    `groups[i]` holds the indices into `data.x_train` that belong to natural client `names[i]`
    (a speaker, a synthetic device); pass `groups` to `mobile_sim.partition.natural`.
    `test_groups[i]` indexes `data.x_test` the same way, for per-client evaluation.
    """

    data: FederatedData
    groups: tuple[npt.NDArray[np.int64], ...]
    test_groups: tuple[npt.NDArray[np.int64], ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not (len(self.groups) == len(self.test_groups) == len(self.names)):
            raise ValueError("groups, test_groups and names must have the same length")
