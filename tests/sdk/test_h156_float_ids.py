"""Float token ids, second round (helper-154's review of 5fc8c11):

- `TorchTrainer` refused a bad float id only in the first example (its probe ran `x[:1]`, and
  its vocabulary search took integer inputs only): id -1 or 7 (= the vocabulary) elsewhere was
  an IndexError mid-run, 2.5 trained truncated. It now refuses them before any step, in
  `OrtTrainer`'s words, from the same detection as the export's.
- The export's detection took any embedding whose read equalled `example_x.long()` for token
  ids: a model bucketing continuous features with `emb(x.long())` was refused, and a flag
  embedding reading `(x > 0.5).long()` recorded a vocabulary from a 0/1 example, so the device
  refused ordinary pixel data. A non-whole example now records nothing, and a read is taken for
  ids only if it is the cast of two probe inputs too (zeros, and negative whole numbers).
- `OrtTrainer` said `got -1.0` for a float id, and float16 ids warned of an overflow in a cast.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sdk.onnx_export import export_training_artifacts
from sdk.ort import OrtTrainer
from sdk.trainer import TorchTrainer, TrainingDataError, evaluate
from tests.sdk.test_h149_float_ids import SEQ, VOCAB, _data, _flat, _Ids

F = 6


class _Bucket(nn.Module):
    """Continuous features in [0, 10), one learned vector per unit bucket."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 3)
        self.head = nn.Linear(3 * F, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.emb(x.long()).flatten(1))
        return out


class _Flagged(nn.Module):
    """Pixel intensities, plus a learned offset for "on" pixels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(F, 4)
        self.flag = nn.Embedding(2, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x) + self.flag((x > 0.5).long()).sum(1)
        out: torch.Tensor = self.head(torch.tanh(h))
        return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("float_ids_156")
    ids = torch.randint(0, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(0))
    export_training_artifacts(_Ids(), ids.float(), out)
    return out


@pytest.mark.parametrize(
    "where,bad", [((1, 2), -1.0), ((1, 2), 7.0), ((1, 2), 2.5), ((0, 0), 2.5), ((5, 4), -3.0)]
)
def test_torch_trainer_refuses_a_bad_float_id_anywhere_before_any_step_in_ort_words(
    exported: Path, where: tuple[int, int], bad: float
) -> None:
    # Prepare
    x, y = _data()
    x[where] = bad
    module = _Ids()
    calls: list[int] = []
    module.register_forward_pre_hook(lambda m, a: calls.append(1))
    with pytest.raises(TrainingDataError) as ort:
        OrtTrainer.from_dir(exported).check_data(x, y)

    # Execute / Assert: the same words, and no forward pass on the data (so no step)
    with pytest.raises(TrainingDataError) as info:
        TorchTrainer(module).train(
            _flat(), x, y, epochs=1, batch_size=2, lr=0.1, rng=np.random.default_rng(0)
        )
    assert str(info.value) == str(ort.value)
    assert "token ids must be" in str(info.value)
    assert len(calls) <= 2  # the detection's two probe passes, not a training step
    with pytest.raises(TrainingDataError) as ev:
        evaluate(_Ids(), _flat(), x, y)
    assert str(ev.value) == str(ort.value)


def test_ort_names_a_negative_float_id_as_an_integer(exported: Path) -> None:
    x, y = _data()
    x[1, 2] = -1
    with pytest.raises(TrainingDataError, match=r"token ids must be >= 0, got -1$"):
        OrtTrainer.from_dir(exported).check_data(x, y)


def test_float16_ids_are_checked_without_an_overflow_warning(exported: Path) -> None:
    x, y = _data()
    trainer = OrtTrainer.from_dir(exported)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # a socket an earlier test left to the collector is not this code's warning
        warnings.simplefilter("ignore", ResourceWarning)
        trainer.check_data(x.astype(np.float16), y)
        bad = x.astype(np.float16)
        bad[2, 1] = np.float16(60000)
        with pytest.raises(TrainingDataError, match="below 7"):
            trainer.check_data(bad, y)
        big = OrtTrainer.from_dir(exported)
        big.manifest = dataclasses.replace(big.manifest, x_vocab=100_000)
        big.check_data(x.astype(np.float16), y)  # a vocabulary float16 cannot hold


def test_a_bucketing_model_exports_from_continuous_features_and_takes_them(
    tmp_path: Path,
) -> None:
    # Prepare: features in [0, 10), as the model expects
    torch.set_num_threads(1)
    example = torch.rand(4, F, generator=torch.Generator().manual_seed(0)) * 10
    data = (np.random.default_rng(1).random((6, F)) * 10).astype(np.float32)
    y = np.arange(6) % 2

    # Execute
    export_training_artifacts(_Bucket(), example, tmp_path)

    # Assert: no vocabulary recorded; both trainers take the features
    assert "vocab" not in json.loads((tmp_path / "manifest.json").read_text())["x"]
    OrtTrainer.from_dir(tmp_path).check_data(data, y)
    flat = np.concatenate([p.detach().numpy().ravel() for p in _Bucket().parameters()])
    TorchTrainer(_Bucket()).train(
        flat, data, y, epochs=1, batch_size=3, lr=0.1, rng=np.random.default_rng(0)
    )


def test_a_flag_embedding_is_not_taken_for_token_ids_from_a_binary_example(
    tmp_path: Path,
) -> None:
    # Prepare: a 0/1 example, where (x > 0.5).long() equals x.long()
    torch.set_num_threads(1)
    example = torch.randint(0, 2, (4, F), generator=torch.Generator().manual_seed(0)).float()
    pixels = np.random.default_rng(1).random((5, F)).astype(np.float32)

    # Execute
    export_training_artifacts(_Flagged(), example, tmp_path)

    # Assert
    assert "vocab" not in json.loads((tmp_path / "manifest.json").read_text())["x"]
    OrtTrainer.from_dir(tmp_path).check_data(pixels, np.arange(5) % 2)
    TorchTrainer(_Flagged()).check_data(example.numpy(), np.arange(4) % 2)


def test_a_float_example_with_a_fraction_records_no_vocabulary(tmp_path: Path) -> None:
    # Whole numbers are what token ids are; a fraction says the model reads features.
    torch.set_num_threads(1)
    x = torch.zeros(3, SEQ)
    x[2, 1] = 2.5
    export_training_artifacts(_Ids(), x, tmp_path)
    assert "vocab" not in json.loads((tmp_path / "manifest.json").read_text())["x"]
