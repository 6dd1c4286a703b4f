"""What a researcher reads off a dp or attack run: a dp stage without accounting says it
reports no epsilon, and an attack run counts the attackers each round aggregated."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main as plume
from mobile_sim.runner import SimConfig, run_simulation
from tests.mobile_sim.test_h84_cli import TINY


def test_a_dp_stage_without_accounting_says_it_reports_no_epsilon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: noise and clipping, but no population=,sample=: no accountant
    spec = "dp:clip=1,z=0.3+fedavg"

    # Execute
    code = plume([*TINY, "--rounds", "1", "--aggregator", spec, "--out", str(tmp_path)])

    # Assert: one note naming the fix, instead of a summary that just lacks the epsilon
    out = capsys.readouterr().out
    assert code == 0
    assert "dp epsilon" not in out
    assert (
        "compressed: note: the dp stage added noise but accounts no epsilon (no sampling "
        "model): add population=N,sample=4 to its spec"
    ) in out


def test_an_accounted_dp_stage_has_no_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    spec = "dp:clip=1,z=1,population=10,sample=4+fedavg"
    code = plume([*TINY, "--rounds", "1", "--aggregator", spec, "--out", str(tmp_path)])

    # Assert
    out = capsys.readouterr().out
    assert code == 0 and "dp epsilon" in out and "accounts no epsilon" not in out


def test_an_attack_run_counts_the_attackers_in_each_round() -> None:
    # Prepare: every device reports every round, 3 of 10 attack
    cfg = SimConfig(
        dataset="digits",
        clients=10,
        per_round=10,
        rounds=2,
        local_epochs=1,
        attack="signflip",
        malicious=0.3,
    )

    # Execute
    result = run_simulation(cfg, progress=False)

    # Assert
    for rec in result.records:
        assert rec.measurements["attack"] == {"malicious_reports": 3, "malicious_devices": 3}


def test_a_run_without_attack_has_no_attack_measurement() -> None:
    # Execute
    cfg = SimConfig(dataset="digits", clients=10, per_round=4, rounds=1, local_epochs=1)

    # Assert
    assert "attack" not in run_simulation(cfg, progress=False).records[0].measurements


def test_a_backdoor_run_measures_the_backdoor_accuracy_it_reached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the main-task accuracy alone says nothing about a backdoor's success
    import json

    import numpy as np
    import torch

    from mobile_sim.attacks import backdoor_accuracy, build_attack
    from mobile_sim.data import load_digits_data
    from mobile_sim.models import build_model
    from sdk.flat import set_flat_params

    spec = "backdoor:target=0,poison_fraction=0.5"
    flags = [*TINY, "--rounds", "2", "--attack", spec, "--malicious", "0.3"]

    # Execute
    code = plume([*flags, "--out", str(tmp_path)])

    # Assert: the last round's figure is the fraction of triggered test images (true label not
    # the target) the final model classifies as the target, as bench/robustness.py computes it
    out = capsys.readouterr().out
    assert code == 0
    doc = json.loads((tmp_path / "rounds.json").read_text())
    model = build_model("digits_mlp")
    data = load_digits_data(seed=0)
    cfg = SimConfig(
        dataset="digits",
        clients=10,
        per_round=4,
        rounds=2,
        local_epochs=1,
        attack=spec,
        malicious=0.3,
    )
    final = run_simulation(cfg, progress=False).final_params
    set_flat_params(model, final)
    model.eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(x))).argmax(1).numpy()

    expected = backdoor_accuracy(predict, data.x_test, data.y_test, build_attack(spec))
    measured = [r["measurements"]["attack"]["backdoor_accuracy"] for r in doc["rounds"]]
    assert measured[-1] == pytest.approx(expected, abs=1e-12)
    assert doc["summary"]["backdoor_accuracy"] == measured[-1]
    assert f"backdoor accuracy {expected:.4f}" in out


def test_a_malicious_fraction_that_rounds_to_no_attacker_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: 0.02 of 10 devices is 0.2 of a device; the run used to go ahead with no attacker
    flags = [*TINY, "--rounds", "1", "--attack", "signflip", "--malicious", "0.02"]
    code = plume([*flags, "--out", str(tmp_path)])

    # Assert: one usage error with the smallest fraction that gives one attacker
    err = capsys.readouterr().err
    assert code == 2
    assert (
        "plume sim: error: --malicious must make at least one device attack: 0.02 of --clients "
        "10 rounds to 0 (use at least 0.1)"
    ) in err
    assert not (tmp_path / "rounds.json").exists()
    with pytest.raises(ValueError, match="rounds to 0"):
        SimConfig(dataset="digits", clients=10, per_round=4, attack="signflip", malicious=0.02)
