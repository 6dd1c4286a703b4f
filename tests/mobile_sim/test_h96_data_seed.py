"""`--data-seed`: repeats over `--seed` on one test set. `--seed` also draws mnist's and digits'
train/test split, so averaging runs over seeds mixed test-set variance into the mean."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from coordinator.cli import main as plume
from mobile_sim.runner import SimConfig, prepare

_BASE = {"dataset": "digits", "clients": 10, "per_round": 4, "rounds": 1, "local_epochs": 1}


def test_seed_alone_draws_another_test_set() -> None:
    # Execute
    a, b = prepare(SimConfig(**_BASE, seed=0)), prepare(SimConfig(**_BASE, seed=1))  # type: ignore[arg-type]

    # Assert: the behaviour --data-seed exists for (unchanged, so committed runs reproduce)
    assert not np.array_equal(a.data.x_test, b.data.x_test)


def test_data_seed_keeps_the_test_set_while_seed_varies_the_rest() -> None:
    # Execute
    a = prepare(SimConfig(**_BASE, seed=0, data_seed=0))  # type: ignore[arg-type]
    b = prepare(SimConfig(**_BASE, seed=1, data_seed=0))  # type: ignore[arg-type]

    # Assert: one train/test split; another partition of it over the devices
    assert np.array_equal(a.data.x_test, b.data.x_test)
    assert np.array_equal(a.data.y_train, b.data.y_train)
    assert any(not np.array_equal(p, q) for p, q in zip(a.parts, b.parts, strict=True))


def test_plume_sim_data_seed_is_recorded_and_rerun(tmp_path: Path) -> None:
    # Execute
    flags = ["sim", "--dataset", "digits", "--clients", "10", "--per-round", "4"]
    flags += ["--rounds", "1", "--local-epochs", "1", "--no-progress"]
    code = plume([*flags, "--seed", "3", "--data-seed", "0", "--out", str(tmp_path)])

    # Assert
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert code == 0
    assert doc["config"]["seed"] == 3 and doc["config"]["data_seed"] == 0
    assert "--data-seed 0" in doc["command"]
