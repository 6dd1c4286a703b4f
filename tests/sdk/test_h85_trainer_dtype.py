"""What `sdk.trainer` says about inputs its model's forward pass refuses.

The README's example with sklearn's digits (`load_digits().data` is float64) failed
`TorchTrainer.check_data`, and so `Client.participate`, with torch's `mat1 and mat2 must have
the same dtype, but got Double and Float`, which does not say which side to change (or that
`sdk.ort.OrtTrainer` casts such inputs itself): the message now ends with the cast that fits.
`evaluate` raised torch's own RuntimeError (a wrong shape or dtype) or IndexError (a token id
past the vocabulary) instead of `train`'s `TrainingDataError`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sdk import TrainingDataError
from sdk.trainer import TorchTrainer, evaluate


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(20, 8)), rng.integers(0, 3, 20)  # x float64, as sklearn gives


def _params(model: nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().copy()


@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_a_float_input_of_another_dtype_is_told_the_cast(dtype: str) -> None:
    x, y = _data()
    with pytest.raises(
        TrainingDataError,
        match=rf"\({dtype}\) does not fit the model: .*; the model's parameters are float32: "
        r"pass x\.astype\(np\.float32\)$",
    ):
        TorchTrainer(_model()).check_data(x.astype(dtype), y)


def test_no_cast_is_suggested_for_another_misfit() -> None:
    # float32 of the wrong width: the shape is the problem, no dtype hint
    x, y = _data()
    with pytest.raises(TrainingDataError, match=r"cannot be multiplied \(1x7 and 8x16\)$"):
        TorchTrainer(_model()).check_data(x[:, :7].astype(np.float32), y)


def test_the_cast_suggested_trains() -> None:
    x, y = _data()
    model = _model()
    result = TorchTrainer(model).train(
        _params(model), x.astype(np.float32), y, epochs=1, batch_size=8, lr=0.1,
        rng=np.random.default_rng(1),
    )  # fmt: skip
    assert result.num_examples == 20 and np.isfinite(result.loss)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda x: x, r"evaluation data: x of shape \[20, 8\] \(float64\) does not fit the model"),
        (lambda x: x[:, :5].astype(np.float32), r"x of shape \[20, 5\] \(float32\) does not fit"),
    ],
)
def test_evaluate_refuses_a_misfit_input_in_trains_words(change: object, match: str) -> None:
    x, y = _data()
    model = _model()
    with pytest.raises(TrainingDataError, match=match):
        evaluate(model, _params(model), change(x), y)  # type: ignore[operator]


def test_evaluate_refuses_a_token_id_past_the_vocabulary() -> None:
    # Prepare: an embedding model of 5 tokens, one id 7 in the evaluation set
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(5, 4), nn.Flatten(), nn.Linear(12, 3))
    x = np.random.default_rng(0).integers(0, 5, (10, 3))
    x[6, 1] = 7
    y = np.zeros(10, np.int64)
    # Execute / Assert: train's words (was torch's IndexError)
    with pytest.raises(TrainingDataError, match=r"token ids must be below 5.*got 7"):
        evaluate(model, _params(model), x, y)
