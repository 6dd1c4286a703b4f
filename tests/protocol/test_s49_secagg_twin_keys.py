"""X25519 "twin" keys are duplicates: refused by the server and by a device.

X25519 clamps every private scalar to a multiple of 8, so a public key P and P + T, T of order
2, 4 or 8, agree the same secret with every private key. On Curve25519 adding the order-2
point (0, 0) maps u to 1/u mod 2^255 - 19: a canonical key, not of low order, other bytes than
P. The duplicate-key checks compared bytes, so two colluding devices advertising twins of two
honest neighbours' mask keys made a victim's pairwise masks cancel in pairs, and a server
reading masked inputs as they arrive recovered that victim's input once its self-mask seed was
reconstructed at unmask (the reviewer's twin_key_isolation.py). The server now compares its
probe agreements (`_fingerprint`), a device the pair seeds each key derives with its mask key.
"""

from __future__ import annotations

import numpy as np
import pytest

from protocol.secagg import (
    AdvertiseKeys,
    DuplicateKey,
    KeyDirectory,
    ProtocolParams,
    SecAggClient,
    SecAggServer,
    Stage,
    agree,
    check_public_key,
    choose_degree,
    choose_threshold,
    generate_keypair,
)
from protocol.secagg._server import _fingerprint

P = (1 << 255) - 19


def twin(key: bytes) -> bytes:
    """u -> 1/u: the key plus the order-2 point (0, 0), the same secrets as `key`."""
    return pow(int.from_bytes(key, "little"), P - 2, P).to_bytes(32, "little")


def _params(n: int = 5) -> ProtocolParams:
    k = choose_degree(n)
    return ProtocolParams(9, n, k, choose_threshold(k), 16, 8, bytes(32), b"\x42" * 32)


def test_a_twin_is_canonical_yet_agrees_the_same_secrets_and_fingerprints_alike() -> None:
    # Prepare: an honest key and its twin
    _, pk = generate_keypair()
    tw = twin(pk)
    # Assert: other bytes, canonical, not low order, same secret with any private key
    assert tw != pk
    check_public_key(tw)
    for _ in range(3):
        sk, _ = generate_keypair()
        assert agree(sk, tw, b"x") == agree(sk, pk, b"x")
    assert _fingerprint(tw) == _fingerprint(pk)
    # ... while distinct honest keys fingerprint apart
    _, other = generate_keypair()
    assert _fingerprint(other) != _fingerprint(pk)


@pytest.mark.parametrize("which", ["mask_of_mask", "enc_of_enc", "enc_of_mask", "own_pair"])
def test_the_server_refuses_a_twin_of_a_key_in_use(which: str) -> None:
    # Prepare: node 0 advertised honestly
    params = _params()
    server = SecAggServer(params)
    adv0 = SecAggClient(params, 0, params.digest).advertise()
    server.receive_advertise(adv0)
    _, enc = generate_keypair()
    _, mask = generate_keypair()
    if which == "mask_of_mask":
        mask = twin(adv0.mask_public)
    elif which == "enc_of_enc":
        enc = twin(adv0.enc_public)
    elif which == "enc_of_mask":
        enc = twin(adv0.mask_public)
    else:  # one node's own two keys twins of each other
        enc = twin(mask)
    # Execute / Assert: refused with the duplicate-key error, nothing stored
    with pytest.raises(DuplicateKey, match="already in use"):
        server.receive_advertise(AdvertiseKeys(params.round_id, 1, enc, mask))
    assert set(server.state.keys) == {0}
    # ... and node 1 can still advertise keys of its own
    server.receive_advertise(SecAggClient(params, 1, params.digest).advertise())
    assert set(server.state.keys) == {0, 1}


@pytest.mark.parametrize("which", ["mask_of_neighbour", "enc_of_neighbour", "own_mask", "own_enc"])
def test_a_device_refuses_a_directory_holding_a_twin(which: str) -> None:
    # Prepare: node 0's directory lists its neighbours' honest keys, one then replaced by a twin
    params = _params()
    clients = [SecAggClient(params, i, params.digest) for i in range(params.num_nodes)]
    ads = [c.advertise() for c in clients]
    victim = clients[0]
    nb = sorted(victim.state.graph_neighbours)
    entries = [(j, ads[j].enc_public, ads[j].mask_public) for j in nb]
    j = entries[1][0]
    if which == "mask_of_neighbour":
        entries[1] = (j, entries[1][1], twin(entries[0][2]))
    elif which == "enc_of_neighbour":
        entries[1] = (j, twin(entries[0][1]), entries[1][2])
    elif which == "own_mask":
        entries[1] = (j, entries[1][1], twin(ads[0].mask_public))
    else:
        entries[1] = (j, twin(ads[0].enc_public), entries[1][2])
    # Execute / Assert: refused before any share is made
    with pytest.raises(DuplicateKey, match="duplicates another key"):
        victim.share_keys(KeyDirectory(params.round_id, tuple(entries)))
    assert victim.state.stage == Stage.SHARE_KEYS and not victim.state.peer_keys


def test_colluders_advertising_twins_cannot_cancel_a_victims_masks() -> None:
    # Prepare: group of 5 on a complete graph (k = 4, t = 3); nodes 0, 1 honest, 2 the victim,
    # 3 and 4 colluders that advertise after seeing the honest keys
    params = _params()
    clients = [SecAggClient(params, i, params.digest) for i in range(params.num_nodes)]
    server = SecAggServer(params)
    ads = [c.advertise() for c in clients]
    for i in (0, 1, 2):
        server.receive_advertise(ads[i])
    # Execute / Assert: each colluder's twin of an honest mask key is refused
    for colluder, honest in ((3, 0), (4, 1)):
        forged = AdvertiseKeys(
            params.round_id, colluder, ads[colluder].enc_public, twin(ads[honest].mask_public)
        )
        with pytest.raises(DuplicateKey):
            server.receive_advertise(forged)
    assert set(server.state.keys) == {0, 1, 2}
    # A server that relays the twins anyway (deviating) meets the victim's refusal
    keys = {i: (ads[i].enc_public, ads[i].mask_public) for i in range(3)}
    keys[3] = (ads[3].enc_public, twin(ads[0].mask_public))
    keys[4] = (ads[4].enc_public, twin(ads[1].mask_public))
    entries = tuple((j, *keys[j]) for j in sorted(clients[2].state.graph_neighbours))
    with pytest.raises(DuplicateKey):
        clients[2].share_keys(KeyDirectory(params.round_id, entries))
    # The honest round still sums correctly
    server = SecAggServer(params)
    clients = [SecAggClient(params, i, params.digest) for i in range(params.num_nodes)]
    for c in clients:
        server.receive_advertise(c.advertise())
    for i, d in server.close_advertise().items():
        server.receive_share_keys(clients[i].share_keys(d))
    xs = [np.full(params.vector_len, i + 1, np.uint64) for i in range(params.num_nodes)]
    for i, d in server.close_share_keys().items():
        server.receive_masked_input(clients[i].masked_input(d, xs[i]))
    request = server.close_masked_input()
    for i in request.alive:
        server.receive_unmask(clients[i].unmask(request))
    assert server.finish().total.tolist() == [15] * params.vector_len
