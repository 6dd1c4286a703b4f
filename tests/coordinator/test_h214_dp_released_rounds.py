"""The coordinator-wide epsilon (docs/privacy.md, assumption 7) counts a central task's rounds
as its accountant keeps them: the `DPMean` round counter in the aggregator state of the task's
last committed round (`TaskRuntime.dp_rounds_released`), which the store keeps and a start
restores. Before, it read the task's `plume_dp_rounds` gauge, which `DPMean` sets as it
aggregates: a round whose publish and abandonment the store both refused, left aggregating
until a later tick rebuilds the task, counted there though it released nothing. A round a stop
discards counts in neither (the gauge is reset; the committed state never had it), while the
engine's own state does hold it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from coordinator.aggregators import build_aggregator
from coordinator.privacy import FixedSizeSampling, PrivacyAccountant
from coordinator.service.dp_total import all_tasks_privacy
from coordinator.service.rounds import RELOAD_RETRY_S, dp_rounds_in_state

from .test_h69_store_recovery import _commit, _flaky
from .test_h79_stop import DEVICES, _frame, _open_round, _start, _task
from .test_h92_stop_while_aggregating import _blocked_close, _hold
from .test_restart_midround import Clock
from .test_restart_midround import _frame as _frame2
from .test_restart_midround import _open_round as _open_first
from .test_restart_midround import _start as _start_clocked
from .test_service_support import task_config

DP2 = "dp:clip=1,z=1,population=2,sample=2,delta=1e-5+fedavg"
DP3 = "dp:clip=1,z=1,population=3,sample=3,delta=1e-5+fedavg"


def _gauge_rounds(rt: object) -> float | None:
    reg = rt.privacy_metrics.registry  # type: ignore[attr-defined]
    value: float | None = reg.get_sample_value("plume_dp_rounds")
    return value


def test_a_round_the_store_refused_to_publish_and_abandon_counts_nothing(
    tmp_path: Path,
) -> None:
    # Prepare: a central dp task's first round, both reports in
    cfg = task_config(rounds=2, clients_per_round=2, selection_timeout_s=30, aggregator=DP2)
    clock = Clock()
    coord = _start_clocked(tmp_path / "plume.db", clock)
    task_id, round_id = _open_first(coord, cfg)
    coord.submit(round_id, "a", "key-a", _frame2(cfg, 0))
    _, to_close = coord.submit(round_id, "b", "key-b", _frame2(cfg, 1))
    assert to_close is not None
    rt = coord.runtimes[task_id]
    flaky = _flaky(coord)
    # Execute: the close aggregates (DPMean sets its gauges), then the publish's COMMIT and
    # the abandonment's are refused: the round stays aggregating, nothing released
    flaky.fail(_commit, 2, skip=1)
    asyncio.run(coord.close_round(to_close))
    stuck = coord.store.round_state(round_id)
    meanwhile = all_tasks_privacy(coord.runtimes.values())
    gauge_meanwhile, released_meanwhile = _gauge_rounds(rt), rt.dp_rounds_released()
    # a later tick rebuilds the task from the store and closes the round
    clock.now += RELOAD_RETRY_S
    due = coord.tick()
    asyncio.run(coord.close_round(due[0]))
    after = all_tasks_privacy(coord.runtimes.values())

    # Assert: while stuck the gauge says 0 rounds (the failed close set it back), as the
    # accountant's committed state, and the figure follows the accountant: nothing
    # released, epsilon 0
    assert stuck == (task_id, "aggregating")
    assert gauge_meanwhile == 0.0 and released_meanwhile == 0
    assert meanwhile.epsilon == 0.0 and meanwhile.delta is None
    assert meanwhile.composed == (task_id,)
    # committed by the rebuild: one round, as the task itself reports it
    assert coord.round_status(round_id).state == "committed"
    assert coord.runtimes[task_id].dp_rounds_released() == 1
    own = PrivacyAccountant(1.0, FixedSizeSampling(2, 2)).epsilon(1, 1e-5)
    assert after.epsilon == own and after.delta == 1e-5


@pytest.mark.parametrize("committed_before", [1, 0])
def test_a_round_a_stop_discards_is_not_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, committed_before: int
) -> None:
    # Prepare: `committed_before` committed dp rounds, then a round whose close is held
    cfg = task_config(rounds=5, clients_per_round=3, min_reports=1, aggregator=DP3)
    coord = _start(tmp_path / "p.db")
    task_id = _task(coord, cfg)
    rt = coord.runtimes[task_id]
    for r in range(committed_before):
        round_id = _open_round(coord, task_id, DEVICES)
        for i, d in enumerate(DEVICES):
            _, to_close = coord.submit(round_id, d, f"k{r}{d}", _frame(cfg, i))
        asyncio.run(coord.close_round(to_close))
    before = all_tasks_privacy(coord.runtimes.values())
    round_id = _open_round(coord, task_id, DEVICES)
    for i, d in enumerate(DEVICES):
        _, to_close = coord.submit(round_id, d, f"j{d}", _frame(cfg, 10 + i))
    entered, release = threading.Event(), threading.Event()
    monkeypatch.setattr(rt.engine, "close_round", _hold(entered, release, rt.engine.close_round))

    # Execute: the stop answers while the round aggregates; its noised sum is discarded
    _, outcome, _ = _blocked_close(coord, rt, entered, release)
    after = all_tasks_privacy(coord.runtimes.values())

    # Assert: the engine's state holds the discarded round, the accountant's committed state
    # does not, and the figure is what it was
    assert outcome is not None and not outcome.committed
    factory = build_aggregator(DP3)
    assert dp_rounds_in_state(factory, rt.engine.aggregator_state) == committed_before + 1
    assert rt.dp_rounds_released() == committed_before
    assert after == before
    if committed_before:
        own = PrivacyAccountant(1.0, FixedSizeSampling(3, 3)).epsilon(1, 1e-5)
        assert after.epsilon == own
    else:
        assert after.epsilon == 0.0


def test_the_count_is_read_behind_a_server_optimizer_and_matches_each_rounds_record(
    tmp_path: Path,
) -> None:
    # Prepare: a dp stage behind adam (state (m, v, (rounds, clip, inner)))
    agg = "adam:lr=0.1+" + DP3
    cfg = task_config(rounds=5, clients_per_round=3, min_reports=1, aggregator=agg)
    coord = _start(tmp_path / "p.db")
    task_id = _task(coord, cfg)
    rt = coord.runtimes[task_id]
    seen: list[tuple[int | None, int]] = []
    # Execute: three rounds; after each, the accessor and the round's own dp record
    for r in range(3):
        round_id = _open_round(coord, task_id, DEVICES)
        for i, d in enumerate(DEVICES):
            _, to_close = coord.submit(round_id, d, f"k{r}{d}", _frame(cfg, 3 * r + i))
        asyncio.run(coord.close_round(to_close))
        meas = coord.round_status(round_id).measurements
        seen.append((rt.dp_rounds_released(), int(meas["inner"]["rounds"])))
    # Assert
    assert seen == [(1, 1), (2, 2), (3, 3)]
    # a plain task and a dp stage without accounting have no count
    assert dp_rounds_in_state(build_aggregator("fedavg"), ()) is None
    plain = _task(coord, task_config(rounds=2, aggregator="fedavg"))
    assert coord.runtimes[plain].dp_rounds_released() is None
