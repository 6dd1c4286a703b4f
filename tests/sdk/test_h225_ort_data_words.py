"""`OrtTrainer` refuses the training data `TorchTrainer` refuses, with the same words
(helper-221's finding: integer x into a float graph was cast and trained on, raw uint8 pixels
unnormalized; float labels with whole values were accepted; shapes printed as Python tuples;
"at least one example" lacked the `training data:` prefix)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sdk import TrainingDataError
from sdk.flat import get_flat_params
from sdk.onnx_export import export_training_artifacts
from sdk.ort import OrtTrainer
from sdk.trainer import TorchTrainer, evaluate


class _FloatIds(nn.Module):
    """Reads float32 token ids through a cast, as mobile_sim's text models do."""

    def __init__(self) -> None:
        super().__init__()
        self.e = nn.Embedding(7, 4)
        self.f = nn.Flatten()
        self.l = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.l(self.f(self.e(x.long())))
        return out


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> tuple[OrtTrainer, TorchTrainer, np.ndarray]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
    out: Path = tmp_path_factory.mktemp("dense")
    export_training_artifacts(model, torch.rand(4, 6), out)
    return OrtTrainer.from_dir(out), TorchTrainer(model), get_flat_params(model)


def _errors(
    trainers: tuple[OrtTrainer, TorchTrainer, np.ndarray], x: object, y: object
) -> list[str]:
    ort_trainer, torch_trainer, params = trainers
    words = []
    for trainer in (ort_trainer, torch_trainer):
        with pytest.raises(TrainingDataError) as info:
            trainer.train(
                params, x, y, epochs=1, batch_size=4, lr=0.1, rng=np.random.default_rng(1)
            )  # type: ignore[arg-type]
        words.append(str(info.value))
    with pytest.raises(TrainingDataError) as again:
        ort_trainer.check_data(x, y)  # type: ignore[arg-type]
    assert str(again.value) == words[0]
    return words


_RNG = np.random.default_rng(0)
_X = _RNG.random((8, 6), dtype=np.float32)
_Y = _RNG.integers(0, 4, 8)


@pytest.mark.parametrize(
    "y",
    [_Y.astype(np.float32), _Y.astype(np.float64), _Y > 1, _Y[:, None], _Y[:7], _Y[:1].reshape(())],
    ids=["float32", "float64", "bool", "column", "short", "scalar"],
)
def test_labels_are_refused_in_torchs_words(
    dense: tuple[OrtTrainer, TorchTrainer, np.ndarray], y: np.ndarray
) -> None:
    ours, theirs = _errors(dense, _X, y)
    assert ours == theirs


def test_no_example_is_refused_in_torchs_words(
    dense: tuple[OrtTrainer, TorchTrainer, np.ndarray],
) -> None:
    ours, theirs = _errors(dense, _X[:0], _Y[:0])
    assert ours == theirs == "training data: a device needs at least one example to train"


@pytest.mark.parametrize("dtype", ["uint8", "int64", "int32", "bool"])
def test_integer_inputs_into_a_float_graph_are_refused(
    dense: tuple[OrtTrainer, TorchTrainer, np.ndarray], dtype: str
) -> None:
    """Raw uint8 pixels were cast to float32 and trained on unnormalized."""
    x = (_X * 255).astype(dtype)
    ours, theirs = _errors(dense, x, _Y)
    prefix = f"training data: x of shape [8, 6] ({dtype}) does not fit the model: "
    assert theirs.startswith(prefix)
    assert ours == prefix + "it takes float32 inputs; scale and cast integer data to floats first"


def test_wrong_input_shape_is_refused_with_torchs_prefix(
    dense: tuple[OrtTrainer, TorchTrainer, np.ndarray],
) -> None:
    ours, theirs = _errors(dense, _X[:, :5], _Y)
    prefix = "training data: x of shape [8, 5] (float32) does not fit the model: "
    assert theirs.startswith(prefix)
    assert ours == prefix + "it takes x of shape [B, 6]"


def test_float64_inputs_are_still_cast(dense: tuple[OrtTrainer, TorchTrainer, np.ndarray]) -> None:
    """The one documented difference (docs/devices.md): float x of another float dtype."""
    ort_trainer, _, params = dense
    kw = {"epochs": 1, "batch_size": 4, "lr": 0.1}
    a = ort_trainer.train(params, _X.astype(np.float64), _Y, rng=np.random.default_rng(1), **kw)
    b = ort_trainer.train(params, _X, _Y, rng=np.random.default_rng(1), **kw)
    np.testing.assert_array_equal(a.params, b.params)


def test_integer_ids_into_a_float_id_graph_still_train(tmp_path: Path) -> None:
    """A float32 graph that records a vocabulary reads x through a cast: torch takes integer
    ids there too, and so does the device."""
    torch.manual_seed(0)
    model = _FloatIds()
    ids = np.random.default_rng(0).integers(0, 7, (8, 3))
    export_training_artifacts(model, torch.tensor(ids[:4]).float(), tmp_path)
    trainer = OrtTrainer.from_dir(tmp_path)
    assert trainer.manifest.x_vocab == 7
    params = get_flat_params(model)
    kw = {"epochs": 1, "batch_size": 4, "lr": 0.1}
    ours = trainer.train(params, ids, _Y % 3, rng=np.random.default_rng(1), **kw)
    theirs = TorchTrainer(model).train(params, ids, _Y % 3, rng=np.random.default_rng(1), **kw)
    np.testing.assert_allclose(ours.params, theirs.params, rtol=1e-5, atol=1e-6)


def test_evaluation_and_prediction_inputs_are_not_called_training_data(
    dense: tuple[OrtTrainer, TorchTrainer, np.ndarray],
) -> None:
    """Stop 48 (helper-400): the ONNX side's evaluate and predict named a misfit x "training
    data"; evaluate now says "evaluation data" as `sdk.trainer.evaluate` does."""
    ort_trainer, torch_trainer, params = dense
    x = _X[:, :5]
    with pytest.raises(TrainingDataError) as ours:
        ort_trainer.evaluate(params, x, _Y)
    with pytest.raises(TrainingDataError) as theirs:
        evaluate(torch_trainer.module, params, x, _Y)
    prefix = "evaluation data: x of shape [8, 5] (float32) does not fit the model: "
    assert str(theirs.value).startswith(prefix), theirs.value
    assert str(ours.value) == prefix + "it takes x of shape [B, 6]"
    with pytest.raises(TrainingDataError) as predicted:
        ort_trainer.predict(params, x)
    assert str(predicted.value).startswith("prediction input: x of shape [8, 5]")
