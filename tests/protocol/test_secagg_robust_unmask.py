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
    n: int, dropped: frozenset[int] = frozenset(), seed: int = 1
) -> tuple[list[SecAggClient], SecAggServer, list[np.ndarray], list[UnmaskResponse]]:
    """Run stages 1-3 (nodes in `dropped` never send a masked input); return every survivor's
    honest unmask answer, not yet delivered."""
    p = make_params(n)
    rng = np.random.default_rng(seed)
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


def test_a_share_with_another_holders_x_or_a_broken_seal_is_set_aside_on_arrival() -> None:
    # Prepare
    clients, server, inputs, answers = _to_unmask(20)
    first = answers[0]
    about, kind, share = first.shares[0]
    # Another survivor's (honest, well-sealed) share of the same node's secret.
    other = next(s for a in answers[1:] for n, _, s in a.shares if n == about)
    sealed_wrong = share[:-1] + bytes([share[-1] ^ 1])
    second_about, second_kind, _ = first.shares[1]
    # The first answer with its first share swapped for another holder's and its second
    # share's seal broken; its other shares are honest.
    edited = dataclasses.replace(
        first,
        shares=(
            (about, kind, other),
            (second_about, second_kind, sealed_wrong),
            *first.shares[2:],
        ),
    )

    # Execute: x is the holder's position in the dealer's sorted directory. Both shares are set
    # aside (before, the whole answer was refused with ProtocolViolation: an honest holder
    # relaying a hostile dealer's share lost its good shares too, helper-334).
    server.receive_unmask(edited)
    with pytest.raises(ProtocolViolation, match="twice"):
        server.receive_unmask(first)  # one answer a node: the honest one cannot replace it
    for a in answers[1:]:
        server.receive_unmask(a)
    res = server.finish()

    # Assert: the two shares set aside, named; the rest counted, and the sum exact
    assert [(h, d) for h, d, _ in server.state.set_aside] == [
        (first.node, about),
        (first.node, second_about),
    ]
    assert "another holder's x" in server.state.set_aside[0][2]
    assert "malformed" in server.state.set_aside[1][2]
    want = sum(inputs) & np.uint64((1 << RING) - 1)
    np.testing.assert_array_equal(res.total, want)


def test_a_hostile_dealers_swapped_shares_do_not_cost_the_honest_holders_their_answers() -> None:
    """helper-334's dealer_bad_x.py: dealer 0 gives its holders 1 and 2 each other's shares of
    its own secrets (valid points of its polynomial, at the wrong x). The honest holders relay
    them. Before, the server refused both holders' whole answers, every secret fell below t,
    and the round aborted with the honest holders named as forgers. Now only the dealer's
    shares are set aside: with n = 5, t = 3 its own seed is short (a dealer that deals bad
    shares of its own secrets is not recoverable, docs/secure-aggregation.md), and the abort
    names the shares, holder -> dealer."""
    # Prepare: n = 5 (complete graph, k = 4, t = 3), every node answers
    _, server, _, answers = _to_unmask(5, seed=3)
    share_of = {a.node: {n: s for n, _, s in a.shares} for a in answers}
    # Holders 1 and 2 hold each other's share of dealer 0's secret, as a bad dealer would deal
    for holder, other in ((1, 2), (2, 1)):
        answers[holder] = dataclasses.replace(
            answers[holder],
            shares=tuple(
                (n, k, share_of[other][0] if n == 0 else s) for n, k, s in answers[holder].shares
            ),
        )

    # Execute: every answer is taken
    for a in answers:
        server.receive_unmask(a)

    # Assert: the dealer's two shares set aside; the round aborts on the dealer's secret alone
    assert sorted((h, d) for h, d, _ in server.state.set_aside) == [(1, 0), (2, 0)]
    with pytest.raises(RoundAborted, match=r"1 nodes have fewer than t=3 shares \(e.g. \[0\]\)"):
        server.finish()


def test_a_share_forged_for_threshold_one_is_set_aside_and_never_recovers_a_secret() -> None:
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

    # Execute + Assert: set aside on arrival (it was accepted, and the robust decoder took the
    # forger's one-share "group" when the 3 honest shares were below t: a wrong sum, with the
    # honest survivors named as suspects; then it was refused with the forger's whole answer).
    # Without it node 1 is short of shares: a clean abort, naming the share set aside.
    for a in answers:
        server.receive_unmask(a)
    assert [(h, d) for h, d, _ in server.state.set_aside] == [(forger, victim)]
    with pytest.raises(RoundAborted, match="fewer than t=4 shares.*0->1: threshold 1"):
        server.finish()
    # The decoder alone, told the dealer's threshold, never returns the forged secret either.
    with pytest.raises(ShareError):
        combine_shares_robust([forged, *honest], threshold=4)
