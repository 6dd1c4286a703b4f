"""`TorchTrainer.train` and `OrtTrainer.train` take `cancel`: read before each minibatch step,
they raise `TrainingCancelled` (no result) within one step of it being set, and train exactly
as before while it is not set. `OrtDevice.run_round` passes it on, encoding nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compression import CodecConfig
from mobile_sim.models import build_model
from sdk import LocalTrainer
from sdk._types import TrainingCancelled
from sdk.flat import get_flat_params
from sdk.ort import OrtDevice, OrtTrainer
from sdk.trainer import TorchTrainer
from tests._export_cache import ExportCache, example

STEPS_PER_EPOCH = 4  # 40 examples, batches of 10


class SetOnRead:
    """A cancel flag that reads as set from its `after`-th read on, counting the reads."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.reads = 0

    def is_set(self) -> bool:
        self.reads += 1
        return self.reads >= self.after


@pytest.fixture(scope="module")
def trainers(
    tmp_path_factory: pytest.TempPathFactory, export_cache: ExportCache
) -> dict[str, LocalTrainer]:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("h97_ort")
    export_cache.export(build_model("digits_mlp"), example(4, 64), root, model_name="digits_mlp")
    return {
        "torch": TorchTrainer(build_model("digits_mlp")),
        "ort": OrtTrainer.from_dir(Path(root)),
    }


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 64)).astype(np.float32)
    y = rng.integers(0, 10, 40).astype(np.int64)
    torch.manual_seed(1)
    params = get_flat_params(build_model("digits_mlp"))
    return params, x, y


@pytest.mark.parametrize("kind", ["torch", "ort"])
@pytest.mark.parametrize("after", [1, 2, 6])
def test_train_stops_before_the_step_that_reads_the_flag_set(
    trainers: dict[str, LocalTrainer], kind: str, after: int
) -> None:
    params, x, y = _data()
    flag = SetOnRead(after)
    with pytest.raises(TrainingCancelled) as caught:
        trainers[kind].train(  # type: ignore[call-arg]
            params, x, y, epochs=2, batch_size=10, lr=0.1, rng=np.random.default_rng(0),
            cancel=flag,
        )  # fmt: skip
    assert caught.value.steps == after - 1  # the steps before the read that saw it set
    assert flag.reads == after


@pytest.mark.parametrize("kind", ["torch", "ort"])
def test_train_with_a_flag_never_set_trains_as_without_one(
    trainers: dict[str, LocalTrainer], kind: str
) -> None:
    params, x, y = _data()
    flag = SetOnRead(10**9)
    common = {"epochs": 2, "batch_size": 10, "lr": 0.1}
    plain = trainers[kind].train(params, x, y, rng=np.random.default_rng(0), **common)  # type: ignore[arg-type]
    read = trainers[kind].train(  # type: ignore[call-arg]
        params, x, y, rng=np.random.default_rng(0), cancel=flag, **common
    )
    assert np.array_equal(plain.params, read.params)
    assert (plain.num_examples, plain.loss) == (read.num_examples, read.loss)
    assert flag.reads == 2 * STEPS_PER_EPOCH


def test_ort_device_run_round_cancelled_encodes_nothing(
    trainers: dict[str, LocalTrainer],
) -> None:
    params, x, y = _data()
    trainer = trainers["ort"]
    assert isinstance(trainer, OrtTrainer)
    device = OrtDevice(trainer, x, y, codec=CodecConfig(topk=0.1, bits=8), batch_size=10)
    device.run_round(params, np.random.default_rng(1))  # a residual a cancel must not touch
    before = device.encoder.feedback.residual.copy()
    assert np.any(before != 0)
    with pytest.raises(TrainingCancelled):
        device.run_round(params, np.random.default_rng(0), cancel=SetOnRead(3))
    assert np.array_equal(device.encoder.feedback.residual, before)
    device.run_round(params, np.random.default_rng(0))  # and the next round runs
    assert not np.array_equal(device.encoder.feedback.residual, before)
