"""Server checks a mutation hunt (helper s59s) found unpinned. The survivor floor (`min_survivors`) (`min_survivors`) at
each stage close: with the floor check at the close of the masked-input stage removed, a
round with fewer masked inputs than the floor went on to unmask a sum of too few inputs, as
long as every node still had t live neighbours; with the check at the close of advertise
removed, the round still aborted, but blamed nodes for lacking neighbours. And a node's second
advertisement: no test sent one, and without the check fresh keys replaced the first ones."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.secagg import (
    AdvertiseKeys,
    ProtocolParams,
    ProtocolViolation,
    RoundAborted,
    SecAggClient,
    SecAggServer,
    ShareDelivery,
    Stage,
    generate_keypair,
)

N = 5
L = 3


def _params() -> ProtocolParams:
    # k = n - 1 (every node a neighbour of every other), t = 3: four live nodes give every
    # node at least t live neighbours, so only a floor of 5 stops a round of four
    return ProtocolParams(7, N, N - 1, 3, 16, L, bytes(32), b"\x07" * 32)


def _keys_shared(server: SecAggServer, clients: list[SecAggClient]) -> dict[int, ShareDelivery]:
    """Every client advertises and shares keys; the server's share-keys deliveries by node."""
    for c in clients:
        server.receive_advertise(c.advertise())
    directories = server.close_advertise()
    for i, d in directories.items():
        server.receive_share_keys(clients[i].share_keys(d))
    return server.close_share_keys()


def test_fewer_masked_inputs_than_the_floor_abort_before_unmask() -> None:
    # Prepare: all five advertise and share; only nodes 0 to 3 send masked inputs
    p = _params()
    server = SecAggServer(p, min_survivors=5)
    clients = [SecAggClient(p, i, p.digest) for i in range(N)]
    deliveries = _keys_shared(server, clients)
    for i in (0, 1, 2, 3):
        server.receive_masked_input(clients[i].masked_input(deliveries[i], np.ones(L, np.uint64)))
    # Execute / Assert: no unmask request, and the masked sum is dropped
    with pytest.raises(RoundAborted, match="^4 masked inputs, need 5$"):
        server.close_masked_input()
    assert server.stage == Stage.ABORTED
    assert server.state.masked_sum is None and server.state.short_nodes == ()


def test_fewer_advertised_keys_than_the_floor_abort_naming_the_count_not_short_nodes() -> None:
    # Prepare: four of five advertise, floor 5 (each of the four has t = 3 neighbours with keys)
    p = _params()
    server = SecAggServer(p, min_survivors=5)
    for i in (0, 1, 2, 3):
        server.receive_advertise(SecAggClient(p, i, p.digest).advertise())
    # Execute / Assert: the reason is the count, and no node is blamed for its neighbours
    with pytest.raises(RoundAborted, match="^4 nodes advertised keys, need 5$"):
        server.close_advertise()
    assert server.stage == Stage.ABORTED and server.state.short_nodes == ()


def test_a_second_advertisement_from_a_node_is_refused_and_its_first_keys_stay() -> None:
    # Prepare: every node advertised once
    p = _params()
    server = SecAggServer(p)
    ads = [SecAggClient(p, i, p.digest).advertise() for i in range(N)]
    for ad in ads:
        server.receive_advertise(ad)
    fresh = AdvertiseKeys(p.round_id, 0, generate_keypair()[1], generate_keypair()[1])
    # Execute / Assert: the same keys again, or fresh ones, are refused as a repeat
    for again in (ads[0], fresh):
        with pytest.raises(ProtocolViolation, match="^node 0 advertised twice$"):
            server.receive_advertise(again)
    directory = server.close_advertise()[1]
    assert (0, ads[0].enc_public, ads[0].mask_public) in directory.entries


def test_exactly_the_floor_of_nodes_goes_through_every_stage() -> None:
    # Prepare: a floor of 4; node 4 never advertises, so exactly 4 nodes take part
    p = _params()
    server = SecAggServer(p, min_survivors=4)
    clients = [SecAggClient(p, i, p.digest) for i in range(4)]
    # Execute: every close is at the floor, not below it
    deliveries = _keys_shared(server, clients)
    for i, d in deliveries.items():
        server.receive_masked_input(clients[i].masked_input(d, np.full(L, i, np.uint64)))
    request = server.close_masked_input()
    for i in request.alive:
        server.receive_unmask(clients[i].unmask(request))
    # Assert
    assert server.finish().total.tolist() == [0 + 1 + 2 + 3] * L
