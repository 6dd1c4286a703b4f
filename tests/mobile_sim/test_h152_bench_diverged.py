"""bench/robustness.py records a run whose training diverged as diverged (accuracy 0) and goes
on with the matrix. Before, it kept a run only when the error said "NaN" (the device encoder's
old refusal); the trainers now stop first with "training diverged: the loss was nan ..."
(`sdk._data.diverged`), so an attack that made a rule diverge (IPM eps=100) stopped the whole
benchmark. No simulation runs here: `run_simulation` is replaced by one that raises."""

from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mobile_sim.runner as runner
from mobile_sim.runner import SimConfig
from sdk._data import check_trained_params, diverged

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Any:
    import torch

    spec = importlib.util.spec_from_file_location(
        "h152_robustness", ROOT / "bench" / "robustness.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # `_run` is a worker's entry point: it sets torch's threads, absl's log level and wraps
    # the runner's aggregator builder for the whole process. Undo all three afterwards.
    monkeypatch.setattr(runner, "build_aggregator", runner.build_aggregator)
    absl = logging.getLogger("absl")
    monkeypatch.setattr(absl, "level", absl.level)
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)


def _job() -> dict[str, Any]:
    cfg = SimConfig(
        dataset="digits",
        clients=4,
        per_round=2,
        rounds=1,
        aggregator="trimmed_mean:0.2",
        attack="ipm:epsilon=100",
        malicious=0.25,
    )
    return {
        "kind": "matrix",
        "aggregator": cfg.aggregator,
        "attack": "ipm:epsilon=100",
        "attack_spec": "ipm:epsilon=100",
        "malicious": cfg.malicious,
        "seed": 0,
        "config": cfg.as_dict(),
    }


def _torch_trainer_divergence() -> ValueError:
    """The error sdk.trainer.TorchTrainer itself raises when the loss stops being finite."""
    import torch

    from sdk.flat import get_flat_params
    from sdk.trainer import TorchTrainer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    y = rng.integers(0, 3, 20).astype(np.int64)
    with pytest.raises(ValueError) as info:
        TorchTrainer(model).train(
            get_flat_params(model), x, y, epochs=5, batch_size=5, lr=3e38, rng=rng
        )
    return info.value


def _trained_params_error() -> ValueError:
    with pytest.raises(ValueError) as info:
        check_trained_params(np.array([0.0, np.nan], dtype=np.float32), steps=3, lr=0.05)
    return info.value


@pytest.mark.parametrize(
    "make_error",
    [
        pytest.param(_torch_trainer_divergence, id="torch-trainer"),
        pytest.param(lambda: diverged(math.nan, 10, 1, 0.05), id="loss-nan"),
        pytest.param(lambda: diverged(math.inf, 1, 1, 0.05), id="loss-inf-step-1"),
        pytest.param(_trained_params_error, id="params-nan"),
        # The encoder's refusal of a NaN delta, which the benchmark kept before.
        pytest.param(lambda: ValueError("NaN or Inf at value 3"), id="encoder-nan"),
    ],
)
def test_a_diverged_run_is_recorded_as_diverged(
    bench: Any, monkeypatch: pytest.MonkeyPatch, make_error: Any
) -> None:
    error = make_error()
    assert isinstance(error, ValueError)

    def fake_run(cfg: SimConfig, progress: bool = True) -> Any:
        assert cfg.attack == "ipm:epsilon=100"
        raise error

    monkeypatch.setattr(runner, "run_simulation", fake_run)
    job = _job()

    row = bench._run(job)

    assert row["diverged"] is True
    assert row["final_accuracy"] == 0.0
    assert row["error"] == str(error)
    assert row["backdoor_accuracy"] is None
    assert {k: row[k] for k in ("kind", "aggregator", "attack", "malicious", "seed")} == {
        k: job[k] for k in ("kind", "aggregator", "attack", "malicious", "seed")
    }
    assert "config" not in row


@pytest.mark.parametrize(
    "error",
    [
        ValueError("aggregator 'nope': unknown aggregator"),
        ValueError("the loss was nan"),  # no trainer's marker: not the trainer's words
        RuntimeError("training diverged: the loss was nan"),  # not a ValueError
    ],
)
def test_other_errors_still_stop_the_benchmark(
    bench: Any, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def fake_run(cfg: SimConfig, progress: bool = True) -> Any:
        raise error

    monkeypatch.setattr(runner, "run_simulation", fake_run)

    with pytest.raises(type(error)) as info:
        bench._run(_job())
    assert info.value is error
