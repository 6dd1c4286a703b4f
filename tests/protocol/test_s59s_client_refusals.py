"""Device checks a mutation hunt (helper s59s) found unpinned: the masked-input call's checks of
its own vector (length, and every element inside the ring: without it an element >= 2^m was
silently reduced, a wrong sum), and the share-bundle parser's refusals of a hostile dealer's
plaintext whose lengths do not add up or that is too short to parse (without them, a
`struct.error` escaped untyped, or a bundle with trailing bytes was kept), and two bounds
moved by one: t bundles are enough to mask, and a plan at t = k/2 is refused."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest

from protocol.secagg import (
    MalformedMessage,
    ProtocolParams,
    ProtocolViolation,
    RoundAborted,
    SecAggClient,
    ShareDelivery,
    Stage,
    agree,
    create_shares,
    encrypt,
    share_associated_data,
)

from .test_s49_secagg_refusals import L, _Round

TOP = (1 << 16) - 1  # the largest element of the ring of `_Round` (16 bits)


def _at_masked_input() -> _Round:
    r = _Round()
    r.advertise()
    r.share_keys()
    return r


@pytest.mark.parametrize("size", [1, L - 1, L + 1])
def test_a_vector_of_the_wrong_length_is_refused(size: int) -> None:
    r = _at_masked_input()
    client = r.clients[0]
    # Execute / Assert: a 1-element vector would otherwise broadcast over the whole mask
    with pytest.raises(ValueError, match=f"^input of {size} elements, round expects {L}$"):
        client.masked_input(r.deliveries[0], np.zeros(size, np.uint64))
    assert client.stage == Stage.MASKED_INPUT and not client.state.held_shares


def test_an_element_above_the_ring_is_refused_and_the_top_element_is_not() -> None:
    r = _at_masked_input()
    client = r.clients[0]
    x = np.array([0, TOP + 1, 0], np.uint64)
    with pytest.raises(ValueError, match="^input element above 2\\^16 - 1$"):
        client.masked_input(r.deliveries[0], x)
    assert client.stage == Stage.MASKED_INPUT
    # The largest ring element is a legal input and comes out of the sum as itself
    r.server.receive_masked_input(client.masked_input(r.deliveries[0], np.full(L, TOP, np.uint64)))
    for i, d in r.deliveries.items():
        if i != 0:
            r.server.receive_masked_input(r.clients[i].masked_input(d, np.zeros(L, np.uint64)))
    req = r.server.close_masked_input()
    for i in req.alive:
        r.server.receive_unmask(r.clients[i].unmask(req))
    assert r.server.finish().total.tolist() == [TOP] * L


def _hostile_bundle(r: _Round, plain_of: str) -> tuple[ShareDelivery, int]:
    """Node 0's delivery with its first bundle replaced by one its dealer s encrypted properly
    for s -> 0 around a plaintext that does not parse."""
    d = r.deliveries[0]
    s = d.ciphertexts[0][0]
    dealer = r.clients[s].state
    ks = ss = create_shares(dealer.mask_private, r.p.threshold, r.p.threshold)[0]
    head = struct.pack("<II", s, 0)
    plain = {
        "trailing byte": head + struct.pack("<H", len(ks)) + ks + struct.pack("<H", len(ss)) + ss
        + b"\0",
        "first length too long": head + struct.pack("<H", len(ks) + len(ss) + 9) + ks
        + struct.pack("<H", len(ss)) + ss,
        "second length too long": head + struct.pack("<H", len(ks)) + ks
        + struct.pack("<H", len(ss) + 1) + ss,
        "no lengths": head,
        "short head": head[:5],
    }[plain_of]  # fmt: skip
    key = agree(
        dealer.enc_private, r.clients[0].state.enc_public, b"plume-secagg-enc\0" + r.p.digest
    )
    ct = encrypt(key, plain, share_associated_data(r.p.digest, r.p.round_id, s, 0))
    return ShareDelivery(d.round_id, ((s, ct), *d.ciphertexts[1:])), s


@pytest.mark.parametrize(
    ("plain_of", "match"),
    [
        ("trailing byte", "^share bundle lengths do not add up$"),
        ("first length too long", "^share bundle"),
        ("second length too long", "^share bundle lengths do not add up$"),
        ("no lengths", "^share bundle truncated: "),
        ("short head", "^share bundle truncated: "),
    ],
)
def test_a_device_refuses_a_bundle_plaintext_that_does_not_parse(plain_of: str, match: str) -> None:
    r = _at_masked_input()
    client = r.clients[0]
    forged, _ = _hostile_bundle(r, plain_of)
    # Execute / Assert: typed refusal, nothing held, and the honest delivery still goes through
    with pytest.raises(MalformedMessage, match=match):
        client.masked_input(forged, np.zeros(L, np.uint64))
    assert client.stage == Stage.MASKED_INPUT and not client.state.held_shares
    client.masked_input(r.deliveries[0], np.zeros(L, np.uint64))
    assert client.stage == Stage.UNMASK


def test_exactly_t_bundles_are_enough_to_mask_and_t_minus_one_are_not() -> None:
    r = _at_masked_input()
    t = r.p.threshold
    d = r.deliveries[0]
    client = r.clients[0]
    with pytest.raises(RoundAborted, match=f"^shares from {t - 1} neighbours, threshold is {t}$"):
        client.masked_input(
            ShareDelivery(d.round_id, d.ciphertexts[: t - 1]), np.zeros(L, np.uint64)
        )
    assert client.stage == Stage.MASKED_INPUT and not client.state.held_shares
    client.masked_input(ShareDelivery(d.round_id, d.ciphertexts[:t]), np.zeros(L, np.uint64))
    assert client.stage == Stage.UNMASK and len(client.state.held_shares) == t


@pytest.mark.parametrize(("degree", "threshold"), [(4, 2), (6, 3), (8, 4)])
def test_a_device_refuses_a_plan_whose_threshold_is_exactly_half_the_degree(
    degree: int, threshold: int
) -> None:
    # At t = k/2 two disjoint sets of t neighbours exist (each can be told another alive list)
    p = ProtocolParams(1, degree + 1, degree, threshold, 16, L, bytes(32), bytes(32))
    with pytest.raises(
        ProtocolViolation, match=f"^threshold {threshold} is not above half the degree {degree}$"
    ):
        SecAggClient(p, 0, p.digest)
    SecAggClient(dataclasses.replace(p, threshold=threshold + 1), 0, p.digest)  # t > k/2


@pytest.mark.parametrize(("nodes", "threshold"), [(4, 1), (6, 1), (2, 2)])
def test_a_device_refuses_a_plan_with_either_too_few_nodes_or_a_threshold_of_one(
    nodes: int, threshold: int
) -> None:
    # k = 1 passes the 2t > k check at t = 1: only the floor check refuses these plans, each
    # with one of its two conditions true
    p = ProtocolParams(1, nodes, 1, threshold, 16, L, bytes(32), bytes(32))
    with pytest.raises(
        ProtocolViolation, match=f"^a plan of {nodes} nodes at threshold {threshold}:"
    ):
        SecAggClient(p, 0, p.digest)
