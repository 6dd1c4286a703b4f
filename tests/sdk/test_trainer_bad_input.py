"""TorchTrainer refuses data it cannot train on up front, with a typed error, not a torch one."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mobile_sim.data import load_digits_data
from mobile_sim.models import build_model
from sdk.flat import get_flat_params
from sdk.trainer import (
    IGNORE_INDEX,
    TorchTrainer,
    TrainingDataError,
    check_labels,
    check_training_data,
    output_shape,
)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits_data()
    return d.x_train[:40], d.y_train[:40]


def _train(trainer: TorchTrainer, x: Any, y: Any, params: Any = None, **kw: Any) -> Any:
    """One call from `params` (default: the module's current parameters, which the previous
    call left trained)."""
    settings: dict[str, Any] = {"epochs": 1, "batch_size": 8, "lr": 0.1}
    settings |= kw
    if params is None:
        params = get_flat_params(trainer.module)
    return trainer.train(params, x, y, rng=np.random.default_rng(0), **settings)


def _with(arr: np.ndarray, pos: tuple[int, ...], value: Any) -> np.ndarray:
    out = arr.copy()
    out[pos] = value
    return out


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        # Before: IndexError "Target 12 is out of bounds." from inside cross-entropy.
        (
            12,
            r"class label 12 out of range: the model has 10 classes, so labels must be in \[0, 10\)",
        ),
        (10, r"class label 10 out of range: the model has 10 classes"),
        (-1, r"class label -1 out of range"),
        (-101, r"class label -101 out of range"),
    ],
)
def test_a_label_outside_the_models_classes_is_refused_naming_it(
    digits: tuple[np.ndarray, np.ndarray], bad: int, match: str
) -> None:
    # Prepare
    x, y = digits
    trainer = TorchTrainer(build_model("digits_mlp"))

    # Execute / Assert
    with pytest.raises(TrainingDataError, match=match) as info:
        _train(trainer, x, _with(y, (3,), bad))
    assert "labels outside it: 1 of 40" in str(info.value)
    assert isinstance(info.value, ValueError)  # callers catching ValueError still catch it


def test_the_class_count_comes_from_the_models_output(
    digits: tuple[np.ndarray, np.ndarray],
) -> None:
    # Prepare: a 3-class head; label 5 is fine for the zoo's 10-class MLP but not here.
    x, y = digits
    trainer = TorchTrainer(nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3)))

    # Execute / Assert
    with pytest.raises(TrainingDataError, match="the model has 3 classes"):
        _train(trainer, x, np.full(40, 5))
    assert math.isfinite(_train(trainer, x, y % 3).loss)


def test_ignore_index_is_skipped_as_torch_skips_it(digits: tuple[np.ndarray, np.ndarray]) -> None:
    # Prepare: -100 is torch's (and the ONNX graph's) "no target"; the device trainer keeps it.
    x, y = digits
    trainer = TorchTrainer(build_model("digits_mlp"))
    y_ignored = _with(y, (slice(0, 5),), IGNORE_INDEX)

    # Execute
    result = _train(trainer, x, y_ignored)

    # Assert: it trained, and the simulator's strict check refuses the same labels.
    # the 5 examples labelled -100 add nothing to the update, so they do not weigh in
    assert result.num_examples == 35 and np.isfinite(result.params).all()
    with pytest.raises(TrainingDataError, match="class label -100 out of range"):
        check_training_data(trainer.module, x, y_ignored)


@pytest.mark.parametrize(
    ("x_change", "y_change", "match"),
    [
        (None, lambda y: y[:39], r"x has 40 examples but y has 39 labels"),  # was IndexError
        (lambda x: x[:39], None, r"x has 39 examples but y has 40 labels"),  # trained silently
        (lambda x: x[:0], lambda y: y[:0], "a device needs at least one example to train"),
        (None, lambda y: np.int64(3), "y has a scalar"),
        (None, lambda y: y.astype(np.float32), "integer class labels, got float32"),
        (None, lambda y: y.astype(bool), "integer class labels, got bool"),
        (None, lambda y: y[:, None], r"labels of shape \[40, 1\] do not fit the model's output"),
        (
            lambda x: x.astype(np.float64),
            None,
            r"\(float64\) does not fit the model: mat1 and mat2",
        ),
        (lambda x: x[:, :60], None, r"x of shape \[40, 60\] \(float32\) does not fit the model"),
        (lambda x: x.astype(str), None, "does not fit the model"),  # was a TypeError
        (lambda x: _with(x, (5, 3), np.nan), None, "1 input values are NaN or infinite"),
        (
            lambda x: _with(_with(x, (7, 1), np.inf), (9, 0), -np.inf),
            None,
            r"2 input values are NaN or infinite, in 2 of 40 examples \(the first is example 7\)",
        ),
    ],
)
def test_misfit_data_is_refused_before_training(
    digits: tuple[np.ndarray, np.ndarray], x_change: Any, y_change: Any, match: str
) -> None:
    # Prepare
    x, y = digits
    x_bad = x if x_change is None else x_change(x)
    y_bad = y if y_change is None else y_change(y)
    trainer = TorchTrainer(build_model("digits_mlp"))
    before = get_flat_params(trainer.module)

    # Execute / Assert: refused, and the module was not trained.
    with pytest.raises(TrainingDataError, match=match):
        _train(trainer, x_bad, y_bad)
    np.testing.assert_array_equal(get_flat_params(trainer.module), before)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),  # was range()'s error
        ({"batch_size": -4}, "batch_size must be an integer >= 1"),  # trained nothing
        ({"batch_size": 2.5}, "batch_size must be an integer"),
        ({"epochs": -1}, "epochs must be an integer >= 0"),
        ({"lr": math.nan}, "lr must be finite and >= 0, got nan"),  # trained NaN params
        ({"lr": -0.1}, "lr must be finite and >= 0"),
    ],
)
def test_bad_sgd_settings_are_refused(
    digits: tuple[np.ndarray, np.ndarray], settings: dict[str, Any], match: str
) -> None:
    x, y = digits
    with pytest.raises(ValueError, match=match):
        _train(TorchTrainer(build_model("digits_mlp")), x, y, **settings)


def test_other_integer_label_dtypes_train_exactly_as_int64(
    digits: tuple[np.ndarray, np.ndarray],
) -> None:
    # Prepare: int32 labels used to fail in torch ("expected target dtype to be Long").
    x, y = digits
    trainer = TorchTrainer(build_model("digits_mlp"))
    start = get_flat_params(trainer.module)

    # Execute: every call from the same starting parameters.
    want = _train(trainer, x, y, start)
    got = [_train(trainer, x, y.astype(dt), start) for dt in (np.int32, np.uint8, np.int16)]

    # Assert
    for result in got:
        np.testing.assert_array_equal(result.params, want.params)
        assert result.loss == want.loss


class _CountingNet(nn.Module):
    """Counts forward passes, and draws dropout noise in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.drop = nn.Dropout(0.5)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out: torch.Tensor = self.drop(self.fc(x))
        return out


def test_the_shape_probe_runs_once_per_input_shape_and_leaves_no_trace(
    digits: tuple[np.ndarray, np.ndarray],
) -> None:
    # Prepare
    x, y = digits
    torch.manual_seed(0)
    trainer = TorchTrainer(_CountingNet())
    steps = 5  # ceil(40 / 8) per call
    start = get_flat_params(trainer.module)

    # Execute: two calls; then the first call again from the same parameters and torch RNG state.
    torch.manual_seed(1)
    first = _train(trainer, x, y, start)
    calls_first = trainer.module.calls
    _train(trainer, x, y, start)
    torch.manual_seed(1)
    again = _train(trainer, x, y, start)

    # Assert: one probe in all; it drew no dropout noise (eval mode), so the module is back in
    # training mode and the retrained result is bit-identical.
    assert calls_first == steps + 1
    assert trainer.module.calls == 3 * steps + 1
    assert trainer.module.training
    np.testing.assert_array_equal(first.params, again.params)


def test_a_model_whose_output_is_not_logits_is_refused_clearly() -> None:
    # Prepare: one number per example, which cross-entropy cannot read as classes.
    module = nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))
    x = np.zeros((3, 4), np.float32)

    # Execute / Assert
    with pytest.raises(ValueError, match=r"output for one example is \[1\]: cross-entropy"):
        output_shape(module, x)


def test_sequence_targets_are_checked_against_the_class_dimension() -> None:
    # Prepare: logits [B, C=5, T=4] (torch's cross-entropy layout) against labels [B, T].
    module = nn.Sequential(nn.Linear(3, 20), nn.Unflatten(1, (5, 4)))
    x = np.random.default_rng(0).random((6, 3), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 5, (6, 4))
    trainer = TorchTrainer(module)

    # Execute
    result = _train(trainer, x, y, batch_size=4)

    # Assert
    assert math.isfinite(result.loss)
    with pytest.raises(TrainingDataError, match="class label 5 out of range: the model has 5"):
        _train(trainer, x, _with(y, (2, 3), 5))
    with pytest.raises(TrainingDataError, match=r"labels of shape \[6\] do not fit .* \[B, 4\]"):
        _train(trainer, x, y[:, 0])


def test_check_labels_reports_the_first_bad_label_and_the_count() -> None:
    y = np.array([[0, 11], [-3, 2]])
    with pytest.raises(TrainingDataError, match=r"^y: class label 11 .* outside it: 2 of 4$"):
        check_labels(y, 10)
    check_labels(np.array([], np.int64), 1)  # nothing to check
    check_labels(np.array([IGNORE_INDEX, 0]), 1, allow_ignore=True)


def test_participate_refuses_bad_data_before_asking_for_a_round(
    digits: tuple[np.ndarray, np.ndarray], tmp_path: Any
) -> None:
    # Prepare: a transport that records every request the client sends.
    import asyncio

    import httpx

    from sdk import AsyncClient, Client

    x, y = digits
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    trainer = TorchTrainer(build_model("digits_mlp"))
    bad_y = _with(y, (0,), 10)

    # Execute / Assert: both clients refuse it, and nothing reached the network.
    with (
        Client(
            "http://plume.test", str(tmp_path / "a"), transport=httpx.MockTransport(handler)
        ) as client,
        pytest.raises(TrainingDataError, match="class label 10 out of range"),
    ):
        client.participate(trainer, x, bad_y, max_wait_s=0)

    async def run_async() -> None:
        transport = httpx.MockTransport(handler)
        async with AsyncClient("http://plume.test", str(tmp_path / "b"), transport=transport) as ac:
            await ac.participate(trainer, x, bad_y, max_wait_s=0)

    with pytest.raises(TrainingDataError, match="class label 10 out of range"):
        asyncio.run(run_async())
    assert sent == []
