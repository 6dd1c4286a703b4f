"""One wrong share among exactly t + 1 is found (helper-339's review).

Reed-Solomon decoding corrects floor((m - t) / 2) wrong shares among m, so with m = t + 1 it
corrects none: one survivor's well-formed wrong share about a device whose secret had t + 1
shares (every secret of a 5-device round, k = 4 and t = 3; at 7 devices, after one ordinary
dropout) aborted the round with no one named, where staying silent would have let it commit.
`combine_shares_robust` now leaves each share out in turn when m = t + 1, takes the candidate
that matches the dealer's commitment, and names the share left out.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.secagg import ShareError, combine_shares_robust, create_shares

from .test_h224_robust_decode_cost import _round
from .test_secagg_robust_unmask import _with_y


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    t=st.integers(1, 24),
    secret_len=st.integers(1, 64),
    wrong_at=st.integers(0, 24),
    chunk=st.integers(0, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_one_wrong_share_among_t_plus_one_is_named_and_the_secret_recovered(
    t: int, secret_len: int, wrong_at: int, chunk: int, seed: int
) -> None:
    # Prepare: t + 1 shares of a random secret, one of them moved off the polynomial in one
    # of its chunks (well-formed: its own check bytes recomputed)
    rng = random.Random(seed)
    secret = bytes(rng.randrange(256) for _ in range(secret_len))
    shares = create_shares(secret, t, t + 1)
    wrong = wrong_at % (t + 1)
    chunks = -(-secret_len // 15)
    shares[wrong] = _with_y(shares[wrong], chunk % chunks, 1 + rng.randrange(2**64))
    # Execute
    got, unused = combine_shares_robust(shares, t)
    # Assert
    assert got == secret
    assert unused == (wrong,)


def test_two_wrong_shares_among_t_plus_one_are_still_refused() -> None:
    rng = random.Random(7)
    secret = bytes(rng.randrange(256) for _ in range(32))
    shares = create_shares(secret, 4, 5)
    shares[1] = _with_y(shares[1], 0, 3)
    shares[3] = _with_y(shares[3], 1, 5)
    with pytest.raises(ShareError, match="no secret matches its commitment"):
        combine_shares_robust(shares, 4)


def test_a_five_device_round_with_one_liar_commits_and_names_it() -> None:
    # Prepare: 5 devices, complete graph (k = 4, t = 3): every seed has exactly t + 1 shares;
    # survivor 0 lies about device 2's seed. Before, the round aborted with no suspect.
    server = _round(5, {0: 2})
    # Execute
    res = server.finish()
    # Assert: the exact sum of the five inputs (device i sent i), and the liar named
    assert res.total.tolist() == [sum(range(5))] * 4
    assert res.suspects == (0,)
