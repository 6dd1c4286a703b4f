"""Backdoor accuracy is measured in chunks of rows, as `sdk.trainer.evaluate` does, so a large
test set does not hold every activation of one forward pass at once; the figure is unchanged.
bench/robustness.py measures it on the test split the run used (`SimConfig.dataset_seed`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import mobile_sim.runner as runner
from mobile_sim.attacks import BackdoorAttack, backdoor_accuracy
from mobile_sim.data import load_digits_data
from mobile_sim.models import build_model
from sdk.flat import get_flat_params, set_flat_params

ROOT = Path(__file__).resolve().parents[2]


def _trained_params(model: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A few seeded SGD steps, so the model predicts a mix of classes (not one)."""
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
    return get_flat_params(model)


def test_backdoor_accuracy_predicts_in_bounded_chunks_with_the_same_figure() -> None:
    # Prepare: digits' test set has more rows outside the target class than one chunk
    data = load_digits_data(seed=0)
    model = build_model("digits_mlp", seed=0)
    params = _trained_params(model, data.x_train[:300], data.y_train[:300].astype(np.int64))
    attack = BackdoorAttack(target=5)  # a class this model predicts for some triggered images
    rows = int(np.sum(data.y_test != attack.target))
    assert rows > runner.PREDICT_BATCH
    set_flat_params(model, params)
    model.eval()

    def whole(x: np.ndarray) -> np.ndarray:  # the old computation: one forward pass
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(x))).argmax(1).numpy()

    expected = backdoor_accuracy(whole, data.x_test, data.y_test, attack)
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))

    # Execute
    try:
        got = runner._backdoor_accuracy(model, params, data, attack)
    finally:
        hook.remove()

    # Assert: the same figure (not a degenerate one), every row once, no chunk over the bound
    assert got == expected
    assert 0.0 < got < 1.0
    assert sum(sizes) == rows
    assert max(sizes) <= runner.PREDICT_BATCH and len(sizes) > 1


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("h103_robustness", ROOT / "bench/robustness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_robustness_bench_measures_the_backdoor_on_the_runs_test_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: a config whose data_seed differs from its seed; a model to measure
    bench = _bench()
    cfg = runner.SimConfig(dataset="digits", model="digits_mlp", seed=3, data_seed=0)
    params = get_flat_params(build_model("digits_mlp", seed=3))
    seeds: list[int] = []
    real = runner.load_dataset

    def load(name: str, root: Any, seed: int) -> Any:
        seeds.append(seed)
        return real(name, root, seed)

    monkeypatch.setattr(runner, "load_dataset", load)

    # Execute
    got = bench.final_backdoor_accuracy(cfg, params, "backdoor:target=0")

    # Assert: loaded with the data seed, and the figure is the runner's on the run's test set
    assert seeds == [0]
    data = runner.prepare(cfg).data
    assert np.array_equal(data.x_test, load_digits_data(seed=0).x_test)
    attack = BackdoorAttack(target=0)
    assert got == runner._backdoor_accuracy(build_model("digits_mlp"), params, data, attack)
