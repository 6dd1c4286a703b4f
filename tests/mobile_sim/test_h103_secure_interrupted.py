"""Ctrl-C in a `--secure` run keeps its finished rounds, as in a plain in-process run: the
secure runner raises `RunInterrupted` with them and their ledger rows, and `plume sim` writes
them. Interrupted deterministically: a KeyboardInterrupt raised inside a chosen round."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mobile_sim.secure as secure
from coordinator.cli import main as plume
from coordinator.secure import SecureConfig
from mobile_sim.runner import RunInterrupted, SimConfig

TINY = [
    "sim", "--secure", "--dataset", "digits", "--model", "digits_mlp", "--clients", "8",
    "--per-round", "4", "--rounds", "3", "--local-epochs", "1", "--no-progress",
]  # fmt: skip


def _ctrl_c_in_round(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Ctrl-C once round `n`'s SecAgg stages have run (its uploads are in the ledger), before
    the round's record is made."""
    real = secure.run_secure_round
    calls = {"n": 0}

    def run(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] == n:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(secure, "run_secure_round", run)


def test_the_secure_runner_raises_run_interrupted_with_the_finished_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: the model after round 1 of this config; Ctrl-C once round 2 has closed
    cfg = SimConfig(
        dataset="digits", model="digits_mlp", clients=8, per_round=4, rounds=3, local_epochs=1
    )
    one = secure.run_secure_simulation(
        replace(cfg, rounds=1), SecureConfig(coord_fraction=0.5), dropout=0.0, progress=False
    )
    _ctrl_c_in_round(monkeypatch, 2)

    # Execute
    with pytest.raises(KeyboardInterrupt) as info:
        secure.run_secure_simulation(
            cfg, SecureConfig(coord_fraction=0.5), dropout=0.0, progress=False
        )

    # Assert: a KeyboardInterrupt still, carrying round 1, its ledger rows only (round 2's
    # uploads were recorded), the secure settings and the model of round 1
    assert isinstance(info.value, RunInterrupted)
    partial = info.value.result
    assert partial.interrupted and partial.label == "secure"
    assert [r.round for r in partial.records] == [1]
    assert {row.round_id for row in partial.ledger.rows()} == {1}
    ups = [r for r in partial.ledger.rows() if r.direction == "up"]
    assert sum(r.payload_bytes for r in ups) == partial.records[0].bytes_up
    assert partial.secure is not None and partial.secure["dropout"] == 0.0
    assert partial.partition is not None
    np.testing.assert_array_equal(partial.final_params, one.final_params)  # not round 2's


def test_ctrl_c_in_a_secure_run_writes_its_finished_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: Ctrl-C in round 3 of 3
    _ctrl_c_in_round(monkeypatch, 3)
    out = tmp_path / "run"

    # Execute
    code = plume([*TINY, "--out", str(out)])
    err = capsys.readouterr().err

    # Assert: exit 130, one line naming the files, and rounds.json holds rounds 1 and 2
    assert code == 130
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith(
        f"plume sim: interrupted after 2 of 3 rounds; wrote its 2 finished rounds to {out}/ "
        "(rounds.json with summary.interrupted true, rounds.csv, ledger.csv)"
    )
    doc = json.loads((out / "rounds.json").read_text())
    assert (doc["summary"]["interrupted"], doc["summary"]["rounds_planned"]) == (True, 3)
    assert [r["round"] for r in doc["rounds"]] == [1, 2]
    assert " --secure " in doc["command"]
    assert doc["secure"]["dropout"] == 0.1  # the --secure-dropout default


def test_the_secure_runner_over_http_keeps_its_finished_rounds_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: Ctrl-C once round 2 has run on the service, before its bytes are recorded
    real = secure.HttpSecureFleet.run_round
    calls = {"n": 0}

    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        out = real(self, *args, **kwargs)
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(secure.HttpSecureFleet, "run_round", run)
    cfg = SimConfig(
        dataset="digits", model="digits_mlp", clients=8, per_round=4, rounds=3, local_epochs=1
    )

    # Execute
    with pytest.raises(RunInterrupted) as info:
        secure.run_secure_simulation(
            cfg, SecureConfig(coord_fraction=0.5), dropout=0.0, progress=False, transport="http"
        )

    # Assert
    partial = info.value.result
    assert [r.round for r in partial.records] == [1]
    assert {row.round_id for row in partial.ledger.rows()} == {1}
