"""Small exact cases of the robust rules' measurements and corner paths.

Each test pins one documented behaviour with hand-computable numbers: empty rounds, the
measurements a round reports, the float64 fallback of the median of huge values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import (
    ClientUpdate,
    CoordinateMedian,
    RobustLearningRate,
    TrimmedMean,
    UpdateRows,
)


def cu(name: str, values: Sequence[float], weight: float = 1.0) -> ClientUpdate:
    v = np.asarray(values, dtype=np.float32)
    idx = np.flatnonzero(v).astype(np.int64)
    return ClientUpdate(name, SparseUpdate(idx, v[idx], v.shape[0]), weight)


def test_median_of_an_even_count_of_huge_values_is_their_mean_not_infinity() -> None:
    # float32's median of 3e38 and 3e38 adds them first (inf); the column is redone in float64.
    big = float(np.float32(3e38))
    out = CoordinateMedian().create(2).next((), [cu("a", [big, 1.0]), cu("b", [big, 3.0])])
    np.testing.assert_array_equal(out.result, np.array([big, 2.0], dtype=np.float32))


@pytest.mark.parametrize(
    ("beta", "n", "want"),
    [
        (0.1, 9, {"clients": 9, "trimmed_each_side": 0, "beta": 0.1, "guarantee_holds": False}),
        (0.1, 10, {"clients": 10, "trimmed_each_side": 1, "beta": 0.1, "guarantee_holds": True}),
        (0.0, 10, {"clients": 10, "trimmed_each_side": 0}),
        (0.2, 0, {"clients": 0, "trimmed_each_side": 0}),
    ],
)
def test_trimmed_mean_measures_its_trim_and_whether_it_tolerates_anyone(
    beta: float, n: int, want: dict[str, object]
) -> None:
    ups = [cu(f"d{i}", [float(i)]) for i in range(n)]
    out = TrimmedMean(beta).create(1).next((), ups)
    assert out.measurements == want


def test_an_empty_rlr_round_is_zero_and_caps_nothing() -> None:
    out = RobustLearningRate(theta=2).create(3).next((), [])
    np.testing.assert_array_equal(out.result, np.zeros(3, np.float32))
    assert out.measurements == {
        "clients": 0,
        "theta": 0.0,
        "theta_capped": False,
        "low_agreement_coords": 0,
    }


def test_measured_squared_norms_survive_a_subset_and_sit_on_the_gram_diagonal() -> None:
    # `with_sq_norms` documents that `subset` keeps the caller's measured values (the anomaly
    # screen's, taken on the rows themselves) and that `gram` puts them on its diagonal.
    x = np.array([[1, 2, 0], [0, 3, 4], [5, 0, 1]], dtype=np.float32)
    ups = [SparseUpdate(np.arange(3, dtype=np.int64), r, 3) for r in x]
    measured = np.array([7.0, 11.0, 13.0])
    rows = UpdateRows(ups, 3).with_sq_norms(measured)
    sub = rows.subset([2, 0])
    np.testing.assert_array_equal(sub.sq_norms(), [13.0, 7.0])
    np.testing.assert_array_equal(np.diagonal(sub.gram()), [13.0, 7.0])
    # An unmeasured subset takes the true squared norms.
    np.testing.assert_allclose(UpdateRows(ups, 3).subset([2, 0]).sq_norms(), [26.0, 5.0])
