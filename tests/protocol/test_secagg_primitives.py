"""Tests of the SecAgg+ crypto byte functions: Shamir, X25519/HKDF, AES-GCM, PRG, bit packing."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.secagg import (
    CryptoError,
    CtrRandom,
    DecryptionFailed,
    KeyAgreementFailed,
    MalformedMessage,
    NotEnoughShares,
    ShareError,
    agree,
    combine_shares,
    create_shares,
    decrypt,
    discrete_gaussian,
    encrypt,
    expand_mask,
    generate_keypair,
    pack_bits,
    packed_size,
    public_key_of,
    share_associated_data,
    share_x,
    skellam,
    unpack_bits,
)
from protocol.secagg._shamir import PRIME, _lagrange_at, _parse

SECRET = bytes(range(1, 33))


@pytest.mark.parametrize(("threshold", "num"), [(1, 1), (1, 3), (2, 3), (3, 5), (4, 7), (5, 7)])
def test_shamir_every_t_subset_recovers(threshold: int, num: int) -> None:
    # Prepare
    shares = create_shares(SECRET, threshold, num)
    # Execute / Assert: every subset of size t, and every larger subset, recovers the secret
    for size in range(threshold, num + 1):
        for subset in itertools.combinations(shares, size):
            assert combine_shares(list(subset)) == SECRET


def test_shamir_random_subsets_larger_n() -> None:
    rnd = random.Random(7)
    secret = bytes(rnd.randrange(256) for _ in range(32))
    shares = create_shares(secret, 15, 28)
    for _ in range(30):
        size = rnd.randint(15, 28)
        assert combine_shares(rnd.sample(shares, size)) == secret


@pytest.mark.parametrize(("threshold", "num"), [(2, 3), (3, 5), (5, 7)])
def test_shamir_below_threshold_refused_and_uninformative(threshold: int, num: int) -> None:
    shares = create_shares(SECRET, threshold, num)
    for subset in itertools.combinations(shares, threshold - 1):
        # The API refuses t-1 shares outright.
        with pytest.raises(NotEnoughShares):
            combine_shares(list(subset))
        # Interpolating t-1 points anyway gives an unrelated value, not the secret's chunk.
        parsed = [_parse(s) for s in subset]
        value = _lagrange_at([p.x for p in parsed], [p.ys[0] for p in parsed], 0)
        assert value != int.from_bytes(SECRET[:15], "little")


def test_shamir_t_minus_1_shares_fit_any_secret() -> None:
    # Information-theoretic hiding: for t-1 shares and ANY candidate secret there is a degree
    # t-1 polynomial through them, found by adding the point (0, candidate).
    shares = [_parse(s) for s in create_shares(SECRET, 3, 5)[:2]]
    xs, ys = [0] + [p.x for p in shares], [12345] + [p.ys[0] for p in shares]
    assert _lagrange_at(xs, ys, 0) == 12345
    assert all(_lagrange_at(xs, ys, x) == y for x, y in zip(xs[1:], ys[1:], strict=True))


def test_shamir_tampered_share_detected() -> None:
    shares = create_shares(SECRET, 3, 5)
    bad = bytearray(shares[1])
    bad[20] ^= 1  # a y byte; the share's own check catches it
    with pytest.raises(ShareError, match="integrity"):
        combine_shares([shares[0], bytes(bad), shares[2]])


def test_shamir_forged_share_with_valid_check_detected_by_commitment() -> None:
    # An attacker who also fixes the check bytes is still caught: the result misses the commit.
    from protocol.secagg._shamir import CHECK_BYTES, Y_BYTES, _check

    shares = create_shares(SECRET, 3, 5)
    body = bytearray(shares[1][:-CHECK_BYTES])
    y = int.from_bytes(body[-Y_BYTES:], "little")
    body[-Y_BYTES:] = ((y + 1) % PRIME).to_bytes(Y_BYTES, "little")
    forged = bytes(body) + _check(bytes(body))
    with pytest.raises(ShareError, match="commitment|range"):
        combine_shares([shares[0], forged, shares[2]])
    # With a spare share, the inconsistency is found before reconstruction.
    with pytest.raises(ShareError, match="inconsistent"):
        combine_shares([shares[0], shares[2], shares[3], forged])


def test_shamir_rejects_duplicates_mixed_and_malformed() -> None:
    a = create_shares(SECRET, 2, 3)
    b = create_shares(bytes(32), 2, 3)
    with pytest.raises(ShareError, match="same x"):
        combine_shares([a[0], a[0]])
    with pytest.raises(ShareError, match="different"):
        combine_shares([a[0], b[1]])
    with pytest.raises(ShareError):
        combine_shares([a[0][:10], a[1]])
    with pytest.raises(ShareError):
        create_shares(SECRET, 4, 3)
    assert [share_x(s) for s in a] == [1, 2, 3]


@settings(max_examples=25, deadline=None)
@given(secret=st.binary(min_size=1, max_size=70), t=st.integers(1, 5), extra=st.integers(0, 3))
def test_shamir_roundtrip_any_length(secret: bytes, t: int, extra: int) -> None:
    shares = create_shares(secret, t, t + extra)
    assert combine_shares(shares[extra:]) == secret


def test_x25519_agreement_symmetric_and_context_bound() -> None:
    sk_a, pk_a = generate_keypair()
    sk_b, pk_b = generate_keypair()
    assert public_key_of(sk_a) == pk_a
    k_ab = agree(sk_a, pk_b, b"enc-round1")
    assert k_ab == agree(sk_b, pk_a, b"enc-round1")
    assert k_ab != agree(sk_b, pk_a, b"enc-round2")
    with pytest.raises(KeyAgreementFailed):
        agree(sk_a, bytes(32), b"x")  # the all-zero (low-order) point


@pytest.mark.parametrize(
    "wrong", [(2, 1, 2), (1, 9, 2), (1, 1, 9)], ids=["round", "source", "destination"]
)
def test_aes_gcm_binds_round_source_destination(wrong: tuple[int, int, int]) -> None:
    key = bytes(range(32))
    digest = bytes(32)
    blob = encrypt(key, b"share bundle", share_associated_data(digest, 1, 1, 2))
    assert decrypt(key, blob, share_associated_data(digest, 1, 1, 2)) == b"share bundle"
    with pytest.raises(DecryptionFailed):
        decrypt(key, blob, share_associated_data(digest, *wrong))
    with pytest.raises(DecryptionFailed):
        decrypt(key, blob[:-1] + bytes([blob[-1] ^ 1]), share_associated_data(digest, 1, 1, 2))
    with pytest.raises(DecryptionFailed):
        decrypt(key, blob, share_associated_data(b"\1" * 32, 1, 1, 2))


def test_prg_deterministic_label_separated_and_uniform() -> None:
    seed = bytes(range(32))
    a = expand_mask(seed, 200_000, 12, b"x")
    assert np.array_equal(a, expand_mask(seed, 200_000, 12, b"x"))
    assert not np.array_equal(a, expand_mask(seed, 200_000, 12, b"y"))
    assert int(a.max()) < 1 << 12
    # Chi-square over 16 buckets of the top 4 bits: 15 dof, 99.9% quantile is 37.7.
    counts = np.bincount((a >> np.uint64(8)).astype(np.int64), minlength=16)
    expected = a.size / 16
    assert float(((counts - expected) ** 2 / expected).sum()) < 37.7
    # Low bit balanced for m > 32 too (8-byte words).
    b = expand_mask(seed, 100_000, 40)
    assert abs(float((b & np.uint64(1)).mean()) - 0.5) < 0.01
    with pytest.raises(CryptoError):
        expand_mask(b"short", 4, 8)


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(1, 64), count=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
def test_pack_roundtrip(bits: int, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 2**63, count, dtype=np.uint64, endpoint=True) >> np.uint64(64 - bits)
    data = pack_bits(v, bits)
    assert len(data) == packed_size(count, bits)
    assert np.array_equal(unpack_bits(data, count, bits), v)


def test_pack_golden_bytes_and_refusals() -> None:
    assert pack_bits(np.array([1, 2, 3], dtype=np.uint64), 3) == bytes([0b11010001, 0])
    with pytest.raises(MalformedMessage, match="expected"):
        unpack_bits(b"\0\0\0", 3, 3)
    with pytest.raises(MalformedMessage, match="padding"):
        unpack_bits(bytes([0b11010001, 0b10]), 3, 3)
    with pytest.raises(ValueError):
        pack_bits(np.array([8], dtype=np.uint64), 3)


def test_discrete_gaussian_moments() -> None:
    rng = CtrRandom(bytes(32))
    x = discrete_gaussian(9, 4000, rng)
    assert x.dtype == np.int64
    assert abs(float(x.mean())) < 0.2
    assert 8.0 < float(x.var()) < 10.0
    # Deterministic given the CSPRNG seed.
    assert np.array_equal(
        discrete_gaussian(9, 50, CtrRandom(b"\1" * 32)),
        discrete_gaussian(9, 50, CtrRandom(b"\1" * 32)),
    )


def test_skellam_moments() -> None:
    x = skellam(50.0, 200_000, seed=bytes(32))
    assert abs(float(x.mean())) < 0.1
    assert 98.0 < float(x.var()) < 102.0


def test_exported_members() -> None:
    import protocol.secagg as pkg

    assert sorted(pkg.__all__) == sorted(set(pkg.__all__))
    assert all(hasattr(pkg, name) for name in pkg.__all__)
    public = {n for n in dir(pkg) if not n.startswith("_")}
    assert public - set(pkg.__all__) <= {"annotations"}


@pytest.mark.parametrize("n", [3, 10, 57, 200])
def test_graph_is_regular_symmetric_and_matches_per_node_view(n: int) -> None:
    from protocol.secagg import choose_degree, neighbours, neighbours_of

    k = choose_degree(n)
    seed = bytes(range(32))
    graph = neighbours(n, k, seed)
    assert all(len(nb) == k and i not in nb for i, nb in enumerate(graph))
    assert all(i in graph[j] for i, nb in enumerate(graph) for j in nb)
    assert all(neighbours_of(n, k, seed, i) == graph[i] for i in range(n))
    assert graph != neighbours(n, k, b"\1" * 32) or k == n - 1
