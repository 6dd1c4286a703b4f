"""Checks of protocol/secagg/_shamir.py that no test in tests/protocol reached (a mutation hunt,
helper s59s, removed each and those tests still passed): the secret-length range of
`create_shares` (an empty secret made shares without a single y), and the robust combiner
passing on `NotEnoughShares` for fewer than t shares instead of trying to correct them."""

from __future__ import annotations

import pytest

from protocol.secagg import (
    NotEnoughShares,
    ShareError,
    combine_shares,
    combine_shares_robust,
    create_shares,
)
from protocol.secagg._shamir import MAX_SECRET_BYTES


@pytest.mark.parametrize("size", [0, MAX_SECRET_BYTES + 1])
def test_a_secret_outside_one_to_the_maximum_is_refused(size: int) -> None:
    with pytest.raises(
        ShareError, match=f"^secret of {size} bytes, expected 1..{MAX_SECRET_BYTES}$"
    ):
        create_shares(bytes(size), 2, 3)


@pytest.mark.parametrize("size", [1, MAX_SECRET_BYTES])
def test_a_secret_of_one_byte_or_the_maximum_is_shared_and_recovered(size: int) -> None:
    secret = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    shares = create_shares(secret, 2, 3)
    assert combine_shares(shares[1:]) == secret


def test_the_robust_combiner_refuses_fewer_than_t_shares_as_not_enough() -> None:
    shares = create_shares(b"\7" * 32, 3, 5)
    with pytest.raises(NotEnoughShares):
        combine_shares_robust(shares[:2], 3)
    assert combine_shares_robust(shares[:3], 3) == (b"\7" * 32, ())
