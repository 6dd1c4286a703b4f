"""helper-104: the anomaly cosine screen's reference when the first-pass aggregate is distrusted.

A screen that would reject at least `max_drop` (default half) of the reports left after the
norm screens no longer rejects nothing (266982d): it screens against the geometric median of
those reports. Scenarios from helper-100's review: 12 reports, 3 attackers sending -g.
"""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.aggregators import FedAvg
from coordinator.anomaly import AnomalyFilter

from .test_h95_gaps import huge_flip_round, reports


def non_iid_round(
    seed: int, spread: float, attackers: int = 3, boost: float | None = None, d: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """(reports float64[12, d], unit direction g): 12 - attackers honest reports g + a personal
    part of norm about `spread`, then attackers sending -g at boost times the honest median
    norm (boost None: at the honest mean norm)."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=d)
    g /= np.linalg.norm(g)
    honest = np.vstack(
        [g + spread * rng.normal(size=d) / np.sqrt(d) for _ in range(12 - attackers)]
    )
    norms = np.linalg.norm(honest, axis=1)
    scale = norms.mean() if boost is None else boost * np.median(norms)
    return np.vstack([honest, np.vstack([-g * scale] * attackers)]), g


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_non_iid_honest_reports_plus_attackers_no_longer_switch_the_screen_off() -> None:
    # Prepare: helper-100's round (/tmp/h100/anom.py 3 0.3): the first-pass FedAvg points
    # nowhere useful, 8 of 12 cosines are below 0.3. Before 266982d the screen rejected those 8
    # (the 3 attackers and 5 honest), cos(result, g) = +0.51; 266982d rejected nothing, -0.04.
    x, g = non_iid_round(seed=0, spread=3.0)
    proc = AnomalyFilter(FedAvg(), min_cosine=0.3).create(50)

    # Execute
    out = proc.next(proc.initialize(), reports(x))

    # Assert: distrusted, screened against the geometric median: the same 8 as before 266982d
    m = out.measurements
    assert m["cosine_distrusted"] is True
    assert set(m["rejected"]) == {"d00", "d05", "d06", "d07", "d08", "d09", "d10", "d11"}
    assert set(m["rejected"].values()) == {"cosine"}
    assert set(m["median_cosines"]) == {f"d{i:02d}" for i in range(12)}
    assert cos(out.result, g) > 0.5


def test_over_fifty_seeds_the_median_reference_beats_both_earlier_rules() -> None:
    # Prepare: helper-100's sweep (/tmp/h100/anom2.py 2 0.2 3 1.5): norm_ratio=3, min_cos=0.2,
    # attackers at 1.5 times the honest median norm. Before 266982d: 96/150 attackers rejected,
    # 18/50 rounds moving against g; after it: 57/150 and 31/50.
    rejected_attackers, backwards = 0, 0
    for seed in range(50):
        x, g = non_iid_round(seed, spread=2.0, boost=1.5)
        proc = AnomalyFilter(FedAvg(), max_norm_ratio=3.0, min_cosine=0.2).create(50)

        # Execute
        out = proc.next(proc.initialize(), reports(x))

        rejected = out.measurements["rejected"]
        rejected_attackers += sum(f"d{i:02d}" in rejected for i in (9, 10, 11))
        backwards += cos(out.result, g) < 0

    # Assert: the figures docs/robustness.md quotes
    assert (rejected_attackers, backwards) == (135, 5)


def test_one_huge_sign_flipped_report_is_rejected_alone() -> None:
    # Prepare: test_h95_gaps' round: nine honest reports, one -1,000·g. The FedAvg first pass
    # follows the attacker; the geometric median does not.
    x = huge_flip_round()
    plain = FedAvg().create(50)
    honest_mean = plain.next(plain.initialize(), reports(x[:9])).result
    proc = AnomalyFilter(FedAvg(), min_cosine=0.0).create(50)

    # Execute
    out = proc.next(proc.initialize(), reports(x))

    # Assert
    assert out.measurements["rejected"] == {"d09": "cosine"}
    assert out.measurements["cosine_distrusted"] is True
    np.testing.assert_allclose(out.result, honest_mean, rtol=1e-6)


def test_max_drop_sets_when_the_aggregate_is_distrusted() -> None:
    # max_drop=1 distrusts the aggregate only when it would reject every report: the 1,000x
    # round then rejects the nine honest reports, as before 266982d.
    x = huge_flip_round()
    proc = AnomalyFilter(FedAvg(), min_cosine=0.0, max_drop=1.0).create(50)
    out = proc.next(proc.initialize(), reports(x))
    assert set(out.measurements["rejected"]) == {f"d{i:02d}" for i in range(9)}
    assert out.measurements["cosine_distrusted"] is False
    assert out.measurements["median_cosines"] == {}


@pytest.mark.parametrize("max_drop", [0.0, -0.1, 1.5, float("nan")])
def test_a_max_drop_outside_0_1_is_refused(max_drop: float) -> None:
    with pytest.raises(ValueError, match="max_drop"):
        AnomalyFilter(FedAvg(), min_cosine=0.0, max_drop=max_drop)
