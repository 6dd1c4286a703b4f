"""Float token ids, third round (helper-160's review of 3bb55af):

- A model whose forward pass refused one of the detection's probes (an RNN packing by the count
  of non-zero ids fails on all zeros, ``F.one_hot`` on negative ids) got no vocabulary: no check
  in `TorchTrainer` (IndexError mid-run) and none recorded by the export (the device trained on
  id -1). A refused probe is now replaced by positive whole numbers, and the export falls back
  to the example when the detection still finds nothing.
- `TorchTrainer` checked no float id when at least half of the examples held a fraction: -1 or
  7 (= the vocabulary) elsewhere was an IndexError mid-run. Values torch can never run (not
  finite, truncating outside the vocabulary) are now refused whatever the rule decides.
- `evaluate` with an infinite float id raised OverflowError.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from sdk.onnx_export import _float_id_vocabulary, export_training_artifacts
from sdk.ort import OrtTrainer
from sdk.trainer import TorchTrainer, TrainingDataError, evaluate, float_id_reader
from tests.sdk.test_h149_float_ids import SEQ, VOCAB, _data, _flat, _Ids


class _Packed(nn.Module):
    """Pad id 0; sequences are packed by their non-pad length (fails on an all-pad batch)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(VOCAB, 4, padding_idx=0)
        self.rnn = nn.GRU(4, 4, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()
        lengths = (ids != 0).sum(1)
        packed = pack_padded_sequence(
            self.emb(ids), lengths, batch_first=True, enforce_sorted=False
        )
        _, h = self.rnn(packed)
        out: torch.Tensor = self.head(h[-1])
        return out


class _OneHotToo(nn.Module):
    """An embedding and a one-hot of the same ids (one_hot fails on negative ids)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(VOCAB, 4)
        self.head = nn.Linear(4 * SEQ + VOCAB * SEQ, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()
        hot = nn.functional.one_hot(ids, VOCAB).float().flatten(1)
        out: torch.Tensor = self.head(torch.cat([self.emb(ids).flatten(1), hot], 1))
        return out


class _OneBased(nn.Module):
    """Ids from 1: the one-hot of ``ids - 1`` fails on zeros and on negative ids."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(VOCAB, 4)
        self.head = nn.Linear(4 * SEQ + (VOCAB - 1) * SEQ, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()
        hot = nn.functional.one_hot(ids - 1, VOCAB - 1).float().flatten(1)
        out: torch.Tensor = self.head(torch.cat([self.emb(ids).flatten(1), hot], 1))
        return out


def _params(module: nn.Module) -> np.ndarray:
    return np.concatenate([p.detach().numpy().ravel() for p in module.parameters()])


def _positive() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(1, VOCAB, (4, SEQ)).astype(np.float32), np.arange(4) % 3


@pytest.mark.parametrize("model", [_Packed, _OneHotToo])
def test_a_model_refusing_one_probe_still_has_its_float_ids_found(model: type[nn.Module]) -> None:
    torch.set_num_threads(1)
    assert float_id_reader(model(), (SEQ,), torch.float32) == (VOCAB, "emb")


@pytest.mark.parametrize("model", [_Packed, _OneHotToo])
@pytest.mark.parametrize("bad", [-1.0, 7.0, 2.5])
def test_torch_trainer_refuses_a_bad_id_before_any_step_when_a_probe_fails(
    model: type[nn.Module], bad: float
) -> None:
    # Prepare
    torch.set_num_threads(1)
    x, y = _positive()
    x[3, 1] = bad
    module = model()
    flat = _params(module)
    steps: list[int] = []
    module.register_forward_hook(lambda m, a, o: steps.append(int(torch.is_grad_enabled())))

    # Execute
    with pytest.raises(TrainingDataError, match="token ids must be"):
        TorchTrainer(module).train(
            flat, x, y, epochs=1, batch_size=1, lr=0.1, rng=np.random.default_rng(0)
        )

    # Assert: only no-grad passes (the detection's probes), no training step
    assert not any(steps)


def test_the_export_records_the_vocabulary_of_a_model_refusing_a_probe(tmp_path: Path) -> None:
    # Prepare
    torch.set_num_threads(1)
    x, y = _positive()

    # Execute
    export_training_artifacts(_OneHotToo(), torch.from_numpy(x), tmp_path)

    # Assert: recorded, and the device refuses id -1 (onnxruntime's Gather reads it as row 6)
    assert json.loads((tmp_path / "manifest.json").read_text())["x"]["vocab"] == VOCAB
    x[3, 1] = -1
    with pytest.raises(TrainingDataError, match="token ids must be >= 0, got -1$"):
        OrtTrainer.from_dir(tmp_path).check_data(x, y)


def test_the_export_falls_back_to_a_whole_example_when_the_probes_fail(tmp_path: Path) -> None:
    # Prepare: the model refuses zeros and negative ids, so only one probe passes
    torch.set_num_threads(1)
    assert float_id_reader(_OneBased(), (SEQ,), torch.float32) is None
    x, y = _positive()

    # Execute
    export_training_artifacts(_OneBased(), torch.from_numpy(x), tmp_path)

    # Assert
    assert json.loads((tmp_path / "manifest.json").read_text())["x"]["vocab"] == VOCAB
    x[0, 0] = 7
    with pytest.raises(TrainingDataError, match="below 7"):
        OrtTrainer.from_dir(tmp_path).check_data(x, y)


@pytest.mark.parametrize(
    "bad,words",
    [
        (-1.0, "token ids must be >= 0, got -1$"),
        (-1.5, r"token ids must be >= 0, got -1\.5$"),
        (7.0, "token ids must be below 7, .* got 7 "),
        (7.5, r"token ids must be below 7, .* got 7\.5 "),
    ],
)
def test_mostly_fractional_float_ids_torch_cannot_run_are_refused_before_any_step(
    bad: float, words: str
) -> None:
    # Prepare: 3 of 4 examples hold a fraction (features by the at-least-half rule)
    torch.set_num_threads(1)
    x, y = _data()
    x, y = x[:4], y[:4]
    x[0, 0], x[1, 0], x[2, 0] = 2.5, 3.5, 1.5
    x[3, 4] = bad
    module = _Ids()
    steps: list[int] = []
    module.register_forward_hook(lambda m, a, o: steps.append(int(torch.is_grad_enabled())))

    # Execute / Assert
    with pytest.raises(TrainingDataError, match=words):
        TorchTrainer(module).train(
            _flat(), x, y, epochs=1, batch_size=1, lr=0.1, rng=np.random.default_rng(0)
        )
    assert not any(steps)
    with pytest.raises(TrainingDataError, match=words):
        evaluate(_Ids(), _flat(), x, y)


def test_mostly_fractional_float_features_in_range_still_train() -> None:
    # The at-least-half rule still decides the "whole numbers" refusal: features truncated
    # into the table are what a bucketing model reads.
    torch.set_num_threads(1)
    x, y = _data()
    x[:4] += 0.5
    TorchTrainer(_Ids()).train(
        _flat(), x, y, epochs=1, batch_size=2, lr=0.1, rng=np.random.default_rng(0)
    )


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("count", [1, 4])
def test_evaluate_refuses_non_finite_float_ids_as_not_whole_numbers(bad: float, count: int) -> None:
    x, y = _data()
    x[:count, 1] = bad
    with pytest.raises(TrainingDataError, match="^token ids must be whole numbers$"):
        evaluate(_Ids(), _flat(), x, y)


class _FlagRefusingProbes(nn.Module):
    """A flag embedding ``(x > 0.5).long()``, in a forward pass that refuses rows of zeros and
    negative values (so the export goes by the example)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.flag = nn.Embedding(2, 3)
        self.head = nn.Linear(3 * SEQ, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < 0).any()) or bool((x.sum(1) == 0).any()):
            raise ValueError("rows of pixels that are all off, or negative")
        out: torch.Tensor = self.head(self.flag((x > 0.5).long()).flatten(1))
        return out


def test_the_example_fallback_takes_no_flag_for_ids_from_a_binary_example() -> None:
    torch.set_num_threads(1)
    model = _FlagRefusingProbes()
    assert float_id_reader(model, (SEQ,), torch.float32) is None
    example = torch.ones(3, SEQ)
    example[1, 2] = 0
    assert _float_id_vocabulary(model, example) is None  # (x > 0.5).long() == x.long() here
