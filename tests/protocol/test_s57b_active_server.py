"""The limit docs/secure-aggregation.md states ("Malicious (active) server: no input privacy"):
a server that puts key pairs it made in place of a device's neighbours' keys passes every check
the device makes, rebuilds the device's mask key and self-mask seed from the bundles the device
encrypts to those keys, and reads its input in the clear. Nothing signs the key directory; if
that changes, this test fails and the doc's threat model must say what the devices now check."""

from __future__ import annotations

import struct

import numpy as np

from protocol.secagg import (
    KeyDirectory,
    SecAggClient,
    ShareDelivery,
    agree,
    combine_shares,
    create_shares,
    decrypt,
    encrypt,
    expand_mask,
    generate_keypair,
    pair_mask_seed,
    pair_mask_sign,
    ring_mask,
    self_mask,
    share_associated_data,
    unpack_bits,
)

from .test_secagg_protocol import LENGTH, make_params

ENC = b"plume-secagg-enc\0"


def _bundle(plain: bytes) -> tuple[int, int, bytes, bytes]:
    """(source, dest, mask-key share, self-mask seed share) of a decrypted share bundle."""
    src, dst, n1 = struct.unpack_from("<IIH", plain)
    ks = plain[10 : 10 + n1]
    (n2,) = struct.unpack_from("<H", plain, 10 + n1)
    return src, dst, ks, plain[12 + n1 : 12 + n1 + n2]


def test_a_server_that_substitutes_the_neighbours_keys_reads_the_victims_input() -> None:
    # Prepare: the victim, node 0 of 8 (k = 7, t = 4), with a secret input
    p = make_params(8)
    victim = SecAggClient(p, 0, p.digest)
    x = np.random.default_rng(5).integers(0, 1 << 8, LENGTH, dtype=np.uint64)
    ad = victim.advertise()
    fakes = {j: (generate_keypair(), generate_keypair()) for j in victim.state.graph_neighbours}

    # Execute: a directory of the server's keys; the victim shares its secrets to them
    directory = KeyDirectory(
        p.round_id, tuple((j, e[1], m[1]) for j, (e, m) in sorted(fakes.items()))
    )
    shared = victim.share_keys(directory)
    key_shares, seed_shares = [], []
    for dest, ct in shared.ciphertexts:
        key = agree(fakes[dest][0][0], ad.enc_public, ENC + p.digest)
        plain = decrypt(key, ct, share_associated_data(p.digest, p.round_id, 0, dest))
        _, _, ks, ss = _bundle(plain)
        key_shares.append(ks)
        seed_shares.append(ss)
    mask_private, seed = combine_shares(key_shares), combine_shares(seed_shares)
    # ... deals it bundles from the fake neighbours, and takes its masked input
    cts = []
    for j, ((enc_sk, _), _) in sorted(fakes.items()):
        junk = create_shares(bytes(32), p.threshold, p.threshold)[0]
        plain = struct.pack("<IIH", j, 0, len(junk)) + junk + struct.pack("<H", len(junk)) + junk
        key = agree(enc_sk, ad.enc_public, ENC + p.digest)
        cts.append((j, encrypt(key, plain, share_associated_data(p.digest, p.round_id, j, 0))))
    masked = victim.masked_input(ShareDelivery(p.round_id, tuple(cts)), x)
    # ... and strips every mask
    y = unpack_bits(masked.packed, p.vector_len, p.ring_bits) - self_mask(
        seed, p.vector_len, p.ring_bits
    )
    for j, (_, (_, mask_pk)) in fakes.items():
        pm = expand_mask(
            pair_mask_seed(mask_private, mask_pk, p.digest), p.vector_len, p.ring_bits, b"pair-mask"
        )
        y = y - pm if pair_mask_sign(0, j) > 0 else y + pm
    y &= np.uint64(ring_mask(p.ring_bits))

    # Assert: every check passed, and the server holds the victim's input
    np.testing.assert_array_equal(y, x)
