"""helper-95's adversarial audit of the robust aggregators: gaps that were fixed (each failed first)."""

from __future__ import annotations

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import (
    AggregatorSpecError,
    ClientUpdate,
    FedAvg,
    Krum,
    build_aggregator,
)
from coordinator.anomaly import AnomalyFilter


def reports(x: np.ndarray) -> list[ClientUpdate]:
    """One dense report per row of `x`, devices d00, d01, ..., weight 1."""
    return [
        ClientUpdate(f"d{i:02d}", SparseUpdate.from_dense(row.astype(np.float32)), 1.0)
        for i, row in enumerate(x)
    ]


def huge_flip_round() -> np.ndarray:
    """Nine honest reports around a direction g (seed 1, d = 50), then one -1,000·g."""
    rng = np.random.default_rng(1)
    g = rng.normal(size=50)
    return np.vstack([g + 0.5 * rng.normal(size=(9, 50)), -1e3 * g])


def test_one_huge_report_cannot_make_the_cosine_screen_reject_the_honest_majority() -> None:
    # Prepare: nine honest reports around g, one sign-flipped report 1,000 times as large. With
    # FedAvg inside, the first-pass aggregate points along the attacker, so every honest report
    # has a negative cosine to it. Before the fix the screen rejected all nine as "cosine" and
    # aggregated the attacker alone: ten times further off than FedAvg without the screen.
    x = huge_flip_round()
    plain = FedAvg().create(50)
    honest_mean = plain.next(plain.initialize(), reports(x[:9])).result
    proc = AnomalyFilter(FedAvg(), min_cosine=0.0).create(50)

    # Execute
    out = proc.next(proc.initialize(), reports(x))

    # Assert: rejecting at least half of the reports means the first-pass aggregate is not to
    # be trusted as the reference. 266982d then rejected nothing (the result was FedAvg's with
    # the attacker); since helper-104 the screen uses the geometric median of the same reports,
    # which the one attacker cannot move far: it alone is rejected.
    assert out.measurements["rejected"] == {"d09": "cosine"}
    assert out.measurements["cosine_distrusted"] is True
    np.testing.assert_allclose(out.result, honest_mean, rtol=1e-6)


def test_the_cosine_screen_still_rejects_a_minority() -> None:
    # Prepare: a robust inner keeps the reference honest; the attacker is the only one below 0.
    rng = np.random.default_rng(2)
    g = rng.normal(size=20)
    x = np.vstack([g + 0.3 * rng.normal(size=(7, 20)), -3.0 * g])
    proc = AnomalyFilter(build_aggregator("geomed"), min_cosine=0.0).create(20)

    # Execute
    out = proc.next(proc.initialize(), reports(x))

    # Assert
    assert out.measurements["rejected"] == {"d07": "cosine"}
    assert out.measurements["cosine_distrusted"] is False


@pytest.mark.parametrize("f", [0.5, 0.6, 0.99])
def test_a_fraction_f_that_can_never_meet_the_papers_bound_is_refused(f: float) -> None:
    # floor(f·n) >= floor(n/2) for f >= 1/2, so 2f + 2 >= n + 1: Blanchard et al.'s n > 2f + 2
    # fails in every round whatever n. Before, such a spec built and ran every round without
    # its guarantee (one neighbour per score, one report kept, `guarantee_holds: false`).
    with pytest.raises(ValueError, match="fraction"):
        Krum(f=f)
    for spec in (f"krum:f={f}", f"multikrum:f={f}", f"nnm:f=0.2+krum:f={f}"):
        with pytest.raises(AggregatorSpecError, match="fraction"):
            build_aggregator(spec)


@pytest.mark.parametrize("spec", ["krum:f=0.49", "multikrum:f=0.2", "krum:f=7", "nnm:f=0.5+geomed"])
def test_fractions_below_a_half_counts_and_nnm_still_build(spec: str) -> None:
    # A count may or may not meet the bound depending on the round's n (measured per round),
    # and NNM's n > 2f (Allouah et al. 2023) holds for f = 0.5 whenever n is odd.
    proc = build_aggregator(spec).create(4)
    x = np.random.default_rng(3).normal(size=(9, 4))
    assert np.all(np.isfinite(proc.next(proc.initialize(), reports(x)).result))
