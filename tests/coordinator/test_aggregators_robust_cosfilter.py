"""MomentumCosineFilter and RobustLearningRate: screening, sign votes, state, memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import ClientUpdate, FedAvg, GeometricMedian, build_aggregator
from coordinator.aggregators._robust import MomentumCosineFilter, RobustLearningRate


def as_updates(dense: np.ndarray, prefix: str = "dev") -> list[ClientUpdate]:
    out = []
    for i, row in enumerate(dense.astype(np.float32)):
        idx = np.flatnonzero(row).astype(np.int64)
        out.append(ClientUpdate(f"{prefix}-{i}", SparseUpdate(idx, row[idx], row.shape[0]), 1.0))
    return out


def honest_round(rng: np.random.Generator, direction: np.ndarray, n: int) -> np.ndarray:
    """n reports: a shared direction plus independent noise (cosine to it about 0.7)."""
    return direction[None, :] + rng.normal(scale=0.05, size=(n, direction.shape[0]))


def test_first_round_keeps_everything_and_matches_inner() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 20))
    proc = MomentumCosineFilter(inner=FedAvg(uniform=True)).create(20)
    # Execute
    out = proc.next(proc.initialize(), as_updates(x))
    # Assert: no momentum yet, so the plain mean of all six
    assert out.measurements["kept"] == 6
    assert out.measurements["dropped"] == {}
    np.testing.assert_allclose(out.result, x.mean(0), rtol=1e-5, atol=1e-6)


def test_sign_flipped_majority_is_dropped_once_a_momentum_exists() -> None:
    # Prepare: a clean first round sets the momentum; then 6 of 10 reports are sign-flipped.
    # max_drop=1 trusts the reference whatever share of the cohort it drops.
    rng = np.random.default_rng(1)
    direction = rng.normal(size=50) / 7.0
    proc = MomentumCosineFilter(inner=GeometricMedian(), max_drop=1.0).create(50)
    state = proc.next(proc.initialize(), as_updates(honest_round(rng, direction, 10))).state
    honest = honest_round(rng, direction, 4)
    flipped = -honest_round(rng, direction, 6)
    # Execute
    out = proc.next(state, as_updates(np.vstack([honest, flipped])))
    # Assert: only the 4 honest reports reach the geometric median, whatever the attacker count
    assert out.measurements["kept"] == 4
    assert sorted(out.measurements["dropped"]) == [f"dev-{i}" for i in range(4, 10)]
    assert all(c < 0 for c in out.measurements["dropped"].values())
    cos = float(out.result @ direction) / (np.linalg.norm(out.result) * np.linalg.norm(direction))
    assert cos > 0.9


def test_momentum_update_and_nothing_kept_gives_zero() -> None:
    # Prepare
    d = 8
    first = np.zeros((2, d))
    first[:, 0] = 1.0
    proc = MomentumCosineFilter(inner=FedAvg(uniform=True), beta=0.5, max_drop=1.0).create(d)
    out1 = proc.next(proc.initialize(), as_updates(first))
    # Execute: every report points against the momentum e_0
    against = np.zeros((3, d))
    against[:, 0] = -1.0
    against[:, 1] = 0.1
    out2 = proc.next(out1.state, as_updates(against))
    # Assert: momentum after round 1 is (1 - beta)·e_0; round 2 takes no step and halves it
    np.testing.assert_allclose(out1.state[0][0], 0.5)
    assert out2.measurements["kept"] == 0
    assert not np.any(out2.result)
    np.testing.assert_allclose(out2.state[0][0], 0.25)


def test_a_reference_that_would_drop_most_of_a_cohort_is_distrusted() -> None:
    # Prepare: momentum from a clean round; then 6 of 10 reports point against it
    rng = np.random.default_rng(3)
    direction = rng.normal(size=40) / 6.0
    proc = MomentumCosineFilter(inner=FedAvg(uniform=True)).create(40)  # max_drop 0.5
    state = proc.next(proc.initialize(), as_updates(honest_round(rng, direction, 10))).state
    x = np.vstack([honest_round(rng, direction, 4), -honest_round(rng, direction, 6)])
    five = np.vstack([honest_round(rng, direction, 5), -honest_round(rng, direction, 5)])
    four = np.vstack([honest_round(rng, direction, 6), -honest_round(rng, direction, 4)])
    # Execute
    out = proc.next(state, as_updates(x))
    out_half = proc.next(state, as_updates(five))
    out_four = proc.next(state, as_updates(four))
    # Assert: more than half, or exactly half, would go, so nothing is dropped, the inner mean
    # sees all ten and the momentum (the reference) is left as it was; 4 of 10 are filtered
    for o, rows in ((out, x), (out_half, five)):
        assert o.measurements["distrusted"] is True
        assert o.measurements["kept"] == 10 and o.measurements["dropped"] == {}
        np.testing.assert_allclose(o.result, rows.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(o.state[0], state[0])
    assert out_four.measurements["distrusted"] is False
    assert out_four.measurements["kept"] == 6
    assert not np.array_equal(out_four.state[0], state[0])


def test_inner_state_is_carried() -> None:
    # Prepare: centered clipping keeps its own centre inside the filter's state
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 12))
    factory = build_aggregator("cosfilter:min_cos=-1,beta=0+cclip:tau=auto,beta=0")
    proc = factory.create(12)
    # Execute
    out = proc.next(proc.initialize(), as_updates(x))
    # Assert
    np.testing.assert_allclose(out.state[1], out.result, rtol=1e-6)
    np.testing.assert_allclose(out.state[0], out.result, rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_cosine": 1.0}, "min_cosine"),
        ({"beta": 1.0}, "beta"),
        ({"beta": -0.1}, "beta"),
        ({"max_drop": 1.5}, "max_drop"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MomentumCosineFilter(**kwargs)  # type: ignore[arg-type]


def test_bad_state_shape_is_refused() -> None:
    proc = MomentumCosineFilter().create(4)
    with pytest.raises(ValueError, match="float32\\[4\\]"):
        proc.next((np.zeros(3, np.float32), ()), as_updates(np.ones((2, 4))))


def test_memory_is_one_momentum_plus_the_inner_bound() -> None:
    """n=200, d=100,000, 1,000 values each: far below the 80 MB n×d matrix."""
    # Prepare
    n, d, k = 200, 100_000, 1_000
    rng = np.random.default_rng(3)
    updates = []
    for i in range(n):
        idx = np.sort(rng.choice(d, size=k, replace=False)).astype(np.int64)
        updates.append(
            ClientUpdate(f"d{i}", SparseUpdate(idx, rng.normal(size=k).astype(np.float32), d), 1.0)
        )
    proc = MomentumCosineFilter(inner=GeometricMedian(max_iter=3)).create(d)
    state = proc.next(proc.initialize(), updates).state
    # Execute: the second round screens against a non-zero momentum
    tracemalloc.start()
    proc.next(state, updates)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Assert: the documented bound 32·d + 48·N + 8·n² + 16·block plus the 4·d momentum
    assert peak < 36 * d + 48 * n * k + 8 * n * n + 16 * (1 << 20)
    assert peak < 4 * n * d / 5


# -- robust learning rate (RLR) -----------------------------------------------------------------


def test_rlr_flips_or_zeroes_low_agreement_coordinates() -> None:
    # Prepare: coordinate 0 has 3 agreeing votes, 1 a tie, 2 one vote, 3 one vote (negative)
    x = np.array([[1, 1, 0, -1], [1, -1, 0, 0], [1, 0, 2, 0]], dtype=np.float64)
    mean = x.mean(0)
    # Execute
    flip = RobustLearningRate(theta=2).create(4)
    zero = RobustLearningRate(theta=2, low_lr=0.0).create(4)
    out_flip = flip.next(flip.initialize(), as_updates(x))
    out_zero = zero.next(zero.initialize(), as_updates(x))
    # Assert
    np.testing.assert_allclose(out_flip.result, [mean[0], -mean[1], -mean[2], -mean[3]], atol=1e-6)
    np.testing.assert_allclose(out_zero.result, [mean[0], 0, 0, 0], atol=1e-6)
    assert out_flip.measurements["low_agreement_coords"] == 3


def test_rlr_fraction_theta_and_block_size_do_not_change_the_result() -> None:
    # Prepare
    rng = np.random.default_rng(4)
    x = rng.normal(size=(10, 37))
    x[rng.random(x.shape) < 0.6] = 0.0
    signs = np.abs(np.sign(x).sum(0))
    ref = np.where(signs >= 4, 1.0, -1.0) * x.mean(0)
    # Execute: theta = 0.4 of 10 reports = 4 votes; blocks of 3 columns
    proc = RobustLearningRate(theta=0.4, block_elems=30).create(37)
    out = proc.next(proc.initialize(), as_updates(x))
    # Assert
    np.testing.assert_allclose(out.result, ref, rtol=1e-5, atol=1e-6)


def test_rlr_refuses_bad_theta() -> None:
    with pytest.raises(ValueError, match="theta"):
        RobustLearningRate(theta=0)
    with pytest.raises(ValueError, match="whole number"):
        RobustLearningRate(theta=2.5)
    with pytest.raises(ValueError, match="low_lr"):
        RobustLearningRate(low_lr=0.5)
