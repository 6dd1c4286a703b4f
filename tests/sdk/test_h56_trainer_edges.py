"""Trainer edge cases, for both trainers (torch and onnxruntime): batches whose labels are all
skipped (IGNORE_INDEX), data with no label to train on, a training run that diverges, starting
parameters that are not finite, and evaluation on no examples."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mobile_sim.models import build_model
from sdk.flat import get_flat_params
from sdk.onnx_export import export_training_artifacts
from sdk.ort import OrtTrainer
from sdk.trainer import IGNORE_INDEX, TorchTrainer, TrainingDataError, evaluate
from tests._export_cache import ExportCache, example


@pytest.fixture(scope="module")
def trainers(tmp_path_factory: pytest.TempPathFactory, export_cache: ExportCache) -> dict[str, Any]:
    """digits_mlp as a torch trainer and as an onnxruntime trainer, with its start params."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("h56_trainers")
    export_cache.export(build_model("digits_mlp"), example(4, 64), root, model_name="digits_mlp")
    module = build_model("digits_mlp")
    return {
        "torch": TorchTrainer(module),
        "ort": OrtTrainer.from_dir(Path(root)),
        "params": get_flat_params(module),
    }


def _data(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return rng.standard_normal((n, 64)).astype(np.float32), rng.integers(0, 10, n)


def _train(trainer: Any, params: np.ndarray, x: Any, y: Any, **kw: Any) -> Any:
    settings: dict[str, Any] = {"epochs": 1, "batch_size": 4, "lr": 0.1}
    settings.update(kw)
    return trainer.train(params, x, y, rng=np.random.default_rng(1), **settings)


KINDS = ["torch", "ort"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_whose_labels_are_all_skipped_leaves_the_mean_loss_finite(
    trainers: dict[str, Any], kind: str
) -> None:
    # Prepare: batches of one example; every label but the last skipped
    x, y = _data()
    y = np.where(np.arange(len(y)) == len(y) - 1, y, IGNORE_INDEX)
    params = trainers["params"]

    # Execute
    result = _train(trainers[kind], params, x, y, batch_size=1)

    # Assert: the loss is the one counted example's (the mean over counted targets); before,
    # each skipped batch's NaN loss made the whole mean NaN
    alone = _train(trainers[kind], params, x[-1:], y[-1:], batch_size=1)
    assert math.isfinite(result.loss)
    assert result.loss == pytest.approx(alone.loss, rel=1e-6)
    assert np.isfinite(result.params).all()


@pytest.mark.parametrize("kind", KINDS)
def test_skipped_labels_do_not_count_in_the_mean_loss(trainers: dict[str, Any], kind: str) -> None:
    # Prepare: one batch of 4 with 2 labels skipped, one batch of 4 with none (lr 0: the
    # parameters, so the per-example losses, do not change between steps)
    x, y = _data(8)
    y_skip = y.copy()
    y_skip[[0, 1]] = IGNORE_INDEX
    params = trainers["params"]

    # Execute
    result = _train(trainers[kind], params, x, y_skip, lr=0.0)

    # Assert: the mean over the 6 counted examples, as one batch of them gives
    counted = _train(trainers[kind], params, x[2:], y[2:], lr=0.0, batch_size=6)
    assert result.loss == pytest.approx(counted.loss, rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_data_whose_labels_are_all_skipped_is_refused(trainers: dict[str, Any], kind: str) -> None:
    # A device with no label to train on would upload a zero update weighted by its examples,
    # pulling the round's average towards the old model
    x, _ = _data()
    y = np.full(len(x), IGNORE_INDEX)
    with pytest.raises(TrainingDataError, match=r"every label is -100 \(skipped\)"):
        _train(trainers[kind], trainers["params"], x, y)
    with pytest.raises(TrainingDataError, match=r"every label is -100 \(skipped\)"):
        trainers[kind].check_data(x, y)


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_that_diverges_raises_naming_the_step_and_lr(
    trainers: dict[str, Any], kind: str
) -> None:
    # Prepare: an lr far too large for these inputs
    x, y = _data()

    # Execute / Assert: a clear error, not NaN parameters the encoder refuses later
    with pytest.raises(ValueError, match=r"training diverged: the loss was .* at step \d+ .*lr"):
        _train(trainers[kind], trainers["params"], x * 1000, y, epochs=20, batch_size=2, lr=1e30)


@pytest.mark.parametrize("kind", KINDS)
def test_starting_parameters_that_are_not_finite_are_refused(
    trainers: dict[str, Any], kind: str
) -> None:
    x, y = _data()
    params = trainers["params"].copy()
    params[3] = np.inf
    with pytest.raises(ValueError, match=r"params hold 1 NaN or infinite value \(the first at 3\)"):
        _train(trainers[kind], params, x, y)


def test_evaluate_on_no_examples_is_a_clear_error(trainers: dict[str, Any]) -> None:
    x, y = _data()
    with pytest.raises(ValueError, match="no examples to evaluate"):
        evaluate(trainers["torch"].module, trainers["params"], x[:0], y[:0])


@pytest.fixture(scope="module")
def token_trainer(tmp_path_factory: pytest.TempPathFactory) -> tuple[OrtTrainer, np.ndarray]:
    """A tiny embedding model (6 token ids, 4 per example) on onnxruntime, with its params."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Embedding(6, 3), torch.nn.Flatten(), torch.nn.Linear(12, 2)
    )
    root = tmp_path_factory.mktemp("h56_tokens")
    export_training_artifacts(module, torch.randint(0, 6, (2, 4)), root)
    return OrtTrainer.from_dir(root), get_flat_params(module)


@pytest.mark.parametrize(
    "x",
    [
        np.array([[0, 1, 2, 3], [1, 2, 3, 2**64 - 1]], dtype=np.uint64),  # trained on row 5
        np.array([[0, 1, 2, 3], [1, 2, 3, 2**63 + 5]], dtype=np.uint64),
        np.array([[0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 1e19]]),
    ],
    ids=["uint64-max", "uint64-past-int64", "float-past-int64"],
)
def test_token_ids_past_int64_are_refused_not_wrapped(
    token_trainer: tuple[OrtTrainer, np.ndarray], x: np.ndarray
) -> None:
    trainer, params = token_trainer
    with pytest.raises(TrainingDataError, match=r"token ids must be below 2\^63"):
        _train(trainer, params, x, np.array([0, 1]), batch_size=2)


def test_torch_refuses_negative_token_ids_before_training_as_ort_does(
    token_trainer: tuple[OrtTrainer, np.ndarray],
) -> None:
    # Prepare: the same tiny embedding model on torch; one token id is -1, in the last batch
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Embedding(6, 3), torch.nn.Flatten(), torch.nn.Linear(12, 2)
    )
    x = np.array([[0, 1, 2, 3], [1, 2, 3, 4], [5, 4, 3, 2], [1, 2, 3, -1]])
    y = np.array([0, 1, 0, 1])
    ort_trainer, _ = token_trainer
    params = get_flat_params(module)

    # Execute / Assert: both refuse it with the same words, before any step (torch raised an
    # IndexError at the batch holding it)
    for trainer in (TorchTrainer(module), ort_trainer):
        with pytest.raises(TrainingDataError, match=r"token ids must be >= 0, got -1"):
            _train(trainer, params, x, y, batch_size=1)
    np.testing.assert_array_equal(get_flat_params(module), params)


@pytest.mark.parametrize("kind", KINDS)
def test_a_loss_not_finite_before_any_update_blames_the_inputs_not_lr(
    trainers: dict[str, Any], kind: str
) -> None:
    # Prepare: finite inputs so large that the first forward pass overflows float32
    x, y = _data()
    x[:] = 3e38

    # Execute / Assert: lr has not acted yet, so the error must not blame it
    with pytest.raises(ValueError, match=r"at step 1, before any update") as caught:
        _train(trainers[kind], trainers["params"], x, y, lr=1e-3)
    assert "lr" not in str(caught.value)


@pytest.fixture(scope="module")
def mse_trainer(tmp_path_factory: pytest.TempPathFactory, export_cache: ExportCache) -> OrtTrainer:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("h56_mse")
    export_cache.export(build_model("digits_mlp"), example(4, 64), root, loss="mse")
    return OrtTrainer.from_dir(root)


def test_mse_targets_that_are_not_finite_are_refused_before_training(
    trainers: dict[str, Any], mse_trainer: OrtTrainer
) -> None:
    # Prepare: one-hot float targets, one of them NaN (before, it trained NaN parameters)
    x, labels = _data()
    y = np.eye(10, dtype=np.float32)[labels]
    y[4, 2] = np.nan

    # Execute / Assert
    with pytest.raises(TrainingDataError, match=r"y: 1 target values are NaN or infinite"):
        _train(mse_trainer, trainers["params"], x, y)
    with pytest.raises(TrainingDataError, match=r"y: 1 target values are NaN or infinite"):
        mse_trainer.check_data(x, y)


class _Tagger(torch.nn.Module):
    """One prediction per token: logits [B, C, T] (torch's cross-entropy layout)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(5, 4)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.embed(x)).permute(0, 2, 1)
        return out


def test_evaluate_averages_over_every_prediction_of_a_sequence_model() -> None:
    # Prepare: 6 sequences of 7 tokens, one label per token (as TorchTrainer.train takes)
    torch.manual_seed(0)
    module = _Tagger()
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 5, (6, 7)), rng.integers(0, 3, (6, 7))
    params = get_flat_params(module)

    # Execute
    accuracy, loss = evaluate(module, params, x, y, batch_size=4)

    # Assert: the means over the 42 predictions (before: sums over 42 divided by 6 sequences,
    # so an accuracy up to 7)
    with torch.no_grad():
        logits = module(torch.from_numpy(x))
        want_loss = float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)))
        want_acc = float((logits.argmax(1).numpy() == y).mean())
    assert accuracy == pytest.approx(want_acc)
    assert loss == pytest.approx(want_loss, rel=1e-6)


@pytest.mark.parametrize(("bad", "match"), [(IGNORE_INDEX, "class label -100"), (10, "label 10")])
def test_evaluate_refuses_labels_outside_the_classes_as_ort_does(
    trainers: dict[str, Any], bad: int, match: str
) -> None:
    # Before: -100 was counted as a wrong prediction with no loss, 10 raised torch's IndexError
    x, y = _data()
    y[3] = bad
    for run in (
        lambda: evaluate(trainers["torch"].module, trainers["params"], x, y),
        lambda: trainers["ort"].evaluate(trainers["params"], x, y),
    ):
        with pytest.raises(TrainingDataError, match=match):
            run()


@pytest.mark.parametrize(
    "x",
    [
        pytest.param(np.array([{}] * 12, dtype=object), id="objects"),
        pytest.param([[1.0] * 64] * 11 + [[1.0] * 63], id="ragged"),
        pytest.param(np.array([b"ab"] * 12), id="bytes"),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_inputs_that_are_not_numbers_are_training_data_errors(
    trainers: dict[str, Any], kind: str, x: Any
) -> None:
    # Before: onnxruntime's trainer (and torch's, for a ragged list) let numpy's TypeError or
    # ValueError out of the conversion
    _, y = _data()
    with pytest.raises(TrainingDataError, match="x"):
        trainers[kind].check_data(x, y)
    with pytest.raises(TrainingDataError, match="x"):
        _train(trainers[kind], trainers["params"], x, y)


def test_lists_of_the_wrong_shape_are_training_data_errors(trainers: dict[str, Any]) -> None:
    # Before: the message read `.shape` off the list given, an AttributeError
    x, y = _data()
    # (since 38b667f the ORT trainer prints shapes in torch's words: [12, 63], not a tuple)
    with pytest.raises(TrainingDataError, match=r"x of shape \[12, 63\]"):
        trainers["ort"].check_data(x[:, :63].tolist(), y)
    with pytest.raises(TrainingDataError, match=r"labels of shape \[12, 1\]"):
        trainers["ort"].check_data(x, y[:, None].tolist())
