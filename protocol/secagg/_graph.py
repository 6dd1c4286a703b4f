"""The SecAgg+ communication graph: a Harary graph over a public random permutation of the nodes.

Node `perm[p]` is joined to the k/2 nodes before and after it on the permuted cycle, so every
node has exactly k neighbours and the graph is k-connected (Bell et al. 2020, sec. 3.1). The
permutation comes from the round's public graph seed through the AES-CTR PRG, so every party
derives the same graph and the server cannot pick it.
"""

from __future__ import annotations

import math

import numpy as np

from ._prg import prg_bytes

__all__ = [
    "choose_degree",
    "choose_threshold",
    "neighbours",
    "neighbours_of",
    "reconstruction_failure_probability",
]


def choose_degree(n: int, factor: float = 1.5) -> int:
    """Default degree k = 2 * ceil(factor * log2 n), capped at n - 1 (complete graph)."""
    if n < 2:
        raise ValueError(f"secure aggregation needs at least 2 nodes, got {n}")
    half = factor * math.log2(n)
    if not half < n:  # inf too (a factor near a float's largest): the complete graph
        return n - 1
    return min(n - 1, 2 * math.ceil(half))


def choose_threshold(degree: int) -> int:
    """Default t = floor(k/2) + 1: a strict majority of the neighbours.

    Above k/2 the server can never gather t shares of both a node's mask key and its self-mask
    seed from honest neighbours, since each of them releases only one of the two.
    """
    return degree // 2 + 1


def neighbours(n: int, degree: int, seed: bytes) -> list[tuple[int, ...]]:
    """Sorted neighbour lists, one per node 0..n-1, of a k-regular Harary graph.

    `degree` must be even, or n - 1 (complete graph).
    """
    if not 1 <= degree <= n - 1:
        raise ValueError(f"degree {degree} outside 1..{n - 1}")
    if degree == n - 1:
        return [tuple(j for j in range(n) if j != i) for i in range(n)]
    if degree % 2:
        raise ValueError(f"degree {degree} must be even below n - 1")
    keys = np.frombuffer(prg_bytes(seed, 8 * n, b"graph"), dtype="<u8")
    perm = np.argsort(keys, kind="stable")
    pos = np.empty(n, dtype=np.int64)
    pos[perm] = np.arange(n)
    half = degree // 2
    out = []
    for i in range(n):
        p = int(pos[i])
        near = {int(perm[(p + d) % n]) for d in range(-half, half + 1) if d}
        out.append(tuple(sorted(near)))
    return out


def neighbours_of(n: int, degree: int, seed: bytes, node: int) -> tuple[int, ...]:
    """One node's sorted neighbour list (what a device needs: O(n) numpy, no per-node loop)."""
    if not 0 <= node < n:
        raise ValueError(f"node {node} outside 0..{n - 1}")
    if not 1 <= degree <= n - 1:
        raise ValueError(f"degree {degree} outside 1..{n - 1}")
    if degree == n - 1:
        return tuple(j for j in range(n) if j != node)
    if degree % 2:
        raise ValueError(f"degree {degree} must be even below n - 1")
    keys = np.frombuffer(prg_bytes(seed, 8 * n, b"graph"), dtype="<u8")
    perm = np.argsort(keys, kind="stable")
    p = int(np.flatnonzero(perm == node)[0])
    half = degree // 2
    return tuple(sorted({int(perm[(p + d) % n]) for d in range(-half, half + 1) if d}))


def reconstruction_failure_probability(
    n: int, degree: int, threshold: int, dropout: float
) -> float:
    """Union bound on P[some node has fewer than t live neighbours], dropouts i.i.d. at `dropout`.

    Per node: P[Binomial(k, 1 - dropout) < t]; times n. This is the chance that a round aborts
    although the cohort as a whole is large enough.
    """
    live = 1.0 - dropout
    per_node = sum(
        math.comb(degree, j) * live**j * dropout ** (degree - j) for j in range(threshold)
    )
    return min(1.0, n * per_node)
