"""Small exact cases of the robust rules' measurements and corner paths.

Each test pins one documented behaviour with hand-computable numbers: empty rounds, the
measurements a round reports, the float64 fallback of the median of huge values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import (
    Bucketing,
    CenteredClipping,
    CoordinateMedian,
    FedAvg,
    GeometricMedian,
    Krum,
    MomentumCosineFilter,
    NearestNeighborMixing,
    RobustLearningRate,
    TrimmedMean,
    UpdateRows,
)
from coordinator.aggregators._robust import _num

from .test_aggregators_robust_edges import cu


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


def test_geomed_restarts_from_the_median_when_a_large_minority_is_huge() -> None:
    # 4 identical reports of 10 at 1e20: from the mean, 100 Weiszfeld iterations close only a
    # fraction of the gap each, and leave the iterate far from the 6 honest reports. The
    # restart from the coordinate-wise median lands among them; its objective is lower.
    rng = np.random.default_rng(11)
    honest = rng.normal(size=(6, 8)).astype(np.float32)
    attack = np.repeat(np.float32(1e20) * rng.normal(size=(1, 8)).astype(np.float32), 4, axis=0)
    x = np.vstack([honest, attack])
    out = GeometricMedian().create(8).next((), [cu(f"d{i}", r) for i, r in enumerate(x)])
    meas = out.measurements
    assert meas["restarted_from_median"] is True and meas["iterations"] == 100
    # Among the honest reports (their spread is about 4; the mean-started iterate is ~1e3 off).
    assert np.linalg.norm(out.result - honest.mean(axis=0)) < 4.0
    x64 = x.astype(np.float64)
    objective = float(np.linalg.norm(x64 - out.result.astype(np.float64), axis=1).sum())
    assert meas["objective"] == pytest.approx(objective, rel=1e-9)


@pytest.mark.parametrize(
    "factory",
    [
        CoordinateMedian(),
        TrimmedMean(0.2),
        TrimmedMean(0.2, support=True),
        RobustLearningRate(theta=2),
        Krum(f=1),
        GeometricMedian(),
        CenteredClipping(tau=None),
    ],
    ids=lambda f: type(f).__name__,
)
def test_an_empty_round_is_zero_with_zero_clients(factory: object) -> None:
    proc = factory.create(3)  # type: ignore[attr-defined]
    out = proc.next(proc.initialize(), [])
    np.testing.assert_array_equal(out.result, np.zeros(3, np.float32))
    assert out.measurements["clients"] == 0


def test_centered_clipping_refuses_a_centre_of_the_wrong_size() -> None:
    proc = CenteredClipping(tau=1.0).create(3)
    with pytest.raises(ValueError, match="centered clipping state must be float32\\[3\\]"):
        proc.next(np.zeros(4, np.float32), [cu("a", [1.0, 2.0, 3.0])])


@pytest.mark.parametrize("in_a_row", [0, -1, 1.0, True])
def test_cosfilter_refuses_a_state_whose_distrust_count_is_not_a_positive_int(
    in_a_row: object,
) -> None:
    proc = MomentumCosineFilter(inner=FedAvg()).create(2)
    momentum, inner_state = proc.initialize()
    with pytest.raises(ValueError, match="distrusted rounds in a row must be an int >= 1"):
        proc.next((momentum, inner_state, in_a_row), [cu("a", [1.0, 0.0])])


def test_cosfilter_refuses_a_momentum_of_the_wrong_size() -> None:
    proc = MomentumCosineFilter(inner=FedAvg()).create(2)
    _, inner_state = proc.initialize()
    with pytest.raises(ValueError, match="cosine filter state must hold float32\\[2\\]"):
        proc.next((np.zeros(3, np.float32), inner_state), [cu("a", [1.0, 0.0])])


def test_geomed_stops_when_an_iteration_moves_the_iterate_by_less_than_tol() -> None:
    # Three points of a line segment: Weiszfeld from their mean converges on the middle one
    # in a few iterations, well before max_iter, and needs no restart.
    ups = [cu("a", [0.0, 1.0]), cu("b", [1.0, 1.0]), cu("c", [5.0, 1.0])]
    out = GeometricMedian(nu=1e-9, tol=1e-6).create(2).next((), ups)
    meas = out.measurements
    assert meas["iterations"] < 100 and "restarted_from_median" not in meas
    np.testing.assert_allclose(out.result, [1.0, 1.0], atol=1e-4)


@pytest.mark.parametrize(("f", "fraction"), [(0, False), (0.0, False), (1, False), (0.2, True)])
def test_only_a_fractional_f_is_measured_as_f_fraction(f: float, fraction: bool) -> None:
    ups = [cu(f"d{i}", [float(i), 1.0]) for i in range(6)]
    for factory in (Krum(f=f), NearestNeighborMixing(f=f, inner=FedAvg())):
        meas = factory.create(2).next((), ups).measurements
        assert ("f_fraction" in meas) is fraction
        if fraction:
            assert meas["f_fraction"] == f


@pytest.mark.parametrize(
    ("v", "text"),
    [
        (10**15, "1e+15"),
        (10**15 - 1, "999999999999999"),
        (1e15, "1e+15"),
        (2.0, "2"),
        (0.45, "0.45"),
    ],
)
def test_counts_from_1e15_on_are_written_in_exponent_form(v: float, text: str) -> None:
    assert _num(v) == text


def test_geomed_with_tol_0_stops_at_a_fixed_point() -> None:
    # Equal reports: the first iteration lands on them and the next step is exactly 0, which
    # tol = 0 accepts (a step "at most tol·||z||"), so the run converges without a restart.
    ups = [cu(f"d{i}", [3.0, -1.0]) for i in range(4)]
    out = GeometricMedian(tol=0.0).create(2).next((), ups)
    assert out.measurements["iterations"] == 1
    assert "restarted_from_median" not in out.measurements
    np.testing.assert_array_equal(out.result, np.array([3.0, -1.0], np.float32))


@pytest.mark.parametrize("seed", range(6))
def test_a_bucket_whose_counts_are_all_zero_weighs_nothing_behind_fedavg(seed: int) -> None:
    # Two reports declaring 0 examples: in a bucket together (some seeds), that bucket's
    # mean is moot and weighs 0; the round is FedAvg of the others whatever the shuffle.
    ups = [cu("z0", [9.0, 9.0], 0.0), cu("z1", [-7.0, 5.0], 0.0)]
    ups += [cu("a", [1.0, 2.0], 1.0), cu("b", [3.0, -2.0], 3.0)]
    out = Bucketing(2, inner=FedAvg(), seed=seed).create(2).next((0, ()), ups)
    np.testing.assert_allclose(out.result, [2.5, -1.0], rtol=1e-6)


def test_rlr_counts_as_low_agreement_only_coordinates_below_theta() -> None:
    # Votes |sum of signs| per coordinate: 3, 2 (exactly theta), 1.
    ups = [cu("a", [1.0, 1.0, 1.0]), cu("b", [1.0, 1.0, -1.0]), cu("c", [1.0, 0.0, 1.0])]
    out = RobustLearningRate(theta=2).create(3).next((), ups)
    assert out.measurements["low_agreement_coords"] == 1
    np.testing.assert_allclose(out.result, [1.0, 2 / 3, -1 / 3], rtol=1e-6)


def test_bucketing_counts_as_capped_only_counts_above_the_cap() -> None:
    ups = [cu("a", [1.0], 5.0), cu("b", [2.0], 6.0), cu("c", [3.0], 1.0), cu("d", [4.0], 9.0)]
    out = Bucketing(2, inner=FedAvg(max_weight=5.0)).create(1).next((0, ()), ups)
    assert out.measurements["weights_capped"] == 2


@pytest.mark.parametrize(
    ("factory", "n", "holds"),
    [
        (NearestNeighborMixing(f=2, inner=FedAvg()), 4, False),
        (NearestNeighborMixing(f=2, inner=FedAvg()), 5, True),
        (NearestNeighborMixing(f=0.2, inner=FedAvg()), 10, True),
        (NearestNeighborMixing(f=0.2, inner=FedAvg()), 4, False),
        (NearestNeighborMixing(f=0, inner=FedAvg()), 1, True),
        (Krum(f=0), 3, True),
        (Krum(f=0), 2, False),
        (Krum(f=1), 5, True),
        (Krum(f=0.2), 10, True),
        (Krum(f=0.2), 4, False),
    ],
)
def test_guarantee_holds_exactly_when_the_rule_s_bound_is_met(
    factory: object, n: int, holds: bool
) -> None:
    ups = [cu(f"d{i}", [float(i), 1.0]) for i in range(n)]
    out = factory.create(2).next((), ups)  # type: ignore[attr-defined]
    assert out.measurements["guarantee_holds"] is holds


@pytest.mark.parametrize("inner", [FedAvg(), FedAvg(uniform=True), CoordinateMedian()])
def test_bucketing_measures_capped_counts_only_behind_a_capped_fedavg(inner: Any) -> None:
    ups = [cu(f"d{i}", [float(i)], 10.0) for i in range(4)]
    out = Bucketing(2, inner=inner).create(1).next((0, inner.create(1).initialize()), ups)
    assert "weights_capped" not in out.measurements


@pytest.mark.parametrize("m", [None, 2])
def test_multikrum_with_f_0_over_two_reports_averages_both(m: int | None) -> None:
    out = Krum(f=0, m=m).create(2).next((), [cu("a", [1.0, 4.0]), cu("b", [3.0, -2.0])])
    np.testing.assert_allclose(out.result, [2.0, 1.0], rtol=1e-6)
    assert out.measurements["selected"] == ["a", "b"]


def test_cosfilter_state_counts_distrusted_rounds_in_a_row_and_forgets_them_when_trusted() -> None:
    proc = MomentumCosineFilter(inner=FedAvg(uniform=True)).create(2)
    state = (np.array([1.0, 0.0], np.float32), proc.initialize()[1])
    against = [cu(f"d{i}", [-1.0, 0.0]) for i in range(3)]
    counts = []
    # The second distrusted round restarts the momentum from its result (-e0 / 2), along
    # which the third round's reports point: trusted, and the count is dropped.
    for batch in (against, against, [cu("a", [-1.0, 0.1]), cu("b", [-0.5, 0.0])]):
        out = proc.next(state, batch)
        state = out.state
        counts.append(state[2] if len(state) == 3 else 0)
    assert counts == [1, 2, 0]
