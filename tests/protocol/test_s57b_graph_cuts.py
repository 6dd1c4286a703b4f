"""The graph claims of docs/secure-aggregation.md ("Thresholds and failure probabilities"): the
Harary graph is k-connected, so removing fewer than k nodes leaves it connected, but two blocks
of k/2 consecutive places on the permuted cycle split it."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.secagg import choose_degree, neighbours, prg_bytes


def _components(graph: list[tuple[int, ...]], removed: set[int]) -> int:
    """Connected components of the graph without `removed` (depth-first search)."""
    seen: set[int] = set()
    parts = 0
    for start in range(len(graph)):
        if start in removed or start in seen:
            continue
        parts += 1
        stack = [start]
        seen.add(start)
        while stack:
            for j in graph[stack.pop()]:
                if j not in removed and j not in seen:
                    seen.add(j)
                    stack.append(j)
    return parts


def _cycle(n: int, seed: bytes) -> list[int]:
    """The nodes in cycle order: the documented permutation (stable argsort of the u64 words
    of PRG(graph seed, use `graph`))."""
    keys = np.frombuffer(prg_bytes(seed, 8 * n, b"graph"), dtype="<u8")
    return [int(v) for v in np.argsort(keys, kind="stable")]


sizes = st.tuples(st.integers(4, 80), st.sampled_from([0.5, 1.0, 1.5, 3.0]))


@settings(max_examples=60)
@given(size=sizes, seed=st.binary(min_size=32, max_size=32), data=st.data())
def test_removing_fewer_than_k_nodes_leaves_the_graph_connected(
    size: tuple[int, float], seed: bytes, data: st.DataObject
) -> None:
    # Prepare: any k - 1 nodes removed
    n, factor = size
    k = choose_degree(n, factor)
    graph = neighbours(n, k, seed)
    removed = set(data.draw(st.lists(st.integers(0, n - 1), max_size=k - 1, unique=True)))
    # Execute / Assert
    assert all(len(nb) == k for nb in graph)
    assert _components(graph, removed) == 1


@settings(max_examples=60)
@given(size=sizes, seed=st.binary(min_size=32, max_size=32), data=st.data())
def test_two_blocks_of_half_k_consecutive_places_split_a_sparse_graph(
    size: tuple[int, float], seed: bytes, data: st.DataObject
) -> None:
    # Prepare: a sparse graph with room for two non-empty arcs between the two blocks
    n, factor = size
    k = choose_degree(n, factor)
    if k == n - 1 or n < k + 2:
        return
    half = k // 2
    order = _cycle(n, seed)
    gap = data.draw(st.integers(1, n - k - 1))  # places between the two blocks
    start = data.draw(st.integers(0, n - 1))
    places = list(range(start, start + half)) + list(range(start + half + gap, start + k + gap))
    removed = {order[p % n] for p in places}
    # Execute / Assert: two pieces, each an arc
    assert len(removed) == k
    assert _components(neighbours(n, k, seed), removed) == 2
