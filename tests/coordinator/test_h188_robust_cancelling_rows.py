"""Krum, the geometric median and centered clipping behind a pre-aggregator measure a row that
sums reports on the row itself, not on its Gram entries.

`UpdateRows.sq_norms`/`gram` took a bucket mean's ||y||² = Σ c_j c_k <x_j, x_k> (and its
distances ||y_i||² + ||y_j||² - 2<y_i, y_j>) from the reports' Gram matrix. Two colluders in
one bucket sending `big` (~1e7 per coordinate) and `-big + 2·a` make that row the small
vector `a`, but its Gram entries the difference of numbers near 1e14·d: float64 lost every
digit (about -64 for a true 4.4), and colluders who try a few `big` pick the sign. Krum then selected
the colluders' bucket (distance clamped to 0) and the geometric median and centered clipping
moved towards it, where the same rule on the materialised rows does not (helper-188; the same
loss as c00d542 fixed in the anomaly screen).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import (
    CenteredClipping,
    ClientUpdate,
    GeometricMedian,
    Krum,
    UpdateRows,
    build_aggregator,
)
from coordinator.aggregators._robust import DEFAULT_BLOCK_ELEMS

from .test_h148_sparse_support import peak_of, random_sparse_reports
from .test_h186_anomaly_cancelling_rows import _cu, _Eager

D = 10_000


def colluding_bucket_rows() -> tuple[UpdateRows, np.ndarray]:
    """Bucket 0 holds `big` and `-big - 2·honest` (mean -honest); three honest buckets.

    `big` is the one of 40 draws (seed 133) whose Gram-entry squared norm of the bucket mean
    erred most below its true value (by -68), as a colluder would choose it.
    """
    rng = np.random.default_rng(1)
    base = np.zeros(D, np.float32)
    base[:5] = rng.normal(size=5)
    honest = [
        base + np.pad(0.01 * rng.normal(size=5), (0, D - 5)).astype(np.float32) for _ in range(6)
    ]
    big = (np.random.default_rng(133).normal(size=D) * 1e7).astype(np.float32)
    ups = [_cu("a", big), _cu("b", (-big - 2 * base).astype(np.float32))]
    ups += [_cu(f"h{i}", h) for i, h in enumerate(honest)]
    rows = UpdateRows.from_client_updates(ups, D)
    mix = np.zeros((4, 8))
    for b in range(4):
        mix[b, 2 * b : 2 * b + 2] = 0.5
    return rows.mixed(mix, labels=["bucket-ab", "b1", "b2", "b3"]), base


def _cosine(v: np.ndarray, base: np.ndarray) -> float:
    v64 = v.astype(np.float64)
    return float(v64 @ base / (np.linalg.norm(v64) * np.linalg.norm(base)))


def test_a_colluding_bucket_has_its_true_norm_and_distances() -> None:
    # Prepare
    rows, _ = colluding_bucket_rows()
    eager = UpdateRows.from_client_updates(rows.materialize(), D)
    # Execute
    sq, d2 = rows.sq_norms(), rows.sq_distances()
    # Assert: the bucket mean is about -base (4.4: -big - 2·base in float32 rounds base's
    # coordinates to whole numbers); the Gram entries said -65, clamped to a distance of 0.
    assert sq[0] > 1.0
    np.testing.assert_allclose(sq, eager.sq_norms(), rtol=1e-6)
    np.testing.assert_allclose(d2, eager.sq_distances(), rtol=1e-6, atol=1e-9)
    assert np.min(d2[0, 1:]) > 100 * np.max(d2[1:, 1:])  # far from the honest buckets


@pytest.mark.parametrize(
    "factory",
    [Krum(f=1), Krum(f=1, m=None), GeometricMedian(), CenteredClipping(tau=None, iterations=3)],
    ids=["krum", "multikrum", "geomed", "cclip"],
)
def test_a_colluding_bucket_does_not_steer_a_robust_rule(factory: Any) -> None:
    # Prepare
    rows, base = colluding_bucket_rows()
    proc = factory.create(D)
    # Execute
    lazy = proc.next_rows(proc.initialize(), rows)
    eager = proc.next(proc.initialize(), rows.materialize())
    # Assert: before, Krum selected bucket-ab and the geometric median pointed at -base
    # (cosine -0.995); the materialised rows give the honest direction.
    assert _cosine(eager.result, base) > 0.99
    assert _cosine(lazy.result, base) > 0.99
    assert lazy.measurements.get("selected") == eager.measurements.get("selected")
    assert "bucket-ab" not in (lazy.measurements.get("selected") or [])
    np.testing.assert_allclose(lazy.result, eager.result, rtol=1e-5, atol=1e-6)


def test_pairs_of_colluding_buckets_have_their_true_dot_products() -> None:
    # Two summed rows that both cancel: <y_i, y_j> from the Gram entries is a difference of
    # numbers near 1e12·d too; taken from one dense row against the other's reports it is not.
    rng = np.random.default_rng(5)
    d = 2_000
    small = [rng.normal(size=d) for _ in range(3)]
    ups = []
    for p in range(3):
        big = rng.normal(size=d) * 1e6
        ups += [_cu(f"a{p}", big), _cu(f"b{p}", -big + 2 * small[p])]
    ups += [_cu(f"h{i}", rng.normal(size=d)) for i in range(2)]
    rows = UpdateRows.from_client_updates(ups, d)
    mix = np.zeros((4, 8))
    for b in range(4):
        mix[b, 2 * b : 2 * b + 2] = 0.5
    mixed = rows.mixed(mix)
    eager = UpdateRows.from_client_updates(mixed.materialize(), d)
    old = mix @ rows.gram() @ mix.T
    # Before: the Gram entries were off by far more than float32 rounding of the rows.
    assert np.max(np.abs(old - eager.gram())) > 1e-3
    np.testing.assert_allclose(mixed.gram(), eager.gram(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mixed.sq_distances(), eager.sq_distances(), rtol=1e-5, atol=1e-5)
    assert np.array_equal(mixed.gram(), mixed.gram().T)


# --- lazy vs materialised through the specs, on random rounds -----------------------------


def random_round(rng: np.random.Generator, seed: int, bucket: int) -> list[ClientUpdate]:
    """Honest reports around a direction plus colluding pairs that share a bucket.

    A pair is `big` (1e6 to 1e8 per coordinate) and `-big - 2·direction` (their mean points
    against the honest reports); the pair is placed where `Bucketing(seed)` puts two reports
    into one bucket in round 0. Outliers at -10·direction besides.
    """
    n = int(rng.integers(10, 17))
    d = int(rng.integers(1_000, 4_000))
    direction = rng.normal(size=d)
    vecs: list[np.ndarray] = [direction + 0.3 * rng.normal(size=d) for _ in range(n)]
    perm = np.random.default_rng([seed, 0]).permutation(n)
    for p in range(int(rng.integers(1, 3))):
        big = rng.normal(size=d) * 10.0 ** rng.uniform(6, 8)
        i, j = perm[p * bucket], perm[p * bucket + 1]
        vecs[i], vecs[j] = big, -big - 2 * direction
    vecs[int(perm[-1])] = -10 * direction
    ups = []
    for i, v in enumerate(vecs):
        mask = rng.random(d) < 0.7
        idx = np.flatnonzero(mask).astype(np.int64)
        vals = v[idx].astype(np.float32)
        ups.append(ClientUpdate(f"d{i:02d}", SparseUpdate(idx, vals, d), 1.0))
    return ups


SPECS = [
    "bucket:2,seed={seed}+krum:f=1",
    "bucket:2,seed={seed}+multikrum:f=1",
    "bucket:3,seed={seed}+krum:f=1",
    "bucket:2,seed={seed}+geomed",
    "bucket:2,seed={seed}+cclip:tau=auto,beta=0,iters=3",
    "bucket:2,seed={seed}+nnm:f=1+krum:f=1",
]


@pytest.mark.parametrize("template", SPECS)
def test_lazy_rule_decides_as_the_materialised_rule_on_random_rounds(template: str) -> None:
    rng = np.random.default_rng(SPECS.index(template))
    bucket = int(template.split(":")[1].split(",")[0])
    for trial in range(8):
        ups = random_round(rng, trial, bucket)
        d = ups[0].update.size
        spec = template.format(seed=trial)
        lazy_factory: Any = build_aggregator(spec)
        eager_factory = dataclasses.replace(lazy_factory, inner=_Eager(lazy_factory.inner))
        lazy_proc: Any = lazy_factory.create(d)
        eager_proc: Any = eager_factory.create(d)
        lazy = lazy_proc.next(lazy_proc.initialize(), ups)
        eager = eager_proc.next(eager_proc.initialize(), ups)
        where = f"{spec} trial {trial}"
        lm, em = lazy.measurements["inner"], eager.measurements["inner"]
        while "inner" in lm and "selected" not in lm:
            lm, em = lm["inner"], em["inner"]
        assert lm.get("selected") == em.get("selected"), where
        scale = max(1.0, float(np.max(np.abs(eager.result))))
        np.testing.assert_allclose(
            lazy.result, eager.result, rtol=1e-4, atol=1e-5 * scale, err_msg=where
        )


@pytest.mark.parametrize(
    ("spec", "extra"),
    [
        ("bucket:2+krum:f=2", "krum"),
        ("bucket:2+geomed", "geomed"),
        ("nnm:f=2+krum:f=2", "krum"),
        ("nnm:f=2+cclip:tau=auto", "cclip"),
    ],
)
def test_measuring_summed_rows_stays_within_the_documented_bound(spec: str, extra: str) -> None:
    # Each summed row is built one at a time (one float64[d] and the sparse dot temporaries).
    n, d, k = 100, 100_000, 1_000
    updates = random_sparse_reports(n, d, k, seed=0, name="d{:03d}")
    nn, big_n, block = n * n, n * k, DEFAULT_BLOCK_ELEMS
    inner = {"krum": 16 * d + 48 * big_n + 40 * nn, "geomed": 32 * d + 48 * big_n}
    inner["cclip"] = inner["geomed"]
    pre = 16 * nn // 2 + 24 * block if spec.startswith("bucket") else 8 * d + 16 * big_n
    bound = inner[extra] + pre + (48 * nn + 24 * block if spec.startswith("nnm") else 0)
    peak, out = peak_of(build_aggregator(spec), d, updates)
    assert peak < bound, f"{spec}: peak {peak / 1e6:.1f} MB > documented {bound / 1e6:.1f} MB"
    assert np.all(np.isfinite(out.result))
