"""cosfilter: a reference poisoned by one unscreened round must not switch the screen off for good.

helper-229's finding: round 1 has no momentum, so every report is kept; when 4 of its 10 top-k
reports are identical IPM (eps = 0.1) copies, the geometric median lands on them and the
momentum points against honest progress. From round 2 on, most honest reports have cosine <= 0
to it, so max_drop distrusts every round, and a distrusted round used to leave the momentum as
it was: the bad reference was never corrected (all 19 later rounds distrusted on the MNIST MLP,
seeds 6 and 8). Now the first distrusted round keeps the reference, and a second one in a row
restarts it from that round's result.
"""

from __future__ import annotations

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import ClientUpdate, build_aggregator
from coordinator.aggregators._state import decode_state, encode_state

D, K, N = 2410, 24, 10


def _top_k_honest(rng: np.random.Generator, g: np.ndarray, h: int) -> np.ndarray:
    """h non-IID top-k reports around the honest direction g (cosine to g about 0.2)."""
    rows = np.zeros((h, D), np.float32)
    for i in range(h):
        v = g + 3.0 * rng.normal(size=D)
        idx = np.argsort(-np.abs(v))[:K]
        rows[i, idx] = v[idx]
    return rows


def _updates(rows: np.ndarray) -> list[ClientUpdate]:
    return [
        ClientUpdate(f"dev{i:03d}", SparseUpdate.from_dense(row.astype(np.float32)), 1.0)
        for i, row in enumerate(rows)
    ]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _round(rng: np.random.Generator, g: np.ndarray, attackers: int) -> np.ndarray:
    honest = _top_k_honest(rng, g, N - attackers)
    ipm = -0.1 * honest.mean(0)
    return np.vstack([honest, np.repeat(ipm[None, :], attackers, axis=0)])


def test_a_captured_first_round_does_not_switch_the_screen_off_for_good() -> None:
    # Prepare: round 1 holds 4 identical IPM reports of 10, and the geometric median (the
    # only judge, with no momentum yet) lands on them.
    rng = np.random.default_rng(0)
    g = np.random.default_rng(42).normal(size=D)
    proc = build_aggregator("cosfilter+geomed").create(D)
    first = proc.next(proc.initialize(), _updates(_round(rng, g, 4)))
    assert _cos(first.result.astype(np.float64), g) < 0  # the poisoned reference
    state = first.state
    # Execute: six clean rounds (no attackers at all).
    flags, cosines = [], []
    for _ in range(6):
        out = proc.next(state, _updates(_round(rng, g, 0)))
        state = decode_state(encode_state(out.state))  # as the service persists it
        flags.append(out.measurements["distrusted"])
        cosines.append(_cos(out.result.astype(np.float64), g))
    # Assert: the first clean round distrusts the reference and keeps it, the second restarts
    # it from its own (honest) result, and from then on the screen runs again (before the fix
    # every one of the six was distrusted).
    assert flags[:2] == [True, True]
    assert not any(flags[2:])
    assert all(c > 0 for c in cosines)
    assert len(state) == 2  # a trusted last round leaves the 2-tuple state


def test_one_distrusted_round_keeps_the_reference_and_two_restart_it() -> None:
    # Prepare: a clean reference, then cohorts whose majority points against it.
    rng = np.random.default_rng(1)
    g = np.random.default_rng(7).normal(size=D)
    proc = build_aggregator("cosfilter+geomed").create(D)
    state = proc.next(proc.initialize(), _updates(_round(rng, g, 0))).state
    flipped = -_round(rng, g, 0)
    # Execute
    one = proc.next(state, _updates(flipped))
    two = proc.next(one.state, _updates(-_round(rng, g, 0)))
    # Assert: round one keeps the momentum and records one distrusted round; round two
    # restarts the momentum as (1 - beta) times its own result, and counts two.
    assert one.measurements["distrusted"] and two.measurements["distrusted"]
    np.testing.assert_array_equal(one.state[0], state[0])
    assert one.state[2] == 1 and two.state[2] == 2
    np.testing.assert_allclose(two.state[0], 0.5 * two.result, rtol=1e-6)


def test_a_trusted_round_clears_the_count_and_a_bad_count_is_refused() -> None:
    rng = np.random.default_rng(2)
    g = np.random.default_rng(3).normal(size=D)
    proc = build_aggregator("cosfilter+geomed").create(D)
    state = proc.next(proc.initialize(), _updates(_round(rng, g, 0))).state
    one = proc.next(state, _updates(-_round(rng, g, 0)))
    # An empty round changes nothing, the count included.
    empty = proc.next(one.state, [])
    assert empty.state[2] == 1
    np.testing.assert_array_equal(empty.state[0], one.state[0])
    # A trusted round moves the momentum and drops the count.
    back = proc.next(empty.state, _updates(_round(rng, g, 0)))
    assert not back.measurements["distrusted"] and len(back.state) == 2
    momentum, inner = one.state[0], one.state[1]
    for bad in (0, -1, 1.0, True):
        with pytest.raises(ValueError, match="in a row"):
            proc.next((momentum, inner, bad), _updates(_round(rng, g, 0)))
