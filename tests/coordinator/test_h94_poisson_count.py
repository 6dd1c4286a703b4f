"""Under Poisson sampling DPMean's measurements do not carry the number of reports.

Add/remove accounting covers (noised sum) / (fixed denominator) only: adding one device changes
the count by one, so an exact count beside the release is an un-noised statistic with
sensitivity 1 (epsilon infinite for it). DPMean published it twice, as its own `clients` and
in its inner mean's `clients` and `total_weight`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compression import SparseUpdate
from coordinator.aggregators import ClientUpdate, DPMean, FedAvg
from coordinator.privacy import FixedSizeSampling, PoissonSampling


def _round(dp: DPMean, n: int) -> dict[str, Any]:
    rng = np.random.default_rng(n)
    updates = [
        ClientUpdate(
            f"d{i}", SparseUpdate.from_dense(rng.standard_normal(5).astype(np.float32)), 1.0
        )
        for i in range(n)
    ]
    proc = dp.create(5)
    return dict(proc.next(proc.initialize(), updates).measurements)


def _numbers(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, bool):
        return []
    return [float(value)] if isinstance(value, int | float) else []


def test_poisson_measurements_do_not_depend_on_the_number_of_reports() -> None:
    # Prepare: the same configuration, rounds of 7 and of 9 reports (fixed clip: nothing in
    # the measurements is noised, so nothing there may differ)
    dp = DPMean(
        1.0,
        clip=1.0,
        inner=FedAvg(uniform=True),
        denominator=8.0,
        sampling=PoissonSampling(0.08),
        seed=3,
    )
    # Execute
    seven, nine = _round(dp, 7), _round(dp, 9)
    # Assert: before, `clients` (7 vs 9) and the inner's `clients` and `total_weight` differed
    assert seven == nine
    assert 7.0 not in _numbers(seven) and 9.0 not in _numbers(nine)


def test_fixed_size_sampling_still_reports_the_public_count() -> None:
    # Under fixed-size sampling the count is public (replace-one), and the service shows it.
    dp = DPMean(
        1.0, clip=1.0, inner=FedAvg(uniform=True), sampling=FixedSizeSampling(100, 10), seed=3
    )
    got = _round(dp, 7)
    assert got["clients"] == 7
    assert got["inner"]["clients"] == 7
