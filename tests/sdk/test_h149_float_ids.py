"""Token ids held as float32 (as mobile_sim's text datasets hold them) for an embedding model.

The export recorded a vocabulary only for int64 `example_x`, so an artifact exported with float
ids ran no id checks on the device: onnxruntime's Gather read id -1 as the last row (a silently
wrong update, uploaded) where `TorchTrainer` refuses it, and an id past the vocabulary failed
inside onnxruntime mid-training. Now the export records the vocabulary of the embedding reading
float ids too, and `OrtTrainer` checks ids (whole, >= 0, below it) whenever one is recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from coordinator.cli import main
from sdk.onnx_export import ExampleInputError, export_training_artifacts
from sdk.ort import ArtifactError, OrtTrainer, load_manifest
from sdk.trainer import TorchTrainer, TrainingDataError

VOCAB = 7
SEQ = 5


class _Ids(nn.Module):
    """Reads float token ids through `x.long()`, plus a position table (which bounds nothing)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tok = nn.Embedding(VOCAB, 3)
        self.pos = nn.Embedding(SEQ, 3)
        self.head = nn.Linear(3 * SEQ, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        out: torch.Tensor = self.head(h.flatten(1))
        return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("float_ids")
    ids = torch.randint(0, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(0))
    export_training_artifacts(_Ids(), ids.float(), out)
    return out


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, VOCAB, (6, SEQ)).astype(np.float32)
    return x, np.arange(6) % 4


def _flat() -> np.ndarray:
    return np.concatenate([p.detach().numpy().ravel() for p in _Ids().parameters()])


def test_a_float_id_export_records_the_token_embeddings_vocabulary(exported: Path) -> None:
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["x"] == {"name": "x", "dtype": "float32", "shape": ["batch", SEQ], "vocab": 7}
    assert load_manifest(exported).x_vocab == VOCAB  # the token table's, not the positions' (5)


@pytest.mark.parametrize("bad", [-1.0, float(VOCAB), 2.5, float("nan")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_float_id_outside_the_vocabulary_is_refused_before_any_step(
    exported: Path, bad: float, dtype: type
) -> None:
    # Prepare: one bad id among good ones
    trainer = OrtTrainer.from_dir(exported)
    x, y = _data()
    x = x.astype(dtype)
    x[1, 2] = bad
    steps = []
    real_step = trainer.step
    trainer.step = lambda *a: steps.append(1) or real_step(*a)  # type: ignore[method-assign]

    # Execute / Assert: refused in check_data and in train, in sdk.trainer's words, no step run
    with pytest.raises(TrainingDataError, match="token ids|must be finite|NaN"):
        trainer.check_data(x, y)
    with pytest.raises(TrainingDataError):
        trainer.train(_flat(), x, y, epochs=1, batch_size=2, lr=0.1, rng=np.random.default_rng(0))
    assert steps == []
    with pytest.raises(TrainingDataError):
        trainer.evaluate(_flat(), x, y)


def test_id_minus_one_is_refused_as_torch_refuses_it(exported: Path) -> None:
    x, y = _data()
    x[0, 0] = -1
    with pytest.raises(TrainingDataError, match=r"token ids must be >= 0, got -1"):
        OrtTrainer.from_dir(exported).check_data(x, y)
    with pytest.raises(TrainingDataError):
        TorchTrainer(_Ids()).check_data(x, y)


def test_an_id_past_the_vocabulary_names_it(exported: Path) -> None:
    x, y = _data()
    x[3, 4] = VOCAB
    with pytest.raises(TrainingDataError, match=r"token ids must be below 7.* got 7 \(1 of 30"):
        OrtTrainer.from_dir(exported).check_data(x, y)


def test_float_ids_in_range_train_as_torch_does(exported: Path) -> None:
    # Prepare
    x, y = _data()
    start = _flat()

    # Execute
    got = OrtTrainer.from_dir(exported).train(
        start.copy(), x, y, epochs=2, batch_size=4, lr=0.1, rng=np.random.default_rng(0)
    )
    want = TorchTrainer(_Ids()).train(
        start.copy(), x, y, epochs=2, batch_size=4, lr=0.1, rng=np.random.default_rng(0)
    )

    # Assert: the update, not the params (a wrong row would hide behind the weights' size)
    delta = want.params - start
    assert np.linalg.norm(got.params - start - delta) / np.linalg.norm(delta) < 1e-4


def test_an_older_float_manifest_without_the_vocabulary_still_loads(
    exported: Path, tmp_path: Path
) -> None:
    for f in exported.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["x"]["vocab"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    trainer = OrtTrainer.from_dir(tmp_path)
    assert trainer.manifest.x_vocab is None
    trainer.check_data(*_data())


@pytest.mark.parametrize("vocab", [2**24 + 1, 2**40])
def test_a_float_vocabulary_float32_cannot_hold_is_refused(
    exported: Path, tmp_path: Path, vocab: int
) -> None:
    # float32 holds every whole number only up to 2^24: larger ids would be rounded.
    for f in exported.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["x"]["vocab"] = vocab
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="vocab"):
        load_manifest(tmp_path)


# 2.5 (a fraction) is no longer refused: the example then reads as features and records no
# vocabulary (helper-156, tests/sdk/test_h156_float_ids.py); -1.5 truncates outside it.
@pytest.mark.parametrize("bad", [-1.0, float(VOCAB), -1.5])
def test_the_export_refuses_float_example_ids_outside_the_vocabulary(
    tmp_path: Path, bad: float
) -> None:
    x = torch.zeros(3, SEQ)
    x[2, 1] = bad
    with pytest.raises(ExampleInputError, match=r"token ids") as info:
        export_training_artifacts(_Ids(), x, tmp_path / "o")
    assert "index out of range" not in str(info.value)
    assert "tok" in info.value.reason and "[0, 7)" in info.value.reason
    assert not (tmp_path / "o").exists()


def test_a_float_feature_model_with_a_position_table_records_no_vocabulary(
    tmp_path: Path,
) -> None:
    class _Features(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pos = nn.Embedding(SEQ, 2)
            self.head = nn.Linear(2 * SEQ, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x.unsqueeze(-1) * self.pos(torch.arange(x.shape[1]))
            out: torch.Tensor = self.head(h.flatten(1))
            return out

    export_training_artifacts(_Features(), torch.randn(4, SEQ), tmp_path)
    assert "vocab" not in json.loads((tmp_path / "manifest.json").read_text())["x"]
    trainer = OrtTrainer.from_dir(tmp_path)
    trainer.check_data(np.full((2, SEQ), -3.5, np.float32), np.array([0, 1]))


def test_cli_float32_export_of_a_token_model_says_token_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "export",
            "--model",
            "shakespeare_lstm_small",
            "--out",
            str(tmp_path / "o"),
            "--input-dtype",
            "float32",
            "--no-progress",
        ]  # fmt: skip
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "token ids" in err and "index out of range" not in err
    assert "check --input-shape and --input-dtype" in err
    assert not (tmp_path / "o").exists()
