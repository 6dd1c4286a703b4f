"""A survivor that lies in the unmask stage: wrong shares are corrected, forged x is refused."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.secagg import (
    ProtocolViolation,
    RoundAborted,
    SecAggClient,
    SecAggServer,
    UnmaskResponse,
    create_shares,
)
from protocol.secagg._errors import ShareError
from protocol.secagg._shamir import (
    _HEADER,
    CHECK_BYTES,
    COMMIT_BYTES,
    Y_BYTES,
    _check,
    combine_shares_robust,
)

from .test_secagg_protocol import LENGTH, RING, make_params, run_to_masked_input


def _with_y(share: bytes, chunk: int, delta: int) -> bytes:
    """The share with chunk `chunk`'s y moved by `delta`, re-sealed so it still parses: what a
    lying holder can send (the integrity check is a plain hash, not a MAC)."""
    head = _HEADER.size + COMMIT_BYTES + chunk * Y_BYTES
    body = bytearray(share[:-CHECK_BYTES])
    y = int.from_bytes(body[head : head + Y_BYTES], "little")
    body[head : head + Y_BYTES] = ((y + delta) % ((1 << 127) - 1)).to_bytes(Y_BYTES, "little")
    return bytes(body) + _check(bytes(body))


@settings(max_examples=60, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=64),
    t=st.integers(1, 8),
    extra=st.integers(0, 10),
    data=st.data(),
)
def test_up_to_half_the_spare_shares_may_be_wrong(
    secret: bytes, t: int, extra: int, data: st.DataObject
) -> None:
    # Prepare: m = t + extra shares, e = extra // 2 of them moved off the polynomial.
    m = t + extra
    shares = create_shares(secret, t, m)
    wrong = data.draw(st.sets(st.integers(0, m - 1), max_size=extra // 2))
    chunks = -(-len(secret) // 15)
    for i in wrong:
        shares[i] = _with_y(shares[i], data.draw(st.integers(0, chunks - 1)), 1 + i)

    # Execute
    got, unused = combine_shares_robust(shares)

    # Assert: the secret, and exactly the moved shares named.
    assert got == secret
    assert set(unused) == wrong


@settings(max_examples=40, deadline=None)
@given(t=st.integers(2, 6), extra=st.integers(0, 6), data=st.data())
def test_too_many_wrong_shares_never_give_a_wrong_secret(
    t: int, extra: int, data: st.DataObject
) -> None:
    # Prepare: more wrong shares than Berlekamp-Welch can correct.
    secret = bytes(range(32))
    m = t + extra
    shares = create_shares(secret, t, m)
    wrong = data.draw(st.sets(st.integers(0, m - 1), min_size=extra // 2 + 1, max_size=m))
    for i in wrong:
        shares[i] = _with_y(shares[i], 0, data.draw(st.integers(1, 2**100)))

    # Execute + Assert: either refused, or (if the lies happen to cancel out) the true secret.
    try:
        got, _ = combine_shares_robust(shares)
    except ShareError:
        return
    assert got == secret


def test_malformed_and_foreign_shares_are_set_aside() -> None:
    # Prepare: 7 shares of a 3-of-7 secret; one with a broken check, one from another secret.
    shares = create_shares(b"k" * 32, 3, 7)
    broken = bytearray(shares[1])
    broken[-1] ^= 1
    shares[1] = bytes(broken)
    shares[4] = create_shares(b"z" * 32, 3, 7)[4]

    # Execute
    got, unused = combine_shares_robust(shares)

    # Assert
    assert got == b"k" * 32
    assert unused == (1, 4)


def _to_unmask(
    n: int, dropped: frozenset[int] = frozenset()
) -> tuple[list[SecAggClient], SecAggServer, list[np.ndarray], list[UnmaskResponse]]:
    """Run stages 1-3 (nodes in `dropped` never send a masked input); return every survivor's
    honest unmask answer, not yet delivered."""
    p = make_params(n)
    rng = np.random.default_rng(1)
    inputs = [rng.integers(0, 256, LENGTH, dtype=np.uint64) for _ in range(n)]
    clients, server = run_to_masked_input(p, inputs, dropped)
    req = server.close_masked_input()
    return clients, server, inputs, [clients[i].unmask(req) for i in req.alive]


@pytest.mark.parametrize("dropped", [frozenset(), frozenset({5})])
def test_one_lying_survivor_is_named_and_the_sum_stays_exact(dropped: frozenset[int]) -> None:
    # Prepare: n = 20 (degree 14, threshold 8); survivor 3 moves every share it returns.
    clients, server, inputs, answers = _to_unmask(20, dropped)
    liar = 3
    answers = [
        dataclasses.replace(a, shares=tuple((n, k, _with_y(s, 0, 7)) for n, k, s in a.shares))
        if a.node == liar
        else a
        for a in answers
    ]

    # Execute
    for a in answers:
        server.receive_unmask(UnmaskResponse.from_bytes(a.to_bytes(), 20))
    res = server.finish()

    # Assert: the exact sum of the contributors, and the liar named.
    alive = [i for i in range(20) if i not in dropped]
    want = sum(inputs[i] for i in alive) & np.uint64((1 << RING) - 1)
    np.testing.assert_array_equal(res.total, want)
    assert res.suspects == (liar,)


def test_too_many_liars_abort_instead_of_publishing_a_wrong_sum() -> None:
    # Prepare: 12 of 20 survivors lie, so each node's 14 shares hold at least 6 wrong ones,
    # more than the (14 - 8) / 2 = 3 that can be corrected.
    _, server, _, answers = _to_unmask(20)
    liars = set(random.Random(0).sample(range(20), 12))
    answers = [
        dataclasses.replace(a, shares=tuple((n, k, _with_y(s, 1, 9)) for n, k, s in a.shares))
        if a.node in liars
        else a
        for a in answers
    ]
    for a in answers:
        server.receive_unmask(a)

    # Execute + Assert
    with pytest.raises(RoundAborted, match="reconstruction failed"):
        server.finish()


def test_a_share_with_another_holders_x_or_a_broken_seal_is_refused_on_arrival() -> None:
    # Prepare
    _, server, _, answers = _to_unmask(20)
    first = answers[0]
    about, kind, share = first.shares[0]
    # Another survivor's (honest, well-sealed) share of the same node's secret.
    other = next(s for a in answers[1:] for n, _, s in a.shares if n == about)
    swapped = dataclasses.replace(first, shares=((about, kind, other),))
    sealed_wrong = share[:-1] + bytes([share[-1] ^ 1])
    broken = dataclasses.replace(first, shares=((about, kind, sealed_wrong),))

    # Execute + Assert: x is the holder's position in the dealer's sorted directory.
    with pytest.raises(ProtocolViolation, match="another holder's x"):
        server.receive_unmask(swapped)
    with pytest.raises(ProtocolViolation, match="malformed share"):
        server.receive_unmask(broken)
    server.receive_unmask(first)  # the honest answer still counts afterwards


def test_a_share_forged_for_threshold_one_is_refused_and_never_recovers_a_secret() -> None:
    # Prepare: n = 8 (complete graph, t = 4), every node contributes, 5 survivors answer.
    # Node 1's secret then has shares from survivors 0, 2, 3, 4 only; survivor 0 replaces its
    # share about node 1 with one it dealt itself at t = 1 (sealed, at its own holder x).
    p = make_params(8)
    rng = np.random.default_rng(2)
    inputs = [rng.integers(0, 256, LENGTH, dtype=np.uint64) for _ in range(8)]
    clients, server = run_to_masked_input(p, inputs)
    req = server.close_masked_input()
    answers = [clients[i].unmask(req) for i in range(5)]
    forger, victim = 0, 1
    holder_x = sorted(j for j in range(8) if j != victim).index(forger) + 1
    forged = create_shares(bytes(32), 1, 8)[holder_x - 1]
    answers[forger] = dataclasses.replace(
        answers[forger],
        shares=tuple((n, k, forged if n == victim else s) for n, k, s in answers[forger].shares),
    )
    honest = [s for a in answers[1:] for n, _, s in a.shares if n == victim]

    # Execute + Assert: refused on arrival (it was accepted, and the robust decoder took the
    # forger's one-share "group" when the 3 honest shares were below t: a wrong sum, with the
    # honest survivors named as suspects). Without it node 1 is short of shares: a clean abort.
    with pytest.raises(ProtocolViolation, match="threshold 1"):
        server.receive_unmask(answers[forger])
    for a in answers[1:]:
        server.receive_unmask(a)
    with pytest.raises(RoundAborted, match="fewer than t=4 shares"):
        server.finish()
    # The decoder alone, told the dealer's threshold, never returns the forged secret either.
    with pytest.raises(ShareError):
        combine_shares_robust([forged, *honest], threshold=4)
