"""CollusionFilter's state has a bound that a spec cannot lift past what the service persists.

Before: `collusion:hist=H,devices=M` took any H and M, so the histories (12 bytes a value in
the persisted state) could grow towards H·M values, past the state codec's 2 GiB limit, after
which every round's publish failed; and with a long `memory=` every device ever flagged stayed
in `suspects` (a dict the filter never trimmed). Now H·M is at most MAX_HISTORY_VALUES and
`suspects` keeps at most max(max_devices, this round's flagged) devices.
"""

from __future__ import annotations

import numpy as np
import pytest

from compression import SparseUpdate
from coordinator.aggregators import (
    ClientUpdate,
    CollusionFilter,
    build_aggregator,
    decode_state,
    encode_state,
)
from coordinator.aggregators._backdoor import MAX_HISTORY_VALUES, CollusionState
from coordinator.aggregators._registry import AggregatorSpecError

D = 64


def _report(name: str, dense: np.ndarray) -> ClientUpdate:
    row = dense.astype(np.float32)
    idx = np.flatnonzero(row).astype(np.int64)
    return ClientUpdate(name, SparseUpdate(idx, row[idx], D), 1.0)


@pytest.mark.parametrize(
    ("hist", "devices"),
    [(1 << 20, 1 << 20), (MAX_HISTORY_VALUES, 2), (2, MAX_HISTORY_VALUES // 2 + 1)],
)
def test_a_history_bound_past_the_limit_is_refused(hist: int, devices: int) -> None:
    with pytest.raises(ValueError, match="history_values·max_devices"):
        CollusionFilter(history_values=hist, max_devices=devices)
    with pytest.raises(AggregatorSpecError, match="history_values·max_devices"):
        build_aggregator(f"collusion:hist={hist},devices={devices}+fedavg")


@pytest.mark.parametrize(
    ("hist", "devices"), [(8192, 1000), (MAX_HISTORY_VALUES // 2, 2), (1, MAX_HISTORY_VALUES)]
)
def test_bounds_within_the_limit_still_build(hist: int, devices: int) -> None:
    f = build_aggregator(f"collusion:hist={hist},devices={devices}+fedavg")
    assert isinstance(f, CollusionFilter)
    assert (f.history_values, f.max_devices) == (hist, devices)


def _honest(n: int) -> list[ClientUpdate]:
    """n devices on disjoint coordinates 10.. (cosine 0 to each other): they make the
    colluders' coordinates rare, so those weigh more than 0."""
    out = []
    for i in range(n):
        v = np.zeros(D)
        v[10 + 3 * i : 13 + 3 * i] = 1.0
        out.append(_report(f"h{i}", v))
    return out


def test_suspects_stay_bounded_under_a_long_memory() -> None:
    # Each round two new devices send the same report: both are flagged (cosine 1 to the
    # other's history) and, with memory 10^6, would stay suspect for good. Before, suspects
    # held all 2·rounds of them.
    proc = CollusionFilter(threshold=0.5, memory=10**6, max_devices=4).create(D)
    state = proc.initialize()
    rng = np.random.default_rng(7)
    for r in range(10):
        v = np.zeros(D)
        v[rng.choice(10, size=5, replace=False)] = 1.0
        out = proc.next(state, [_report(f"a{r}", v), _report(f"b{r}", v), *_honest(4)])
        assert out.measurements["flagged"] == 2
        state = out.state
        assert isinstance(state, CollusionState)
        assert len(state.suspects) <= 4
        # This round's flagged devices are kept; the ones whose sentence ends first go.
        assert {f"a{r}", f"b{r}"} <= set(state.suspects)


def test_a_rounds_flagged_devices_are_all_kept_even_past_the_bound() -> None:
    proc = CollusionFilter(threshold=0.5, memory=5, max_devices=2).create(D)
    v = np.zeros(D)
    v[:5] = 1.0
    reports = [_report(f"d{i}", v) for i in range(5)] + _honest(10)
    out = proc.next(proc.initialize(), reports)
    assert out.measurements["flagged"] == 5
    assert set(out.state.suspects) == {f"d{i}" for i in range(5)}


def test_a_state_kept_under_a_larger_bound_loads_and_is_trimmed() -> None:
    # The bound is configuration, not state: the state's layout is unchanged, so a state the
    # service stored before (or under a larger devices=) loads, and the next round trims it.
    rng = np.random.default_rng(3)
    big = CollusionFilter(threshold=0.99, max_devices=20).create(D)
    state = big.initialize()
    for r in range(3):
        reports = [_report(f"r{r}d{i}", rng.normal(size=D)) for i in range(5)]
        state = big.next(state, reports).state
    blob = encode_state(state)
    restored = decode_state(blob)
    assert len(restored.histories) == 15
    small = CollusionFilter(threshold=0.99, max_devices=4).create(D)
    out = small.next(restored, [_report("new", rng.normal(size=D))])
    assert len(out.state.histories) == 4
    assert "new" in out.state.histories
    freq = np.zeros(D, dtype=np.int64)
    for h in out.state.histories.values():
        freq[h.indices] += 1
    np.testing.assert_array_equal(out.state.device_freq, freq)
