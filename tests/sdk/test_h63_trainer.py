"""Trainers and the ONNX export (helper-63), for both trainers (torch and onnxruntime): the FedAvg
weight counts only examples that have a target, `epochs=0` reports no loss, token ids past the
vocabulary are refused before the first step (the export records the vocabulary), and the
exported files are fsynced."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import sdk.onnx_export as onnx_export
from sdk.flat import get_flat_params
from sdk.ort import ArtifactError, OrtTrainer, load_manifest
from sdk.trainer import IGNORE_INDEX, TorchTrainer, TrainingDataError, evaluate

VOCAB, SEQ = 6, 4


class _TokPos(nn.Module):
    """Token ids [B, SEQ] -> logits [B, 2]: a token embedding (VOCAB rows) read from x, plus a
    position embedding (SEQ rows, fewer) read from positions, not from x."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, 3)
        self.pos = nn.Embedding(SEQ, 3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(SEQ * 3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.tok(x) + self.pos(torch.arange(x.shape[1])))
        return out


def _module() -> _TokPos:
    torch.manual_seed(0)
    return _TokPos()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("h63_tokpos")
    gen = torch.Generator().manual_seed(0)
    onnx_export.export_training_artifacts(
        _module(), torch.randint(0, VOCAB, (2, SEQ), generator=gen), root
    )
    return root


@pytest.fixture(scope="module")
def trainers(exported: Path) -> dict[str, Any]:
    return {"torch": TorchTrainer(_module()), "ort": OrtTrainer.from_dir(exported)}


def _data(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.integers(0, VOCAB, (n, SEQ)), rng.integers(0, 2, n)


def _train(trainer: Any, x: Any, y: Any, **kw: Any) -> Any:
    settings: dict[str, Any] = {"epochs": 1, "batch_size": 4, "lr": 0.1}
    settings.update(kw)
    params = get_flat_params(_module())
    return trainer.train(params, x, y, rng=np.random.default_rng(1), **settings)


KINDS = ["torch", "ort"]


# -- 3. the FedAvg weight ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_weight_counts_only_examples_with_a_target(trainers: dict[str, Any], kind: str) -> None:
    # Prepare: 12 examples, 5 of them with their label skipped (-100)
    x, y = _data()
    y[[0, 3, 4, 8, 11]] = IGNORE_INDEX

    # Execute
    result = _train(trainers[kind], x, y)
    kept = y != IGNORE_INDEX
    alone = _train(trainers[kind], x[kept], y[kept], epochs=0)

    # Assert: 7 examples contributed a target: that is the update's weight (was 12)
    assert result.num_examples == 7
    assert alone.num_examples == 7


def test_torch_sequence_labels_count_an_example_with_any_target() -> None:
    # Prepare: logits [B, C, T] against labels [B, T]: one example wholly skipped, one in part
    torch.manual_seed(0)
    module = nn.Conv1d(3, 2, 1)  # x [B, 3, T] -> logits [B, 2, T]
    x = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32)
    y = np.zeros((4, 5), dtype=np.int64)
    y[1] = IGNORE_INDEX
    y[2, :3] = IGNORE_INDEX

    # Execute
    result = TorchTrainer(module).train(
        get_flat_params(module), x, y, epochs=1, batch_size=2, lr=0.1,
        rng=np.random.default_rng(0),
    )  # fmt: skip

    # Assert
    assert result.num_examples == 3


# -- 4. epochs=0 ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_no_epoch_reports_no_loss_and_the_params_unchanged(
    trainers: dict[str, Any], kind: str
) -> None:
    # Prepare
    x, y = _data()

    # Execute
    result = _train(trainers[kind], x, y, epochs=0)

    # Assert: no step was taken, so there is no loss (it was 0.0, a perfect fit)
    assert math.isnan(result.loss)
    np.testing.assert_array_equal(result.params, get_flat_params(_module()))


@pytest.mark.parametrize("kind", KINDS)
def test_negative_epochs_are_still_refused(trainers: dict[str, Any], kind: str) -> None:
    x, y = _data()
    with pytest.raises(ValueError, match="epochs"):
        _train(trainers[kind], x, y, epochs=-1)


# -- 5. token ids past the vocabulary ---------------------------------------------------------


def test_the_export_records_the_vocabulary_of_the_embedding_reading_x(exported: Path) -> None:
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["x"]["vocab"] == VOCAB  # the token embedding's, not the positions' (4)
    assert load_manifest(exported).x_vocab == VOCAB


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", [0, 11], ids=["first-example", "last-batch"])
def test_a_token_id_past_the_vocabulary_is_refused_before_any_step(
    trainers: dict[str, Any], kind: str, where: int
) -> None:
    # Prepare: one id equal to the vocabulary size (one past its last row)
    x, y = _data()
    x[where, 2] = VOCAB
    trainer = trainers[kind]

    # Execute / Assert: a TrainingDataError, in the same words for both trainers (torch raised
    # an IndexError at the batch holding it, onnxruntime a ValueError)
    with pytest.raises(TrainingDataError, match=rf"token ids must be below {VOCAB}.*got {VOCAB}"):
        _train(trainer, x, y)
    if kind == "torch":
        np.testing.assert_array_equal(get_flat_params(trainer.module), get_flat_params(_module()))


def test_ids_below_the_vocabulary_but_past_the_positions_train(trainers: dict[str, Any]) -> None:
    # Prepare: ids 4 and 5 are tokens (below 6) though the position table has 4 rows
    x, y = _data()
    x[:, 0] = 5

    # Execute / Assert: both train
    for kind in KINDS:
        assert math.isfinite(_train(trainers[kind], x, y).loss)


def test_a_manifest_without_the_vocabulary_still_loads(exported: Path, tmp_path: Path) -> None:
    # Prepare: the export as an SDK before the field wrote it
    for name in ("infer.onnx", "train_step.onnx"):
        (tmp_path / name).write_bytes((exported / name).read_bytes())
    manifest = json.loads((exported / "manifest.json").read_text())
    del manifest["x"]["vocab"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    # Execute
    trainer = OrtTrainer.from_dir(tmp_path)
    x, y = _data()

    # Assert: loads, trains; no up-front check of ids (onnxruntime still refuses one mid-run)
    assert trainer.manifest.x_vocab is None
    assert math.isfinite(_train(trainer, x, y).loss)
    x[11, 0] = VOCAB
    with pytest.raises(ValueError):
        _train(trainer, x, y)


@pytest.mark.parametrize(
    "vocab",
    [0, -1, 2.5, True, "6", 2**63, 10**400],  # the last two: not an int64 id count
    ids=["zero", "negative", "fraction", "bool", "text", "2^63", "10^400"],
)
def test_a_manifest_vocabulary_that_is_not_a_count_is_refused(
    exported: Path, tmp_path: Path, vocab: Any
) -> None:
    for name in ("infer.onnx", "train_step.onnx"):
        (tmp_path / name).write_bytes((exported / name).read_bytes())
    manifest = json.loads((exported / "manifest.json").read_text())
    manifest["x"]["vocab"] = vocab
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="vocab"):
        load_manifest(tmp_path)


# -- 6. exported files are fsynced ------------------------------------------------------------


def test_the_exported_files_and_their_folder_are_fsynced_before_and_after_the_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: record every fsync (by the path of its descriptor) and every rename
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        real_replace(src, dst)
        events.append(("replace", str(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "out"
    files = {"infer.onnx": b"a", "train_step.onnx": b"b", "manifest.json": b"{}"}

    # Execute
    onnx_export._write_files(out, files)
    monkeypatch.undo()

    # Assert: each file's bytes were fsynced before any rename; the folder after the last one
    renames = [i for i, (kind, _) in enumerate(events) if kind == "replace"]
    assert len(renames) == 3
    synced = [Path(p).name for kind, p in events[: renames[0]] if kind == "fsync"]
    for name in files:
        assert any(s.startswith(f".{name}.") for s in synced), (name, events)
    assert ("fsync", str(out.resolve())) in events[renames[-1] :]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


# -- sdk.trainer.evaluate: labels that do not fit x --------------------------------------------


def _linear() -> tuple[nn.Module, np.ndarray, np.ndarray, np.ndarray]:
    torch.manual_seed(0)
    module = nn.Linear(4, 3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 4)).astype(np.float32)
    return module, get_flat_params(module), x, rng.integers(0, 3, 12)


def test_evaluate_refuses_more_labels_than_examples() -> None:
    # Prepare: 12 labels for 10 examples, in batches of 5 (each batch's labels fit its rows)
    module, params, x, y = _linear()

    # Execute / Assert: refused, naming both counts (it returned sums over 10 predictions
    # divided by 12: a wrong accuracy and loss, silently)
    with pytest.raises(TrainingDataError, match="x has 10 examples but y has 12 labels"):
        evaluate(module, params, x, y, batch_size=5)
    with pytest.raises(TrainingDataError, match="x has 10 examples but y has 9 labels"):
        evaluate(module, params, x, y[:9], batch_size=5)


def test_evaluate_takes_any_integer_labels_as_train_does() -> None:
    # Prepare
    module, params, x, y = _linear()
    want = evaluate(module, params, x, y[:10])

    # Execute / Assert: int32 and uint8 labels give the same result (int32 raised torch's
    # RuntimeError "expected target dtype to be Long or Byte")
    for dtype in (np.int32, np.uint8, np.int16):
        assert evaluate(module, params, x, y[:10].astype(dtype)) == want


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (lambda y: y.astype(np.float32), "integer class labels, got float32"),
        (lambda y: np.stack([y, y], axis=1), r"labels of shape \[10, 2\] do not fit"),
    ],
    ids=["float", "shape"],
)
def test_evaluate_refuses_labels_that_are_not_class_indices(labels: Any, match: str) -> None:
    module, params, x, y = _linear()
    with pytest.raises(TrainingDataError, match=match):
        evaluate(module, params, x, labels(y[:10]))


def test_a_float_token_id_of_exactly_2_63_is_refused_not_wrapped(
    exported: Path, tmp_path: Path
) -> None:
    # Prepare: a manifest without the vocabulary (an older export); float ids, one of them
    # 2^63 exactly, which compared equal to int64's largest as a float and passed, then the
    # cast wrapped it to -2^63 (onnxruntime then failed mid-run)
    for name in ("infer.onnx", "train_step.onnx"):
        (tmp_path / name).write_bytes((exported / name).read_bytes())
    manifest = json.loads((exported / "manifest.json").read_text())
    del manifest["x"]["vocab"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    x, y = _data()
    xf = x.astype(np.float64)
    xf[11, 0] = 2.0**63

    # Execute / Assert
    with pytest.raises(TrainingDataError, match=r"token ids must be below 2\^63"):
        _train(OrtTrainer.from_dir(tmp_path), xf, y)


@pytest.mark.parametrize("batch_size", [0, -5])
def test_evaluate_refuses_a_batch_size_below_one(batch_size: int) -> None:
    # 0 raised range()'s "arg 3 must not be zero"; -5 evaluated nothing and returned (0, 0)
    module, params, x, y = _linear()
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        evaluate(module, params, x, y[:10], batch_size=batch_size)


class _Shifted(nn.Module):
    """Reads ids + 1: no embedding reads x itself, so no vocabulary bounds x up front."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(SEQ * 3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.emb(x + 1))
        return out


def test_ids_transformed_before_the_embedding_keep_the_misfit_check_of_the_first_example() -> None:
    # Prepare: the first example's id 5 becomes 6, past the table (regression guard: the
    # probe on the first example still refuses it when no vocabulary bounds x)
    torch.manual_seed(0)
    module = _Shifted()
    x, y = _data()
    x[0, 0] = VOCAB - 1

    # Execute / Assert
    with pytest.raises(TrainingDataError, match="does not fit the model"):
        TorchTrainer(module).train(
            get_flat_params(module), x, y, epochs=1, batch_size=4, lr=0.1,
            rng=np.random.default_rng(0),
        )  # fmt: skip
