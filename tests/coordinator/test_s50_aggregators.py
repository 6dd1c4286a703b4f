"""Stop 50's aggregator review (/tmp/review_agg): four confirmed findings.

1. "At least this fraction of them" compared a count with the float product x·n: 0.14·50 and
   0.28·25 are 7.000000000000001, so RLR's theta=0.14 reversed a coordinate 7 of 50 reports
   agreed on, and 7 drops of 25 did not reach `max_drop=0.28` in `cosfilter` or `anomaly`.
   Now c >= ⌈x·n⌉ of the decimal x is written as, as `resolve_f` floors it.
2. `bucket:s+fedavg` averaged each bucket uniformly and weighed the mean with the bucket's
   summed counts: neither FedAvg nor the uniform mean, and with honest reports only it moved
   with the shuffle (0.99 or 0.5 by seed). A bucket now weighs its reports as the rule behind
   it does: by count behind an example-weighted FedAvg (so it is FedAvg), equally otherwise.
3. FedAvg returned NaN when its weights' float64 sum overflowed (1e308 + 1e308); a declared
   count above 2^53 (`compression.MAX_WEIGHT`) is now refused, naming it.
4. TrimmedMean's docstring said a round with t = 0 is the plain mean, false with support=1
   (each sent coordinate is its senders' mean); so did the cohort refusal's message.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import (
    Bucketing,
    ClientUpdate,
    FedAvg,
    MomentumCosineFilter,
    TrimmedMean,
    build_aggregator,
)
from coordinator.aggregators._robust import cohort_refusal
from coordinator.anomaly import AnomalyFilter

MAX_WEIGHT = float(2**53)


def _cu(i: int, values: Sequence[float], weight: float = 1.0) -> ClientUpdate:
    """A dense report d{i} of these values (a value of 0 is sent, as a 0)."""
    v = np.asarray(values, dtype=np.float32)
    return ClientUpdate(f"d{i}", SparseUpdate(np.arange(v.shape[0]), v, v.shape[0]), weight)


def _run(spec: str, reports: Sequence[ClientUpdate], size: int) -> np.ndarray:
    process = build_aggregator(spec).create(size)
    return process.next(process.initialize(), list(reports)).result


def _exact_pairs(n_max: int, fractions: int = 100) -> list[tuple[float, int, int]]:
    """(x, n, m) for every two-decimal x in (0, 1) and n <= n_max with x·n a whole m in [1, n)."""
    out = []
    for k in range(1, fractions):
        for n in range(1, n_max + 1):
            if k * n % fractions == 0 and 0 < k * n // fractions < n:
                out.append((k / fractions, n, k * n // fractions))
    return out


# 1. Fractional thresholds --------------------------------------------------------------------


def test_rlr_fractional_theta_is_met_by_exactly_theta_n_votes() -> None:
    # The premise: the float product sits above the whole number the decimal gives.
    assert 0.14 * 50 > 7 and Fraction("0.14") * 50 == 7
    # Prepare: 50 reports on one coordinate, 28 of +1, 21 of -1 and one 0: |sum of signs| = 7,
    # exactly 0.14 of 50 (the reviewer's case).
    reports = [_cu(i, [1.0]) for i in range(28)]
    reports += [_cu(28 + i, [-1.0]) for i in range(21)] + [_cu(49, [0.0])]

    # Execute
    process = build_aggregator("rlr:theta=0.14").create(1)
    out = process.next(process.initialize(), reports)

    # Assert: the coordinate keeps its step (the mean, 7/50), as with the count theta=7; the
    # threshold measured is 0.14·50 = 7, not 7.000000000000001.
    np.testing.assert_allclose(out.result, [0.14], rtol=1e-6)
    np.testing.assert_array_equal(out.result, _run("rlr:theta=7", reports, 1))
    assert out.measurements["theta"] == 7.0
    assert out.measurements["low_agreement_coords"] == 0


@pytest.mark.parametrize(("theta", "n", "m"), _exact_pairs(60))
def test_rlr_votes_of_exactly_theta_n_keep_the_step_and_one_fewer_reverses_it(
    theta: float, n: int, m: int
) -> None:
    # Prepare: m reports of +1 and the rest 0 on coordinate 0 (m votes); m - 1 on coordinate 1.
    reports = [_cu(i, [1.0 if i < m else 0.0, 1.0 if i < m - 1 else 0.0]) for i in range(n)]

    # Execute
    out = build_aggregator(f"rlr:theta={theta!r}").create(2).next((), reports)

    # Assert: m votes are "at least theta of the reports", m - 1 are not (reversed).
    np.testing.assert_allclose(out.result, [m / n, -(m - 1) / n], rtol=1e-6)
    assert out.measurements["theta"] == float(m)


def _cosfilter_round(max_drop: float, n: int, against: int) -> dict[str, object]:
    """One round of `cosfilter` with a momentum along e0: `against` reports of -e0, the rest e0."""
    process = MomentumCosineFilter(FedAvg(uniform=True), max_drop=max_drop).create(2)
    state = (np.array([1.0, 0.0], np.float32), process.initialize()[1])
    reports = [_cu(i, [-1.0, 0.0] if i < against else [1.0, 0.0]) for i in range(n)]
    measurements: dict[str, object] = process.next(state, reports).measurements
    return measurements


def test_cosfilter_distrusts_at_exactly_max_drop_of_the_cohort() -> None:
    # The premise: the float product sits above the whole number the decimal gives.
    assert 0.28 * 25 > 7 and Fraction("0.28") * 25 == 7
    # Prepare / Execute: 7 of 25 reports point against the momentum; 0.28·25 = 7.
    at = _cosfilter_round(0.28, 25, 7)
    below = _cosfilter_round(0.28, 25, 6)

    # Assert: 7 drops are at least 0.28 of the cohort (everything kept), 6 are not.
    assert at["distrusted"] is True and at["kept"] == 25
    assert below["distrusted"] is False and below["kept"] == 19


@pytest.mark.parametrize(("max_drop", "n", "m"), _exact_pairs(40))
def test_cosfilter_max_drop_is_exact_for_every_two_decimal_fraction(
    max_drop: float, n: int, m: int
) -> None:
    assert _cosfilter_round(max_drop, n, m)["distrusted"] is True
    assert _cosfilter_round(max_drop, n, m - 1)["distrusted"] is False


def _anomaly_round(max_drop: float, n: int, low: int) -> dict[str, object]:
    """One `anomaly:min_cos=0` round over n reports: `low` of -0.01·e0 (cosine -1 to the
    positive first-pass mean), the rest e0."""
    process = AnomalyFilter(FedAvg(uniform=True), min_cosine=0.0, max_drop=max_drop).create(2)
    reports = [_cu(i, [-0.01, 0.0] if i < low else [1.0, 0.0]) for i in range(n)]
    measurements: dict[str, object] = process.next(process.initialize(), reports).measurements
    return measurements


def test_anomaly_distrusts_at_exactly_max_drop_of_the_reports() -> None:
    # The premise: the float product sits above the whole number the decimal gives.
    assert 0.28 * 25 > 7 and Fraction("0.28") * 25 == 7
    # Prepare / Execute: 7 of 25 below min_cos, 0.28·25 = 7 (the reviewer's case).
    at = _anomaly_round(0.28, 25, 7)
    below = _anomaly_round(0.28, 25, 6)

    # Assert: the reference is distrusted at 7, not at 6; the 7 are rejected either way.
    assert at["cosine_distrusted"] is True and at["median_cosines"]
    assert below["cosine_distrusted"] is False
    assert sum(r == "cosine" for r in at["rejected"].values()) == 7  # type: ignore[attr-defined]


@pytest.mark.parametrize(("max_drop", "n", "m"), _exact_pairs(40))
def test_anomaly_max_drop_is_exact_for_every_two_decimal_fraction(
    max_drop: float, n: int, m: int
) -> None:
    assert _anomaly_round(max_drop, n, m)["cosine_distrusted"] is True
    assert _anomaly_round(max_drop, n, m - 1)["cosine_distrusted"] is False


def test_ceil_times_is_the_exact_ceiling_of_the_decimal() -> None:
    from coordinator.aggregators._robust import ceil_times

    wrong = [
        (k, n)
        for k in range(1, 100)
        for n in range(0, 301)
        if ceil_times(k / 100, n) != -(-k * n // 100)
    ]
    assert wrong == []


# 2. Bucketing's weights ----------------------------------------------------------------------

REVIEW_VALUES, REVIEW_WEIGHTS = [0.0, 1.0, 0.0, 1.0], [1.0, 99.0, 1.0, 99.0]


def _review_reports() -> list[ClientUpdate]:
    return [
        _cu(i, [v], w) for i, (v, w) in enumerate(zip(REVIEW_VALUES, REVIEW_WEIGHTS, strict=True))
    ]


@pytest.mark.parametrize("seed", range(8))
def test_bucketed_fedavg_is_fedavg_whatever_the_shuffle(seed: int) -> None:
    # Prepare: the reviewer's honest reports, 0, 1, 0, 1 with 1, 99, 1, 99 examples.
    reports = _review_reports()

    # Execute
    got = _run(f"bucket:2,seed={seed}+fedavg", reports, 1)

    # Assert: the example-weighted mean 0.99 for every seed (seeds 1-3 gave the uniform 0.5).
    np.testing.assert_allclose(got, [0.99], rtol=1e-6)


@pytest.mark.parametrize("spec", ["fedavg", "normbound:1e9+fedavg", "cosfilter+fedavg",
                                  "anomaly+fedavg", "bucket:2+fedavg"])  # fmt: skip
@pytest.mark.parametrize(("s", "seed"), [(1, 0), (2, 0), (2, 5), (3, 1), (4, 2), (7, 3)])
def test_bucketed_fedavg_behind_wrappers_is_fedavg(spec: str, s: int, seed: int) -> None:
    # Prepare: 13 sparse reports with counts from 1 to 1,000 (the last bucket is smaller);
    # the wrappers keep every report (no momentum yet, measure only, a norm bound far above).
    rng = np.random.default_rng(50)
    d = 40
    reports = []
    for i in range(13):
        idx = np.sort(rng.choice(d, size=10, replace=False)).astype(np.int64)
        vals = rng.normal(size=10).astype(np.float32)
        reports.append(
            ClientUpdate(f"d{i:02d}", SparseUpdate(idx, vals, d), float(rng.integers(1, 1001)))
        )

    # Execute
    got = _run(f"bucket:{s},seed={seed}+{spec}", reports, d)

    # Assert: FedAvg of the reports themselves, up to the bucket means' float32 rounding.
    np.testing.assert_allclose(got, _run("fedavg", reports, d), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("seed", range(4))
def test_bucketed_fedavg_with_a_cap_that_no_bucket_reaches_is_the_capped_fedavg(seed: int) -> None:
    # Prepare: counts 1, 4, 2, 3 under max_weight=10: no pair sums above 10, nothing capped.
    reports = [_cu(i, [float(i), 1.0 - i], w) for i, w in enumerate([1.0, 4.0, 2.0, 3.0])]

    # Execute
    process = build_aggregator(f"bucket:2,seed={seed}+fedavg:max_weight=10").create(2)
    out = process.next(process.initialize(), reports)

    # Assert: fedavg:max_weight=10's (the weighted mean) for every seed, no count capped.
    want = _run("fedavg:max_weight=10", reports, 2)
    np.testing.assert_allclose(out.result, want, rtol=1e-6)
    assert out.measurements["weights_capped"] == 0


def test_bucketed_fedavg_caps_each_count_inside_its_bucket() -> None:
    # Prepare: a report declaring 2^53 examples (the largest a frame may carry) paired with an
    # honest one of 50 (bucket:2 over two reports: one bucket), under max_weight=100.
    reports = [_cu(0, [-3.0], 2.0**53), _cu(1, [1.0], 50.0)]

    # Execute
    process = build_aggregator("bucket:2+fedavg:max_weight=100").create(1)
    out = process.next(process.initialize(), reports)

    # Assert: it weighs 100 in its bucket, not 2^53 (which would make the mean its report alone).
    np.testing.assert_allclose(out.result, [(100 * -3.0 + 50 * 1.0) / 150], rtol=1e-6)
    assert out.measurements["weights_capped"] == 1
    assert out.measurements["inner"]["weights_capped"] == 1  # the bucket's 150 capped at 100


@pytest.mark.parametrize("spec", ["median", "trimmed_mean:0.2", "geomed", "fedavg:uniform=1",
                                  "krum:f=1", "rlr:theta=1"])  # fmt: skip
def test_bucket_means_behind_rules_that_weigh_rows_equally_stay_plain_means(spec: str) -> None:
    # Prepare: 9 reports with very unequal counts; the expected rows are the plain bucket means
    # of the same shuffle (Karimireddy et al.), handed to the rule alone.
    rng = np.random.default_rng(7)
    x = rng.normal(size=(9, 5)).astype(np.float32)
    weights = [1.0, 1000.0, 3.0, 7.0, 500.0, 2.0, 90.0, 1.0, 40.0]
    reports = [_cu(i, x[i], w) for i, w in enumerate(weights)]
    perm = np.random.default_rng([4, 0]).permutation(9)
    means = [x[perm[b : b + 2]].astype(np.float64).mean(axis=0) for b in range(0, 9, 2)]
    rows = [_cu(b, m.astype(np.float32)) for b, m in enumerate(means)]

    # Execute
    got = _run(f"bucket:2,seed=4+{spec}", reports, 5)

    # Assert: the counts play no part, as before.
    np.testing.assert_allclose(got, _run(spec, rows, 5), rtol=1e-5, atol=1e-6)


def test_bucketed_fedavg_refuses_a_count_above_2_53_naming_the_report() -> None:
    # Prepare: two reports declaring 1e308 examples (two buckets' sums overflowed to inf: NaN).
    reports = [_cu(0, [1.0], 1e308), _cu(1, [2.0], 1.0), _cu(2, [3.0], 1e308), _cu(3, [4.0], 1.0)]

    # Execute / Assert
    with pytest.raises(ValueError, match=r"weight 1e\+308 from d[02] is above 2\^53"):
        _run("bucket:2+fedavg", reports, 1)


def test_a_bucket_may_weigh_more_than_2_53() -> None:
    # Two reports of 2^53 in one bucket sum to 2^54: a bucket row, not a report, so accepted.
    reports = [_cu(0, [1.0], MAX_WEIGHT), _cu(1, [3.0], MAX_WEIGHT), _cu(2, [5.0], 1.0)]
    got = _run("bucket:3+fedavg", reports, 1)
    np.testing.assert_allclose(got, [2.0], rtol=1e-6)


def test_bucketing_reads_the_rule_behind_through_its_wrappers() -> None:
    from coordinator.aggregators._robust import count_weighting

    assert count_weighting(build_aggregator("normbound:5+cosfilter+nnm+fedavg")) == (True, None)
    assert count_weighting(build_aggregator("anomaly+fedavg:max_weight=500")) == (True, 500.0)
    assert count_weighting(build_aggregator("fedavg:uniform=1")) == (False, None)
    assert count_weighting(build_aggregator("normbound:5+geomed")) == (False, None)
    assert count_weighting(build_aggregator("dp:clip=1,z=1+fedavg")) == (False, None)
    assert Bucketing(2, inner=FedAvg()).create(1).weighted is True


# 3. FedAvg's weight range --------------------------------------------------------------------


def test_fedavg_refuses_weights_whose_sum_overflows() -> None:
    # Prepare: the reviewer's two finite weights of 1e308 (their sum is inf: the mean was NaN).
    reports = [_cu(0, [1.0, 2.0, 3.0], 1e308), _cu(1, [1.0, 2.0, 3.0], 1e308)]

    # Execute / Assert: a ValueError naming the weight and the device, not a NaN mean.
    with pytest.raises(ValueError, match=r"weight 1e\+308 from d0 is above 2\^53"):
        FedAvg().create(3).next((), reports)


@pytest.mark.parametrize("spec", ["fedavg", "fedavg:max_weight=500", "nnm:f=1+fedavg",
                                  "cosfilter+fedavg", "normbound:5+fedavg", "bucket:2+fedavg",
                                  "anomaly:min_cos=0+fedavg", "collusion+fedavg"])  # fmt: skip
def test_every_fedavg_path_refuses_a_count_above_2_53(spec: str) -> None:
    # Lazily mixed rows (nnm, normbound, cosfilter) carry the reports' counts on: refused too,
    # and a cap does not make an impossible count valid.
    reports = [_cu(0, [1.0], np.nextafter(MAX_WEIGHT, np.inf)), _cu(1, [2.0], 1.0), _cu(2, [3.0])]
    with pytest.raises(ValueError, match=r"from d0 is above 2\^53"):
        _run(spec, reports, 1)


def test_fedavg_takes_2_53_and_uniform_ignores_the_claim() -> None:
    big = [_cu(0, [1.0], MAX_WEIGHT), _cu(1, [3.0], MAX_WEIGHT)]
    np.testing.assert_allclose(_run("fedavg", big, 1), [2.0])
    huge = [_cu(0, [1.0], 1e308), _cu(1, [3.0], 1e308)]
    np.testing.assert_allclose(_run("fedavg:uniform=1", huge, 1), [2.0])


# 4. The trimmed mean at t = 0 with support=1 -----------------------------------------------


def test_trimmed_mean_docstring_does_not_call_a_support_round_with_t_0_the_plain_mean() -> None:
    doc = " ".join((TrimmedMean.__doc__ or "").split())
    assert "A round with t = 0 (beta > 0) is the plain mean" not in doc
    assert "with `support` the threshold is 1" in doc


@pytest.mark.parametrize(("support", "want"), [(False, [2.5, 0.5, 0.0]), (True, [5.0, 1.0, 0.0])])
def test_trimmed_mean_with_t_0_is_as_its_docstring_says(support: bool, want: list[float]) -> None:
    # Prepare: the docstring's example, one report sending only 5 on coordinate 0 and one
    # sending only 1 on coordinate 1 (n = 2: t = 0 for any beta).
    reports = [
        ClientUpdate("a", SparseUpdate(np.array([0]), np.array([5.0], np.float32), 3), 1.0),
        ClientUpdate("b", SparseUpdate(np.array([1]), np.array([1.0], np.float32), 3), 1.0),
    ]

    # Execute
    out = TrimmedMean(0.2, support=support).create(3).next((), reports)

    # Assert: the plain mean without support, the senders' means with it; no trim either way.
    np.testing.assert_allclose(out.result, want)
    assert out.measurements["trimmed_each_side"] == 0
    assert out.measurements["guarantee_holds"] is False


def test_the_cohort_refusal_does_not_call_a_support_round_the_plain_mean() -> None:
    plain = cohort_refusal(TrimmedMean(0.1), 9)
    support = cohort_refusal(TrimmedMean(0.1, support=True), 9)
    assert plain is not None and "every round is the plain mean" in plain
    assert support is not None and "the plain mean" not in support
    assert "every round is its senders' mean on every sent coordinate" in support
