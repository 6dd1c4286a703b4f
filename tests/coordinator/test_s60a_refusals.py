"""The robust aggregators' parameter refusals, at both sides of each documented bound.

Each bound is checked where it bites: the last accepted value is built and aggregates a small
round, the first refused one raises ValueError naming the parameter. A check weakened by one
step (< for <=, a dropped refusal) fails one side or the other.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import (
    Bucketing,
    CenteredClipping,
    ClientUpdate,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    MomentumCosineFilter,
    NearestNeighborMixing,
    RobustLearningRate,
    TrimmedMean,
    UpdateRows,
)
from coordinator.aggregators._robust import (
    MAX_CCLIP_ITERATIONS,
    MAX_GEOMED_ITERATIONS,
    resolve_f,
)


def _round(factory: Any) -> np.ndarray:
    """One round of 7 small dense reports through `factory`: it must aggregate them."""
    x = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    ups = [
        ClientUpdate(f"d{i}", SparseUpdate(np.arange(3, dtype=np.int64), r, 3), 1.0)
        for i, r in enumerate(x)
    ]
    proc = factory.create(3)
    out = proc.next(proc.initialize(), ups)
    assert out.result.shape == (3,) and np.all(np.isfinite(out.result))
    return np.asarray(out.result)


ACCEPTED = [
    lambda: TrimmedMean(0.0),
    lambda: TrimmedMean(0.49),
    lambda: TrimmedMean(0.2, block_elems=1),
    lambda: TrimmedMean(0.2, support=True),
    lambda: CoordinateMedian(block_elems=1),
    lambda: Krum(f=0.49),
    lambda: Krum(f=0),
    lambda: Krum(f=1),
    lambda: Krum(f=2, m=None),
    lambda: Krum(f=1, m=1),
    lambda: NearestNeighborMixing(f=0.5),
    lambda: NearestNeighborMixing(f=1),
    lambda: NearestNeighborMixing(f=0),
    lambda: RobustLearningRate(theta=1),
    lambda: RobustLearningRate(theta=0.5),
    lambda: RobustLearningRate(theta=2, low_lr=-1.0),
    lambda: RobustLearningRate(theta=2, low_lr=0.0),
    lambda: RobustLearningRate(theta=2, block_elems=1),
    lambda: GeometricMedian(max_iter=1),
    lambda: GeometricMedian(max_iter=MAX_GEOMED_ITERATIONS),
    lambda: GeometricMedian(tol=0.0),
    lambda: GeometricMedian(nu=1e-300),
    lambda: CenteredClipping(tau=1e-30),
    lambda: CenteredClipping(tau=None),
    lambda: CenteredClipping(beta=0.0),
    lambda: CenteredClipping(iterations=1),
    lambda: CenteredClipping(iterations=MAX_CCLIP_ITERATIONS),
    lambda: Bucketing(bucket_size=1),
    lambda: Bucketing(seed=0),
    lambda: MomentumCosineFilter(min_cosine=-1.0),
    lambda: MomentumCosineFilter(beta=0.0),
    lambda: MomentumCosineFilter(max_drop=1.0),
]


@pytest.mark.parametrize("make", ACCEPTED, ids=range(len(ACCEPTED)))
def test_the_last_accepted_value_of_each_bound_builds_and_aggregates(make: Any) -> None:
    _round(make())


REFUSED = [
    (lambda: TrimmedMean(0.5), "beta must be in \\[0, 0.5\\)"),
    (lambda: TrimmedMean(-0.01), "beta must be in \\[0, 0.5\\)"),
    (lambda: TrimmedMean(float("nan")), "beta must be in"),
    (lambda: TrimmedMean(0.2, block_elems=0), "block_elems must be >= 1"),
    (lambda: TrimmedMean(0.2, support=1), "support must be True or False"),  # type: ignore[arg-type]
    (lambda: CoordinateMedian(block_elems=0), "block_elems must be >= 1"),
    (lambda: Krum(f=0.5), "Krum needs n > 2f \\+ 2"),
    (lambda: Krum(f=-1), "f must be a non-negative count"),
    (lambda: Krum(f=1.5), "f >= 1 must be a whole number"),
    (lambda: Krum(f=float("inf")), "f must be a non-negative count"),
    (lambda: Krum(f=1, m=0), "m must be a whole number >= 1"),
    (lambda: Krum(f=1, m=1.5), "m must be a whole number >= 1"),  # type: ignore[arg-type]
    (lambda: NearestNeighborMixing(f=0.51), "NNM needs f < n/2"),
    (lambda: NearestNeighborMixing(f=-0.1), "f must be a non-negative count"),
    (lambda: RobustLearningRate(theta=0), "theta must be > 0"),
    (lambda: RobustLearningRate(theta=1.5), "theta >= 1 must be a whole number"),
    (lambda: RobustLearningRate(theta=float("nan")), "theta must be > 0"),
    (lambda: RobustLearningRate(theta=10**400), "past a float's range"),
    (lambda: RobustLearningRate(theta=2, low_lr=0.01), "low_lr must be in \\[-1, 0\\]"),
    (lambda: RobustLearningRate(theta=2, low_lr=-1.01), "low_lr must be in \\[-1, 0\\]"),
    (lambda: RobustLearningRate(theta=2, block_elems=0), "block_elems must be >= 1"),
    (lambda: GeometricMedian(nu=0.0), "nu must be finite and > 0"),
    (lambda: GeometricMedian(nu=float("inf")), "nu must be finite and > 0"),
    (lambda: GeometricMedian(max_iter=0), "max_iter must be a whole number >= 1"),
    (lambda: GeometricMedian(max_iter=2.5), "max_iter must be a whole number >= 1"),  # type: ignore[arg-type]
    (lambda: GeometricMedian(max_iter=MAX_GEOMED_ITERATIONS + 1), "max_iter must be at most"),
    (lambda: GeometricMedian(tol=-1e-9), "tol must be finite and >= 0"),
    (lambda: GeometricMedian(tol=float("nan")), "tol must be finite and >= 0"),
    (lambda: CenteredClipping(tau=0.0), "tau must be finite and > 0"),
    (lambda: CenteredClipping(tau=float("inf")), "tau must be finite and > 0"),
    (lambda: CenteredClipping(beta=1.0), "0 <= beta < 1"),
    (lambda: CenteredClipping(beta=-0.1), "0 <= beta < 1"),
    (lambda: CenteredClipping(iterations=0), "whole number of iterations >= 1"),
    (lambda: CenteredClipping(iterations=1.5), "whole number of iterations >= 1"),  # type: ignore[arg-type]
    (
        lambda: CenteredClipping(iterations=MAX_CCLIP_ITERATIONS + 1),
        "iterations must be at most",
    ),
    (lambda: Bucketing(bucket_size=0), "bucket size must be a whole number >= 1"),
    (lambda: Bucketing(bucket_size=2.5), "bucket size must be a whole number >= 1"),  # type: ignore[arg-type]
    (lambda: Bucketing(seed=-1), "seed must be >= 0"),
    (lambda: MomentumCosineFilter(min_cosine=1.0), "min_cosine must be in \\[-1, 1\\)"),
    (lambda: MomentumCosineFilter(min_cosine=-1.01), "min_cosine must be in \\[-1, 1\\)"),
    (lambda: MomentumCosineFilter(beta=1.0), "beta must be in \\[0, 1\\)"),
    (lambda: MomentumCosineFilter(beta=-0.1), "beta must be in \\[0, 1\\)"),
    (lambda: MomentumCosineFilter(max_drop=0.0), "max_drop must be in \\(0, 1\\]"),
    (lambda: MomentumCosineFilter(max_drop=1.01), "max_drop must be in \\(0, 1\\]"),
]


@pytest.mark.parametrize(("make", "message"), REFUSED, ids=range(len(REFUSED)))
def test_the_first_refused_value_of_each_bound_is_refused_by_name(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    ("f", "n", "want"),
    [
        (0, 10, 0),
        (0.0, 10, 0),
        (0.1, 10, 1),
        (0.19, 10, 1),
        (0.29, 100, 29),
        (3, 2, 3),
        (1.0, 5, 1),
    ],
)
def test_resolve_f_is_the_count_or_the_exact_floor_of_the_fraction(
    f: float, n: int, want: int
) -> None:
    assert resolve_f(f, n) == want


def test_resolve_f_takes_a_whole_count_of_any_size() -> None:
    # A count past float's range is still a count (it fails the cohort bound, not parsing).
    assert resolve_f(10**400, 5) == 10**400


def test_a_report_of_the_wrong_size_is_refused_naming_its_device() -> None:
    good = ClientUpdate("good", SparseUpdate(np.zeros(0, np.int64), np.zeros(0, np.float32), 4), 1)
    bad = ClientUpdate(
        "bad-dev", SparseUpdate(np.zeros(0, np.int64), np.zeros(0, np.float32), 5), 1
    )
    with pytest.raises(ValueError, match="update from bad-dev has size 5, expected 4"):
        UpdateRows.from_client_updates([good, bad], 4)


def _updates(n: int = 3, d: int = 4) -> list[SparseUpdate]:
    x = np.arange(n * d, dtype=np.float32).reshape(n, d) + 1
    return [SparseUpdate(np.arange(d, dtype=np.int64), r, d) for r in x]


def _rows() -> UpdateRows:
    return UpdateRows(_updates(), 4)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: UpdateRows([], 0), "size must be positive"),
        (lambda r: UpdateRows(_updates(), 4, mix=np.ones((2, 5))), "mix must be float64"),
        (lambda r: UpdateRows(_updates(), 4, mix=np.ones(3)), "mix must be float64"),
        (lambda r: UpdateRows(_updates(), 5), "update of size 4, expected 5"),
        (lambda r: r.mixed(np.ones((2, 2))), "mix must have 3 columns"),
        (lambda r: r.mixed(np.ones(3)), "mix must have 3 columns"),
        (lambda r: r.with_sq_norms([1.0, 2.0]), "need 3 squared norms"),
        (lambda r: r.with_sq_norms([1.0, -2.0, 3.0]), "finite and non-negative"),
        (lambda r: r.with_sq_norms([1.0, np.inf, 3.0]), "finite and non-negative"),
        (lambda r: r.combine(np.ones(2)), "need 3 coefficients"),
        (lambda r: r.dots(np.ones(3)), "z must have shape \\(4,\\)"),
        (lambda r: r.mixed(np.eye(3), weights=[1.0, 1.0]), "need 3 weights"),
        (lambda r: r.mixed(np.eye(3), weights=[1.0, -1.0, 1.0]), "finite and non-negative"),
        (lambda r: r.mixed(np.eye(3), weights=[1.0, np.nan, 1.0]), "finite and non-negative"),
        (lambda r: r.mixed(np.eye(3), labels=["a"]), "need 3 labels"),
    ],
)
def test_update_rows_refuses_malformed_arguments(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(_rows())
