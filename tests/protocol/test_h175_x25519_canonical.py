"""Non-canonical X25519 public keys are refused where keys arrive, on the server and the device.

RFC 7748 ignores bit 255 of a public key and reads u modulo 2^255 - 19, so `pk` with bit 255
set (or u + p for a small u) is the same point as `pk`. The DuplicateKey checks compared bytes:
the server accepted a node advertising another node's keys with bit 255 set, and a device
accepted a key directory that echoed its own keys back, so aliased, as a neighbour's
(helper-172's dupkey_bit255.py). Both now refuse a key that is not canonical
(`KeyAgreementFailed`, the error of a malformed or low-order key) before comparing.
"""

from __future__ import annotations

import pytest

from protocol.secagg import (
    AdvertiseKeys,
    KeyAgreementFailed,
    KeyDirectory,
    ProtocolParams,
    SecAggClient,
    SecAggServer,
    Stage,
    agree,
    generate_keypair,
)

P = (1 << 255) - 19


def _bit255(key: bytes) -> bytes:
    return key[:31] + bytes([key[31] | 0x80])


def _params() -> ProtocolParams:
    return ProtocolParams(1, 3, 2, 2, 16, 4, bytes(32), bytes(range(32)))


# u = p + 9 is the base point's u = 9 written without reduction (bit 255 clear).
BASE_UNREDUCED = (P + 9).to_bytes(32, "little")


def test_the_aliases_are_the_same_point_and_are_refused_by_agree() -> None:
    from protocol.secagg import check_public_key  # imported here: new with this check

    sk, pk = generate_keypair()
    other_sk, _ = generate_keypair()
    check_public_key(pk)  # an honest key is canonical
    check_public_key((9).to_bytes(32, "little"))
    for alias in (_bit255(pk), BASE_UNREDUCED):
        with pytest.raises(KeyAgreementFailed, match="not canonical"):
            check_public_key(alias)
        with pytest.raises(KeyAgreementFailed, match="not canonical"):
            agree(other_sk, alias, b"x")
    with pytest.raises(KeyAgreementFailed):
        check_public_key(pk[:31])


@pytest.mark.parametrize("which", ["enc", "mask", "both"])
def test_the_server_refuses_another_nodes_keys_with_bit_255_set(which: str) -> None:
    # Prepare: node 0 advertised honestly
    params = _params()
    server = SecAggServer(params)
    adv0 = SecAggClient(params, 0, params.digest).advertise()
    server.receive_advertise(adv0)
    _, fresh_enc = generate_keypair()
    _, fresh_mask = generate_keypair()
    enc = _bit255(adv0.enc_public) if which in ("enc", "both") else fresh_enc
    mask = _bit255(adv0.mask_public) if which in ("mask", "both") else fresh_mask
    # Execute / Assert: node 1 re-advertising node 0's key(s), aliased, is refused
    with pytest.raises(KeyAgreementFailed, match="not canonical"):
        server.receive_advertise(AdvertiseKeys(1, 1, enc, mask))
    assert set(server.state.keys) == {0}
    # ... and node 1 can still advertise its own keys
    server.receive_advertise(SecAggClient(params, 1, params.digest).advertise())
    assert set(server.state.keys) == {0, 1}


def test_the_server_refuses_an_unreduced_key() -> None:
    params = _params()
    server = SecAggServer(params)
    _, mask = generate_keypair()
    with pytest.raises(KeyAgreementFailed, match="not canonical"):
        server.receive_advertise(AdvertiseKeys(1, 0, BASE_UNREDUCED, mask))
    assert server.state.keys == {}


@pytest.mark.parametrize("alias", ["own_bit255", "unreduced"])
def test_a_device_refuses_a_directory_with_a_non_canonical_key(alias: str) -> None:
    # Prepare: node 0 advertised; the directory lists neighbours 1 and 2
    params = _params()
    client = SecAggClient(params, 0, params.digest)
    adv = client.advertise()
    _, e2 = generate_keypair()
    _, m2 = generate_keypair()
    if alias == "own_bit255":  # its own keys echoed back as node 1's
        entry1 = (1, _bit255(adv.enc_public), _bit255(adv.mask_public))
    else:
        _, m1 = generate_keypair()
        entry1 = (1, BASE_UNREDUCED, m1)
    directory = KeyDirectory(1, (entry1, (2, e2, m2)))
    # Execute / Assert: refused before any share is made
    with pytest.raises(KeyAgreementFailed, match="not canonical"):
        client.share_keys(directory)
    assert client.state.stage == Stage.SHARE_KEYS and not client.state.peer_keys
    # an honest directory still goes through
    _, e1 = generate_keypair()
    _, m1 = generate_keypair()
    out = client.share_keys(KeyDirectory(1, ((1, e1, m1), (2, e2, m2))))
    assert [dst for dst, _ in out.ciphertexts] == [1, 2]
