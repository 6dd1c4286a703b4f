"""The round engine: selection, collection under limits, aggregation and publishing."""

from __future__ import annotations

import numpy as np
import pytest

from compression import CodecConfig, CodecError, ModelSpec, UpdateCodec
from coordinator.aggregators import AggregateOutput, FedAvg
from coordinator.engine import (
    DuplicateUpload,
    EngineConfig,
    NotSelected,
    RoundClosed,
    RoundEngine,
    TaskStopped,
    UnknownRound,
    find_measurement,
)

SPEC = ModelSpec.from_shapes([("w", (6, 5)), ("b", (5,))])
DENSE = CodecConfig.dense()


def _engine(**kw: object) -> RoundEngine:
    cfg = EngineConfig(clients_per_round=3, codec=DENSE, **kw)  # type: ignore[arg-type]
    return RoundEngine(SPEC, np.zeros(SPEC.size, np.float32), FedAvg(), cfg)


def _frame(values: np.ndarray, weight: float = 1.0) -> bytes:
    frame, _ = UpdateCodec(SPEC, DENSE).encode(
        values.astype(np.float32), np.random.default_rng(0), weight=weight
    )
    return frame


def test_round_aggregates_weighted_mean_and_bumps_version() -> None:
    # Prepare
    eng = _engine()
    plan = eng.open_round([f"d{i}" for i in range(5)])
    a, b = np.full(SPEC.size, 1.0), np.full(SPEC.size, 4.0)
    # Execute
    eng.submit(plan.round_id, plan.selected[0], _frame(a, weight=3))
    eng.submit(plan.round_id, plan.selected[1], _frame(b, weight=1))
    out = eng.close_round(plan.round_id)
    # Assert
    assert out.committed and out.reports == 2 and out.version == 1
    np.testing.assert_allclose(eng.params, np.full(SPEC.size, (3 * 1 + 4) / 4), rtol=1e-6)
    totals = eng.ledger.round_totals(plan.round_id)
    assert totals["up"]["transfers"] == 2
    assert totals["up"]["dense_bytes"] == 2 * SPEC.dense_bytes


def test_selection_is_seeded_and_over_selects() -> None:
    ids = [f"d{i}" for i in range(50)]
    p1 = _engine(over_selection=1.3).open_round(ids)
    p2 = _engine(over_selection=1.3).open_round(ids)
    assert p1.selected == p2.selected
    assert len(p1.selected) == 4  # ceil(3 * 1.3)
    assert p1.target_reports == 3


def test_refusals_leave_state_intact() -> None:
    eng = _engine()
    plan = eng.open_round(["a", "b", "c", "d"])
    dev = plan.selected[0]
    eng.submit(plan.round_id, dev, _frame(np.ones(SPEC.size)))
    before = eng.params.copy()
    with pytest.raises(DuplicateUpload):
        eng.submit(plan.round_id, dev, _frame(np.full(SPEC.size, 100.0)))
    outsider = next(d for d in ["a", "b", "c", "d"] if d not in plan.selected)
    with pytest.raises(NotSelected):
        eng.submit(plan.round_id, outsider, _frame(np.ones(SPEC.size)))
    with pytest.raises(UnknownRound):
        eng.submit(99, dev, _frame(np.ones(SPEC.size)))
    with pytest.raises(CodecError):
        eng.submit(plan.round_id, plan.selected[1], b"garbage")
    assert eng.reports(plan.round_id) == 1
    out = eng.close_round(plan.round_id)
    np.testing.assert_array_equal(before, np.zeros(SPEC.size, np.float32))
    np.testing.assert_allclose(eng.params, np.ones(SPEC.size))
    assert out.reports == 1
    with pytest.raises(RoundClosed):
        eng.submit(plan.round_id, plan.selected[1], _frame(np.ones(SPEC.size)))


def test_stragglers_beyond_target_are_refused() -> None:
    eng = _engine(over_selection=2.0)
    plan = eng.open_round([f"d{i}" for i in range(10)])
    for dev in plan.selected[:3]:
        eng.submit(plan.round_id, dev, _frame(np.ones(SPEC.size)))
    with pytest.raises(RoundClosed, match="straggler"):
        eng.submit(plan.round_id, plan.selected[3], _frame(np.ones(SPEC.size)))


def test_round_below_min_reports_is_abandoned() -> None:
    eng = _engine(min_reports=2)
    plan = eng.open_round(["a", "b", "c"])
    eng.submit(plan.round_id, plan.selected[0], _frame(np.ones(SPEC.size)))
    out = eng.close_round(plan.round_id)
    assert not out.committed and eng.version == 0
    np.testing.assert_array_equal(eng.params, np.zeros(SPEC.size, np.float32))


def test_result_does_not_depend_on_arrival_order() -> None:
    rng = np.random.default_rng(1)
    vals = [rng.standard_normal(SPEC.size) for _ in range(3)]
    finals = []
    for order in ([0, 1, 2], [2, 0, 1]):
        eng = _engine()
        plan = eng.open_round(["a", "b", "c"])
        for i in order:
            eng.submit(plan.round_id, plan.selected[i], _frame(vals[i], weight=i + 1))
        eng.close_round(plan.round_id)
        finals.append(eng.params.copy())
    np.testing.assert_array_equal(finals[0], finals[1])


class _Exhausting:
    """A fake aggregator that reports a spent budget: the engine must stop the task."""

    def create(self, size: int) -> _Exhausting:
        self.size = size
        return self

    def initialize(self) -> int:
        return 0

    def next(self, state: int, updates: object) -> AggregateOutput:
        return AggregateOutput(
            state + 1, np.zeros(self.size, np.float32), {"dp": {"budget_exhausted": True}}
        )


def test_budget_exhausted_stops_the_task() -> None:
    cfg = EngineConfig(clients_per_round=1, codec=DENSE)
    eng = RoundEngine(SPEC, np.zeros(SPEC.size, np.float32), _Exhausting(), cfg)
    plan = eng.open_round(["a"])
    eng.submit(plan.round_id, "a", _frame(np.ones(SPEC.size)))
    eng.close_round(plan.round_id)
    assert eng.stopped
    with pytest.raises(TaskStopped):
        eng.open_round(["a"])


def test_find_measurement_nested() -> None:
    assert find_measurement({"a": {"b": {"eps": 2.0}}}, "eps") == 2.0
    assert find_measurement({"a": 1}, "eps") is None
