"""coordinator/aggregators/_robust.py pinned where the existing tests let a mutant through
(helper s67b's mutation pass over the Byzantine-robust aggregators): each test checks values
against an independent numpy computation of the published rule, or a case small enough to
derive by hand, and fails against the mutant named in its comment.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import (
    AggregateOutput,
    Bucketing,
    CenteredClipping,
    ClientUpdate,
    FedAvg,
    GeometricMedian,
    MomentumCosineFilter,
    RobustLearningRate,
    UpdateRows,
)
from coordinator.aggregators._robust import _objective_gain

from .test_aggregators_robust import sparse_updates


def run(factory: Any, x: np.ndarray, rounds: int = 1) -> list[AggregateOutput]:
    """`rounds` rounds of the same reports, threading the state; every round's output."""
    process = factory.create(np.asarray(x).shape[1])
    state, outs = process.initialize(), []
    for _ in range(rounds):
        out = process.next(state, sparse_updates(x))
        state = out.state
        outs.append(out)
    return outs


def weiszfeld(x: np.ndarray, iters: int = 5000) -> np.ndarray:
    """The geometric median argmin_z sum_i ||z - x_i|| by plain Weiszfeld, from the mean."""
    y = np.asarray(x, dtype=np.float64)
    z = y.mean(axis=0)
    for _ in range(iters):
        w = 1.0 / np.maximum(np.linalg.norm(y - z, axis=1), 1e-300)
        z = (w[:, None] * y).sum(axis=0) / w.sum()
    return np.asarray(z, dtype=np.float64)


# -- robust learning rate (Ozdayi et al. 2021) --------------------------------------------------


def test_rlr_fractional_theta_needs_the_ceiling_of_theta_n_votes() -> None:
    # Mutant: need = floor(theta·n) instead of ceil (a vote of 1 then met theta·n = 1.2).
    # Prepare: 4 reports, theta = 0.3, so theta·n = 1.2 and a coordinate keeps its step only
    # with a sign vote |sum_i sign(y_ij)| of 2 or more. Coordinate 0: signs +, +, -, unsent
    # (vote 1); coordinate 1: +, +, unsent, unsent (vote 2); coordinate 2: all + (vote 4).
    x = np.array(
        [
            [1.0, 1.0, 1.0],
            [2.0, 3.0, 1.0],
            [-1.0, 0.0, 1.0],
            [0.0, 0.0, 1.0],
        ]
    )

    # Execute
    out = run(RobustLearningRate(theta=0.3), x)[0]

    # Assert: the rule written out: mean, times -1 where the vote is below theta·n.
    votes = np.abs(np.sign(x).sum(axis=0))
    want = np.where(votes >= 0.3 * 4, 1.0, -1.0) * x.mean(axis=0)
    np.testing.assert_allclose(want, [-0.5, 1.0, 1.0])
    np.testing.assert_allclose(out.result, want, rtol=1e-6)
    assert out.measurements["low_agreement_coords"] == 1


# -- geometric median (smoothed Weiszfeld, Pillutla et al. 2022) ---------------------------------


def test_geomed_with_nu_above_every_distance_is_the_mean() -> None:
    # Mutant: the distances floored at a fixed 1e-300 instead of `nu`.
    # Prepare: 5 points in the plane, all within 10 of each other and not symmetric, so that
    # their geometric median is not their mean.
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [4.0, 3.0], [1.0, 1.0]])
    mean = x.mean(axis=0)
    assert np.linalg.norm(weiszfeld(x) - mean) > 0.1

    # Execute: nu = 100, above every distance between the points and their mean.
    out = run(GeometricMedian(nu=100.0, max_iter=50, tol=1e-9), x)[0]

    # Assert: RFA's smoothed objective sum_i max(||z - x_i||, nu) weighs every point 1/nu
    # there, so a Weiszfeld step from the mean returns the mean: the answer is the mean, and
    # the objective measured is that smoothed one, 5 points times nu (mutant: the plain sum
    # of distances measured instead).
    np.testing.assert_allclose(out.result, mean, rtol=1e-6)
    assert out.measurements["objective"] == pytest.approx(5 * 100.0)


def test_geomed_stops_on_a_step_relative_to_the_iterate() -> None:
    # Mutant: stop when the step is below tol itself, not tol·||z||.
    # Prepare: points of norm about 1e-7 (float32 holds them exactly enough), and nu far below
    # their distances; the first Weiszfeld step from the mean moves z by less than 1e-6.
    base = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [4.0, 3.0], [1.0, 1.0]])
    scale = 1e-7
    x = (base * scale).astype(np.float32)

    # Execute
    out = run(GeometricMedian(nu=1e-20, max_iter=1000, tol=1e-9), x)[0]

    # Assert: the geometric median is scale-equivariant, so the answer is 1e-7 times the
    # geometric median of the unscaled points, to the relative tolerance asked for.
    want = weiszfeld(x.astype(np.float64) / scale) * scale
    np.testing.assert_allclose(out.result, want, rtol=1e-5)


def test_geomed_objective_gain_is_the_drop_in_the_sum_of_distances() -> None:
    # Mutant: the gain's numerator <a - b, a + b> + 2<a - b, y_i> (sign of the rows' term
    # flipped). The gain decides whether the restart from the coordinate-wise median is taken.
    # Prepare: 6 random reports in R^8 (some coordinates unsent) and two points a, b.
    rng = np.random.default_rng(67)
    x = rng.normal(size=(6, 8))
    x[rng.random((6, 8)) < 0.3] = 0.0
    x = x.astype(np.float32)
    rows = UpdateRows.from_client_updates(sparse_updates(x), 8)
    a, b = rng.normal(size=8), rng.normal(size=8)
    y = x.astype(np.float64)
    dist_a = np.linalg.norm(y - a, axis=1)
    dist_b = np.linalg.norm(y - b, axis=1)

    # Execute
    gain = _objective_gain(rows, a, dist_a, b, dist_b)

    # Assert: sum_i ||a - y_i|| - ||b - y_i||, computed directly.
    assert gain == pytest.approx(float((dist_a - dist_b).sum()), rel=1e-9)


def test_geomed_after_a_restart_measures_the_objective_of_the_result_it_returns() -> None:
    # Mutant: the restart's iterate is taken but `objective` keeps the first run's value.
    # Prepare: 6 honest reports near a centre and 4 at 100·(1, ..., 1); with max_iter 2 the run
    # from the mean does not converge and ends far from the honest reports, so the run from the
    # coordinate-wise median (inside the honest ones) is taken.
    rng = np.random.default_rng(7)
    d = 30
    centre = rng.normal(size=d)
    x = np.vstack([centre + 0.1 * rng.normal(size=(6, d)), np.full((4, d), 100.0)])

    # Execute
    out = run(GeometricMedian(max_iter=2), x)[0]

    # Assert: the objective measured is sum_i max(||z - y_i||, nu) at the returned z.
    assert out.measurements["restarted_from_median"] is True
    y = x.astype(np.float32).astype(np.float64)
    dist = np.linalg.norm(y - out.result.astype(np.float64), axis=1)
    want = float(np.maximum(dist, 1e-6).sum())
    assert out.measurements["objective"] == pytest.approx(want, rel=1e-5)


# -- centered clipping (Karimireddy et al. 2021) -------------------------------------------------


def test_cclip_an_empty_round_leaves_the_centre_as_it_was() -> None:
    # Mutant: an empty round returns a zero centre instead of the centre it was given.
    # Prepare: round 1 with the one report (1, 0), tau 10 (not clipped) and beta 0.5: v = (1, 0),
    # so the centre becomes 0.5·0 + 0.5·(1, 0) = (0.5, 0).
    process = CenteredClipping(tau=10.0, beta=0.5).create(2)
    first = process.next(process.initialize(), sparse_updates(np.array([[1.0, 0.0]])))
    np.testing.assert_allclose(first.state, [0.5, 0.0])

    # Execute: a round with no reports.
    empty = process.next(first.state, [])

    # Assert: zeros, centre unchanged (docs/robustness.md, Edge cases).
    np.testing.assert_array_equal(empty.result, [0.0, 0.0])
    np.testing.assert_array_equal(empty.state, [0.5, 0.0])


# -- momentum cosine filter ---------------------------------------------------------------------


def test_cosfilter_compares_the_cosine_not_the_dot_over_the_report_norm() -> None:
    # Mutant: "cosine" = <y, m> / ||y||, without dividing by ||m|| (the same sign, so only a
    # min_cos other than 0 tells them apart).
    # Prepare: a momentum of norm 2 along e0 and min_cos 0.5; reports (1, 1), (1, 3), (3, 0),
    # whose cosines to e0 are 1/sqrt(2), 1/sqrt(10) and 1.
    factory = MomentumCosineFilter(FedAvg(uniform=True), min_cosine=0.5)
    process = factory.create(2)
    state = (np.array([2.0, 0.0], np.float32), process.initialize()[1])
    x = np.array([[1.0, 1.0], [1.0, 3.0], [3.0, 0.0]])

    # Execute
    out = process.next(state, sparse_updates(x))

    # Assert: only (1, 3) is at or below 0.5 and dropped (1 of 3 is under max_drop's half);
    # the uniform mean of the two kept is (2, 0.5).
    assert out.measurements["dropped"] == {"dev-1": round(1 / np.sqrt(10), 4)}
    assert out.measurements["kept"] == 2
    np.testing.assert_allclose(out.result, [2.0, 0.5], rtol=1e-6)


# -- bucketing (Karimireddy, He and Jaggi 2022) ----------------------------------------------------


def test_a_bucket_of_zero_counts_is_still_its_reports_mean_for_a_screen_behind() -> None:
    # Mutant: a bucket whose counts are all 0 is handed on as the zero vector (its weight is 0
    # either way, so FedAvg's result is the same), which a cosine screen behind then drops.
    # Prepare: buckets of 1 in front of cosfilter + example-weighted FedAvg, with a momentum
    # along e0; reports (1, 0) of 0 examples, (2, 1) of 1 and (1, 1) of 2: every cosine to e0
    # is positive.
    process = Bucketing(1, inner=MomentumCosineFilter(FedAvg())).create(2)
    rnd, (_, fedavg_state) = process.initialize()
    state = (rnd, (np.array([1.0, 0.0], np.float32), fedavg_state))
    ups = [
        ClientUpdate("a", SparseUpdate(np.array([0]), np.array([1.0], np.float32), 2), 0.0),
        ClientUpdate("b", SparseUpdate(np.array([0, 1]), np.array([2.0, 1.0], np.float32), 2), 1.0),
        ClientUpdate("c", SparseUpdate(np.array([0, 1]), np.array([1.0, 1.0], np.float32), 2), 2.0),
    ]

    # Execute
    out = process.next(state, ups)

    # Assert: the screen sees every bucket as its report and keeps all three; FedAvg weighs
    # them by their counts: (1·(2, 1) + 2·(1, 1)) / 3.
    screen = out.measurements["inner"]
    assert screen["dropped"] == {}
    assert screen["kept"] == 3
    np.testing.assert_allclose(out.result, [4 / 3, 1.0], rtol=1e-6)


# -- UpdateRows: rows whose reports cancel ---------------------------------------------------------

BIG = float(np.float32(1e20))


def sparse(values: list[float]) -> SparseUpdate:
    return SparseUpdate(np.arange(len(values)), np.array(values, np.float32), len(values))


def test_combining_two_rows_adds_a_cancelling_row_from_its_own_values() -> None:
    # Mutant: only a combination of three or more rows takes a cancelling ("wide") row from
    # its own nonzeros; with two, the sum runs through the reports and loses the other row.
    # Prepare: reports (2, 0), (BIG, 3), (-BIG, 5); row 0 is the first report, row 1 the mean
    # of the other two, (0, 4) exactly, whose reports cancel at coordinate 0.
    base = UpdateRows([sparse([2.0, 0.0]), sparse([BIG, 3.0]), sparse([-BIG, 5.0])], 2)
    rows = base.mixed(np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]))

    # Execute
    total = rows.combine([1.0, 1.0])

    # Assert: (2, 0) + (0, 4), exactly.
    np.testing.assert_array_equal(total, [2.0, 4.0])


def test_a_cancelling_row_has_its_own_squared_norm_on_the_gram_diagonal() -> None:
    # Mutant: the Gram diagonal of a summed row is left as sum_k c_k <y, u_k>, which loses
    # every digit when its reports cancel (1e20 - 1e20).
    # Prepare: row 0 sums (BIG, 3), (-BIG, 5) and (1, 0): (1, 8) exactly; row 1 is (1, 0).
    base = UpdateRows([sparse([BIG, 3.0]), sparse([-BIG, 5.0]), sparse([1.0, 0.0])], 2)
    rows = base.mixed(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]))

    # Execute
    gram, d2 = rows.gram(), rows.sq_distances()

    # Assert: ||(1, 8)||² = 65, <(1, 8), (1, 0)> = 1 and ||(1, 8) - (1, 0)||² = 64.
    np.testing.assert_array_equal(gram, [[65.0, 1.0], [1.0, 1.0]])
    assert d2[0, 1] == d2[1, 0] == 64.0
