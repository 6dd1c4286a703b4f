"""What an honest-but-curious server learns at n = 50 on the sparse SecAgg+ graph.

docs/secure-aggregation.md ("Threat model") says that with fewer than t colluding neighbours
per honest device the server still learns sums over small sets of honest survivors, and gave
the n = 50 figures (k = 18, t = 10) from reviewers' scratch runs (helpers 172 and 176). This
test reproduces each claim with the real `SecAggClient` and `SecAggServer` in process: the
server's partial sums use only what the server holds (the masked inputs, the shares the honest
survivors sent it, reconstructed as `finish` does) and the colluders' own keys.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from protocol.secagg import (
    ProtocolParams,
    RoundAborted,
    SecAggClient,
    SecAggServer,
    choose_degree,
    choose_threshold,
    expand_mask,
    pair_mask_seed,
    pair_mask_sign,
    prg_bytes,
    self_mask,
    unpack_bits,
)
from protocol.secagg._graph import neighbours
from protocol.secagg._shamir import combine_shares

N = 50
M = 20  # ring bits
L = 8  # vector length
SEED = bytes(32)
K = choose_degree(N)


def _cycle() -> list[int]:
    """The public permuted cycle the graph is built on (known before the round)."""
    keys = np.frombuffer(prg_bytes(SEED, 8 * N, b"graph"), dtype="<u8")
    return [int(x) for x in np.argsort(keys, kind="stable")]


PERM = _cycle()


def _at(*places: int) -> set[int]:
    return {PERM[q % N] for q in places}


def _round(
    t: int, colluders: set[int], dropped: set[int]
) -> tuple[dict[int, np.ndarray], dict[int, SecAggClient], dict[int, bytes], dict[int, bytes]]:
    """One round in which `dropped` leave after sharing keys. Returns the inputs, the clients,
    the masked inputs the server received, and the secrets it reconstructs from the shares it
    holds (self-mask seeds of survivors, mask keys of dropped nodes; key -1: the round's public
    digest)."""
    params = ProtocolParams(1, N, K, t, M, L, SEED, os.urandom(32))
    rng = np.random.default_rng(0)
    x = {i: rng.integers(0, 1 << 10, L).astype(np.uint64) for i in range(N)}
    cl = {i: SecAggClient(params, i, params.digest) for i in range(N)}
    srv = SecAggServer(params)
    for i in range(N):
        srv.receive_advertise(cl[i].advertise())
    dirs = srv.close_advertise()
    for i in range(N):
        srv.receive_share_keys(cl[i].share_keys(dirs[i]))
    dels = srv.close_share_keys()
    masked: dict[int, bytes] = {}
    for i in range(N):
        if i not in dropped:
            mi = cl[i].masked_input(dels[i], x[i])
            masked[i] = mi.packed
            srv.receive_masked_input(mi)
    req = srv.close_masked_input()
    for i in range(N):
        if i not in dropped:
            srv.receive_unmask(cl[i].unmask(req))
    held = {node: [share for _, share in pairs] for node, pairs in srv.state.shares.items()}
    result = srv.finish()  # raises RoundAborted if the round cannot complete
    assert sorted(result.contributors) == sorted(set(range(N)) - dropped)
    secrets = {node: combine_shares(shares) for node, shares in held.items()}
    del colluders  # the colluders' keys are read from their clients below
    secrets[-1] = params.digest  # the round's public digest, for the pair-mask seeds
    return x, cl, masked, secrets


def _server_sum(
    members: set[int],
    colluders: set[int],
    dropped: set[int],
    cl: dict[int, SecAggClient],
    masked: dict[int, bytes],
    secrets: dict[int, bytes],
) -> np.ndarray:
    """The sum of `members`' inputs as the server computes it: their masked inputs minus their
    self masks (seeds rebuilt from shares) and minus each pair mask with an outside neighbour
    (a colluder's key is its own, a dropped node's is rebuilt from shares)."""
    graph = neighbours(N, K, SEED)
    acc = np.zeros(L, np.uint64)
    for i in members:
        assert secrets[i] == cl[i].state.self_seed  # what finish rebuilt
        y = unpack_bits(masked[i], L, M) - self_mask(secrets[i], L, M)
        for j in graph[i]:
            if j in members:
                continue
            assert j in colluders | dropped, "a member has an honest live neighbour outside"
            key = cl[j].state.mask_private if j in colluders else secrets[j]
            seed = pair_mask_seed(key, cl[i].state.mask_public, secrets[-1])
            pm = expand_mask(seed, L, M, b"pair-mask")
            y = y - pm if pair_mask_sign(i, j) > 0 else y + pm
        acc = acc + y
    return acc & np.uint64((1 << M) - 1)


def _truth(x: dict[int, np.ndarray], members: set[int]) -> np.ndarray:
    return sum((x[i] for i in members), np.zeros(L, np.uint64)) & np.uint64((1 << M) - 1)


def _max_colluding_neighbours(colluders: set[int]) -> int:
    graph = neighbours(N, K, SEED)
    return max(len(set(graph[i]) & colluders) for i in range(N) if i not in colluders)


def test_the_default_graph_at_n50() -> None:
    assert (K, choose_threshold(K)) == (18, 10)


def test_colluders_alone_recover_a_ten_device_arc() -> None:
    t, h = choose_threshold(K), K // 2
    colluders = _at(*range(0, h), *range(h + 10, h + 10 + h))  # two blocks of 9
    arc = _at(*range(h, h + 10))
    assert len(colluders) == 18 and _max_colluding_neighbours(colluders) == 9 < t
    x, cl, masked, secrets = _round(t, colluders, set())
    assert np.array_equal(_server_sum(arc, colluders, set(), cl, masked, secrets), _truth(x, arc))


def test_dropouts_alone_in_two_blocks_abort_the_round() -> None:
    t, h = choose_threshold(K), K // 2
    dropped = _at(*range(0, h), *range(h + 15, h + 15 + h))
    assert len(dropped) == 18
    with pytest.raises(RoundAborted):
        _round(t, set(), dropped)


@pytest.mark.parametrize(("extra_t", "per_block"), [(0, 1), (2, 3)])
def test_few_colluders_and_dropouts_split_the_survivors_into_two_arcs(
    extra_t: int, per_block: int
) -> None:
    # t = 10: 2 colluders and 16 dropped; t = 12: 6 colluders and 12 dropped.
    t, h = choose_threshold(K) + extra_t, K // 2
    block1, block2 = list(range(0, h)), list(range(h + 16, h + 16 + h))
    middle = range(4 - per_block // 2, 4 - per_block // 2 + per_block)
    colluders = _at(*(block1[q] for q in middle), *(block2[q] for q in middle))
    dropped = _at(*block1, *block2) - colluders
    assert (len(colluders), len(dropped)) == (2 * per_block, 18 - 2 * per_block)
    assert _max_colluding_neighbours(colluders) < t
    arc_a, arc_b = _at(*range(h, h + 16)), _at(*range(2 * h + 16, N))
    assert len(arc_a) == len(arc_b) == 16
    x, cl, masked, secrets = _round(t, colluders, dropped)
    for arc in (arc_a, arc_b):
        got = _server_sum(arc, colluders, dropped, cl, masked, secrets)
        assert np.array_equal(got, _truth(x, arc))


def test_two_adjacent_devices_are_isolated_by_nine_colluders_and_nine_dropouts() -> None:
    t, c0 = choose_threshold(K), 20
    pair = _at(c0, c0 + 1)
    colluders = _at(*(c0 + d for d in (-8, -7, -6, -5, -4, 2, 3, 4, 5)))
    dropped = _at(*(c0 + d for d in (-9, -3, -2, -1, 6, 7, 8, 9, 10)))
    assert _max_colluding_neighbours(colluders) <= 9 < t
    x, cl, masked, secrets = _round(t, colluders, dropped)
    got = _server_sum(pair, colluders, dropped, cl, masked, secrets)
    assert np.array_equal(got, _truth(x, pair))
