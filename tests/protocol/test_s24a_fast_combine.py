"""The strict Shamir reconstruction in O(m) per chunk returns and refuses what the O(m t) one did.

`combine_shares` checked the m - t shares beyond the threshold against the polynomial through
the first t (O(m t) products per 15-byte chunk, plus O(t^2) for the barycentric weights of each
new set of x coordinates): 3.17 s for one secret of 2,048 shares, and an honest unmask of a
complete-graph group at k = 2,048 reconstructs 2,049 of them. It now tests the Reed-Solomon
syndromes with a random linear combination (r fresh from `secrets` per call) and computes the
barycentric weights in closed form for holder numbers. `_reference_combine` below is the former
function, kept here as the reference the new one is compared with. Speed: bench/secagg_unmask.py.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.secagg._errors import NotEnoughShares, ShareError
from protocol.secagg._shamir import (
    _HEADER,
    CHECK_BYTES,
    CHUNK_BYTES,
    COMMIT_BYTES,
    MAX_SECRET_BYTES,
    MAX_SHARES,
    PRIME,
    VERSION,
    Y_BYTES,
    _bary_weights,
    _check,
    _chunks,
    _commit,
    _factorials,
    _fast_weights,
    _lagrange_weights,
    _missing_products,
    _parse,
    _powers,
    _Share,
    _weights_cached,
    combine_shares,
    create_shares,
)

from .test_secagg_robust_unmask import _with_y


def _reference_combine(shares: list[bytes]) -> bytes:
    """`combine_shares` as it was before the O(m) check (protocol/secagg/_shamir.py at 496ad1d)."""
    parsed = [_parse(s) for s in shares]
    if not parsed:
        raise NotEnoughShares("no shares")
    first = parsed[0]
    for p in parsed[1:]:
        if (p.threshold, p.secret_len, p.commit) != (
            first.threshold,
            first.secret_len,
            first.commit,
        ):
            raise ShareError("shares belong to different secrets or thresholds")
    xs = [p.x for p in parsed]
    if len(set(xs)) != len(xs):
        raise ShareError("two shares carry the same x coordinate")
    if len(parsed) < first.threshold:
        raise NotEnoughShares(f"{len(parsed)} shares, threshold is {first.threshold}")
    t = first.threshold
    base_x = xs[:t]
    at_zero = _lagrange_weights(base_x, 0)
    at_extra = [(p, _lagrange_weights(base_x, p.x)) for p in parsed[t:]]
    out = bytearray()
    for c in range(len(first.ys)):
        base_y = [p.ys[c] for p in parsed[:t]]
        for extra, weights in at_extra:
            if sum(w * y for w, y in zip(weights, base_y, strict=True)) % PRIME != extra.ys[c]:
                raise ShareError(f"share x={extra.x} is inconsistent with the others (tampered)")
        value = sum(w * y for w, y in zip(at_zero, base_y, strict=True)) % PRIME
        width = min(CHUNK_BYTES, first.secret_len - c * CHUNK_BYTES)
        if value >= 1 << (8 * width):
            raise ShareError("reconstructed chunk out of range (tampered shares)")
        out += value.to_bytes(width, "little")
    secret = bytes(out)
    if _commit(secret) != first.commit:
        raise ShareError("reconstructed secret does not match its commitment (tampered shares)")
    return secret


def _outcome(fn: object, shares: list[bytes]) -> tuple[str, object]:
    """("ok", secret) or (exception class name, message)."""
    assert callable(fn)
    try:
        return "ok", fn(shares)
    except (ShareError, NotEnoughShares) as exc:
        return type(exc).__name__, str(exc)


@st.composite
def _share_sets(draw: st.DrawFn) -> tuple[bytes, int, list[bytes]]:
    """(secret, t, shares): a secret of 1..64 bytes dealt t-of-num, and a subset of at least t
    of its shares in random order (holders chosen anywhere in 1..num, so x sets with gaps and
    with more missing holders than present ones, the `_bary_weights` fallback, both occur)."""
    secret = draw(st.binary(min_size=1, max_size=64))
    t = draw(st.integers(1, 12))
    num = t + draw(st.integers(0, 40))
    shares = create_shares(secret, t, num)
    m = draw(st.integers(t, num))
    picked = draw(st.permutations(range(num)))[:m]
    return secret, t, [shares[i] for i in picked]


@settings(max_examples=150, deadline=None)
@given(case=_share_sets())
def test_valid_share_sets_recover_what_the_former_function_recovered(
    case: tuple[bytes, int, list[bytes]],
) -> None:
    secret, _, shares = case
    assert combine_shares(shares) == _reference_combine(shares) == secret


@settings(max_examples=150, deadline=None)
@given(case=_share_sets(), data=st.data())
def test_one_share_off_the_polynomial_is_refused_as_before(
    case: tuple[bytes, int, list[bytes]], data: st.DataObject
) -> None:
    # Prepare: one share (any position) moved off the polynomial in one chunk (any chunk)
    secret, t, shares = case
    pos = data.draw(st.integers(0, len(shares) - 1))
    chunk = data.draw(st.integers(0, -(-len(secret) // CHUNK_BYTES) - 1))
    delta = data.draw(st.one_of(st.just(1), st.integers(1, PRIME - 1)))
    shares[pos] = _with_y(shares[pos], chunk, delta)
    # Execute
    got = _outcome(combine_shares, shares)
    # Assert: a ShareError, with the former function's message (with a spare share, "share
    # x=... is inconsistent", naming the share the former check named; at m = t the range or
    # commitment check)
    assert got[0] == "ShareError"
    assert got == _outcome(_reference_combine, shares)
    if len(shares) > t:
        assert "inconsistent" in str(got[1])


@pytest.mark.parametrize(("t", "num"), [(1, 2), (2, 5), (5, 9), (31, 60), (121, 240)])
def test_every_position_and_chunk_of_a_wrong_share_is_named(t: int, num: int) -> None:
    rng = random.Random(num)
    secret = bytes(rng.randrange(256) for _ in range(32))
    shares = create_shares(secret, t, num)
    rng.shuffle(shares)
    positions = range(num) if num <= 9 else sorted(rng.sample(range(num), 8) + [0, num - 1])
    for pos in positions:
        for chunk in range(3):
            bad = list(shares)
            bad[pos] = _with_y(bad[pos], chunk, 1 + pos)
            got = _outcome(combine_shares, bad)
            assert got[0] == "ShareError"
            assert got == _outcome(_reference_combine, bad)


def test_shares_of_two_polynomials_with_one_header_are_refused() -> None:
    # Prepare: the same secret dealt twice (same header and commitment, other polynomials)
    rng = random.Random(2)
    secret = bytes(rng.randrange(256) for _ in range(40))
    for t, num in [(1, 4), (2, 4), (3, 7), (16, 30)]:
        a, b = create_shares(secret, t, num), create_shares(secret, t, num)
        for split in range(1, num):
            mixed = a[:split] + b[split:]
            # Execute / Assert: refused (for t = 1 both polynomials are the constant secret)
            got = _outcome(combine_shares, mixed)
            assert got == _outcome(_reference_combine, mixed)
            if t == 1:
                assert got == ("ok", secret)
            else:
                assert got[0] == "ShareError" and "inconsistent" in str(got[1])


def test_the_former_errors_for_malformed_mixed_duplicated_and_too_few_shares() -> None:
    a = create_shares(b"k" * 32, 3, 6)
    b = create_shares(b"j" * 32, 3, 6)
    for case in ([], [a[0], a[1]], [a[0], a[0], a[1]], [a[0], b[1], a[2]], [a[0][:-1], *a[1:]]):
        got = _outcome(combine_shares, case)
        assert got[0] != "ok" and got == _outcome(_reference_combine, case)


def test_closed_form_weights_equal_the_quadratic_ones() -> None:
    rng = random.Random(24)
    for _ in range(400):
        top = rng.randint(1, 300)
        m = rng.randint(1, top)
        xs = tuple(rng.sample(range(1, top + 1), m))
        if rng.random() < 0.3:
            xs = tuple(sorted(xs))
        u, at_zero = _fast_weights(xs)
        assert u == _bary_weights(xs)
        assert at_zero == _weights_cached(xs, 0)
    # the largest holder numbers a share can carry
    xs = (MAX_SHARES, MAX_SHARES - 3, MAX_SHARES - 1)
    assert _fast_weights(xs) == (_bary_weights(xs), _weights_cached(xs, 0))
    xs = tuple(range(MAX_SHARES - 40, MAX_SHARES + 1))
    assert _fast_weights(xs) == (_bary_weights(xs), _weights_cached(xs, 0))


def test_products_over_missing_holders() -> None:
    rng = random.Random(7)
    cases = [((1, 2), [3]), ((5,), [1, 2, 3, 4]), ((MAX_SHARES,), [1, 2, MAX_SHARES - 1])]
    for q in range(1, 14):
        xs = tuple(rng.sample(range(1, 60), 20))
        cases.append((xs, sorted(rng.sample(sorted(set(range(1, 61)) - set(xs)), q))))
    # more than 2^20 differences: the rows go in two blocks
    xs = tuple(rng.sample(range(1, 2101), 1100))
    cases.append((xs, sorted(set(range(1, 2101)) - set(xs))))
    for xs, missing in cases:
        want = []
        for x in xs:
            w = 1
            for s in missing:
                w = w * (x - s) % PRIME
            want.append(w)
        assert _missing_products(xs, missing) == want
    assert _missing_products((4, 9), []) == [1, 1]


def test_factorial_and_power_tables() -> None:
    fact, inv = _factorials(1000)
    assert len(fact) == len(inv) > 1000
    assert all(f * i % PRIME == 1 for f, i in zip(fact, inv, strict=True))
    assert all(fact[i] == fact[i - 1] * i % PRIME for i in range(1, len(fact)))
    fact, inv = _factorials(MAX_SHARES)
    assert len(fact) == MAX_SHARES + 1 and fact[-1] * inv[-1] % PRIME == 1
    for e in (0, 1, 2, 7, 1023):
        assert _powers(e, 400) == tuple(pow(x, e, PRIME) for x in range(401))


def test_an_honest_reconstruction_needs_no_quadratic_weights() -> None:
    # Prepare: 300 shares at t = 151, all holders, and all but 7 of them (dropouts)
    rng = random.Random(300)
    secret = bytes(rng.randrange(256) for _ in range(32))
    shares = create_shares(secret, 151, 300)
    rng.shuffle(shares)
    _fast_weights.cache_clear()
    before = (_bary_weights.cache_info(), _weights_cached.cache_info())
    # Execute / Assert: the closed form only; the former check computed the O(t^2) weights of
    # the first t holders and evaluated each of the 149 others from them
    assert combine_shares(shares) == secret
    assert combine_shares(shares[7:]) == secret
    assert (_bary_weights.cache_info(), _weights_cached.cache_info()) == before


def test_r_is_drawn_in_every_call_and_redrawn_when_it_meets_an_x(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: r = 1/3 mod p first (r x = 1 at x = 3, where the geometric sum's denominator is
    # 0), then r = 0 (g = 1, the check is S_0 alone)
    shares = create_shares(b"s" * 20, 3, 8)
    draws = iter([pow(3, -1, PRIME), 0, 5, 6])
    calls: list[int] = []

    def fake(n: int) -> int:
        assert n == PRIME
        calls.append(n)
        return next(draws)

    monkeypatch.setattr("protocol.secagg._shamir.secrets.randbelow", fake)
    # Execute / Assert: the first call draws twice, the second once; m = t draws nothing
    assert combine_shares(shares) == b"s" * 20 and len(calls) == 2
    assert combine_shares(shares[2:]) == b"s" * 20 and len(calls) == 3
    assert combine_shares(shares[:3]) == b"s" * 20 and len(calls) == 3


def test_a_known_r_lets_wrong_shares_pass_the_check_but_not_the_commitment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why r must be secret and fresh: with r known, two wrong shares chosen so that
    sum_l r^l S_l = 0 pass the syndrome check (the commitment still refuses the result); with
    r drawn by `secrets` after the shares are in hand they are named as before."""
    # Prepare: m = t + 2 shares (one check coefficient pair: S_0 + r S_1), errors e_i, e_j
    # with u_i e_i (1 + r x_i) + u_j e_j (1 + r x_j) = 0
    t, m, r = 4, 6, 123456789
    shares = create_shares(b"q" * 15, t, m)
    xs = tuple(range(1, m + 1))
    u = _bary_weights(xs)
    i, j = 1, 4
    e_i = 1
    e_j = -u[i] * e_i * (1 + r * xs[i]) * pow(u[j] * (1 + r * xs[j]), -1, PRIME) % PRIME
    bad = list(shares)
    bad[i] = _with_y(bad[i], 0, e_i)
    bad[j] = _with_y(bad[j], 0, e_j)
    honest = _outcome(_reference_combine, bad)
    assert honest == ("ShareError", "share x=5 is inconsistent with the others (tampered)")
    # Execute / Assert: a fresh r names the share (fails with probability 1 / p)
    assert _outcome(combine_shares, bad) == honest
    # with r forced to the known value the check passes and the commitment refuses
    monkeypatch.setattr("protocol.secagg._shamir.secrets.randbelow", lambda n: r)
    with pytest.raises(ShareError, match="commitment|range"):
        combine_shares(bad)


def _reference_parse(share: bytes) -> _Share:
    """`_parse` as it was before its y values were read with a list (at 496ad1d)."""
    head = _HEADER.size + COMMIT_BYTES
    if len(share) < head + CHECK_BYTES:
        raise ShareError(f"share of {len(share)} bytes is shorter than its header")
    version, threshold, x, secret_len = _HEADER.unpack_from(share)
    if version != VERSION:
        raise ShareError(f"share version {version}, expected {VERSION}")
    if not 1 <= secret_len <= MAX_SECRET_BYTES or threshold < 1 or x < 1:
        raise ShareError("share header out of range")
    n_chunks = _chunks(secret_len)
    if len(share) != head + n_chunks * Y_BYTES + CHECK_BYTES:
        raise ShareError(f"share of {len(share)} bytes does not match its {secret_len}-byte secret")
    body, check = share[:-CHECK_BYTES], share[-CHECK_BYTES:]
    if _check(body) != check:
        raise ShareError(f"share x={x} fails its integrity check (tampered or corrupt)")
    ys = tuple(
        int.from_bytes(body[head + i * Y_BYTES : head + (i + 1) * Y_BYTES], "little")
        for i in range(n_chunks)
    )
    if any(y >= PRIME for y in ys):
        raise ShareError(f"share x={x} holds a value outside the field")
    return _Share(threshold, x, secret_len, share[_HEADER.size : head], ys)


def _sealed(body: bytes) -> bytes:
    return body + _check(body)


def test_parse_refuses_and_reads_as_before() -> None:
    rng = random.Random(9)
    good = create_shares(bytes(range(40)), 3, 5)[2]
    body = good[:-CHECK_BYTES]
    head = _HEADER.size + COMMIT_BYTES
    cases = [
        good,
        good[:10],
        good[:-1],
        good + b"\0",
        body + bytes(CHECK_BYTES),
        _sealed(_HEADER.pack(VERSION + 1, 3, 3, 40) + body[_HEADER.size :]),
        _sealed(_HEADER.pack(VERSION, 0, 3, 40) + body[_HEADER.size :]),
        _sealed(_HEADER.pack(VERSION, 3, 0, 40) + body[_HEADER.size :]),
        _sealed(_HEADER.pack(VERSION, 3, 3, 0) + body[_HEADER.size :]),
        _sealed(_HEADER.pack(VERSION, 3, 3, 31) + body[_HEADER.size :]),
    ]
    for chunk in range(3):
        for y in (PRIME - 1, PRIME, (1 << 128) - 1):
            at = head + chunk * Y_BYTES
            cases.append(_sealed(body[:at] + y.to_bytes(Y_BYTES, "little") + body[at + Y_BYTES :]))
    cases += [bytes(rng.randrange(256) for _ in range(rng.randrange(90))) for _ in range(200)]
    for case in cases:
        assert _outcome(_parse, case) == _outcome(_reference_parse, case)
    assert _outcome(_parse, good)[0] == "ok"
