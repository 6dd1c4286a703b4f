"""`RoundEngine.submit_many` and FedAvg's one-pass sum equal their one-at-a-time versions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import CodecConfig, CodecError, ModelSpec, SparseUpdate, UpdateCodec
from coordinator.aggregators import ClientUpdate, FedAvg
from coordinator.aggregators._base import sparse_weighted_sum
from coordinator.engine import EngineConfig, EngineError, Receipt, RoundEngine, UnknownRound

SPEC = ModelSpec.from_shapes([("w", (12, 8)), ("b", (8,))])  # d = 104
CODEC = CodecConfig(topk=0.2, bits=4, block=8)
DEVICES = [f"dev-{i}" for i in range(8)]


def _engine(per_round: int) -> RoundEngine:
    params = np.linspace(-1, 1, SPEC.size, dtype=np.float32)
    return RoundEngine(
        SPEC, params, FedAvg(), EngineConfig(per_round, over_selection=1.5, codec=CODEC, seed=4)
    )


def _frame(device: int, seed: int, kind: str) -> bytes:
    rng = np.random.default_rng([seed, device])
    u = (rng.standard_normal(SPEC.size) * 0.1).astype(np.float32)
    frame, _ = UpdateCodec(SPEC, CODEC).encode(u, rng, weight=float(1 + device))
    if kind == "crc":
        return frame[:-1] + bytes([frame[-1] ^ 0xFF])
    if kind == "cut":
        return frame[:30]
    if kind == "other_spec":
        other = ModelSpec.from_shapes([("v", (SPEC.size,))])
        return UpdateCodec(other, CODEC).encode(u, rng)[0]
    return frame


def _same(a: Receipt | EngineError | CodecError, b: Receipt | EngineError | CodecError) -> None:
    if isinstance(a, Exception):
        assert type(b) is type(a) and str(b) == str(a)
    else:
        assert b == a


uploads_st = st.lists(
    st.tuples(
        st.sampled_from([*DEVICES, "stranger"]),
        st.sampled_from(["ok", "ok", "ok", "crc", "cut", "other_spec"]),
    ),
    max_size=14,
)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(per_round=st.integers(1, 5), uploads=uploads_st, seed=st.integers(0, 1000))
def test_submit_many_equals_sequential_submits(
    per_round: int, uploads: list[tuple[str, str]], seed: int
) -> None:
    # Prepare: two identical engines and rounds
    one, many = _engine(per_round), _engine(per_round)
    plan = one.open_round(DEVICES)
    assert many.open_round(DEVICES) == plan
    items = [
        (dev, _frame(DEVICES.index(dev) if dev in DEVICES else 99, seed + j, kind))
        for j, (dev, kind) in enumerate(uploads)
    ]

    # Execute
    expected: list[Receipt | EngineError | CodecError] = []
    for dev, frame in items:
        try:
            expected.append(one.submit(plan.round_id, dev, frame, wire_bytes=len(frame) + 7))
        except (EngineError, CodecError) as exc:
            expected.append(exc)
    got = many.submit_many(plan.round_id, items, wire_bytes=[len(f) + 7 for _, f in items])

    # Assert: the same answers, the same held updates, ledger and (if any) aggregate
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        _same(a, b)
    assert one.ledger.rows() == many.ledger.rows()
    assert one.reports(plan.round_id) == many.reports(plan.round_id)
    if one.reports(plan.round_id):
        out_one, out_many = one.close_round(plan.round_id), many.close_round(plan.round_id)
        assert out_one == out_many
        np.testing.assert_array_equal(one.params, many.params)


def test_submit_many_after_the_round_closed_and_for_unknown_rounds() -> None:
    # Prepare
    engine = _engine(2)
    plan = engine.open_round(DEVICES)
    dev = plan.selected[0]
    frame = _frame(0, 0, "ok")
    engine.submit(plan.round_id, dev, frame)
    engine.close_round(plan.round_id)

    # Execute
    got = engine.submit_many(plan.round_id, [(dev, frame), ("stranger", frame)])

    # Assert
    assert [type(g).__name__ for g in got] == ["RoundClosed", "RoundClosed"]
    with pytest.raises(UnknownRound):
        engine.submit_many(99, [(dev, frame)])
    with pytest.raises(ValueError, match="wire_bytes"):
        engine.submit_many(plan.round_id, [(dev, frame)], wire_bytes=[])


def test_submit_many_only_decodes_what_submit_would(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: 4 wanted reports, 6 valid uploads: the last two are stragglers
    engine = _engine(4)
    plan = engine.open_round(DEVICES)
    items = [(d, _frame(i, 1, "ok")) for i, d in enumerate(plan.selected)]
    decoded: list[int] = []
    real = engine.codec.decode_many

    def counting(frames: list[bytes]) -> list[object]:
        decoded.append(len(frames))
        return real(frames)  # type: ignore[return-value]

    monkeypatch.setattr(engine.codec, "decode_many", counting)

    # Execute
    got = engine.submit_many(plan.round_id, items)

    # Assert
    assert len(items) == 6
    assert [type(g).__name__ for g in got] == ["Receipt"] * 4 + ["RoundClosed"] * 2
    assert sum(decoded) == 4


def _loop_sum(updates: list[SparseUpdate], weights: list[float], size: int) -> np.ndarray:
    acc = np.zeros(size, dtype=np.float64)
    for u, w in zip(updates, weights, strict=True):
        u.add_to(acc, w)
    return acc


@settings(derandomize=True, max_examples=60, deadline=None)
@given(
    n=st.integers(0, 12),
    size=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
    weights=st.lists(
        st.one_of(st.floats(0, 1e6, allow_nan=False), st.integers(0, 1000).map(float)),
        min_size=12,
        max_size=12,
    ),
)
def test_sparse_weighted_sum_is_the_add_to_loop(
    n: int, size: int, seed: int, weights: list[float]
) -> None:
    # Prepare: overlapping sparse rows, some empty, some dense
    rng = np.random.default_rng(seed)
    updates = []
    for _ in range(n):
        k = int(rng.integers(0, size + 1))
        idx = np.sort(rng.choice(size, size=k, replace=False)).astype(np.int64)
        vals = (rng.standard_normal(k) * 10 ** rng.uniform(-6, 3)).astype(np.float32)
        updates.append(SparseUpdate(idx, vals, size))

    # Execute
    fast = sparse_weighted_sum(updates, weights[:n], size)

    # Assert: bit for bit
    assert fast is not None
    np.testing.assert_array_equal(fast, _loop_sum(updates, weights[:n], size))


def test_sparse_weighted_sum_declines_rows_it_cannot_sum() -> None:
    # Prepare: duplicate indices (add_to keeps one) and out-of-range ones
    dup = SparseUpdate(np.array([1, 1], np.int64), np.ones(2, np.float32), 4)
    out = SparseUpdate(np.array([2, 7], np.int64), np.ones(2, np.float32), 4)
    ok = SparseUpdate(np.array([0, 3], np.int64), np.ones(2, np.float32), 4)

    # Execute / Assert
    assert sparse_weighted_sum([ok, dup], [1.0, 1.0], 4) is None
    assert sparse_weighted_sum([out], [1.0], 4) is None
    assert sparse_weighted_sum([ok, ok], [1.0, 2.0], 4) is not None


def test_fedavg_falls_back_to_the_loop_for_unusual_rows() -> None:
    # Prepare: a row with duplicate indices; add_to's fancy-index semantics keep the last one
    dup = SparseUpdate(np.array([1, 1], np.int64), np.array([2, 5], np.float32), 4)
    ok = SparseUpdate(np.array([0, 1], np.int64), np.array([1, 1], np.float32), 4)
    process = FedAvg().create(4)

    # Execute
    out = process.next(
        process.initialize(), [ClientUpdate("a", ok, 1.0), ClientUpdate("b", dup, 1.0)]
    )

    # Assert
    np.testing.assert_array_equal(out.result, np.array([0.5, 3.0, 0, 0], np.float32))
