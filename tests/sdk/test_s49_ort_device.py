"""`OrtDevice.run_round(codec=...)` encodes that round only (s49 review, item 10), and
`OrtTrainer.train` refuses an rng that is no Generator (item 12).

The docstring said "`codec` overrides the config", but the override was kept for every later
round (`UpdateEncoder.set_config`): a device asked for one denser warm-up round sent every
later one at that size. Now the config is put back when the call returns or raises; the
error-feedback residual carries over either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from compression import CodecConfig
from sdk import TrainingCancelled
from sdk.flat import get_flat_params
from sdk.onnx_export import export_training_artifacts
from sdk.ort import OrtDevice, OrtTrainer

SPARSE = CodecConfig(topk=0.05, bits=4)
DENSE = CodecConfig(topk=0.5, bits=8)


@pytest.fixture(scope="module")
def model_and_artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    out = tmp_path_factory.mktemp("s49_ort") / "art"
    export_training_artifacts(model, torch.randn(4, 16), out)
    return model, out


def _device(art: Path) -> OrtDevice:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 16)).astype(np.float32)
    y = rng.integers(0, 4, 40)
    return OrtDevice(OrtTrainer.from_dir(art), x, y, codec=SPARSE, batch_size=8)


def test_a_codec_given_to_run_round_encodes_that_round_only(
    model_and_artifacts: tuple[nn.Module, Path],
) -> None:
    # Prepare: a device asked for a dense round in the middle
    model, art = model_and_artifacts
    params = get_flat_params(model)
    asked = _device(art)

    # Execute
    frames = []
    for codec in (None, DENSE, None):
        frames.append(asked.run_round(params, np.random.default_rng(3), codec=codec).frame)

    # Assert: the dense round is larger; the next is encoded with the device's own config again
    assert asked.encoder.config == SPARSE
    assert len(frames[1]) > 2 * len(frames[0])
    assert len(frames[2]) < len(frames[1]) / 2


def test_the_config_is_put_back_when_the_round_raises(
    model_and_artifacts: tuple[nn.Module, Path],
) -> None:
    # Prepare
    model, art = model_and_artifacts
    device = _device(art)

    class _Stop:
        def is_set(self) -> bool:
            return True

    # Execute
    with pytest.raises(TrainingCancelled):
        device.run_round(
            get_flat_params(model), np.random.default_rng(3), codec=DENSE, cancel=_Stop()
        )

    # Assert
    assert device.encoder.config == SPARSE


@pytest.mark.parametrize("rng", [None, 0, np.random.RandomState(0)])
def test_ort_train_refuses_an_rng_that_is_no_generator(
    model_and_artifacts: tuple[nn.Module, Path], rng: Any
) -> None:
    # Prepare
    model, art = model_and_artifacts
    x = np.zeros((8, 16), np.float32)
    y = np.zeros(8, np.int64)

    # Execute / Assert
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        OrtTrainer.from_dir(art).train(
            get_flat_params(model), x, y, epochs=1, batch_size=4, lr=0.1, rng=rng
        )


def test_ort_train_reads_a_read_only_params_view(
    model_and_artifacts: tuple[nn.Module, Path],
) -> None:
    # Prepare: as sdk.Client passes the round's model
    model, art = model_and_artifacts
    params = get_flat_params(model)
    view = params.view()
    view.flags.writeable = False
    x = np.random.default_rng(2).standard_normal((8, 16)).astype(np.float32)
    y = np.arange(8) % 4

    # Execute
    got = OrtTrainer.from_dir(art).train(
        view, x, y, epochs=1, batch_size=4, lr=0.1, rng=np.random.default_rng(0)
    )
    want = OrtTrainer.from_dir(art).train(
        params.copy(), x, y, epochs=1, batch_size=4, lr=0.1, rng=np.random.default_rng(0)
    )

    # Assert
    assert np.array_equal(got.params, want.params)
    assert not np.shares_memory(got.params, params)
