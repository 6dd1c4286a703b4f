"""Server refusals of a node's stage message that no test in tests/protocol sent (a mutation hunt,
helper s59s, removed each check and the secagg tests there still passed). Each test sends
the hostile message in an otherwise honest round, asserts its specific error, then checks
that the message changed nothing: the round ends with the exact sum of the honest inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from protocol.secagg import (
    MaskedInput,
    ProtocolViolation,
    RoundAborted,
    SecAggServer,
    ShareKeys,
    ShareKind,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
    WrongStage,
)

from .test_s49_secagg_refusals import L, N, _Round

SILENT = 19  # the node left out of one stage in these rounds


def _finish(r: _Round, req: UnmaskRequest) -> None:
    """Every alive node answers; the sum is exactly that of the alive nodes' inputs."""
    for i in req.alive:
        r.server.receive_unmask(r.clients[i].unmask(req))
    result = r.server.finish()
    assert result.contributors == req.alive
    assert result.total.tolist() == [sum(req.alive)] * L


def _masked(r: _Round, i: int) -> MaskedInput:
    return r.clients[i].masked_input(r.deliveries[i], np.full(L, i, np.uint64))


def test_shares_from_a_node_that_never_advertised_are_refused() -> None:
    # Prepare: node SILENT does not advertise
    r = _Round()
    for ad in r.ads:
        if ad.node != SILENT:
            r.server.receive_advertise(ad)
    r.directories = r.server.close_advertise()
    graph = r.server.state.graph
    forged = ShareKeys(r.p.round_id, SILENT, tuple((j, bytes(80)) for j in graph[SILENT]))
    # Execute / Assert
    with pytest.raises(ProtocolViolation, match=f"^node {SILENT} sent shares without advert"):
        r.server.receive_share_keys(forged)
    assert SILENT not in r.server.state.senders
    r.share_keys()
    assert all(s != SILENT for d in r.deliveries.values() for s, _ in d.ciphertexts)
    _finish(r, r.masked_input())


def test_a_second_share_keys_from_a_node_is_refused_and_relays_one_bundle() -> None:
    # Prepare: node 0 has shared keys
    r = _Round()
    r.advertise()
    first = r.clients[0].share_keys(r.directories[0])
    r.server.receive_share_keys(first)
    # Execute / Assert: the same upload again (a replay) is refused
    with pytest.raises(ProtocolViolation, match="^node 0 sent shares twice$"):
        r.server.receive_share_keys(first)
    for i, d in r.directories.items():
        if i != 0:
            r.server.receive_share_keys(r.clients[i].share_keys(d))
    r.deliveries = r.server.close_share_keys()
    for dest, _ in first.ciphertexts:
        assert [s for s, _ in r.deliveries[dest].ciphertexts].count(0) == 1
    _finish(r, r.masked_input())


def test_too_few_nodes_sharing_keys_abort_naming_the_count() -> None:
    # Prepare: a floor of N; node SILENT does not share keys
    r = _Round()
    r.server = SecAggServer(r.p, min_survivors=N)
    r.advertise()
    for i, d in r.directories.items():
        if i != SILENT:
            r.server.receive_share_keys(r.clients[i].share_keys(d))
    # Execute / Assert
    with pytest.raises(RoundAborted, match=f"^{N - 1} nodes shared keys, need {N}$"):
        r.server.close_share_keys()
    assert r.server.stage == Stage.ABORTED and r.server.state.short_nodes == ()


def test_a_masked_input_from_a_node_that_did_not_share_keys_is_refused() -> None:
    # Prepare: node SILENT did not share keys; a masked input is sent in its name
    r = _Round()
    r.advertise()
    r.share_keys(silent=frozenset({SILENT}))
    inputs = {i: _masked(r, i) for i in r.deliveries}
    forged = dataclasses.replace(inputs[0], node=SILENT)
    # Execute / Assert
    with pytest.raises(ProtocolViolation, match=f"^node {SILENT} sent a masked input without"):
        r.server.receive_masked_input(forged)
    assert SILENT not in r.server.state.contributors
    for mi in inputs.values():
        r.server.receive_masked_input(mi)
    _finish(r, r.server.close_masked_input())


def test_a_second_masked_input_is_refused_and_counted_once() -> None:
    # Prepare
    r = _Round()
    r.advertise()
    r.share_keys()
    mine = _masked(r, 3)
    r.server.receive_masked_input(mine)
    # Execute / Assert: a replay would add node 3's input to the sum twice
    with pytest.raises(ProtocolViolation, match="^node 3 sent its masked input twice$"):
        r.server.receive_masked_input(mine)
    for i in r.deliveries:
        if i != 3:
            r.server.receive_masked_input(_masked(r, i))
    _finish(r, r.server.close_masked_input())


@pytest.mark.parametrize("field", ["length", "bits"])
def test_a_masked_input_of_the_wrong_shape_is_refused(field: str) -> None:
    # Prepare
    r = _Round()
    r.advertise()
    r.share_keys()
    inputs = {i: _masked(r, i) for i in r.deliveries}
    wrong = dataclasses.replace(inputs[3], **{field: getattr(inputs[3], field) + 1})
    # Execute / Assert
    with pytest.raises(ProtocolViolation, match="^masked input has the wrong shape$"):
        r.server.receive_masked_input(wrong)
    assert 3 not in r.server.state.contributors
    for mi in inputs.values():
        r.server.receive_masked_input(mi)
    _finish(r, r.server.close_masked_input())


def test_unmask_shares_from_a_node_that_is_not_alive_are_refused() -> None:
    # Prepare: node SILENT shared keys but sent no masked input (dropped)
    r = _Round()
    r.advertise()
    r.share_keys()
    for i in r.deliveries:
        if i != SILENT:
            r.server.receive_masked_input(_masked(r, i))
    req = r.server.close_masked_input()
    assert SILENT in req.dropped
    # Execute / Assert
    with pytest.raises(ProtocolViolation, match=f"^node {SILENT} is not alive but sent unmask"):
        r.server.receive_unmask(UnmaskResponse(r.p.round_id, SILENT, ()))
    assert SILENT not in r.server.state.responders
    _finish(r, req)


@pytest.mark.parametrize("about", ["non-neighbour", "neighbour that did not share"])
def test_a_share_about_a_node_it_cannot_hold_one_of_is_refused(about: str) -> None:
    # Prepare: node SILENT (a neighbour of node 0) shared no keys
    r = _Round()
    r.advertise()
    graph = r.server.state.graph
    assert SILENT in graph[0]
    r.share_keys(silent=frozenset({SILENT}))
    req = r.masked_input()
    honest = r.clients[0].unmask(req)
    if about == "non-neighbour":
        target = min(n for n in range(N) if n != 0 and n not in graph[0])
    else:
        target = SILENT
    forged = UnmaskResponse(
        r.p.round_id, 0, (*honest.shares, (target, ShareKind.SELF_MASK, honest.shares[0][2]))
    )
    # Execute / Assert: the whole answer is refused (nothing of it kept)
    with pytest.raises(
        ProtocolViolation, match=f"^node 0 sent a share about non-neighbour {target}$"
    ):
        r.server.receive_unmask(forged)
    assert 0 not in r.server.state.responders
    assert all(h != 0 for shares in r.server.state.shares.values() for h, _ in shares)
    r.server.receive_unmask(honest)
    for i in req.alive:
        if i != 0:
            r.server.receive_unmask(r.clients[i].unmask(req))
    result = r.server.finish()
    assert result.total.tolist() == [sum(req.alive)] * L


def test_messages_for_another_stage_round_or_node_range_are_refused() -> None:
    # Prepare: the server is in the share-keys stage
    r = _Round()
    r.advertise()
    ad = r.ads[0]
    # Execute / Assert: a key advertisement now is for a closed stage
    with pytest.raises(WrongStage, match="server is in stage .*, message is for"):
        r.server.receive_advertise(ad)
    sk = r.clients[0].share_keys(r.directories[0])
    with pytest.raises(ProtocolViolation, match=f"^message for round {r.p.round_id + 1}, this is"):
        r.server.receive_share_keys(dataclasses.replace(sk, round_id=r.p.round_id + 1))
    with pytest.raises(ProtocolViolation, match=f"^node {N} outside 0..{N - 1}$"):
        r.server.receive_share_keys(dataclasses.replace(sk, node=N))
    assert r.server.state.senders == set()
    r.server.receive_share_keys(sk)
    for i, d in r.directories.items():
        if i != 0:
            r.server.receive_share_keys(r.clients[i].share_keys(d))
    r.deliveries = r.server.close_share_keys()
    _finish(r, r.masked_input())
