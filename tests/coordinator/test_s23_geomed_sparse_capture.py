"""The geometric median on sparse top-k reports is captured by far fewer than half the
reports (docs/robustness.md, "Geometric median on top-k reports"; helper-229's review). With
honest reports on disjoint supports their unit vectors are nearly orthogonal, their sum has
norm about sqrt(n - k), and k identical colluders win once k exceeds it. The doc quotes these
cosines; `pytest -s` prints them. cclip is not captured in the same setup."""

from __future__ import annotations

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import ClientUpdate, build_aggregator

D, K = 2410, 24
SPECS = ("geomed", "cosfilter+geomed", "cclip:tau=auto,beta=0,iters=3")


def _cosines(n: int, attackers: int) -> dict[str, float]:
    """Each spec's one-round result's cosine to the honest mean: n - attackers honest reports
    of K positive values on disjoint supports, `attackers` copies of -0.1 x the honest mean."""
    rng = np.random.default_rng(0)
    honest = np.zeros((n - attackers, D), np.float32)
    perm = rng.permutation(D)
    for i in range(len(honest)):
        honest[i, perm[i * K : (i + 1) * K]] = np.abs(rng.normal(size=K)) + 0.5
    mean = honest.mean(0)
    attack = (-0.1 * mean).astype(np.float32)
    rows = [*honest, *[attack] * attackers]
    updates = [ClientUpdate(f"dev{i:03d}", SparseUpdate.from_dense(r), 1.0) for i, r in enumerate(rows)]  # fmt: skip
    out = {}
    for spec in SPECS:
        process = build_aggregator(spec).create(D)
        result = process.next(process.initialize(), updates).result.astype(np.float64)
        out[spec] = float(result @ mean / (np.linalg.norm(result) * np.linalg.norm(mean)))
    print(n, attackers, {k: round(v, 3) for k, v in out.items()})
    return out


@pytest.mark.parametrize(("n", "attackers"), [(10, 3), (10, 4), (20, 5)])
def test_a_few_identical_colluders_capture_the_geometric_median(n: int, attackers: int) -> None:
    cos = _cosines(n, attackers)
    assert cos["geomed"] < -0.99 and cos["cosfilter+geomed"] < -0.99
    assert cos["cclip:tau=auto,beta=0,iters=3"] > 0.99


@pytest.mark.parametrize(("n", "attackers"), [(10, 2), (20, 4)])
def test_below_about_sqrt_n_minus_k_they_do_not(n: int, attackers: int) -> None:
    cos = _cosines(n, attackers)
    assert cos["geomed"] > -0.5
    assert cos["cclip:tau=auto,beta=0,iters=3"] > 0.99
