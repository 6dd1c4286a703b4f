"""FedAvg (and a server optimizer behind it) refuses a report holding NaN or infinity (s45).

The robust rules raised `NonFiniteReportError` for such a report; the mean returned an inf
(or NaN) coordinate, which `avgm` then saturated to a finite 3.4e38 and stepped by. Library
only: the service's frame decoders refuse non-finite values before any aggregator runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import ClientUpdate, build_aggregator
from coordinator.aggregators._base import NonFiniteReportError


def _reports(bad: float) -> list[ClientUpdate]:
    def one(dev: str, idx: list[int], vals: list[float]) -> ClientUpdate:
        update = SparseUpdate(np.array(idx, np.int64), np.array(vals, np.float32), 4)
        return ClientUpdate(dev, update, 1.0)

    return [one("a", [0, 1], [bad, 1.0]), one("b", [0], [1.0])]


@pytest.mark.parametrize("spec", ["fedavg", "avgm", "adam", "fedavg:max_weight=5"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_non_finite_report_is_refused_naming_it(spec: str, bad: float) -> None:
    # Prepare
    process = build_aggregator(spec).create(4)
    # Execute / Assert: before, fedavg gave [inf, 0.5, 0, 0] and avgm [3.4e38, 0.5, 0, 0]
    with pytest.raises(NonFiniteReportError, match="report from a holds NaN or infinity"):
        process.next(process.initialize(), _reports(bad))


def test_finite_reports_whose_float32_products_overflow_still_average() -> None:
    # Prepare: 3e38 from two devices of weight 4: the float32 products overflow, the float64
    # sum does not (the path the check sits in)
    big = SparseUpdate(np.array([0], np.int64), np.array([3e38], np.float32), 4)
    reports = [ClientUpdate("a", big, 4.0), ClientUpdate("b", big, 4.0)]
    process = build_aggregator("fedavg").create(4)
    # Execute
    out = process.next(process.initialize(), reports)
    # Assert
    assert np.float32(out.result[0]) == np.float32(3e38)
