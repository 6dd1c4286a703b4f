"""FedAvg against its definition, sum_i w_i u_i / sum_i w_i, on every path it sums by.

The paths: plain reports (`next`), lazily mixed rows (`next_rows`, behind a pre-aggregator),
the float64 redo of a float32 product that overflowed, and the float64 sum for tiny weights.
Refusals: negative, NaN or infinite weights, counts above 2^53, reports or rows of the wrong
size, and a report holding NaN or infinity.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import SparseUpdate
from compression._config import MAX_WEIGHT
from coordinator.aggregators import (
    ClientUpdate,
    FedAvg,
    NonFiniteReportError,
    UpdateRows,
)

from .test_aggregators_robust_edges import cu


def reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float32).astype(np.float64)
    return np.asarray((w[:, None] * x64).sum(axis=0) / w.sum()) if w.sum() > 0 else x64[0] * 0


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 8),
    st.sampled_from([None, 0.5, 3.0]),
    st.booleans(),
)
def test_fedavg_is_the_capped_weighted_mean_on_reports_and_on_mixed_rows(
    seed: int, n: int, cap: float | None, uniform: bool
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    x[rng.random((n, 5)) < 0.3] = 0.0
    w = rng.integers(0, 6, size=n).astype(np.float64)
    ups = [cu(f"d{i}", r, float(wi)) for i, (r, wi) in enumerate(zip(x, w, strict=True))]
    eff = np.ones(n) if uniform else w
    if cap is not None:
        eff = np.minimum(eff, cap)
    want = reference(x, eff)
    proc = FedAvg(uniform=uniform, max_weight=cap).create(5)
    # Execute: the reports, and the same reports as mixed rows (the identity mix)
    out = proc.next((), ups)
    rows = UpdateRows.from_client_updates(ups, 5)
    lazy = proc.next_rows((), rows.mixed(np.eye(n), weights=rows.weights, labels=rows.labels))
    # Assert
    for o in (out, lazy):
        np.testing.assert_allclose(o.result, want, rtol=1e-5, atol=1e-6)
        assert o.measurements["clients"] == n
        assert o.measurements["total_weight"] == pytest.approx(float(eff.sum()))
        if cap is None:
            assert "weights_capped" not in o.measurements
        else:
            capped = int(np.sum((np.ones(n) if uniform else w) > cap))
            assert o.measurements["weights_capped"] == capped
    np.testing.assert_array_equal(out.result, lazy.result)


def test_a_round_of_zero_weights_is_zero() -> None:
    out = FedAvg().create(2).next((), [cu("a", [1.0, 2.0], 0.0), cu("b", [3.0, 4.0], 0.0)])
    np.testing.assert_array_equal(out.result, np.zeros(2, np.float32))
    assert out.measurements == {"clients": 2, "total_weight": 0.0}


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_an_invalid_weight_is_refused_naming_the_device(weight: float) -> None:
    ups = [cu("good", [1.0]), cu("bad-dev", [2.0], weight)]
    with pytest.raises(ValueError, match="invalid weight .* from bad-dev"):
        FedAvg().create(1).next((), ups)


def test_a_count_of_2_53_is_taken_and_one_above_is_refused() -> None:
    proc = FedAvg().create(1)
    out = proc.next((), [cu("a", [2.0], MAX_WEIGHT), cu("b", [4.0], MAX_WEIGHT)])
    np.testing.assert_allclose(out.result, [3.0])
    with pytest.raises(ValueError, match="from big is above 2\\^53"):
        proc.next((), [cu("a", [2.0]), cu("big", [4.0], MAX_WEIGHT * 2)])


def test_mixed_rows_refuse_a_report_s_count_above_2_53_unless_uniform() -> None:
    ups = [cu("a", [2.0]), cu("big", [4.0], MAX_WEIGHT * 2)]
    rows = UpdateRows.from_client_updates(ups, 1)
    mixed = rows.mixed(np.full((1, 2), 0.5), weights=[1.0], labels=["bucket-0"])
    with pytest.raises(ValueError, match="from big is above 2\\^53"):
        FedAvg().create(1).next_rows((), mixed)
    # A report of exactly 2^53 is taken behind a mix too.
    at = UpdateRows.from_client_updates([cu("a", [2.0]), cu("top", [4.0], MAX_WEIGHT)], 1)
    out = FedAvg().create(1).next_rows((), at.mixed(np.full((1, 2), 0.5), weights=[1.0]))
    np.testing.assert_allclose(out.result, [3.0])
    out = FedAvg(uniform=True).create(1).next_rows((), mixed)
    np.testing.assert_allclose(out.result, [3.0])


def test_a_mixed_row_may_weigh_up_to_n_times_2_53_and_no_more() -> None:
    rows = UpdateRows.from_client_updates([cu("a", [2.0]), cu("b", [4.0])], 1)
    mix = np.full((1, 2), 0.5)
    out = FedAvg().create(1).next_rows((), rows.mixed(mix, weights=[2 * MAX_WEIGHT]))
    np.testing.assert_allclose(out.result, [3.0])
    with pytest.raises(ValueError, match="above 2·2\\^53"):
        FedAvg().create(1).next_rows((), rows.mixed(mix, weights=[2 * MAX_WEIGHT * 1.01]))


def test_reports_and_rows_of_the_wrong_size_are_refused() -> None:
    proc = FedAvg().create(3)
    with pytest.raises(ValueError, match="update of size 2, expected 3"):
        proc.next((), [cu("a", [1.0, 2.0])])
    rows = UpdateRows.from_client_updates([cu("a", [1.0, 2.0])], 2)
    with pytest.raises(ValueError, match="rows of size 2, expected 3"):
        proc.next_rows((), rows.mixed(np.eye(1)))


def test_a_float32_product_that_overflows_is_summed_again_in_float64() -> None:
    # 1e37 · 100 overflows float32; the mean (1e37) fits, on both paths.
    ups = [cu("a", [1e37, 1.0], 100.0), cu("b", [1e37, 3.0], 100.0)]
    proc = FedAvg().create(2)
    want = np.array([1e37, 2.0], np.float32)
    np.testing.assert_allclose(proc.next((), ups).result, want, rtol=1e-6)
    rows = UpdateRows.from_client_updates(ups, 2)
    lazy = proc.next_rows((), rows.mixed(np.eye(2), weights=rows.weights, labels=rows.labels))
    np.testing.assert_allclose(lazy.result, want, rtol=1e-6)


def test_tiny_weights_are_summed_in_float64_not_underflowed_to_zero() -> None:
    ups = [cu("a", [2.0], 1e-50), cu("b", [4.0], 1e-50)]
    proc = FedAvg().create(1)
    np.testing.assert_allclose(proc.next((), ups).result, [3.0], rtol=1e-6)
    rows = UpdateRows.from_client_updates(ups, 1)
    lazy = proc.next_rows((), rows.mixed(np.eye(2), weights=rows.weights, labels=rows.labels))
    np.testing.assert_allclose(lazy.result, [3.0], rtol=1e-6)


def test_a_report_holding_infinity_is_refused_on_the_plain_path() -> None:
    bad = ClientUpdate(
        "bad-dev", SparseUpdate(np.array([0], np.int64), np.array([np.inf], np.float32), 1), 1.0
    )
    with pytest.raises(NonFiniteReportError, match="bad-dev"):
        FedAvg().create(1).next((), [cu("a", [1.0]), bad])
