"""`combine_shares_robust` at edges no test held (s60c mutation hunt on
protocol/secagg/_shamir.py, after s59s): a forged share of threshold 1 when the caller knows
the dealer's threshold, exactly t good shares beside a malformed one, and a left-out candidate
that reconstructs to exactly one past its chunk's width, and a corrected polynomial that does."""

from __future__ import annotations

import pytest

from protocol.secagg import ShareError, combine_shares_robust, create_shares
from protocol.secagg._shamir import _HEADER, CHECK_BYTES, COMMIT_BYTES, Y_BYTES, _check

SECRET = bytes(range(1, 33))


def test_a_forged_share_of_threshold_one_is_not_taken_for_a_known_threshold() -> None:
    # The forged share alone is a complete "group" (t = 1) that the strict combiner accepts.
    # With `threshold is None` flipped to `is not None`, or `== threshold` flipped to !=, its
    # secret was returned for a dealer of threshold 3.
    forged = create_shares(b"forged secret", 1, 1)
    with pytest.raises(ShareError, match="^no secret matches its commitment"):
        combine_shares_robust(forged, 3)
    assert combine_shares_robust(forged) == (b"forged secret", ())


def test_exactly_t_good_shares_beside_a_malformed_one_recover_the_secret() -> None:
    # The strict combiner refuses the set (one share does not parse); the robust one keeps the
    # three that do, exactly t. Kills `len(used) < t` flipped to <=.
    shares = create_shares(SECRET, 3, 4)
    malformed = b"\x00" * len(shares[0])
    assert combine_shares_robust([malformed, *shares[:3]], 3) == (SECRET, (0,))


def _with_y(share: bytes, y: int) -> bytes:
    """The share with its first chunk's y set to `y`, re-sealed (the check is a plain hash)."""
    head = _HEADER.size + COMMIT_BYTES
    body = bytearray(share[:-CHECK_BYTES])
    body[head : head + Y_BYTES] = y.to_bytes(Y_BYTES, "little")
    return bytes(body) + _check(bytes(body))


def test_a_left_out_candidate_one_past_its_width_is_dropped() -> None:
    # t = 1, two shares of the 1-byte secret 5, the second lying with y = 256. Leaving one out
    # in turn (m = t + 1) gives the candidates 256 and 5: 256 is not a byte and is dropped.
    # With `value >= 1 << (8 * width)` flipped to > (_leave_one_out), int.to_bytes raised a
    # bare OverflowError.
    honest, liar = create_shares(b"\x05", 1, 2)
    assert combine_shares_robust([honest, _with_y(liar, 256)], 1) == (b"\x05", (1,))


def test_a_corrected_polynomial_one_past_its_width_is_refused() -> None:
    # t = 1, four shares: three say f(0) = 256, one says 5. Error correction (e = 1) finds the
    # constant 256, which is not a byte: no secret, refused by name. With `value >= 1 << (8 *
    # width)` flipped to > (after `_berlekamp_welch`), int.to_bytes raised a bare OverflowError.
    shares = create_shares(b"\x05", 1, 4)
    lying = [shares[0], *(_with_y(s, 256) for s in shares[1:])]
    with pytest.raises(ShareError, match="^no secret matches its commitment"):
        combine_shares_robust(lying, 1)
