"""FedAvg with tiny weights (helper-333's review): its products w · v are float32, and under
float32's smallest normal they lose digits or vanish, so two reports of weight 1e-50 averaged
to 0, bucketing and NNM (`next_rows`) did the same, and a dp stage over `fedavg:max_weight=1e-50`
released its noise alone. A weight below 2^-24 now sums in float64."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import SparseUpdate
from coordinator.aggregators import ClientUpdate, FedAvg, build_aggregator
from coordinator.aggregators._mean import WIDE_BELOW

XS = [
    np.array([1, 2, 3, 4], np.float32),
    np.array([3, 2, 1, 0], np.float32),
    np.array([2, 2, 2, 2], np.float32),
    np.array([2, 2, 2, 2], np.float32),
]


def _reports(weights: list[float]) -> list[ClientUpdate]:
    return [
        ClientUpdate(f"d{i}", SparseUpdate.from_dense(x), w)
        for i, (x, w) in enumerate(zip(XS, weights, strict=False))
    ]


def _mean(spec: str, reports: list[ClientUpdate]) -> np.ndarray:
    process = build_aggregator(spec).create(4)
    return process.next(process.initialize(), reports).result


@pytest.mark.parametrize("w", [1.0, 1e-30, WIDE_BELOW / 2, 1e-44, 1e-50, 1e-300])
@pytest.mark.parametrize("spec", ["fedavg", "bucket:2+fedavg", "nnm+fedavg"])
def test_equal_tiny_weights_give_the_plain_mean(spec: str, w: float) -> None:
    np.testing.assert_array_equal(_mean(spec, _reports([w] * 4)), [2, 2, 2, 2])


def test_unequal_tiny_weights_give_the_weighted_mean() -> None:
    # Before: [4.2, 2.8, 1.4, 0], outside the reports' own range
    got = _mean("fedavg", _reports([1e-48, 1e-45]))
    x0, x1 = XS[0].astype(np.float64), XS[1].astype(np.float64)
    want = (1e-48 * x0 + 1e-45 * x1) / (1e-48 + 1e-45)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("cap", ["1e-44", "1e-50"])
def test_a_tiny_max_weight_caps_without_erasing_the_reports(cap: str) -> None:
    reports = _reports([100.0] * 4)
    np.testing.assert_array_equal(_mean(f"fedavg:max_weight={cap}", reports), [2, 2, 2, 2])
    # Under dp (nothing clipped, almost no noise) the release is the mean, not its noise alone
    dp = _mean(f"dp:clip=10,z=1e-6,seed=0+fedavg:max_weight={cap}", reports)
    np.testing.assert_allclose(dp, [2, 2, 2, 2], atol=1e-4)
    np.testing.assert_array_equal(dp, _mean("dp:clip=10,z=1e-6,seed=0+fedavg", reports))


def test_weights_of_one_or_more_keep_their_float32_products_bit_for_bit() -> None:
    # The committed results' sums: w · v rounded to float32, then added in float64
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(5, 64)).astype(np.float32)
    ws = [1.0, 3.0, 17.0, 250.0, 2.0**20]
    reports = [
        ClientUpdate(f"d{i}", SparseUpdate.from_dense(x), w)
        for i, (x, w) in enumerate(zip(xs, ws, strict=True))
    ]
    acc = np.zeros(64)
    for x, w in zip(xs, ws, strict=True):
        acc += (w * x).astype(np.float32)
    want = (acc / sum(ws)).astype(np.float32)
    got = FedAvg().create(64).next((), reports).result
    np.testing.assert_array_equal(got, want)


@settings(max_examples=200)
@given(
    st.lists(st.floats(min_value=-60, max_value=15.9), min_size=1, max_size=6),
    st.integers(0, 2**32 - 1),
)
def test_fedavg_is_the_weighted_mean_for_any_weight_scale(logs: list[float], seed: int) -> None:
    weights = [10.0**e for e in logs]
    xs = np.random.default_rng(seed).normal(size=(len(weights), 5)).astype(np.float32)
    reports = [
        ClientUpdate(f"d{i}", SparseUpdate.from_dense(x), w)
        for i, (x, w) in enumerate(zip(xs, weights, strict=True))
    ]
    got = FedAvg().create(5).next((), reports).result.astype(np.float64)
    w = np.array(weights)
    want = (w[:, None] * xs.astype(np.float64)).sum(0) / w.sum()
    # a few float32 roundings of the largest value
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(xs).max())
