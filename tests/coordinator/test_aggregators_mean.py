"""FedAvg's weighting: example counts as declared, uniform, or capped at max_weight."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import SparseUpdate
from coordinator.aggregators import ClientUpdate, FedAvg


def _updates(rows: list[list[float]], weights: list[float]) -> list[ClientUpdate]:
    return [
        ClientUpdate(f"d{i}", SparseUpdate.from_dense(np.asarray(r, np.float32)), w)
        for i, (r, w) in enumerate(zip(rows, weights, strict=True))
    ]


def test_a_huge_declared_weight_sets_the_mean_without_a_cap_and_not_with_one() -> None:
    # Prepare: nine honest devices at +1 with 100 examples each; one claims 2^50 at -1000.
    rows = [[1.0, 1.0]] * 9 + [[-1000.0, -1000.0]]
    weights = [100.0] * 9 + [2.0**50]
    ups = _updates(rows, weights)

    # Execute
    plain = FedAvg().create(2).next((), ups)
    capped = FedAvg(max_weight=100).create(2).next((), ups)

    # Assert: uncapped, the liar's value wins; capped, it weighs as one honest device.
    assert plain.result[0] == pytest.approx(-1000.0, rel=1e-6)
    np.testing.assert_allclose(capped.result, [(9 - 1000) / 10] * 2, rtol=1e-6)
    assert capped.measurements["weights_capped"] == 1
    assert "weights_capped" not in plain.measurements


@settings(max_examples=50, deadline=None)
@given(
    # Example counts: 0 or at least 1e-3 (weights near 1e-308 lose their product with the values
    # to float32 underflow, capped or not; no device reports such a count).
    st.lists(st.just(0.0) | st.floats(1e-3, 2.0**53), min_size=1, max_size=8),
    st.floats(1e-3, 1e6),
)
def test_the_capped_mean_is_the_mean_with_each_weight_clipped(
    weights: list[float], cap: float
) -> None:
    # Prepare: device i holds the constant update i.
    rows = [[float(i)] * 3 for i in range(len(weights))]
    clipped = [min(w, cap) for w in weights]

    # Execute
    got = FedAvg(max_weight=cap).create(3).next((), _updates(rows, weights))

    # Assert: no report outweighs the cap; the result is the mean under clipped weights.
    total = sum(clipped)
    want = sum(w * i for i, w in enumerate(clipped)) / total if total > 0 else 0.0
    np.testing.assert_allclose(got.result, [want] * 3, rtol=1e-5, atol=1e-6)
    assert got.measurements["total_weight"] == pytest.approx(total)
    assert got.measurements["weights_capped"] == sum(w > cap for w in weights)


@pytest.mark.parametrize("cap", [0.0, -1.0, float("inf"), float("nan")])
def test_a_cap_must_be_positive_and_finite(cap: float) -> None:
    with pytest.raises(ValueError, match="max_weight"):
        FedAvg(max_weight=cap)
