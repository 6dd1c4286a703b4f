"""DPMean's close keeps its temporaries bounded whatever the number of clients, bit for bit.

Before, `_DPMeanProcess.next` clipped every report into a list (a float32 copy of every
received value, 4 bytes each) and handed the list to the inner FedAvg, so the close's memory
grew with the number of clients while docs/robustness.md said 16·d (helper-282's finding).
With the FedAvg inner it now clips one report and adds it to the float64 sum before clipping
the next; the released mean, the adaptive clip's step, the noise (same RNG calls in the same
order) and the measurements must stay the old algorithm's, bit for bit. `_old_next` below is
that algorithm, written out plainly: clip every row, sum them with the inner rule, noise.
"""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import SparseUpdate
from coordinator.aggregators import (
    AdaptiveClip,
    ClientUpdate,
    CoordinateMedian,
    DPMean,
    FedAvg,
    TrimmedMean,
    _dp,
)
from coordinator.aggregators._clip import MIN_CLIP, clip_update
from coordinator.aggregators._mean import _FedAvgProcess
from coordinator.privacy import FixedSizeSampling, PoissonSampling

D = 100_000
# docs/robustness.md's dp row at k = d (dense reports): 8·d + 36·k, plus small objects.
_BOUND = 8 * D + 36 * D + 64 * 1024


def _dense_reports(n: int, d: int = D, seed: int = 0) -> list[ClientUpdate]:
    rng = np.random.default_rng(seed)
    idx = np.arange(d, dtype=np.int64)
    return [
        ClientUpdate(f"d{i}", SparseUpdate(idx, rng.standard_normal(d).astype(np.float32), d), 7.0)
        for i in range(n)
    ]


def _values(rng: np.random.Generator, k: int) -> np.ndarray:
    """k values of one report, its norm anywhere from 1e-4 to 1e3 (some clipped, some not),
    spread over 20 decades within it: float64 sums of them then round, so their order
    shows in the bits (float32 values of like magnitudes sum exactly in float64)."""
    return rng.standard_normal(k) * 10 ** rng.uniform(-4, 3) * 10 ** rng.uniform(-20, 0, size=k)


def _peak(call: Callable[[], Any]) -> int:
    """Bytes allocated at the peak of `call()` beyond what was held before it (inputs)."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        out = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out is not None
    return peak - before


def _old_next(proc: Any, state: Any, updates: Sequence[ClientUpdate]) -> dict[str, Any]:
    """The pre-h285 algorithm: every report clipped into a list, the list summed, noised."""
    rnd, clip, inner_state = state
    cfg = proc.cfg
    n = len(updates)
    denom = float(cfg.denominator) if cfg.denominator is not None else float(max(n, 1))
    norms = np.array([math.sqrt(cu.update.squared_norm()) for cu in updates], dtype=np.float64)
    clipped = [
        ClientUpdate(cu.device_id, clip_update(cu.update, clip, always_scale=True), 1.0)
        for cu in updates
    ]
    if isinstance(proc.inner, _FedAvgProcess):
        inner_out, acc = proc.inner.next_sum(inner_state, clipped)
        weight = float(inner_out.measurements["total_weight"])
        total = acc if weight == n or weight <= 0 else acc * (n / weight)
    else:
        inner_out = proc.inner.next(inner_state, clipped)
        total = inner_out.result.astype(np.float64) * n
    z_u = cfg.update_noise_multiplier(denom)
    rng = proc._rng(rnd)
    noise_std = z_u * clip
    total = total + rng.normal(0.0, noise_std, size=proc.size)
    result = (total / denom).astype(np.float32)
    new_clip, fraction = clip, None
    if isinstance(cfg.clip, AdaptiveClip):
        sb = cfg.count_stddev(denom)
        centred = float(np.count_nonzero(norms <= clip)) - n / 2.0
        fraction = (centred + float(rng.normal(0.0, sb))) / denom + 0.5
        new_clip = min(max(cfg.clip.step(clip, fraction), MIN_CLIP), cfg.clip_ceiling())
    return {
        "result": result,
        "clip": new_clip,
        "fraction": fraction,
        "noise_stddev": noise_std / denom,
        "inner": inner_out.measurements,
    }


def _assert_same(new: Any, old: dict[str, Any]) -> None:
    assert new.result.dtype == np.float32
    np.testing.assert_array_equal(new.result.view(np.int32), old["result"].view(np.int32))
    assert new.state[1] == old["clip"]
    assert new.measurements.get("unclipped_fraction_noised") == old["fraction"]
    assert new.measurements["noise_stddev"] == old["noise_stddev"]
    if "inner" in new.measurements:
        assert new.measurements["inner"] == old["inner"]


def test_dp_close_peak_does_not_grow_with_clients() -> None:
    # Prepare: 8 and 64 dense reports of d = 100,000, the default FedAvg(uniform) inner
    # (before: 5.6 MB at n = 8, 28.0 MB at n = 64: a float32 copy of every report)
    proc = DPMean(1.0, clip=1.0, seed=0).create(D)
    state = proc.initialize()
    few, many = _dense_reports(8), _dense_reports(64)
    # While a report is clipped: the float64 sum, clip_update's temporaries (32 bytes a value
    # when its factor is shrunk once: its float64 copy and product, two float32 clips and two
    # float64 checks) and the previous report's float32 clip; later the sum, the float64 noise
    # draw and the float32 result (20·d); 64 KB for numpy's and tracemalloc's small objects.
    bound = _BOUND

    # Execute
    peak_few = _peak(lambda: proc.next(state, few))
    peak_many = _peak(lambda: proc.next(state, many))

    # Assert
    assert peak_many <= 1.5 * peak_few, (peak_few, peak_many)
    assert peak_many <= bound, (peak_many, bound)


def test_adaptive_dp_close_peak_does_not_grow_with_clients() -> None:
    # Prepare: the quantile path keeps one float64 norm per report, nothing per value
    dp = DPMean(
        0.5,
        clip=AdaptiveClip(initial=50.0, target_quantile=0.5, count_stddev=1.0),
        inner=FedAvg(uniform=False, max_weight=0.5),
        denominator=64.0,
        seed=3,
    )
    proc = dp.create(D)
    state = proc.initialize()
    few, many = _dense_reports(8, seed=1), _dense_reports(64, seed=2)

    # Execute
    peak_few = _peak(lambda: proc.next(state, few))
    peak_many = _peak(lambda: proc.next(state, many))

    # Assert
    assert peak_many <= 1.5 * peak_few, (peak_few, peak_many)
    assert peak_many <= _BOUND, peak_many


_INNERS = [
    FedAvg(uniform=True),
    FedAvg(uniform=False),
    FedAvg(uniform=False, max_weight=0.5),  # every weight 0.5: the sum times n / total
    FedAvg(uniform=True, max_weight=3.0),
    TrimmedMean(0.1),  # not FedAvg: its mean times n, the clipped list as before
    CoordinateMedian(),
]


@settings(derandomize=True, max_examples=120, deadline=None)
@given(
    n=st.integers(0, 9),
    size=st.integers(1, 60),
    seed=st.integers(0, 2**32 - 1),
    z=st.floats(0.01, 3.0),
    clip=st.floats(1e-3, 10.0),
    adaptive=st.booleans(),
    quantile=st.floats(0.05, 0.95),
    denominator=st.one_of(st.none(), st.floats(0.5, 50.0)),
    inner=st.sampled_from(_INNERS),
    value_dtype=st.sampled_from([np.float32, np.float64]),
    dp_seed=st.integers(0, 2**31),
)
def test_dp_rounds_are_the_old_algorithm_bit_for_bit(
    n: int,
    size: int,
    seed: int,
    z: float,
    clip: float,
    adaptive: bool,
    quantile: float,
    denominator: float | None,
    inner: Any,
    value_dtype: Any,
    dp_seed: int,
) -> None:
    # Prepare: three rounds of sparse and dense reports over a wide range of norms (some
    # clipped, some not, some empty), the adaptive clip stepping between them
    rng = np.random.default_rng(seed)
    clip_cfg: float | AdaptiveClip = clip
    if adaptive:
        clip_cfg = AdaptiveClip(
            initial=clip, target_quantile=quantile, count_stddev=z * float(rng.uniform(0.6, 5.0))
        )
    dp = DPMean(z, clip=clip_cfg, inner=inner, denominator=denominator, seed=dp_seed)
    proc = dp.create(size)
    state = proc.initialize()

    for rnd in range(3):
        updates = []
        for i in range(n):
            k = int(rng.integers(0, size + 1))
            idx = np.sort(rng.choice(size, size=k, replace=False)).astype(np.int64)
            vals = _values(rng, k).astype(value_dtype)
            updates.append(ClientUpdate(f"d{i}", SparseUpdate(idx, vals, size), float(1 + i)))

        # Execute
        old = _old_next(proc, state, updates)
        out = proc.next(state, updates)

        # Assert
        _assert_same(out, old)
        assert out.state[0] == rnd + 1
        state = out.state


@settings(derandomize=True, max_examples=150, deadline=None)
@given(
    n=st.integers(0, 12),
    size=st.integers(1, 80),
    seed=st.integers(0, 2**32 - 1),
    clip=st.floats(1e-3, 10.0),
    inner=st.sampled_from(_INNERS[:4]),
)
def test_float64_sum_is_fedavg_next_sum_over_the_clipped_list(
    n: int, size: int, seed: int, clip: float, inner: Any
) -> None:
    # Prepare: the float64 sum itself, whose last bits the float32 release can hide (the
    # summation order, say): it must be FedAvg's sum of the clipped list, bit for bit
    rng = np.random.default_rng(seed)
    updates = []
    for i in range(n):
        k = int(rng.integers(0, size + 1))
        idx = np.sort(rng.choice(size, size=k, replace=False)).astype(np.int64)
        vals = _values(rng, k).astype(np.float32)
        updates.append(ClientUpdate(f"d{i}", SparseUpdate(idx, vals, size), 2.0))
    proc = DPMean(1.0, clip=clip, inner=inner, seed=0).create(size)
    inner_state = proc.initialize()[2]
    clipped = [
        ClientUpdate(cu.device_id, clip_update(cu.update, clip, always_scale=True), 1.0)
        for cu in updates
    ]
    norms = np.full(n, np.nan)

    # Execute
    out, acc = proc._fedavg_sum(inner_state, updates, clip, norms)
    want_out, want = proc.inner.next_sum(inner_state, clipped)

    # Assert
    np.testing.assert_array_equal(acc.view(np.int64), want.view(np.int64))
    np.testing.assert_array_equal(out.result.view(np.int32), want_out.result.view(np.int32))
    assert out.measurements == want_out.measurements
    assert norms.tolist() == [math.sqrt(cu.update.squared_norm()) for cu in updates]


@pytest.mark.parametrize("adaptive", [False, True])
def test_same_seed_same_noised_output(adaptive: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a seeded stage run twice, and an unseeded one with the OS seed pinned (the
    # deployment path: one fresh seed a round), each against the old algorithm
    reports = _dense_reports(5, d=2_000, seed=9)
    clip_cfg: float | AdaptiveClip = AdaptiveClip(0.5, 0.5, count_stddev=2.0) if adaptive else 5.0
    outs = []
    for seed in (11, 11, None):
        monkeypatch.setattr(_dp, "_os_seed", lambda: 12345)
        dp = DPMean(0.8, clip=clip_cfg, sampling=FixedSizeSampling(50, 5), seed=seed)
        proc = dp.create(2_000)
        state = proc.initialize()
        for _ in range(2):
            old = _old_next(proc, state, reports)
            out = proc.next(state, reports)
            _assert_same(out, old)
            state = out.state
        outs.append(out)

    # Assert: the two seeded runs agree bit for bit; the noise is really there
    np.testing.assert_array_equal(outs[0].result.view(np.int32), outs[1].result.view(np.int32))
    plain = np.mean([np.asarray(clip_update(r.update, 5.0).to_dense()) for r in reports], axis=0)
    assert not np.array_equal(outs[0].result, plain.astype(np.float32))


def test_poisson_dp_is_the_old_algorithm_and_hides_the_count() -> None:
    # Prepare: Poisson sampling with its fixed denominator (no count published)
    reports = _dense_reports(6, d=500, seed=4)
    dp = DPMean(1.0, clip=3.0, sampling=PoissonSampling(0.01), denominator=6.0, seed=5)
    proc = dp.create(500)
    state = proc.initialize()

    # Execute
    old = _old_next(proc, state, reports)
    out = proc.next(state, reports)

    # Assert
    _assert_same(out, old)
    assert "clients" not in out.measurements and "inner" not in out.measurements


def test_bad_reports_are_still_refused() -> None:
    # Prepare
    proc = DPMean(1.0, clip=1.0, seed=0).create(10)
    good = ClientUpdate("a", SparseUpdate.from_dense(np.ones(10, dtype=np.float32)), 1.0)
    wrong = ClientUpdate("b", SparseUpdate.from_dense(np.ones(9, dtype=np.float32)), 1.0)

    # Execute / Assert: a report of another size is refused by name of the size, as before
    with pytest.raises(ValueError, match="update of size 9, expected 10"):
        proc.next(proc.initialize(), [good, wrong])
