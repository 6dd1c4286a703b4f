"""A pool or Ray worker that fails, dies or stalls after some rounds finished no longer costs
those rounds: `plume sim` writes them as an interrupted run's (rounds.json with
summary.interrupted true, rounds.csv, ledger.csv, the plots) and its one error line says where,
with status 1. Before, only Ctrl-C and SIGTERM kept them; a dead worker (the failure most
likely at scale) lost every finished round, and the earlier run's files in --out were already
gone (helper-252). A failure before any round finished is one line as before, nothing written.

The worker failure is the pool's own error raised by the backend at the chosen round, in
process (a sequential backend standing in for a pool that lost a worker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main as plume
from mobile_sim.backends.process_pool import PoolWorkerError
from mobile_sim.backends.sequential import SequentialBackend

# --topk 0.1: no few-kept note (test_s51_cli_few_kept.py) before the error line
TINY = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "6", "--per-round",
    "3", "--rounds", "4", "--local-epochs", "1", "--topk", "0.1", "--no-progress",
]  # fmt: skip


def _fail_at(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    real = SequentialBackend.train
    calls = {"n": 0}

    def train(self: SequentialBackend, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == call:
            raise PoolWorkerError("a worker process died")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SequentialBackend, "train", train)


def test_a_worker_that_dies_in_round_3_leaves_rounds_1_and_2_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    monkeypatch.delenv("PLUME_DEBUG", raising=False)
    _fail_at(monkeypatch, 3)
    out = tmp_path / "out"
    # Execute
    status = plume([*TINY, "--out", str(out)])
    err = capsys.readouterr().err
    # Assert: one error line naming the failure and where the 2 finished rounds went
    lines = err.strip().splitlines()
    assert status == 1
    assert len(lines) == 1, err
    assert lines[0].startswith("plume sim: error: a worker process died; wrote its 2 finished")
    doc = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [1, 2]
    assert doc["summary"]["interrupted"] is True
    assert (out / "rounds.csv").is_file() and (out / "ledger.csv").is_file()


def test_a_worker_that_dies_in_round_1_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PLUME_DEBUG", raising=False)
    _fail_at(monkeypatch, 1)
    out = tmp_path / "out"
    status = plume([*TINY, "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 1
    assert err.strip() == "plume sim: error: a worker process died"
    assert not (out / "rounds.json").exists()
