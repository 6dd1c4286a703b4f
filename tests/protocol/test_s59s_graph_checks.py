"""Argument checks of protocol/secagg/_graph.py that no test in tests/protocol reached (a mutation
hunt, helper s59s, removed each and those tests still passed): the node floor of
`choose_degree` and its infinite-factor branch, and the degree and node ranges of `neighbours`
and `neighbours_of` (an odd degree below n - 1 gave every node k - 1 neighbours, not k)."""

from __future__ import annotations

import pytest

from protocol.secagg import choose_degree, neighbours, neighbours_of

SEED = bytes(range(32))


@pytest.mark.parametrize("n", [0, 1])
def test_choose_degree_refuses_fewer_than_two_nodes(n: int) -> None:
    with pytest.raises(ValueError, match=f"^secure aggregation needs at least 2 nodes, got {n}$"):
        choose_degree(n)
    assert choose_degree(2) == 1  # two nodes: the complete graph


@pytest.mark.parametrize("factor", [float("inf"), 1e308])
def test_choose_degree_with_an_unbounded_factor_is_the_complete_graph(factor: float) -> None:
    # factor * log2 n is inf here: 2 * ceil(inf) would raise OverflowError
    assert choose_degree(10, factor) == 9


@pytest.mark.parametrize("degree", [0, 10, 11])
def test_a_degree_outside_one_to_n_minus_one_is_refused(degree: int) -> None:
    with pytest.raises(ValueError, match=f"^degree {degree} outside 1..9$"):
        neighbours(10, degree, SEED)
    with pytest.raises(ValueError, match=f"^degree {degree} outside 1..9$"):
        neighbours_of(10, degree, SEED, 0)


@pytest.mark.parametrize("degree", [3, 5, 7])
def test_an_odd_degree_below_n_minus_one_is_refused(degree: int) -> None:
    with pytest.raises(ValueError, match=f"^degree {degree} must be even below n - 1$"):
        neighbours(10, degree, SEED)
    with pytest.raises(ValueError, match=f"^degree {degree} must be even below n - 1$"):
        neighbours_of(10, degree, SEED, 0)
    # the even degree below it gives every node exactly that many neighbours
    graph = neighbours(10, degree - 1, SEED)
    assert all(len(g) == degree - 1 for g in graph)
    assert all(neighbours_of(10, degree - 1, SEED, i) == graph[i] for i in range(10))


@pytest.mark.parametrize("node", [-1, 10])
def test_neighbours_of_a_node_outside_the_range_is_refused(node: int) -> None:
    with pytest.raises(ValueError, match=f"^node {node} outside 0..9$"):
        neighbours_of(10, 4, SEED, node)
