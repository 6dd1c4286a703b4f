"""The progress bar says what a round is doing: a round of a large model (a Shakespeare LSTM,
the MNIST CNN on many devices) runs for tens of seconds, and a bar that moves only once a
round finishes looked stuck. Its postfix names the phase: training N devices, encoding N
updates, evaluating."""

from __future__ import annotations

import pytest

from mobile_sim.runner import SimConfig, run_simulation


def test_the_bar_names_each_phase_of_a_round(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = SimConfig(dataset="digits", clients=8, per_round=4, rounds=1, local_epochs=1, seed=0)

    run_simulation(cfg, progress=True)

    err = capsys.readouterr().err
    for phase in ("training 4 devices", "encoding 4 updates", "evaluating"):
        assert phase in err, err[-2000:]


def test_no_bar_no_phases(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = SimConfig(dataset="digits", clients=8, per_round=4, rounds=1, local_epochs=1, seed=0)

    run_simulation(cfg, progress=False)

    assert "training" not in capsys.readouterr().err
