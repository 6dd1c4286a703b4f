"""A `--secure` or `--transport http` run that fails after some rounds finished (a pool worker
that died, a simulated device that stopped on a bug, an evaluation that broke) keeps those
rounds, as `run_simulation` does: the runner re-raises the error unchanged with the finished
rounds in its `finished_rounds` attribute (a `SimResult` marked interrupted, their ledger rows
only and the model of the last of them), and `plume sim` writes them with its one error line
and exit status 1. Before, only Ctrl-C (`RunInterrupted`) kept them in these two runners, so a
failure in round 7 of a long secure or HTTP run lost rounds 1-6.

Every failure is raised deterministically at a chosen round, never at a wall-clock time; the
HTTP runs use a real coordinator on loopback."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mobile_sim.secure as secure
import sdk.client
import sdk.trainer
from coordinator.cli import main as plume
from coordinator.secure import SecureConfig
from mobile_sim import http_fleet
from mobile_sim.backends.process_pool import PoolWorkerError
from mobile_sim.backends.sequential import SequentialBackend
from mobile_sim.http_fleet import HttpFleetOptions, run_http_simulation
from mobile_sim.runner import RunInterrupted, SimConfig

SECURE_CFG = SimConfig(
    dataset="digits", model="digits_mlp", clients=8, per_round=4, rounds=3, local_epochs=1
)
HTTP_CFG = SimConfig(dataset="digits", model="digits_mlp", clients=6, per_round=3, rounds=3,
                     topk=0.1, bits=8, local_epochs=1, batch_size=16, partition="iid",
                     seed=0)  # fmt: skip
SECURE_TINY = [
    "sim", "--secure", "--dataset", "digits", "--model", "digits_mlp", "--clients", "8",
    "--per-round", "4", "--rounds", "3", "--local-epochs", "1", "--no-progress",
]  # fmt: skip
# --topk 0.1 as HTTP_CFG: no few-kept note (test_s51_cli_few_kept.py) before the error line
HTTP_TINY = [
    "sim", "--transport", "http", "--dataset", "digits", "--model", "digits_mlp", "--clients",
    "6", "--per-round", "3", "--rounds", "3", "--local-epochs", "1", "--topk", "0.1",
    "--no-progress",
]  # fmt: skip
FILES = "(rounds.json with summary.interrupted true, rounds.csv, ledger.csv)"


def _secure_round_fails(monkeypatch: pytest.MonkeyPatch, n: int, exc: Exception) -> None:
    """`exc` once round `n`'s SecAgg stages have run (its uploads are in the ledger), before
    the round's record is made."""
    real = secure.run_secure_round
    calls = {"n": 0}

    def run(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] == n:
            raise exc
        return out

    monkeypatch.setattr(secure, "run_secure_round", run)


def _worker_dies_at(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """The pool's own error from the backend's `call`-th training call (a sequential backend
    standing in for a pool that lost a worker)."""
    real = SequentialBackend.train
    calls = {"n": 0}

    def train(self: SequentialBackend, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == call:
            raise PoolWorkerError("a worker process died")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SequentialBackend, "train", train)


def _ledger_matches(partial: Any) -> None:
    """`partial` holds round 1's ledger rows only, and its upload bytes are round 1's."""
    assert {row.round_id for row in partial.ledger.rows()} == {1}
    ups = [row for row in partial.ledger.rows() if row.direction == "up"]
    assert sum(row.payload_bytes for row in ups) == partial.records[0].bytes_up


def _written(out: Path, finished: int, rounds: int = 3) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((out / "rounds.json").read_text())
    s = doc["summary"]
    assert (s["interrupted"], s["rounds_planned"]) == (True, rounds)
    assert [r["round"] for r in doc["rounds"]] == list(range(1, finished + 1))
    assert (out / "rounds.csv").is_file() and (out / "ledger.csv").is_file()
    return doc


def test_the_secure_runner_hands_its_finished_rounds_on_an_error() -> None:
    # Prepare: the model after round 1 of this config; then an error once round 2 has closed
    one = secure.run_secure_simulation(
        replace(SECURE_CFG, rounds=1), SecureConfig(coord_fraction=0.5), dropout=0.0,
        progress=False,
    )  # fmt: skip
    boom = RuntimeError("round 2 broke")
    with pytest.MonkeyPatch.context() as mp:
        _secure_round_fails(mp, 2, boom)

        # Execute
        with pytest.raises(RuntimeError) as info:
            secure.run_secure_simulation(
                SECURE_CFG, SecureConfig(coord_fraction=0.5), dropout=0.0, progress=False
            )

    # Assert: the very error, carrying round 1, its ledger rows only (round 2's uploads were
    # recorded), the secure settings and the model of round 1 (not round 2's)
    assert info.value is boom and not isinstance(info.value, KeyboardInterrupt)
    partial = info.value.finished_rounds  # type: ignore[attr-defined]
    assert partial.interrupted and partial.label == "secure"
    assert [r.round for r in partial.records] == [1]
    _ledger_matches(partial)
    assert partial.secure is not None and partial.secure["dropout"] == 0.0
    assert partial.partition is not None
    np.testing.assert_array_equal(partial.final_params, one.final_params)


def test_a_secure_error_in_round_1_carries_no_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    _secure_round_fails(monkeypatch, 1, RuntimeError("round 1 broke"))
    with pytest.raises(RuntimeError, match="round 1 broke") as info:
        secure.run_secure_simulation(
            SECURE_CFG, SecureConfig(coord_fraction=0.5), dropout=0.0, progress=False
        )
    assert not hasattr(info.value, "finished_rounds")


def test_plume_sim_secure_writes_the_finished_rounds_when_a_worker_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the worker dies in round 2 of 3 (one training call a round)
    monkeypatch.delenv("PLUME_DEBUG", raising=False)
    _worker_dies_at(monkeypatch, 2)
    out = tmp_path / "run"

    # Execute
    code = plume([*SECURE_TINY, "--out", str(out)])
    err = capsys.readouterr().err

    # Assert: exit 1, the worker's one error line saying where round 1 went, and round 1
    # written as an interrupted secure run's
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(
        f"plume sim: error: a worker process died; wrote its 1 finished round to {out}/ {FILES}"
    )
    doc = _written(out, 1)
    assert " --secure " in doc["command"]
    assert doc["secure"]["dropout"] == 0.1  # the --secure-dropout default


@pytest.mark.timeout(90)
def test_the_http_runner_hands_its_finished_rounds_on_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: the run breaks while round 2 is evaluated (round 1 is recorded by then)
    real = sdk.trainer.evaluate
    seen: list[Any] = []
    boom = RuntimeError("evaluation broke")

    def evaluate(model: Any, params: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(np.array(params, copy=True))
        if len(seen) == 2:
            raise boom
        return real(model, params, *args, **kwargs)

    monkeypatch.setattr(sdk.trainer, "evaluate", evaluate)

    # Execute
    with pytest.raises(RuntimeError) as info:
        run_http_simulation(HTTP_CFG, progress=False, options=HttpFleetOptions())

    # Assert: the very error, carrying round 1, its ledger rows and the model it evaluated
    assert info.value is boom and not isinstance(info.value, RunInterrupted)
    partial = info.value.finished_rounds  # type: ignore[attr-defined]
    assert partial.interrupted
    assert [r.round for r in partial.records] == [1]
    _ledger_matches(partial)
    np.testing.assert_array_equal(partial.final_params, seen[0])
    assert partial.partition is not None


def _device_fails_after_round_1(monkeypatch: pytest.MonkeyPatch) -> None:
    """A device assigned to any round after the first raises a bug once round 1 is recorded
    (so exactly round 1 has finished when the run fails)."""
    real_monitor = http_fleet._Fleet._monitor
    recorded: list[int] = []

    async def monitor(
        self: Any, observer: Any, admin: Any, evaluate_version: Any, emit: Any
    ) -> Any:
        def emit_and_note(rec: Any) -> None:
            emit(rec)
            recorded.append(rec.round)

        return await real_monitor(self, observer, admin, evaluate_version, emit_and_note)

    real_train = sdk.client.AsyncClient.train_round
    first: list[int] = []

    async def train_round(self: Any, a: Any, *args: Any, **kwargs: Any) -> Any:
        if not first:
            first.append(a.round_id)
        if a.round_id != first[0]:
            while not recorded:
                await asyncio.sleep(0.01)
            raise ValueError("a bug in the device code")
        return await real_train(self, a, *args, **kwargs)

    monkeypatch.setattr(http_fleet._Fleet, "_monitor", monitor)
    monkeypatch.setattr(sdk.client.AsyncClient, "train_round", train_round)


@pytest.mark.timeout(90)
def test_plume_sim_http_writes_the_finished_rounds_when_a_device_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    monkeypatch.delenv("PLUME_DEBUG", raising=False)
    _device_fails_after_round_1(monkeypatch)
    out = tmp_path / "run"

    # Execute
    code = plume([*HTTP_TINY, "--out", str(out)])
    err = capsys.readouterr().err

    # Assert: exit 1, one line naming the device's error and where round 1 went
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert re.match(
        r"plume sim: error: simulated device \d+ stopped: "
        r"ValueError\('a bug in the device code'\); wrote its 1 finished round to ",
        lines[0],
    ), lines[0]
    assert f" to {out}/ {FILES}" in lines[0]
    doc = _written(out, 1)
    assert " --transport http " in doc["command"]
