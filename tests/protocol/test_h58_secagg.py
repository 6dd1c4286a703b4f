"""SecAgg+ protocol objects: refusals the bare SecAggServer makes on its own (any transport)."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.secagg import (
    ProtocolParams,
    SecAggClient,
    SecAggServer,
    ShareKeys,
    WrongAddress,
    choose_degree,
    choose_threshold,
)


def _params(n: int) -> ProtocolParams:
    k = choose_degree(n)
    return ProtocolParams(
        round_id=3,
        num_nodes=n,
        degree=k,
        threshold=choose_threshold(k),
        ring_bits=16,
        vector_len=6,
        graph_seed=bytes(32),
        digest=b"\x22" * 32,
    )


def test_share_keys_missing_a_live_neighbour_is_refused_and_the_sum_stays_exact() -> None:
    # Prepare: node 0 leaves one neighbour out of its share-keys upload, then drops. Before,
    # the bare server took the short list (only bundles *outside* the neighbourhood were
    # refused), counted node 0 as dropped after sharing, and at finish removed the pairwise
    # mask of node 0 with that neighbour, which the neighbour had never added: a wrong sum,
    # no abort, nobody named. (coordinator.secure.SecureRound checked this already; any other
    # transport driving SecAggServer did not.)
    p = _params(10)
    rng = np.random.default_rng(5)
    inputs = [rng.integers(0, 256, p.vector_len, dtype=np.uint64) for _ in range(p.num_nodes)]
    clients = [SecAggClient(p, i, p.digest) for i in range(p.num_nodes)]
    server = SecAggServer(p)
    for c in clients:
        server.receive_advertise(c.advertise())
    dirs = server.close_advertise()
    # Execute
    short = clients[0].share_keys(dirs[0])
    with pytest.raises(WrongAddress, match="each of its"):
        server.receive_share_keys(ShareKeys(short.round_id, 0, short.ciphertexts[1:]))
    for i in range(1, p.num_nodes):
        server.receive_share_keys(clients[i].share_keys(dirs[i]))
    deliveries = server.close_share_keys()
    for i, dl in deliveries.items():
        server.receive_masked_input(clients[i].masked_input(dl, inputs[i]))
    req = server.close_masked_input()
    for i in req.alive:
        server.receive_unmask(clients[i].unmask(req))
    res = server.finish()
    # Assert: node 0 counts as silent at share-keys; the sum over the others is exact.
    assert 0 not in res.contributors and 0 not in res.dropped
    want = np.zeros(p.vector_len, dtype=np.uint64)
    for i in res.contributors:
        want += inputs[i]
    np.testing.assert_array_equal(res.total, want & np.uint64((1 << p.ring_bits) - 1))
