"""A close that fails after its publish committed is counted and logged as the committed round
it is (rounds.py `fail_close`, on `Store.abandon`'s answer). Helper s61c made `Store.abandon`
leave a finished round alone (f54395d5); the coordinator still counted such a round in
`plume_rounds_total{outcome="abandoned"}` and logged it "abandoned", while the store and the
rebuilt task served the version it had published."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from coordinator.service import rounds as rounds_module

from .test_restart_midround import Clock, _frame, _open_round, _start
from .test_service_support import task_config


def _rounds(coord: Any, outcome: str) -> float:
    return (
        coord.metrics.registry.get_sample_value("plume_rounds_total", {"outcome": outcome}) or 0.0
    )


def ready_to_close(db: Path, clock: Clock) -> tuple[Any, int, int, Any]:
    """A coordinator on `db` whose task (3 rounds of 2 reports) has its first round's two
    reports in: the coordinator, the task id, the round id and the close to run."""
    cfg = task_config(rounds=3, clients_per_round=2, selection_timeout_s=30)
    coord = _start(db, clock)
    task_id, round_id = _open_round(coord, cfg)
    coord.submit(round_id, "a", "key-a", _frame(cfg, 0))
    _, to_close = coord.submit(round_id, "b", "key-b", _frame(cfg, 1))
    assert to_close is not None
    return coord, task_id, round_id, to_close


def snapshot_encoding_fails_once(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """Make the snapshot encoding a close does after its publish committed (rounds.py
    `_store_close`) raise MemoryError once; the list is empty once it has."""
    real = rounds_module.encode_snapshot
    failures: list[BaseException] = [MemoryError("no memory for the snapshot")]

    def failing_once(*args: Any, **kwargs: Any) -> bytes:
        if failures:
            raise failures.pop()
        return real(*args, **kwargs)

    monkeypatch.setattr(rounds_module, "encode_snapshot", failing_once)
    return failures


def test_a_close_failing_after_its_publish_counts_and_logs_a_committed_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    coord, _, round_id, to_close = ready_to_close(tmp_path / "plume.db", Clock())
    failures = snapshot_encoding_fails_once(monkeypatch)
    with caplog.at_level(logging.INFO, logger=rounds_module.log.name):
        asyncio.run(coord.close_round(to_close))
    assert not failures
    assert coord.round_status(round_id).state == "committed"
    assert (_rounds(coord, "committed"), _rounds(coord, "abandoned")) == (1.0, 0.0)
    said = [r.getMessage() for r in caplog.records if f"round {round_id} " in r.getMessage()]
    assert any("committed, then its close failed: MemoryError" in m for m in said), said
    assert not any(" abandoned" in m for m in said), said
    coord.store.close()


def test_a_close_failing_before_its_publish_is_still_an_abandoned_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    coord, _, round_id, to_close = ready_to_close(tmp_path / "plume.db", Clock())

    def failing(*args: Any, **kwargs: Any) -> None:
        raise MemoryError("no memory to publish")

    monkeypatch.setattr(coord, "_publish", failing)
    asyncio.run(coord.close_round(to_close))
    assert coord.round_status(round_id).state == "abandoned"
    assert (_rounds(coord, "committed"), _rounds(coord, "abandoned")) == (0.0, 1.0)
    coord.store.close()
