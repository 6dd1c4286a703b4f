"""`TorchTrainer` given raw integer pixels (`uint8`, the dtype images decode to) for a float
model says what to do, as `sdk.ort` does ("scale and cast integer data to floats first"):
before, its message was torch's own `mat1 and mat2 must have the same dtype, but got Byte and
Float`, which does not say which side to change. Token ids of an embedding model, and an
integer input whose float cast would not fit either, get no such hint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sdk import TrainingDataError
from sdk.trainer import TorchTrainer

HINT = "scale and cast integer data to floats first"


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.bool_])
def test_integer_inputs_into_a_float_model_name_the_cast(dtype: type) -> None:
    # Prepare
    x = (np.random.default_rng(0).random((6, 1, 4, 4)) * 255).astype(dtype)
    y = np.arange(6) % 3

    # Execute
    with pytest.raises(TrainingDataError) as caught:
        TorchTrainer(_mlp()).check_data(x, y)

    # Assert: torch's reason, then the fix; the cast it names trains
    message = str(caught.value)
    assert message.startswith(f"training data: x of shape [6, 1, 4, 4] ({np.dtype(dtype)})")
    assert f"it takes float32 inputs: {HINT} (for 8-bit pixels, x.astype(np.float32) / 255)" in (
        message
    )
    TorchTrainer(_mlp()).check_data((x.astype(np.float32) / 255), y)


def test_no_hint_where_a_float_cast_does_not_fit_either() -> None:
    # Prepare: integer pixels of the wrong shape, and token ids of the wrong length
    pixels = np.zeros((6, 1, 3, 3), np.uint8)
    torch.manual_seed(0)
    tokens = nn.Sequential(nn.Embedding(50, 4), nn.Flatten(), nn.Linear(4 * 6, 3))
    ids = np.zeros((6, 5), np.int64)
    y = np.arange(6) % 3

    # Execute / Assert
    for trainer, x in ((TorchTrainer(_mlp()), pixels), (TorchTrainer(tokens), ids)):
        with pytest.raises(TrainingDataError, match="does not fit the model") as caught:
            trainer.check_data(x, y)
        assert HINT not in str(caught.value)
