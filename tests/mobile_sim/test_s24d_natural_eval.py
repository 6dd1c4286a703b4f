"""`--partition natural --clients N` below the dataset's natural client count trains the first
N devices, and the run is now scored on those devices' own test rows (`test_groups`), as
FedProx evaluates on its participating devices. Before, `evaluate` took the whole test split:
`plume sim --dataset synthetic --clients 5 --per-round 5 --rounds 1` scored 537 test rows of
30 devices, 472 of them from 25 devices that never trained (synthetic(1,1) gives each device
its own labelling model). IID, Dirichlet and shards splits, and a natural run over every
device, keep the whole test split."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from mobile_sim.datasets import load_federated
from mobile_sim.models import build_model
from mobile_sim.runner import SimConfig, prepare, run_simulation
from sdk.trainer import evaluate

_CFG = SimConfig(
    dataset="synthetic",
    partition="natural",
    clients=5,
    per_round=5,
    rounds=1,
    local_epochs=1,
    seed=0,
)


def _kept_rows(name: str, clients: int) -> np.ndarray:
    whole = load_federated(name, seed=0)
    return np.concatenate([whole.test_groups[i] for i in range(clients)])


def test_a_natural_run_over_some_devices_evaluates_on_their_test_rows() -> None:
    # Prepare: the dataset as loaded, and the rows of its first 5 devices' test data
    whole = load_federated("synthetic", seed=0)
    rows = _kept_rows("synthetic", 5)

    # Execute
    setup = prepare(_CFG)

    # Assert: the test split is the 5 devices' rows (65 of the 537), in device order
    assert len(rows) < len(whole.y_test)
    np.testing.assert_array_equal(setup.data.x_test, whole.x_test[rows])
    np.testing.assert_array_equal(setup.data.y_test, whole.y_test[rows])
    # and the data's groups describe the same 5 devices
    assert len(setup.data.train_groups) == len(setup.data.test_groups) == 5  # type: ignore[attr-defined]
    assert setup.data.group_names == whole.group_names[:5]  # type: ignore[attr-defined]
    got = np.concatenate(setup.data.test_groups)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(got, np.arange(len(rows)))
    # the training data and its split are as before
    np.testing.assert_array_equal(setup.data.x_train, whole.x_train)
    for part, group in zip(setup.parts, whole.train_groups[:5], strict=True):
        np.testing.assert_array_equal(part, np.sort(group))


@pytest.mark.parametrize(
    "cfg",
    [
        replace(_CFG, clients=30, per_round=5),  # every natural device
        replace(_CFG, partition="iid", clients=5),
        replace(_CFG, partition="dirichlet", clients=5, alpha=1.0),
    ],
    ids=["natural-all", "iid", "dirichlet"],
)
def test_other_splits_keep_the_whole_test_split(cfg: SimConfig) -> None:
    whole = load_federated("synthetic", seed=0)

    setup = prepare(cfg)

    np.testing.assert_array_equal(setup.data.x_test, whole.x_test)
    np.testing.assert_array_equal(setup.data.y_test, whole.y_test)


def test_shakespeare_first_speakers_are_scored_on_their_own_windows() -> None:
    whole = load_federated("shakespeare")
    rows = _kept_rows("shakespeare", 3)

    setup = prepare(replace(_CFG, dataset="shakespeare", clients=3, per_round=3))

    np.testing.assert_array_equal(setup.data.y_test, whole.y_test[rows])
    assert len(setup.data.y_test) < len(whole.y_test)


@pytest.mark.parametrize("backend", ["sequential", "vectorized", "pool"])
def test_the_recorded_accuracy_is_that_on_the_kept_devices(backend: str) -> None:
    # Prepare
    torch.set_num_threads(1)
    whole = load_federated("synthetic", seed=0)
    rows = _kept_rows("synthetic", 5)
    model = build_model("synthetic_lr", seed=0)

    # Execute: the reviewer's repro, `plume sim --dataset synthetic --clients 5 --per-round 5
    # --rounds 1`
    cfg = replace(_CFG, backend=backend, workers=1 if backend == "pool" else None)
    result = run_simulation(cfg, progress=False)

    # Assert: the round's accuracy and loss are the final model's on the 5 devices' rows
    acc, loss = evaluate(model, result.final_params, whole.x_test[rows], whole.y_test[rows])
    assert result.records[-1].accuracy == pytest.approx(acc, abs=1e-9)
    assert result.records[-1].loss == pytest.approx(loss, rel=1e-5)
    everyone, _ = evaluate(model, result.final_params, whole.x_test, whole.y_test)
    assert everyone != pytest.approx(acc, abs=1e-3)  # the two sets score differently here


def test_a_secure_run_evaluates_on_the_same_rows() -> None:
    from coordinator.secure import SecureConfig
    from mobile_sim.secure import run_secure_simulation

    torch.set_num_threads(1)
    whole = load_federated("synthetic", seed=0)
    rows = _kept_rows("synthetic", 5)
    model = build_model("synthetic_lr", seed=0)

    result = run_secure_simulation(_CFG, SecureConfig(), dropout=0.0, progress=False)

    acc, _ = evaluate(model, result.final_params, whole.x_test[rows], whole.y_test[rows])
    assert result.records[-1].accuracy == pytest.approx(acc, abs=1e-9)
