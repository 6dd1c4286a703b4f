"""Partitions cover the data exactly once and have the intended skew."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mobile_sim.partition import dirichlet, iid, natural, partition, shards


def _labels(n: int, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n).astype(np.int64)


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    allidx = np.concatenate(parts)
    assert len(allidx) == n
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 50), size=st.integers(50, 500), seed=st.integers(0, 2**16))
def test_iid_is_an_exact_cover(n: int, size: int, seed: int) -> None:
    parts = iid(_labels(size), n, np.random.default_rng(seed))
    _assert_exact_cover(parts, size)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=20, deadline=None)
@given(alpha=st.sampled_from([0.1, 0.5, 1.0, 100.0]), seed=st.integers(0, 2**16))
def test_dirichlet_is_an_exact_cover(alpha: float, seed: int) -> None:
    labels = _labels(2000)
    parts = dirichlet(labels, 20, alpha, np.random.default_rng(seed))
    _assert_exact_cover(parts, 2000)
    assert min(len(p) for p in parts) >= 2


def test_dirichlet_small_alpha_is_skewed() -> None:
    labels = _labels(4000)
    rng = np.random.default_rng(0)

    def mean_classes(alpha: float) -> float:
        parts = dirichlet(labels, 20, alpha, rng)
        return float(np.mean([len(np.unique(labels[p])) for p in parts]))

    assert mean_classes(0.1) < mean_classes(100.0) - 3


def test_shards_give_few_classes() -> None:
    labels = np.repeat(np.arange(10), 100).astype(np.int64)
    parts = shards(labels, 50, 2, np.random.default_rng(0))
    _assert_exact_cover(parts, 1000)
    assert max(len(np.unique(labels[p])) for p in parts) <= 2


def test_natural_and_dispatch_errors() -> None:
    parts = natural([[3, 1], [0, 2]])
    assert [p.tolist() for p in parts] == [[1, 3], [0, 2]]
    with pytest.raises(ValueError, match="unknown partition"):
        partition(_labels(10), 2, "bogus", np.random.default_rng(0))
    with pytest.raises(ValueError, match="clients but only"):
        iid(_labels(5), 6, np.random.default_rng(0))
