"""Server optimizers (FedAvgM, FedAdagrad, FedAdam, FedYogi) against the papers' update rules."""

from __future__ import annotations

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import (
    AggregatorSpecError,
    ClientUpdate,
    FedAvg,
    ServerOptimizer,
    build_aggregator,
)
from coordinator.engine import find_measurement

D = 50


def _reference(kind: str, deltas: list[np.ndarray], lr: float, b1: float, b2: float, tau: float):
    """Reddi et al. 2021 Algorithm 2 (and FedAvgM), in float64, step by step."""
    m = np.zeros(D)
    v = np.full(D, tau**2)
    steps = []
    for d in deltas:
        d = d.astype(np.float64)
        if kind == "avgm":
            m = b1 * m + d
            steps.append(lr * m)
            continue
        m = b1 * m + (1 - b1) * d
        if kind == "adagrad":
            v = v + d**2
        elif kind == "adam":
            v = b2 * v + (1 - b2) * d**2
        else:
            v = v - (1 - b2) * d**2 * np.sign(v - d**2)
        steps.append(lr * m / (np.sqrt(v) + tau))
    return steps


@pytest.mark.parametrize("kind", ["avgm", "adagrad", "adam", "yogi"])
def test_steps_follow_the_update_rule(kind: str) -> None:
    # Prepare: one report per round, so the inner FedAvg's aggregate is that report exactly;
    # sparse reports, as top-k sends, so some coordinates see no signal for rounds.
    rng = np.random.default_rng(0)
    deltas = []
    for _ in range(6):
        d = np.zeros(D, np.float32)
        idx = rng.choice(D, 10, replace=False)
        d[idx] = rng.normal(0, 0.1, 10).astype(np.float32)
        deltas.append(d)
    opt = ServerOptimizer(FedAvg(), kind, lr=0.5, beta1=0.8, beta2=0.95, tau=1e-2)
    proc = opt.create(D)
    state = proc.initialize()

    # Execute
    got = []
    for d in deltas:
        out = proc.next(state, [ClientUpdate("a", SparseUpdate.from_dense(d), 1.0)])
        state = out.state
        got.append(out.result)

    # Assert
    for g, want in zip(got, _reference(kind, deltas, 0.5, 0.8, 0.95, 1e-2), strict=True):
        np.testing.assert_allclose(g, want, rtol=2e-5, atol=1e-7)
        assert g.dtype == np.float32


def test_adam_moves_rarely_sent_coordinates_as_far_as_common_ones() -> None:
    # Prepare: coordinate 0 gets 1.0 every round, coordinate 1 gets 0.01 every round.
    proc = build_aggregator("adam:lr=0.1").create(2)
    state = proc.initialize()
    d = np.array([1.0, 0.01], np.float32)
    for _ in range(30):
        out = proc.next(state, [ClientUpdate("a", SparseUpdate.from_dense(d), 1.0)])
        state = out.state
    # Assert: per-coordinate normalisation, the point of the adaptive rules (within tau's pull).
    assert out.result[1] > 0.5 * out.result[0]
    assert out.measurements["server_opt"] == "adam"


def test_dp_budget_flags_are_still_found_through_the_optimizer() -> None:
    # Prepare: a budget of 4: round 1 spends 3.53 (z=1, q=0.5, delta 1e-5), round 2 would
    # reach 4.85.
    proc = build_aggregator("adam+dp:clip=1,z=1,q=0.5,denom=2,eps=4+fedavg").create(D)
    ups = [ClientUpdate(f"d{i}", SparseUpdate.from_dense(np.ones(D, np.float32)), 1.0)
           for i in range(4)]  # fmt: skip
    out = proc.next(proc.initialize(), ups)
    # Assert: the engine stops a task on this flag, wherever it is nested.
    assert find_measurement(out.measurements, "budget_exhausted") is True


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("fedavg+adam", "must come last"),
        ("cosfilter+adam+fedavg", "first stage only"),
        ("adam:lr=0", "lr must be positive"),
        ("yogi:b1=1", "betas"),
        ("adagrad:tau=-1", "tau"),
    ],
)
def test_misplaced_or_bad_optimizers_are_refused(spec: str, match: str) -> None:
    with pytest.raises((AggregatorSpecError, ValueError), match=match):
        build_aggregator(spec)


def test_specs_build_optimizers_around_the_rest() -> None:
    assert build_aggregator("avgm:0.5") == ServerOptimizer(FedAvg(), "avgm", lr=1.0, beta1=0.5)
    got = build_aggregator("yogi:lr=0.1,tau=0.01+cosfilter+geomed")
    assert isinstance(got, ServerOptimizer) and got.kind == "yogi" and got.tau == 0.01
    # An optimizer may stand in front of a screen that stands in front of dp.
    assert isinstance(build_aggregator("adam+collusion+dp:clip=1,z=1+fedavg"), ServerOptimizer)


@pytest.mark.parametrize("kind", ["avgm", "adagrad", "adam", "yogi"])
def test_a_huge_finite_aggregate_saturates_instead_of_freezing_a_coordinate(kind: str) -> None:
    # Prepare: round 1's aggregate has 1e20 at coordinate 0 (its square overflows float32),
    # rounds 2-3 an ordinary 0.1 there; and the same ordinary rounds from a fresh state, to
    # check bits elsewhere are untouched
    opt = ServerOptimizer(FedAvg(), kind, lr=0.5, beta1=0.5, beta2=0.5, tau=1e-2)
    proc = opt.create(D)
    state = proc.initialize()
    huge = np.zeros(D, np.float32)
    huge[0], huge[1] = 1e20, 0.25
    normal = np.full(D, 0.1, np.float32)
    # Execute
    outs = []
    for d in (huge, normal, normal):
        out = proc.next(state, [ClientUpdate("a", SparseUpdate.from_dense(d), 1.0)])
        state = out.state
        outs.append(out)
    # Assert: every state and step stays finite, coordinate 0 still moves after the spike
    # (with v = inf its step was 0 for good), and the norms are finite
    m, v, _ = state
    assert all(np.all(np.isfinite(o.result)) for o in outs)
    assert np.all(np.isfinite(m)) and (v is None or np.all(np.isfinite(v)))
    assert outs[2].result[0] != 0
    assert np.isfinite(outs[0].measurements["pseudo_gradient_norm"])
    # ... and coordinates the spike did not touch follow the float64 rule as before
    want = _reference(kind, [huge, normal, normal], 0.5, 0.5, 0.5, 1e-2)
    np.testing.assert_allclose(outs[2].result[2:], want[2][2:], rtol=1e-5)
