"""Adversarial review of the constrained-device path: export edge cases and untrusted artifacts."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from compression import ModelSpec
from sdk.onnx_export import ExportError, UnsupportedLayerError, export_training_artifacts
from sdk.ort import MANIFEST_NAME, ArtifactError, OrtTrainer, load_manifest

LR = 0.05


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| in float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a64 - b64)) / max(float(np.linalg.norm(b64)), 1e-30)


class _DropoutBlock(nn.Module):
    """A container with functional dropout: no Dropout module for `check_supported` to see."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(self.fc(x), 0.5, self.training)


class _NoisyLinear(nn.Linear):
    """A supported layer's subclass that adds noise: passes the isinstance check."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x + 0.1 * torch.randn_like(x))


class _ModeBranch(nn.Module):
    """Deterministic, but trains a different function from the one it evaluates."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x)
        return out * 2.0 if self.training else out


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (nn.Sequential(nn.Linear(6, 6), _DropoutBlock()), r"^_DropoutBlock at '1' .*bernoulli"),
        (nn.Sequential(_NoisyLinear(6, 4)), r"^_NoisyLinear at '0' .*randn_like"),
    ],
    ids=["functional_dropout", "noisy_subclass"],
)
def test_random_forward_passes_are_refused_by_layer(
    tmp_path: Path, model: nn.Module, match: str
) -> None:
    # Prepare: export traces in eval mode, so dropout would vanish and noise become a constant.
    model.train()
    torch.manual_seed(5)
    want_next = torch.rand(3)
    torch.manual_seed(5)

    # Execute / Assert: refused by name, before writing anything.
    with pytest.raises(UnsupportedLayerError, match=match):
        export_training_artifacts(model, torch.randn(4, 6, generator=torch.Generator()), tmp_path)
    assert not any(tmp_path.iterdir())
    assert model.training
    assert torch.equal(torch.rand(3), want_next)  # the check left torch's random state alone


def test_a_forward_that_depends_on_the_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="changes between training and eval mode"):
        export_training_artifacts(_ModeBranch(), torch.randn(4, 6), tmp_path)


class _AdaptivePool(nn.Module):
    """A CNN head written functionally: adaptive pooling has no ONNX backward translation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(self.conv(x), (2, 2))
        out: torch.Tensor = self.fc(pooled.flatten(1))
        return out


def test_an_untranslatable_functional_op_is_named(tmp_path: Path) -> None:
    # Execute
    with pytest.raises(ExportError) as info:
        export_training_artifacts(_AdaptivePool(), torch.randn(4, 1, 9, 9), tmp_path)

    # Assert: the op, first and short, not the exporter's page of generic advice.
    message = str(info.value)
    assert message.startswith("no ONNX translation for aten._adaptive_avg_pool2d_backward:")
    assert len(message) < 400


@pytest.mark.parametrize(
    ("x", "y", "loss", "match"),
    [
        (torch.randint(0, 7, (4, 6), dtype=torch.int32), None, "ce", "example_x must be"),
        (torch.randn(4, 6, dtype=torch.float64), None, "ce", "example_x must be"),
        (torch.randn(4, 6), torch.zeros(4, dtype=torch.int32), "ce", "takes torch.int64"),
        (torch.randn(4, 6), torch.zeros(4, 4, dtype=torch.float64), "mse", "takes torch.float32"),
    ],
    ids=["int32_ids", "float64_x", "int32_labels", "float64_targets"],
)
def test_dtypes_the_device_cannot_load_are_refused_at_export(
    tmp_path: Path, x: torch.Tensor, y: torch.Tensor | None, loss: str, match: str
) -> None:
    # Before: the export wrote a manifest the runtime refuses, or died in torch (float64).
    with pytest.raises(ExportError, match=match):
        export_training_artifacts(nn.Linear(6, 4), x, tmp_path, loss=loss, example_y=y)


def _valid_conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding="valid"), nn.Flatten(), nn.Linear(2 * 5 * 5, 4))


@pytest.fixture(scope="module")
def valid_conv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Conv2d with ``padding="valid"`` (ATen passes its padding as one value, [0])."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("valid_conv")
    export_training_artifacts(_valid_conv(), torch.randn(4, 1, 7, 7), out)
    return out


def test_valid_padding_conv_loads_and_matches_torch(valid_conv_dir: Path) -> None:
    # Prepare: batches of 1 and 3 (neither the export's 4).
    trainer = OrtTrainer.from_dir(valid_conv_dir)
    model = _valid_conv()
    start = [p.detach().numpy().copy() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    rng = np.random.default_rng(0)
    params, losses = [p.copy() for p in start], []
    for b in (1, 3):
        x = rng.standard_normal((b, 1, 7, 7)).astype(np.float32)
        y = rng.integers(0, 4, b)

        # Execute
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        got, params, _ = trainer.step(params, [], x, y, LR)
        losses.append((got, float(loss.detach())))

    # Assert
    for g, w, s in zip(params, model.parameters(), start, strict=True):
        assert _rel(g - s, w.detach().numpy() - s) < 1e-4
    for got, want in losses:
        assert got == pytest.approx(want, rel=1e-5)


def _odd_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, (3, 2), stride=(3, 1), padding=(2, 0)),  # 11x9 -> 5x8, a row skipped
        nn.ReLU(),
        nn.AvgPool2d((3, 2), stride=(2, 1), padding=1, count_include_pad=False),  # -> 3x9
        nn.MaxPool2d(2, stride=3),  # -> 1x3, windows that leave rows and columns unread
        nn.Flatten(),
        nn.Linear(2 * 1 * 3, 4),
    )


def test_odd_geometry_momentum_and_a_changing_lr_match_torch(tmp_path: Path) -> None:
    # Prepare: exported at B=2, run at B=1, 3, 7, 2; the lr (a graph input) changes every step,
    # and momentum buffers must hold unscaled gradients for that to match torch.
    torch.set_num_threads(1)
    export_training_artifacts(
        _odd_cnn(), torch.randn(2, 1, 11, 9), tmp_path, optimizer="momentum", momentum=0.9
    )
    trainer = OrtTrainer.from_dir(tmp_path)
    model = _odd_cnn()
    start = [p.detach().numpy().copy() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    rng = np.random.default_rng(3)
    params, state = [p.copy() for p in start], [np.zeros_like(p) for p in start]
    got_losses, want_losses = [], []

    # Execute
    for b, lr in ((1, 0.05), (3, 0.2), (7, 0.01), (2, 0.1)):
        x = rng.standard_normal((b, 1, 11, 9)).astype(np.float32)
        y = rng.integers(0, 4, b)
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        want_losses.append(float(loss.detach()))
        got, params, state = trainer.step(params, state, x, y, lr)
        got_losses.append(got)

    # Assert
    for g, w, s in zip(params, model.parameters(), start, strict=True):
        assert _rel(g - s, w.detach().numpy() - s) < 1e-4
    assert _rel(np.array(got_losses), np.array(want_losses)) < 1e-5


# ---------------------------------------------------------------------------------------------
# The runtime treats the labels it trains on, and the artifacts it received, as untrusted.
# ---------------------------------------------------------------------------------------------


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-class cross-entropy MLP for plain SGD."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("review_mlp")
    export_training_artifacts(_mlp(), torch.randn(4, 6), out)
    return out


def _flat(model: nn.Module) -> np.ndarray:
    return np.concatenate([p.detach().numpy().reshape(-1) for p in model.parameters()])


def _x(n: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 6)).astype(np.float32)


def _train(trainer: OrtTrainer, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    result = trainer.train(
        _flat(_mlp()), x, y, epochs=1, batch_size=2, lr=LR, rng=np.random.default_rng(1)
    )
    return result.params


@pytest.mark.parametrize("bad", [-1, -4, 4, -5, 2**40])
def test_labels_out_of_range_are_refused(mlp_dir: Path, bad: int) -> None:
    # Prepare: -1 and -4 would wrap to classes 3 and 0 in onnxruntime's gather (torch raises).
    trainer = OrtTrainer.from_dir(mlp_dir)
    y = np.array([0, 1, bad])

    # Execute / Assert
    with pytest.raises(ValueError, match="out of range: the model has 4 classes"):
        _train(trainer, _x(3), y)
    with pytest.raises(ValueError, match="out of range"):
        trainer.evaluate(_flat(_mlp()), _x(3), y)


def test_ignored_targets_train_as_in_torch(mlp_dir: Path) -> None:
    # Prepare: torch's cross_entropy skips -100; the exported graph must skip it the same way.
    trainer = OrtTrainer.from_dir(mlp_dir)
    model = _mlp()
    start = [p.detach().numpy().copy() for p in model.parameters()]
    x, y = _x(3), np.array([2, -100, 1])

    # Execute
    loss = nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    got_loss, got, _ = trainer.step([s.copy() for s in start], [], x, y, LR)

    # Assert
    assert got_loss == pytest.approx(float(loss.detach()), rel=1e-5)
    for g, s, p in zip(got, start, model.parameters(), strict=True):
        assert p.grad is not None
        assert _rel(g - s, -LR * p.grad.numpy()) < 1e-4


def test_label_dtypes(mlp_dir: Path) -> None:
    # Prepare
    trainer = OrtTrainer.from_dir(mlp_dir)
    x, y = _x(5), np.array([0, 3, 1, 2, 2])

    # Execute
    want = _train(trainer, x, y)
    as_int32 = _train(trainer, x, y.astype(np.int32))
    as_float_x = _train(trainer, x.astype(np.float64), y)

    # Assert: integer labels of any integer dtype train alike, float64 x is cast; float labels
    # (whole or not) and bool labels are refused in TorchTrainer's words (since 38b667f: the
    # ORT trainer accepted whole-number float labels, which TorchTrainer refuses).
    np.testing.assert_array_equal(as_int32, want)
    np.testing.assert_array_equal(as_float_x, want)
    with pytest.raises(ValueError, match="y must hold integer class labels, got float32"):
        _train(trainer, x, y.astype(np.float32))
    with pytest.raises(ValueError, match="y must hold integer class labels, got float64"):
        _train(trainer, x, np.array([0, 2.5, 1, 2, 2]))
    with pytest.raises(ValueError, match="y must hold integer class labels, got bool"):
        _train(trainer, x, y.astype(bool))


def test_onnxruntime_errors_in_a_step_are_typed(mlp_dir: Path) -> None:
    # Prepare: `step` feeds as given; a wrong dtype is onnxruntime's to refuse.
    trainer = OrtTrainer.from_dir(mlp_dir)
    params = trainer.split(_flat(_mlp()))

    # Execute / Assert
    with pytest.raises(ValueError, match="onnxruntime rejected the batch"):
        trainer.step(params, [], _x(2).astype(np.float64), np.array([0, 1]), LR)


def _tampered(src: Path, dst: Path, mutate: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of `src` whose manifest `mutate` edited, its spec fingerprint kept consistent."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST_NAME).read_text())
    mutate(manifest)
    manifest["spec_fingerprint"] = ModelSpec.from_json(manifest["spec"]).fingerprint.hex()
    (dst / MANIFEST_NAME).write_text(json.dumps(manifest))
    return dst


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(manifest: dict[str, Any]) -> None:
        *keys, last = path.split(".")
        target: Any = manifest
        for key in keys:
            target = target[int(key)] if key.isdigit() else target[key]
        target[last] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (_set("spec.0.shape", [6, 8]), r"p0 is tensor\(float\)\[8, 6\], the manifest says"),
        (_set("spec.0.shape", [48]), "p0 is"),
        (_set("x.shape", ["batch", 3, 2]), "x is"),
        (_set("x.dtype", "int64"), "x is"),
        (_set("y.shape", ["batch", 1]), "y is"),
    ],
    ids=["transposed", "flattened", "x_shape", "x_dtype", "y_shape"],
)
def test_manifest_that_disagrees_with_the_graph_is_refused_at_load(
    mlp_dir: Path,
    tmp_path: Path,
    mutate: Callable[[dict[str, Any]], None],
    match: str,
) -> None:
    # Prepare: the files' digests still match; only the manifest's account of them is wrong.
    tampered = _tampered(mlp_dir, tmp_path / "t", mutate)

    # Execute / Assert: refused before any training, not mid-round by onnxruntime.
    with pytest.raises(ArtifactError, match=match):
        OrtTrainer.from_dir(tampered)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (_set("num_params", 7), "num_params"),
        (_set("loss", "mse"), "loss 'mse' takes float32 targets"),
        (_set("opset", 0), "opset"),
    ],
    ids=["num_params", "loss_vs_targets", "opset"],
)
def test_inconsistent_manifest_fields_are_refused(
    mlp_dir: Path, tmp_path: Path, mutate: Callable[[dict[str, Any]], None], match: str
) -> None:
    # Prepare
    tampered = _tampered(mlp_dir, tmp_path / "t", mutate)

    # Execute / Assert
    with pytest.raises(ArtifactError, match=match):
        load_manifest(tampered)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"momentum": 0.0', '"momentum": 1' + "0" * 400),  # float() overflows
        ('"num_params": 92', '"num_params": 1' + "0" * 5000),  # past int's digit limit
    ],
    ids=["momentum_overflow", "int_digit_limit"],
)
def test_huge_json_integers_are_artifact_errors(
    mlp_dir: Path, tmp_path: Path, old: str, new: str
) -> None:
    # Prepare: valid JSON that Python's json still cannot turn into a manifest.
    received = _tampered(mlp_dir, tmp_path / "t", lambda m: None)
    text = (received / MANIFEST_NAME).read_text()
    assert old in text
    (received / MANIFEST_NAME).write_text(text.replace(old, new))

    # Execute / Assert: not OverflowError or a bare ValueError.
    with pytest.raises(ArtifactError):
        load_manifest(received)


def test_a_symlink_out_of_the_directory_is_refused(mlp_dir: Path, tmp_path: Path) -> None:
    # Prepare: the linked file is byte-identical, so only the path check can refuse it.
    received = _tampered(mlp_dir, tmp_path / "received", lambda m: None)
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(received / "infer.onnx", outside)
    (received / "infer.onnx").unlink()
    (received / "infer.onnx").symlink_to(outside)

    # Execute / Assert
    with pytest.raises(ArtifactError, match="resolves outside the directory"):
        load_manifest(received)


def _embedding() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(7, 3), nn.Flatten(), nn.Linear(4 * 3, 4))


@pytest.fixture(scope="module")
def embedding_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Token ids [B, 4] in [0, 7) -> 4 classes."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("review_embedding")
    export_training_artifacts(_embedding(), torch.randint(0, 7, (4, 4)), out)
    return out


def test_token_ids_are_checked(embedding_dir: Path) -> None:
    # Prepare
    trainer = OrtTrainer.from_dir(embedding_dir)
    params = _flat(_embedding())
    ids = np.random.default_rng(2).integers(0, 7, (5, 4))
    y = np.array([0, 1, 2, 3, 0])

    def train(x: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(1)
        return trainer.train(params, x, y, epochs=1, batch_size=2, lr=LR, rng=rng).params

    negative, fraction, past_end = ids.copy(), ids.astype(np.float64), ids.copy()
    negative[3, 1] = -1  # onnxruntime's gather would read row 6
    fraction[0, 0] = 0.5
    past_end[2, 2] = 7

    # Execute / Assert: whole-number float ids train like int ids; the rest are refused.
    np.testing.assert_array_equal(train(ids.astype(np.float32)), train(ids))
    with pytest.raises(ValueError, match="token ids must be >= 0"):
        train(negative)
    with pytest.raises(ValueError, match="token ids must be >= 0"):
        trainer.predict(params, negative)
    with pytest.raises(ValueError, match="whole numbers"):
        train(fraction)
    with pytest.raises(ValueError, match="token ids must be below 7"):  # the manifest's x.vocab
        train(past_end)


@pytest.mark.parametrize("lr", [-0.05, float("nan"), float("inf")])
def test_a_learning_rate_torch_refuses_is_refused(mlp_dir: Path, lr: float) -> None:
    # Prepare: a negative lr would be gradient ascent; torch.optim.SGD raises for it.
    trainer = OrtTrainer.from_dir(mlp_dir)

    # Execute / Assert
    with pytest.raises(ValueError, match="lr must be finite and >= 0"):
        trainer.train(
            _flat(_mlp()),
            _x(3),
            np.array([0, 1, 2]),
            epochs=1,
            batch_size=2,
            lr=lr,
            rng=np.random.default_rng(0),
        )
