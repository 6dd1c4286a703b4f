"""A federated run mixing torch and onnxruntime devices reaches the all-torch accuracy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from mobile_sim.models import build_model
from mobile_sim.runner import SimConfig, prepare, run_simulation
from sdk.onnx_export import export_training_artifacts
from tests._export_cache import ExportCache, example

TARGET_PP = 0.5


def _gap_pp(cfg: SimConfig, artifacts: Path) -> tuple[float, float, float]:
    torch.set_num_threads(1)
    torch_only = run_simulation(cfg, progress=False)
    mixed = run_simulation(
        replace(cfg, ort_fraction=0.5, ort_artifacts=str(artifacts)), progress=False
    )
    acc_t, acc_m = torch_only.final_accuracy, mixed.final_accuracy
    assert acc_t is not None and acc_m is not None
    return acc_t, acc_m, 100 * abs(acc_t - acc_m)


def test_mixed_fleet_matches_torch_fleet_on_digits(
    tmp_path: Path, export_cache: ExportCache
) -> None:
    # Prepare: half of 20 devices train on onnxruntime, with the same batches and shuffles.
    export_cache.export(build_model("digits_mlp"), example(4, 64), tmp_path)
    cfg = SimConfig(
        dataset="digits",
        clients=20,
        per_round=10,
        rounds=6,
        local_epochs=3,
        lr=0.1,
        topk=0.1,
        bits=8,
        partition="iid",
    )

    # Execute
    acc_torch, acc_mixed, gap = _gap_pp(cfg, tmp_path)

    # Assert: it learned, and the mixed fleet is within the target of the torch fleet.
    assert acc_torch > 0.5
    assert gap <= TARGET_PP, (acc_torch, acc_mixed)


@pytest.mark.slow
def test_mixed_fleet_matches_torch_fleet_on_mnist_cnn(tmp_path: Path) -> None:
    # Prepare: the McMahan CNN on MNIST, Dirichlet(0.5), top-1% + 4 bits, half the fleet on ORT.
    export_training_artifacts(build_model("mnist_cnn"), torch.randn(4, 1, 28, 28), tmp_path)
    cfg = SimConfig(dataset="mnist", clients=50, per_round=10, rounds=20, local_epochs=1)

    # Execute
    acc_torch, acc_mixed, gap = _gap_pp(cfg, tmp_path)

    # Assert
    assert acc_torch > 0.5
    assert gap <= TARGET_PP, (acc_torch, acc_mixed)


@pytest.mark.parametrize(
    ("model", "momentum", "message"),
    [
        (nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), 0.0, "exported from another model"),
        (None, 0.9, "train with momentum 0.0"),
    ],
)
def test_artifacts_of_another_model_or_optimizer_are_refused_before_the_run(
    tmp_path: Path,
    export_cache: ExportCache,
    model: nn.Module | None,
    momentum: float,
    message: str,
) -> None:
    # Prepare: artifacts of a digits-shaped model the run does not train, or of plain SGD for
    # a run with momentum.
    module = model if model is not None else build_model("digits_mlp")
    export_cache.export(module, example(4, 64), tmp_path)
    cfg = SimConfig(
        dataset="digits",
        clients=10,
        per_round=5,
        rounds=1,
        momentum=momentum,
        ort_fraction=0.5,
        ort_artifacts=str(tmp_path),
    )

    # Execute / Assert: one clear error from prepare, before any device trains.
    with pytest.raises(ValueError, match=f"ort_artifacts: .*{message}"):
        prepare(cfg)
