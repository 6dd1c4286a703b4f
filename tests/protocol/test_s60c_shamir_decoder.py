"""The robust Shamir decoder's own limits (protocol/secagg/_shamir.py `_berlekamp_welch`), which
no test held (s60c mutation hunt): it returns the polynomial of degree < k through all but at
most e of m >= k + 2e distinct points, or None. `combine_shares_robust` always calls it inside
those limits, so these are asked of the decoder directly, as tests/protocol/
test_h224_robust_decode_cost.py does; outside them it must say None, not guess."""

from __future__ import annotations

from protocol.secagg._shamir import _berlekamp_welch


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
