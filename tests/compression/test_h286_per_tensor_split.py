"""scope="per_tensor": no tensor is starved by split_k (helper-276's finding, helper-286's fix).

The proportional split (largest remainders) gave a small tensor 0 of k every round, so error
feedback only grew its residual and the tensor was never sent (shakespeare_lstm_small at
topk 0.001: head.bias 0 times in 200 rounds, residual 10.3). Now every non-empty tensor gets
at least 1 when k >= their number; below that, the k tensors with the largest magnitude do.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import CodecConfig, ErrorFeedback, ModelSpec, UpdateCodec
from compression._topk import select_topk, split_k


def proportional(spec: ModelSpec, k: int) -> list[int]:
    """The largest-remainder split alone (the rule before the fix), for comparison."""
    d = spec.size
    shares = [k * e.size / d for e in spec.entries]
    ks = [min(e.size, int(s)) for e, s in zip(spec.entries, shares, strict=True)]
    order = sorted(range(len(ks)), key=lambda i: shares[i] - int(shares[i]), reverse=True)
    rest = k - sum(ks)
    while rest > 0 and any(ks[i] < spec.entries[i].size for i in order):
        for i in order:
            if rest and ks[i] < spec.entries[i].size:
                ks[i] += 1
                rest -= 1
    return ks


@st.composite
def specs(draw: st.DrawFn) -> ModelSpec:
    sizes = draw(
        st.lists(
            st.one_of(st.integers(0, 4), st.integers(5, 60), st.integers(61, 3000)),
            min_size=1,
            max_size=14,
        ).filter(lambda s: sum(s) > 0)
    )
    return ModelSpec.from_shapes([(f"t{i}", (n,)) for i, n in enumerate(sizes)])


@settings(max_examples=300, deadline=None)
@given(spec=specs(), data=st.data())
def test_every_tensor_gets_one_when_k_allows(spec: ModelSpec, data: st.DataObject) -> None:
    # Prepare
    d = spec.size
    nonempty = [i for i, e in enumerate(spec.entries) if e.size > 0]
    k = data.draw(st.integers(len(nonempty), d + 3), label="k")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    mag = np.abs(np.random.default_rng(seed).standard_normal(d)).astype(np.float32)
    # Execute
    ks = split_k(spec, k)
    ks_mag = split_k(spec, k, mag)
    # Assert: min(k, d) in all, each in [1, size] for a non-empty tensor, 0 for an empty one
    assert ks == ks_mag  # magnitudes matter only below one per tensor
    assert sum(ks) == min(k, d)
    for e, kt in zip(spec.entries, ks, strict=True):
        assert (1 if e.size else 0) <= kt <= e.size
    old = proportional(spec, k)
    if all(old[i] > 0 for i in nonempty):
        assert ks == old  # a split that starved nothing is unchanged
    else:
        # the extra ones come from the largest shares: no share grew but the starved ones
        assert all(kt <= o for kt, o in zip(ks, old, strict=True) if o > 0)


@settings(max_examples=300, deadline=None)
@given(spec=specs(), data=st.data())
def test_below_one_per_tensor_the_largest_magnitudes_win(
    spec: ModelSpec, data: st.DataObject
) -> None:
    # Prepare
    nonempty = [i for i, e in enumerate(spec.entries) if e.size > 0]
    k = data.draw(st.integers(0, len(nonempty) - 1), label="k")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    mag = np.abs(np.random.default_rng(seed).standard_normal(spec.size)).astype(np.float32)
    top = [float(mag[e.offset : e.offset + e.size].max(initial=0.0)) for e in spec.entries]
    # Execute
    ks = split_k(spec, k, mag)
    by_size = split_k(spec, k)
    # Assert: k tensors get 1 each; none left out has a larger top magnitude than one kept
    assert sum(ks) == k and set(ks) <= {0, 1}
    kept = [top[i] for i in nonempty if ks[i]]
    out = [top[i] for i in nonempty if not ks[i]]
    assert not kept or not out or min(kept) >= max(out)
    assert sum(by_size) == k and set(by_size) <= {0, 1}
    sizes = [spec.entries[i].size for i in nonempty]
    assert sorted(sizes, reverse=True)[:k] == sorted(
        (spec.entries[i].size for i in nonempty if by_size[i]), reverse=True
    )


def test_select_topk_takes_each_share_inside_its_tensor() -> None:
    # Prepare: 6 tensors, k = 3 (< 6) and k = 12 (>= 6)
    spec = ModelSpec.from_shapes(
        [("a", (400,)), ("b", (300,)), ("c", (200,)), ("d", (90,)), ("e", (3,)), ("f", (7,))]
    )
    u = (np.random.default_rng(7).standard_normal(spec.size) * 0.01).astype(np.float32)
    u[spec.entries[4].offset + 1] = 5.0  # e's largest magnitude is the largest of all
    for k in (3, 12):
        # Execute
        idx = select_topk(u, k, spec, "exact", "per_tensor", np.random.default_rng(0))
        # Assert
        ks = split_k(spec, k, np.abs(u))
        assert idx.shape[0] == k and np.all(np.diff(idx) > 0)
        for (start, stop), kt in zip(spec.boundaries(), ks, strict=True):
            assert np.count_nonzero((idx >= start) & (idx < stop)) == kt
        assert spec.entries[4].offset + 1 in idx


def simulate(spec: ModelSpec, topk: float, drift_tensor: str, drift: float, rounds: int) -> int:
    """Error feedback over `rounds` rounds of noise plus a steady drift on one tensor; the
    number of that tensor's coordinates sent."""
    codec = UpdateCodec(spec, CodecConfig(topk=topk, bits=4, scope="per_tensor"))
    ef = ErrorFeedback(spec.size)
    rng = np.random.default_rng(0)
    (t,) = [e for e in spec.entries if e.name == drift_tensor]
    sent = 0
    for _ in range(rounds):
        u = (rng.standard_normal(spec.size) * 0.01).astype(np.float32)
        u[t.offset : t.offset + t.size] += np.float32(drift)
        frame, _ = ef.step(u, codec, rng)
        idx = np.asarray(codec.decode(frame).indices)
        sent += int(np.count_nonzero((idx >= t.offset) & (idx < t.offset + t.size)))
    return sent


def test_error_feedback_sends_a_small_bias() -> None:
    # A small bias whose proportional share rounds to 0 (k = 10 over 4 tensors: 8 / 96 / 1000
    # of d * k -> 0.08) was never sent before the fix.
    spec = ModelSpec.from_shapes(
        [("fc.weight", (40, 20)), ("fc.bias", (8,)), ("out.weight", (96,)), ("out.bias", (96,))]
    )
    assert split_k(spec, 10)[1] >= 1
    assert simulate(spec, 0.01, "fc.bias", 0.05, rounds=30) >= 1


def test_error_feedback_sends_a_small_bias_below_one_per_tensor() -> None:
    # k = 4 over 6 tensors: the bias (3 of 1,000) gets a coordinate once its residual's
    # magnitude outgrows the other tensors' largest ones; before, shares went by size alone.
    spec = ModelSpec.from_shapes(
        [("a", (400,)), ("b", (300,)), ("c", (200,)), ("d", (90,)), ("bias", (3,)), ("e", (7,))]
    )
    assert simulate(spec, 0.004, "bias", 0.005, rounds=40) >= 1
