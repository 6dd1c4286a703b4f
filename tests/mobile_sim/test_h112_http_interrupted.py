"""Ctrl-C in a `plume sim --transport http` run keeps its finished rounds, as in process: the
HTTP runner raises `RunInterrupted` with them, their ledger rows and the model of the last of
them, and `plume sim` writes them (exit 130, the in-process line). Before, it let a plain
KeyboardInterrupt through and nothing was written. Interrupted deterministically: a
KeyboardInterrupt raised while a chosen round is evaluated, or a SIGINT raised by the run's own
`on_round`, never a signal at a wall-clock time. The coordinator is a real one on loopback."""

from __future__ import annotations

import csv
import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sdk.trainer
from coordinator.cli import main as plume
from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.admin_client import AdminClient
from mobile_sim.http_fleet import HttpFleetOptions, run_http_simulation
from mobile_sim.runner import RoundRecord, RunInterrupted, SimConfig

# --topk 0.1 as CFG: no few-kept note (test_s51_cli_few_kept.py) before the interruption's line
TINY = [
    "sim", "--transport", "http", "--dataset", "digits", "--model", "digits_mlp", "--clients",
    "6", "--per-round", "3", "--rounds", "3", "--local-epochs", "1", "--topk", "0.1",
    "--no-progress",
]  # fmt: skip
PLOTS = ("accuracy_vs_upload_bytes.png", "bytes_per_round.png", "round_durations.png")
CFG = SimConfig(dataset="digits", model="digits_mlp", clients=6, per_round=3, rounds=3,
                topk=0.1, bits=8, local_epochs=1, batch_size=16, partition="iid",
                seed=0)  # fmt: skip


def _evaluated(monkeypatch: pytest.MonkeyPatch, ctrl_c_at: int | None) -> list[Any]:
    """The models the run evaluates, in order; Ctrl-C during evaluation number `ctrl_c_at`
    (round `ctrl_c_at` has committed on the coordinator and is not recorded yet)."""
    real = sdk.trainer.evaluate
    seen: list[Any] = []

    def evaluate(model: Any, params: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(np.array(params, copy=True))
        if len(seen) == ctrl_c_at:
            raise KeyboardInterrupt
        return real(model, params, *args, **kwargs)

    monkeypatch.setattr(sdk.trainer, "evaluate", evaluate)
    return seen


def _coordinator_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "plume-coordinator" and t.is_alive()]


def _check_written(out: Path, finished: int) -> dict[str, Any]:
    """The run folder of an HTTP run interrupted after `finished` rounds; its rounds.json."""
    doc: dict[str, Any] = json.loads((out / "rounds.json").read_text())
    s = doc["summary"]
    assert (s["interrupted"], s["rounds"], s["rounds_planned"]) == (True, finished, 3)
    assert [r["round"] for r in doc["rounds"]] == list(range(1, finished + 1))
    assert " --transport http " in doc["command"]
    with (out / "rounds.csv").open(newline="") as f:
        assert [int(row["round"]) for row in csv.DictReader(f)] == list(range(1, finished + 1))
    # The finished rounds' ledger rows, and the bytes their records count
    with (out / "ledger.csv").open(newline="") as f:
        ledger = list(csv.DictReader(f))
    assert {int(row["round_id"]) for row in ledger} == set(range(1, finished + 1))
    for direction, key in (("up", "bytes_up"), ("down", "bytes_down")):
        assert sum(int(r["payload_bytes"]) for r in ledger if r["direction"] == direction) == sum(
            r[key] for r in doc["rounds"]
        )
    assert all((out / name).stat().st_size > 0 for name in PLOTS)
    assert sorted(p.name for p in out.rglob("*.tmp")) == []
    return doc


@pytest.fixture
def server() -> Iterator[tuple[str, str]]:
    """An external coordinator on loopback: (url, admin token)."""
    token = "h112-token"
    with tempfile.TemporaryDirectory() as tmp:
        thread = ServerThread(
            ServiceConfig(db_path=os.path.join(tmp, "c.db"), admin_token=token, tick_s=0.02)
        )
        url = thread.start()
        try:
            yield url, token
        finally:
            thread.stop()


@pytest.mark.timeout(60)
def test_ctrl_c_in_an_http_run_writes_its_finished_rounds_and_stops_its_coordinator(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare: Ctrl-C while round 2 of 3 is evaluated; the run starts its own coordinator
    _evaluated(monkeypatch, 2)
    stopped: list[ServerThread] = []
    real_stop = ServerThread.stop

    def stop(self: ServerThread, timeout: float = 20.0) -> None:
        real_stop(self, timeout)
        stopped.append(self)

    monkeypatch.setattr(ServerThread, "stop", stop)
    out = tmp_path / "run"

    # Execute
    code = plume([*TINY, "--out", str(out)])
    err = capsys.readouterr().err

    # Assert: exit 130 and the in-process line; round 1 written, marked interrupted
    assert code == 130
    plots = ", ".join(str(out / name) for name in PLOTS)
    assert [line for line in err.splitlines() if line.strip()] == [
        f"plume sim: interrupted after 1 of 3 rounds; wrote its 1 finished round to {out}/ "
        f"(rounds.json with summary.interrupted true, rounds.csv, ledger.csv) and {plots}"
    ]
    _check_written(out, 1)
    # The embedded coordinator was stopped: its thread has ended and its store is closed;
    # its task was not stopped first (pointless, and the coordinator's warning about it would
    # be a second line on the terminal)
    (server_thread,) = stopped
    assert not server_thread._thread.is_alive() and not server_thread._owns_store
    assert _coordinator_threads() == []
    assert "stopped by the operator" not in caplog.text


@pytest.mark.timeout(60)
def test_ctrl_c_against_an_external_coordinator_writes_the_rounds_and_ends_the_task(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    server: tuple[str, str],
) -> None:
    # Prepare: Ctrl-C while round 3 of 3 is evaluated
    url, token = server
    monkeypatch.setenv("PLUME_ADMIN_TOKEN", token)
    _evaluated(monkeypatch, 3)
    out = tmp_path / "run"

    # Execute
    code = plume([*TINY, "--coordinator", url, "--out", str(out)])
    err = capsys.readouterr().err

    # Assert: rounds 1 and 2 written; the run's task is ended on the coordinator (no fleet
    # is left to run it), which still answers for it and serves it whole. Round 3 committed
    # before its evaluation's Ctrl-C, so the task had run its rounds: the stop leaves it done
    # (06048d8; it was overwritten as stopped)
    assert code == 130
    assert err.strip().startswith(
        f"plume sim: interrupted after 2 of 3 rounds; wrote its 2 finished rounds to {out}/ "
    )
    doc = _check_written(out, 2)
    with AdminClient(url, token) as admin:
        status = admin.status(1)
        rounds = admin.rounds(1)
        assert status.state == "done"
        committed = [r for r in rounds if r.state == "committed"]
        assert [r.seq for r in committed][:2] == [1, 2]
        for rec, r in zip(doc["rounds"], committed, strict=False):
            assert admin.bandwidth(r.round_id)["totals"]["up_payload_bytes"] >= rec["bytes_up"]


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("default_sigint")  # also where SIGINT was inherited ignored
def test_a_sigint_raises_run_interrupted_with_the_last_recorded_rounds_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: a real SIGINT (what Ctrl-C sends) once round 1 is recorded; asyncio's own
    # handler then cancels the fleet
    evaluated = _evaluated(monkeypatch, None)

    def ctrl_c(record: RoundRecord) -> None:
        signal.raise_signal(signal.SIGINT)

    # Execute
    with pytest.raises(RunInterrupted) as info:
        run_http_simulation(CFG, progress=False, on_round=ctrl_c, options=HttpFleetOptions())

    # Assert: round 1, its ledger rows only, and the model it evaluated
    partial = info.value.result
    assert partial.interrupted
    assert [r.round for r in partial.records] == [1]
    assert {row.round_id for row in partial.ledger.rows()} == {1}
    ups = [row for row in partial.ledger.rows() if row.direction == "up"]
    assert sum(row.payload_bytes for row in ups) == partial.records[0].bytes_up
    np.testing.assert_array_equal(partial.final_params, evaluated[0])
    assert partial.partition is not None
    assert _coordinator_threads() == []


def test_ctrl_c_before_the_first_round_stops_the_coordinator_with_nothing_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: Ctrl-C while torch warms up, after the task was created
    import mobile_sim.backends.sequential as sequential

    def warm_torch() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sequential, "warm_torch", warm_torch)

    # Execute
    with pytest.raises(RunInterrupted) as info:
        run_http_simulation(CFG, progress=False, options=HttpFleetOptions())

    # Assert: no round, no ledger row, the initial model; the coordinator is gone
    partial = info.value.result
    assert partial.records == [] and list(partial.ledger.rows()) == []
    assert partial.final_params.shape == (partial.num_params,)
    assert _coordinator_threads() == []
