"""`--data-seed`: repeats over `--seed` on one test set. `--seed` also draws mnist's and digits'
train/test split, so averaging runs over seeds mixed test-set variance into the mean."""

from __future__ import annotations

import json
import shlex
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


def test_plume_sim_data_seed_is_recorded_and_its_command_reruns_the_run(tmp_path: Path) -> None:
    # Prepare: a run with --data-seed, and its recorded command
    flags = ["sim", "--dataset", "digits", "--clients", "10", "--per-round", "4"]
    flags += ["--rounds", "1", "--local-epochs", "1", "--no-progress"]
    first = tmp_path / "first"
    assert plume([*flags, "--seed", "3", "--data-seed", "0", "--out", str(first)]) == 0
    doc = json.loads((first / "rounds.json").read_text())
    words = shlex.split(doc["command"])
    assert words[:2] == ["plume", "sim"] and "--data-seed" in words

    # Execute: rerun the recorded command, its --out pointed at another folder
    again = tmp_path / "again"
    assert words[words.index("--out") + 1] == str(first)
    words[words.index("--out") + 1] = str(again)
    code = plume(words[1:])

    # Assert: the same config (seed 3, data seed 0) and the same rounds
    rerun = json.loads((again / "rounds.json").read_text())
    assert code == 0
    assert doc["config"]["seed"] == 3 and doc["config"]["data_seed"] == 0
    assert rerun["config"] == doc["config"]
    assert rerun["command"] == shlex.join(words)
    same = ("round", "accuracy", "loss", "train_loss", "reports", "bytes_up", "bytes_down")
    assert [{k: r[k] for k in same} for r in rerun["rounds"]] == [
        {k: r[k] for k in same} for r in doc["rounds"]
    ]
    assert doc["rounds"][0]["accuracy"] is not None
