"""Limits of protocol/secagg/_shamir.py that no test held (s60c mutation hunt): the share
counts `create_shares` takes at their bounds, a reconstructed chunk exactly one past its
width, and the robust decoder `_berlekamp_welch`, which returns the polynomial of degree < k
through all but at most e of m >= k + 2e distinct points, or None. `combine_shares_robust`
always calls the decoder inside those limits, so these are asked of it directly, as
tests/protocol/test_h224_robust_decode_cost.py does; outside them it must say None, not guess."""

from __future__ import annotations

import pytest

from protocol.secagg import ShareError, combine_shares, create_shares
from protocol.secagg._shamir import (
    _HEADER,
    CHECK_BYTES,
    COMMIT_BYTES,
    MAX_SHARES,
    Y_BYTES,
    _berlekamp_welch,
    _check,
)


def test_two_points_off_one_constant_are_not_corrected_at_radius_zero() -> None:
    # k = 1, m = 2, e = 0: no constant goes through (3, 3) and (4, 6), and none may be moved.
    # The syndromes' recurrence has length 1 > e. Without that check (`if length > e`) the
    # decoder found the recurrence's root among the xs and returned the constant 6.
    assert _berlekamp_welch([3, 4], [3, 6], 1, 0) is None
    assert _berlekamp_welch([3, 4], [6, 6], 1, 0) == [6]


def test_fewer_points_than_k_plus_2e_are_not_decoded() -> None:
    # m = k = 2 with e = 1: two points fix a line but leave nothing to check it against.
    # Without the guard the line through them was returned as if one error were ruled out.
    assert _berlekamp_welch([1, 2], [5, 7], 2, 1) is None
    assert _berlekamp_welch([1, 2, 3, 4], [5, 7, 9, 11], 2, 1) == [3, 2]


def test_degree_below_zero_is_not_decoded() -> None:
    # k = 0 (no polynomial): without the guard all-zero points gave the empty polynomial [].
    assert _berlekamp_welch([1, 2, 3], [0, 0, 0], 0, 1) is None


def test_a_repeated_x_is_not_decoded() -> None:
    # Without the guard the barycentric weights divided by x - x = 0: a bare ValueError
    # ("base is not invertible for the given modulus") instead of None.
    assert _berlekamp_welch([1, 1, 2], [5, 5, 6], 1, 1) is None


@pytest.mark.parametrize(("t", "num"), [(1, 1), (3, 3), (1, MAX_SHARES)])
def test_shares_at_each_count_bound_are_made_and_recovered(t: int, num: int) -> None:
    # Kills each `<=` of `1 <= threshold <= num <= MAX_SHARES` flipped to <.
    shares = create_shares(b"\x05", t, num)
    assert len(shares) == num
    assert combine_shares(shares[-t:]) == b"\x05"
    with pytest.raises(
        ShareError, match=f"^need 1 <= threshold \\(1\\) <= num \\({MAX_SHARES + 1}\\)"
    ):
        create_shares(b"\x05", 1, MAX_SHARES + 1)


def _with_y_of(share: bytes, y: int) -> bytes:
    """The share with its first chunk's y set to `y`, re-sealed (the check is a plain hash)."""
    head = _HEADER.size + COMMIT_BYTES
    body = bytearray(share[:-CHECK_BYTES])
    body[head : head + Y_BYTES] = y.to_bytes(Y_BYTES, "little")
    return bytes(body) + _check(bytes(body))


def test_a_chunk_of_exactly_two_to_its_width_is_refused_as_tampered() -> None:
    # A 1-byte secret at t = 1: both shares say f(0) = 256, one past a byte. With
    # `value >= 1 << (8 * width)` flipped to >, int.to_bytes raised a bare OverflowError.
    shares = [_with_y_of(s, 256) for s in create_shares(b"\x05", 1, 2)]
    with pytest.raises(ShareError, match="^reconstructed chunk out of range"):
        combine_shares(shares)
    with pytest.raises(ShareError, match="^reconstructed chunk out of range"):
        combine_shares(shares[:1])
