"""Rows of "What a device refuses" (docs/secure-aggregation.md) that no test exercised: a
low-order key in the key directory, a ciphertext from a node without keys, a bundle whose
plaintext names another pair, fewer than t neighbours at each stage, and a plan whose ring is
too narrow. Each refusal is typed, and the device releases nothing and stays in its stage."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from protocol.secagg import (
    KeyAgreementFailed,
    KeyDirectory,
    MalformedMessage,
    RingOverflow,
    RoundAborted,
    SecurePlan,
    ShareDelivery,
    ShareKind,
    Stage,
    UnmaskRequest,
    WrongAddress,
    agree,
    create_shares,
    encrypt,
    share_associated_data,
)

from .test_s49_secagg_refusals import L, _assert_unmask_refused, _at_unmask, _Round
from .test_secagg_review import D, _forge, _plan

# Points of order 1 and 4: every agreement with them is the all-zero secret.
LOW_ORDER = [bytes(32), b"\x01" + bytes(31)]


@pytest.mark.parametrize("which", ["enc", "mask"])
@pytest.mark.parametrize("low", LOW_ORDER, ids=["order1", "order4"])
def test_a_device_refuses_a_low_order_key_in_its_directory(which: str, low: bytes) -> None:
    # Prepare: the server lists a neighbour of node 0 with a low-order key
    r = _Round()
    r.advertise()
    client = r.clients[0]
    d = r.directories[0]
    node, epk, mpk = d.entries[-1]
    bad = (node, low, mpk) if which == "enc" else (node, epk, low)
    forged = KeyDirectory(d.round_id, (*d.entries[:-1], bad))
    # Execute / Assert
    with pytest.raises(KeyAgreementFailed):
        client.share_keys(forged)
    assert client.stage == Stage.SHARE_KEYS and not client.state.peer_keys


def test_a_device_refuses_a_ciphertext_from_a_node_without_keys() -> None:
    # Prepare: node 0's neighbour j never advertised, so its directory has no keys for j;
    # the server then relays a bundle labelled as j's
    r = _Round()
    j = min(r.clients[0].state.graph_neighbours)
    r.ads = [ad for ad in r.ads if ad.node != j]
    r.advertise()
    r.share_keys()
    client = r.clients[0]
    d = r.deliveries[0]
    _, ct = d.ciphertexts[0]
    forged = ShareDelivery(d.round_id, (*d.ciphertexts, (j, ct)))
    # Execute / Assert
    with pytest.raises(WrongAddress, match=f"ciphertext from {j}, which is not a neighbour"):
        client.masked_input(forged, np.zeros(L, np.uint64))
    assert client.stage == Stage.MASKED_INPUT and not client.state.held_shares


@pytest.mark.parametrize("names", ["source", "dest"])
def test_a_device_refuses_a_bundle_whose_plaintext_names_another_pair(names: str) -> None:
    # Prepare: a hostile dealer s encrypts, under the right key and associated data for
    # s -> 0, a bundle whose plaintext says it is from another node, or for another node
    r = _Round()
    r.advertise()
    r.share_keys()
    client = r.clients[0]
    d = r.deliveries[0]
    s = d.ciphertexts[0][0]
    dealer = r.clients[s].state
    other = next(j for j in range(r.p.num_nodes) if j not in (0, s))
    src, dst = (other, 0) if names == "source" else (s, other)
    ks = ss = create_shares(dealer.mask_private, r.p.threshold, r.p.threshold)[0]
    plain = struct.pack("<IIH", src, dst, len(ks)) + ks + struct.pack("<H", len(ss)) + ss
    key = agree(dealer.enc_private, client.state.enc_public, b"plume-secagg-enc\0" + r.p.digest)
    ct = encrypt(key, plain, share_associated_data(r.p.digest, r.p.round_id, s, 0))
    forged = ShareDelivery(d.round_id, ((s, ct), *d.ciphertexts[1:]))
    # Execute / Assert
    with pytest.raises(WrongAddress, match=f"bundle says {src} -> {dst}, relayed as {s} -> 0"):
        client.masked_input(forged, np.zeros(L, np.uint64))
    assert client.stage == Stage.MASKED_INPUT and not client.state.held_shares
    # the honest delivery still goes through
    client.masked_input(d, np.zeros(L, np.uint64))


def test_a_device_with_fewer_than_t_neighbours_with_keys_refuses_to_share() -> None:
    r = _Round()
    r.advertise()
    client = r.clients[0]
    d = r.directories[0]
    t = r.p.threshold
    with pytest.raises(RoundAborted, match=f"{t - 1} neighbours advertised keys, threshold is {t}"):
        client.share_keys(KeyDirectory(d.round_id, d.entries[: t - 1]))
    assert client.stage == Stage.SHARE_KEYS and not client.state.peer_keys
    # at exactly t it shares
    assert len(client.share_keys(KeyDirectory(d.round_id, d.entries[:t])).ciphertexts) == t


def test_a_device_with_fewer_than_t_bundles_refuses_to_mask() -> None:
    r = _Round()
    r.advertise()
    r.share_keys()
    client = r.clients[0]
    d = r.deliveries[0]
    t = r.p.threshold
    with pytest.raises(RoundAborted, match=f"shares from {t - 1} neighbours, threshold is {t}"):
        client.masked_input(
            ShareDelivery(d.round_id, d.ciphertexts[: t - 1]), np.zeros(L, np.uint64)
        )
    assert client.stage == Stage.MASKED_INPUT and not client.state.held_shares


def test_a_device_with_fewer_than_t_live_neighbours_releases_nothing() -> None:
    # Prepare: the request moves all but t - 1 of node 0's neighbours to the dropped list
    r, req = _at_unmask()
    t = r.p.threshold
    held = sorted(r.clients[0].state.held_shares)
    gone = set(held[t - 1 :])
    alive = tuple(n for n in req.alive if n not in gone)
    forged = UnmaskRequest(req.round_id, alive, tuple(sorted(set(req.dropped) | gone)))
    # Execute / Assert
    _assert_unmask_refused(r, forged, RoundAborted, f"{t - 1} live neighbours, threshold is {t}")
    # with t live neighbours it answers: seed shares for the live ones, key shares otherwise
    gone = set(held[t:])
    alive = tuple(n for n in req.alive if n not in gone)
    out = r.clients[0].unmask(
        UnmaskRequest(req.round_id, alive, tuple(sorted(set(req.dropped) | gone)))
    )
    kinds = {about: kind for about, kind, _ in out.shares}
    assert kinds == {n: ShareKind.SELF_MASK if n in held[:t] else ShareKind.MASK_KEY for n in held}


def test_a_device_refuses_a_plan_whose_ring_cannot_hold_the_sum() -> None:
    # Prepare: the plan's own fields need more ring bits than it gives (or more than 64)
    plan = _plan()
    narrow = _forge(plan, ring_bits=plan.ring_bits - 1)
    wide = _forge(plan, ring_bits=65)
    # Execute / Assert: RingOverflow, the table's own error, not MalformedMessage
    for raw in (narrow, wide):
        with pytest.raises(RingOverflow, match="does not fit") as err:
            SecurePlan.from_bytes(raw, D)
        assert not isinstance(err.value, MalformedMessage)
    assert SecurePlan.from_bytes(_forge(plan), D).to_bytes() == plan.to_bytes()
