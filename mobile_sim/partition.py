"""Splitting a dataset over simulated devices: IID, Dirichlet(alpha), shards, natural."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["iid", "dirichlet", "shards", "natural", "partition", "PARTITIONS"]

Parts = list[npt.NDArray[np.int64]]


def _check(n: int, total: int) -> None:
    if n < 1:
        raise ValueError("need at least one client")
    if n > total:
        raise ValueError(f"{n} clients but only {total} examples")


def iid(labels: npt.NDArray[np.int64], n: int, rng: np.random.Generator) -> Parts:
    """Shuffle and deal out equal-sized parts (sizes differ by at most one)."""
    _check(n, len(labels))
    order = rng.permutation(len(labels)).astype(np.int64)
    return [np.sort(p) for p in np.array_split(order, n)]


def dirichlet(
    labels: npt.NDArray[np.int64],
    n: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    min_size: int = 2,
    max_tries: int = 1000,
) -> Parts:
    """Label skew after Hsu et al. 2019: each class is split over clients by Dir(alpha).

    Small alpha means each client sees few classes. Draws again until every client holds at
    least `min_size` examples (as is customary), and fails clearly if that never happens.
    """
    _check(n, len(labels))
    if alpha <= 0:
        raise ValueError("alpha must be positive")
    if min_size < 1:
        raise ValueError(
            f"min_size must be >= 1 (a client with no examples cannot train), got {min_size}"
        )
    if n * min_size > len(labels):
        raise ValueError(
            f"Dirichlet({alpha}): {n} clients of at least {min_size} examples need "
            f"{n * min_size}, there are {len(labels)}; lower the client count"
        )
    classes = np.unique(labels)
    for _ in range(max_tries):
        buckets: list[list[npt.NDArray[np.int64]]] = [[] for _ in range(n)]
        for c in classes:
            idx = np.flatnonzero(labels == c).astype(np.int64)
            rng.shuffle(idx)
            props = rng.dirichlet(np.full(n, alpha))
            cuts = (np.cumsum(props) * len(idx)).astype(np.int64)[:-1]
            for client, part in enumerate(np.split(idx, cuts)):
                buckets[client].append(part)
        parts = [np.sort(np.concatenate(b)) for b in buckets]
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise ValueError(
        f"Dirichlet({alpha}) over {n} clients left some client with < {min_size} examples "
        f"in {max_tries} draws; raise alpha or lower the client count"
    )


def shards(
    labels: npt.NDArray[np.int64], n: int, shards_per_client: int, rng: np.random.Generator
) -> Parts:
    """McMahan et al.'s pathological non-IID split: sort by label, cut into shards, deal them.

    Needs at least one example per shard: `n * shards_per_client <= len(labels)`.
    """
    if shards_per_client < 1:
        raise ValueError(f"shards_per_client must be >= 1, got {shards_per_client}")
    _check(n, len(labels))
    if n * shards_per_client > len(labels):
        raise ValueError(
            f"{n} clients x {shards_per_client} shards need {n * shards_per_client} examples, "
            f"there are {len(labels)}"
        )
    order = np.argsort(labels, kind="stable").astype(np.int64)
    pieces = np.array_split(order, n * shards_per_client)
    perm = rng.permutation(len(pieces))
    return [np.sort(np.concatenate([pieces[j] for j in perm[i::n]])) for i in range(n)]


def natural(groups: Sequence[npt.ArrayLike]) -> Parts:
    """One client per natural group (a speaker, a writer, a synthetic device).

    Every group must hold at least one example (a client with none could never train); groups
    are taken as they are, so they may overlap only if the dataset made them so.
    """
    parts = [np.sort(np.asarray(g, dtype=np.int64).reshape(-1)) for g in groups]
    if not parts:
        raise ValueError("no groups")
    empty = [i for i, p in enumerate(parts) if p.size == 0]
    if empty:
        raise ValueError(f"natural group(s) {empty[:5]} hold no examples; drop them first")
    if min(int(p[0]) for p in parts) < 0:
        raise ValueError("natural groups hold negative example indices")
    return parts


PARTITIONS = ("iid", "dirichlet", "shards")


def partition(
    labels: npt.NDArray[np.int64],
    n: int,
    how: str,
    rng: np.random.Generator,
    *,
    alpha: float = 0.5,
    shards_per_client: int = 2,
) -> Parts:
    """Dispatch by name: 'iid', 'dirichlet' (uses alpha) or 'shards'."""
    if how == "iid":
        return iid(labels, n, rng)
    if how == "dirichlet":
        return dirichlet(labels, n, alpha, rng)
    if how == "shards":
        return shards(labels, n, shards_per_client, rng)
    raise ValueError(f"unknown partition {how!r}; choose one of {PARTITIONS} (or natural)")
