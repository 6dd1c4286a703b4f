"""The result type of every naturally partitioned dataset."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mobile_sim.data import FederatedData

__all__ = ["NaturalData"]


@dataclass(frozen=True)
class NaturalData(FederatedData):
    """A `FederatedData` that also knows its natural clients.

    `train_groups[i]` holds the indices into `x_train` of natural client `group_names[i]` (a
    speaker, a synthetic device); pass it to `mobile_sim.partition.natural`. `test_groups[i]`
    indexes `x_test` the same way, for per-client evaluation.
    """

    train_groups: tuple[npt.NDArray[np.int64], ...] = ()
    test_groups: tuple[npt.NDArray[np.int64], ...] = ()
    group_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (len(self.train_groups) == len(self.test_groups) == len(self.group_names)):
            raise ValueError("train_groups, test_groups and group_names must have the same length")
