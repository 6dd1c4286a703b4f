"""`sdk.ort.load_manifest` compares the manifest's x vocab with the spec (helper-221's finding:
edited from 17 to 100, an out-of-range token id failed in onnxruntime only at the batch holding
it, after the batches before it had trained)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from sdk import TrainingDataError
from sdk.flat import get_flat_params
from sdk.onnx_export import export_training_artifacts
from sdk.ort import ArtifactError, OrtTrainer, load_manifest


class _Ids(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.e = nn.Embedding(17, 4)
        self.f = nn.Flatten()
        self.l = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.l(self.f(self.e(x)))
        return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    torch.manual_seed(0)
    model = _Ids()
    out: Path = tmp_path_factory.mktemp("ids")
    export_training_artifacts(model, torch.randint(0, 17, (4, 3)), out)
    return out, get_flat_params(model)


def _edited(src: Path, dst: Path, vocab: int) -> Path:
    dst.mkdir()
    for name in ("infer.onnx", "train_step.onnx"):
        (dst / name).write_bytes((src / name).read_bytes())
    manifest = json.loads((src / "manifest.json").read_text())
    assert manifest["x"]["vocab"] == 17
    manifest["x"]["vocab"] = vocab
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.mark.parametrize("vocab", [100, 16, 18])
def test_edited_vocab_is_refused_at_load(
    exported: tuple[Path, np.ndarray], tmp_path: Path, vocab: int
) -> None:
    folder = _edited(exported[0], tmp_path / "edited", vocab)
    with pytest.raises(ArtifactError, match=rf"x vocab {vocab} is the row count of no embedding"):
        load_manifest(folder)


def test_ids_past_the_vocab_are_refused_before_any_step(
    exported: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the vocabulary the export wrote, the whole dataset is checked up front."""
    # Prepare: count the training steps (the momentum probe's too) and the training graph's runs
    folder, params = exported
    trainer = OrtTrainer.from_dir(folder)
    steps: list[int] = []
    runs: list[int] = []
    step, session = trainer.step, trainer._train

    def counted_step(*args: Any, **kwargs: Any) -> Any:
        steps.append(1)
        return step(*args, **kwargs)

    class _CountedSession:
        def __getattr__(self, name: str) -> Any:
            return getattr(session, name)

        def run(self, *args: Any, **kwargs: Any) -> Any:
            runs.append(1)
            return session.run(*args, **kwargs)

    monkeypatch.setattr(trainer, "step", counted_step)
    monkeypatch.setattr(trainer, "_train", _CountedSession())
    x = np.random.default_rng(0).integers(0, 17, (40, 3))
    x[-1, 0] = 17  # in the last batch
    y = np.zeros(40, dtype=np.int64)

    # Execute / Assert: refused, and nothing trained first
    with pytest.raises(TrainingDataError, match=r"token ids must be below 17"):
        trainer.check_data(x, y)
    with pytest.raises(TrainingDataError, match=r"token ids must be below 17"):
        trainer.train(params, x, y, epochs=1, batch_size=8, lr=0.1, rng=np.random.default_rng(1))
    assert (steps, runs) == ([], [])

    # and the counters see steps: the same data with the id in range trains
    x[-1, 0] = 16
    trainer.train(params, x, y, epochs=1, batch_size=8, lr=0.1, rng=np.random.default_rng(1))
    assert len(steps) >= 5 and len(runs) == len(steps)
