"""Splitting a dataset over simulated devices: IID, Dirichlet(alpha), shards, natural."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["iid", "dirichlet", "shards", "natural", "partition", "partition_stats", "PARTITIONS"]

Parts = list[npt.NDArray[np.int64]]


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check(labels: npt.NDArray[np.int64], n: int) -> None:
    """Refuse a split that cannot give every client at least one example."""
    if np.ndim(labels) != 1:
        raise ValueError(f"labels must be 1-D (one per example), got shape {np.shape(labels)}")
    if not _is_int(n) or n < 1:
        raise ValueError(
            f"need at least one client: the client count must be an integer >= 1, got {n!r}"
        )
    if n > len(labels):
        raise ValueError(
            f"{n} clients but only {len(labels)} examples: every client needs at least one; "
            "lower the client count"
        )


def iid(labels: npt.NDArray[np.int64], n: int, rng: np.random.Generator) -> Parts:
    """Shuffle and deal out equal-sized parts (sizes differ by at most one)."""
    _check(labels, n)
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
    """Label skew by a per-class Dirichlet split: for each class, proportions p ~ Dir(alpha)
    over the `n` clients, and client j gets a share p_j of that class's examples.

    This is the split of Yurochkin et al. 2019 (PFNM), Wang et al. 2020 (FedMA) and Li et al.
    2022 (NIID-Bench, "distribution-based label imbalance"), without the cap NIID-Bench's
    code adds (a client already holding more than len(labels) / n examples gets no share of
    the next classes), so client sizes vary more. It is not Hsu et al. 2019's split, which
    draws each client's class mix q ~ Dir(alpha * prior) and fills equal-sized clients from
    it: there alpha shapes each client's classes, here each class's spread over the clients.

    Small alpha means each client sees few classes. Draws again until every client holds at
    least `min_size` examples (as is customary), and fails clearly if that never happens.
    """
    _check(labels, n)
    if not (isinstance(alpha, numbers.Real) and 0 < alpha < math.inf):
        # NaN or inf made numpy's draws NaN, and 1,000 useless draws ended in a wrong reason.
        raise ValueError(f"alpha must be positive and finite, got {alpha!r}")
    if not _is_int(max_tries) or max_tries < 1:
        raise ValueError(f"max_tries must be an integer >= 1, got {max_tries!r}")
    if not _is_int(min_size) or min_size < 1:
        raise ValueError(
            f"min_size must be >= 1 (a client with no examples cannot train), got {min_size}"
        )
    if n * min_size > len(labels):
        raise ValueError(
            f"Dirichlet({alpha}): {n} clients of at least {min_size} examples need "
            f"{n * min_size}, there are {len(labels)}; lower the client count"
        )
    members = [np.flatnonzero(labels == c).astype(np.int64) for c in np.unique(labels)]
    # Each draw takes the stream's numbers as it always has (class by class: a shuffle of the
    # class's examples, then its proportions), so a seed gives the partition it gave before;
    # the arithmetic on them is done once a draw for all classes, and the clients' sizes
    # first: a draw that leaves one too small (most of them, when the request is nearly
    # hopeless) costs no per-client splitting, joining and sorting. What is left of a draw
    # is numpy's own shuffle and Dirichlet draw, which the stream needs.
    alphas = np.full(n, alpha)
    counts = np.array([len(m) for m in members], dtype=np.int64)
    props = np.empty((len(members), n))
    drawn = [np.empty_like(m) for m in members]
    for _ in range(max_tries):
        for c, m in enumerate(members):
            idx = drawn[c]
            idx[...] = m
            rng.shuffle(idx)
            props[c] = rng.dirichlet(alphas)
        # Class c's client j gets ends[c, j] - ends[c, j - 1] of its examples (the last one
        # the rest): summed over the classes, the clients' sizes are the differences of the
        # summed ends.
        ends = (np.cumsum(props, axis=1) * counts[:, None].astype(np.float64)).astype(np.int64)
        sizes = np.diff(ends[:, :-1].sum(axis=0), prepend=0, append=len(labels))
        if sizes.min() >= min_size:
            buckets: list[list[npt.NDArray[np.int64]]] = [[] for _ in range(n)]
            for idx, cuts in zip(drawn, ends[:, :-1], strict=True):
                for client, part in enumerate(np.split(idx, cuts)):
                    buckets[client].append(part)
            return [np.sort(np.concatenate(b)) for b in buckets]
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
    if not _is_int(shards_per_client) or shards_per_client < 1:
        raise ValueError(f"shards_per_client must be >= 1, got {shards_per_client}")
    _check(labels, n)
    if n * shards_per_client > len(labels):
        raise ValueError(
            f"{n} clients x {shards_per_client} shards need {n * shards_per_client} examples, "
            f"there are {len(labels)}"
        )
    order = np.argsort(labels, kind="stable").astype(np.int64)
    pieces = np.array_split(order, n * shards_per_client)
    perm = rng.permutation(len(pieces))
    return [np.sort(np.concatenate([pieces[j] for j in perm[i::n]])) for i in range(n)]


def natural(groups: Sequence[npt.ArrayLike], *, num_examples: int | None = None) -> Parts:
    """One client per natural group (a speaker, a writer, a synthetic device).

    Every group must hold at least one example (a client with none could never train); groups
    are taken as they are, so they may overlap only if the dataset made them so. Indices must
    be integers, and below `num_examples` (the training set's size) when it is given.
    """
    arrays = [np.asarray(g) for g in groups]
    if not arrays:
        raise ValueError("no groups")
    empty = [i for i, a in enumerate(arrays) if a.size == 0]
    if empty:
        raise ValueError(f"natural group(s) {empty[:5]} hold no examples; drop them first")
    floats = [i for i, a in enumerate(arrays) if not np.issubdtype(a.dtype, np.integer)]
    if floats:
        # Casting would silently truncate 1.5 to example 1.
        raise ValueError(f"natural group(s) {floats[:5]} hold non-integer example indices")
    parts = [np.sort(a.astype(np.int64).reshape(-1)) for a in arrays]
    if min(int(p[0]) for p in parts) < 0:
        raise ValueError("natural groups hold negative example indices")
    if num_examples is not None:
        beyond = [i for i, p in enumerate(parts) if int(p[-1]) >= num_examples]
        if beyond:
            raise ValueError(
                f"natural group(s) {beyond[:5]} hold example indices >= {num_examples}, the "
                "number of training examples"
            )
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


def partition_stats(
    parts: Sequence[npt.NDArray[np.int64]], labels: npt.NDArray[np.int64]
) -> dict[str, int | float]:
    """How a split came out: `devices`; examples per device (`examples_min`, `_median`,
    `_max`); distinct labels per device (`classes_min`, `_mean`, `_max`). A label-skew run
    states its skew with these (rounds.json's summary `partition`)."""
    labels = np.asarray(labels)
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    classes = np.array([len(np.unique(labels[p])) for p in parts], dtype=np.int64)
    return {
        "devices": len(parts),
        "examples_min": int(sizes.min()),
        "examples_median": float(np.median(sizes)),
        "examples_max": int(sizes.max()),
        "classes_min": int(classes.min()),
        "classes_mean": float(classes.mean()),
        "classes_max": int(classes.max()),
    }
