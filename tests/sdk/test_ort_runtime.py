"""`sdk.ort`: training on onnxruntime without torch, trainer-level parity, manifest checks."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compression import CodecConfig, UpdateCodec
from mobile_sim.models import build_model
from sdk.flat import get_flat_params, spec_from_module
from sdk.onnx_export import export_training_artifacts
from sdk.ort import ArtifactError, OrtDevice, OrtTrainer, _manifest, load_manifest
from sdk.trainer import TorchTrainer
from tests._export_cache import ExportCache, example

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def artifacts(
    tmp_path_factory: pytest.TempPathFactory, export_cache: ExportCache
) -> dict[str, Path]:
    """digits_mlp exported for plain SGD and for momentum SGD (once a run: tests/_export_cache)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ort_runtime")
    out = {}
    for optimizer in ("sgd", "momentum"):
        export_cache.export(
            build_model("digits_mlp"),
            example(4, 64),
            root / optimizer,
            optimizer=optimizer,
            momentum=0.9,
            model_name="digits_mlp",
        )
        out[optimizer] = root / optimizer
    return out


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 64)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    return x, y


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm((a - b).astype(np.float64))) / float(
        np.linalg.norm(b.astype(np.float64))
    )


@pytest.mark.parametrize(("optimizer", "momentum"), [("sgd", 0.0), ("momentum", 0.9)])
def test_ort_trainer_matches_torch_trainer(
    artifacts: dict[str, Path], optimizer: str, momentum: float
) -> None:
    # Prepare: 53 examples in batches of 16 leaves a last batch of 5 in every epoch.
    ort_trainer = OrtTrainer.from_dir(artifacts[optimizer])
    torch_trainer = TorchTrainer(build_model("digits_mlp"), momentum=momentum)
    params = get_flat_params(build_model("digits_mlp"))
    x, y = _data(53, seed=1)
    kwargs = {"epochs": 2, "batch_size": 16, "lr": 0.05}

    # Execute: the same seed gives both trainers the same shuffles.
    got = ort_trainer.train(params, x, y, rng=np.random.default_rng(7), **kwargs)  # type: ignore[arg-type]
    want = torch_trainer.train(params, x, y, rng=np.random.default_rng(7), **kwargs)  # type: ignore[arg-type]

    # Assert
    assert got.num_examples == want.num_examples == 53
    assert got.params.dtype == np.float32 and got.params.shape == params.shape
    assert _rel(got.params - params, want.params - params) < 1e-4
    assert got.loss == pytest.approx(want.loss, rel=1e-5)


def test_ort_device_encodes_a_decodable_update(artifacts: dict[str, Path]) -> None:
    # Prepare
    trainer = OrtTrainer.from_dir(artifacts["sgd"])
    x, y = _data(40, seed=2)
    params = get_flat_params(build_model("digits_mlp"))
    device = OrtDevice(trainer, x, y, codec=CodecConfig(topk=0.1, bits=8), batch_size=8)

    # Execute
    upload = device.run_round(params, np.random.default_rng(3))
    decoded = UpdateCodec(trainer.spec, CodecConfig(topk=0.1, bits=8)).decode_frame(upload.frame)

    # Assert: top-10% of the delta went out; error feedback keeps exactly what did not.
    delta = upload.result.params - params
    assert decoded.update.size == trainer.spec.size
    assert decoded.weight == 40.0
    assert len(decoded.update.indices) == int(np.ceil(0.1 * trainer.spec.size))
    sent = decoded.update.to_dense()
    np.testing.assert_allclose(sent + device.encoder.feedback.residual, delta, atol=1e-6)
    assert upload.report.frame_bytes == len(upload.frame)


def test_predict_and_evaluate(artifacts: dict[str, Path]) -> None:
    # Prepare
    trainer = OrtTrainer.from_dir(artifacts["sgd"])
    model = build_model("digits_mlp")
    x, y = _data(25, seed=4)

    # Execute
    logits = trainer.predict(get_flat_params(model), x, batch_size=10)
    accuracy, loss = trainer.evaluate(get_flat_params(model), x, y)

    # Assert
    with torch.no_grad():
        want = model(torch.from_numpy(x))
    np.testing.assert_allclose(logits, want.numpy(), rtol=1e-5, atol=1e-6)
    want_loss = float(torch.nn.functional.cross_entropy(want, torch.from_numpy(y)))
    assert loss == pytest.approx(want_loss, rel=1e-5)
    assert accuracy == float((want.argmax(1).numpy() == y).mean())


def test_bad_inputs_are_refused(artifacts: dict[str, Path]) -> None:
    trainer = OrtTrainer.from_dir(artifacts["sgd"])
    params = np.zeros(trainer.spec.size, np.float32)
    x, y = _data(4, seed=5)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="params of shape"):
        trainer.train(params[:-1], x, y, epochs=1, batch_size=2, lr=0.1, rng=rng)
    with pytest.raises(ValueError, match="x of shape"):
        trainer.train(params, x[:, :10], y, epochs=1, batch_size=2, lr=0.1, rng=rng)
    with pytest.raises(ValueError, match="x has 4 examples but y has 3 labels"):
        trainer.train(params, x, y[:3], epochs=1, batch_size=2, lr=0.1, rng=rng)
    with pytest.raises(ValueError, match="at least one example"):
        trainer.train(params, x[:0], y[:0], epochs=1, batch_size=2, lr=0.1, rng=rng)
    with pytest.raises(ValueError, match="batch_size"):
        trainer.train(params, x, y, epochs=1, batch_size=0, lr=0.1, rng=rng)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_manifest(path: Path, **changes: object) -> None:
    data = json.loads((path / "manifest.json").read_text())
    data.update(changes)
    (path / "manifest.json").write_text(json.dumps(data))


def test_tampered_artifacts_are_refused(artifacts: dict[str, Path], tmp_path: Path) -> None:
    # A flipped byte in the graph.
    d = _copy(artifacts["sgd"], tmp_path / "flip")
    raw = bytearray((d / "train_step.onnx").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (d / "train_step.onnx").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="SHA-256"):
        OrtTrainer.from_dir(d)

    # A file outside the directory.
    d = _copy(artifacts["sgd"], tmp_path / "escape")
    data = json.loads((d / "manifest.json").read_text())
    data["files"]["infer"]["path"] = "../infer.onnx"
    (d / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="inside the directory"):
        load_manifest(d)

    # An unknown manifest version, a wrong fingerprint, garbage JSON, a missing manifest.
    d = _copy(artifacts["sgd"], tmp_path / "version")
    _edit_manifest(d, version=99)
    with pytest.raises(ArtifactError, match="version 99"):
        load_manifest(d)
    d = _copy(artifacts["sgd"], tmp_path / "fingerprint")
    _edit_manifest(d, spec_fingerprint="00" * 8)
    with pytest.raises(ArtifactError, match="fingerprint"):
        load_manifest(d)
    d = _copy(artifacts["sgd"], tmp_path / "garbage")
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_manifest(d)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_manifest(tmp_path / "nowhere")


def test_graph_names_must_match_the_manifest(artifacts: dict[str, Path], tmp_path: Path) -> None:
    # Prepare: momentum graphs behind an SGD manifest (names no longer line up).
    d = _copy(artifacts["sgd"], tmp_path / "swap")
    for name in ("train_step.onnx", "infer.onnx"):
        shutil.copy(artifacts["momentum"] / name, d / name)
    data = json.loads((d / "manifest.json").read_text())
    for key in ("train_step", "infer"):
        data["files"][key]["bytes"] = (d / data["files"][key]["path"]).stat().st_size

    # Execute / Assert
    (d / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="do not match the manifest"):
        OrtTrainer.from_dir(d, verify=False)


_TORCH_FREE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked on this device (import {name})")
            return None

    sys.meta_path.insert(0, NoTorch())

    import numpy as np
    from compression import CodecConfig
    from sdk.ort import OrtDevice, OrtTrainer

    art, params_path, data_path = sys.argv[1:4]
    trainer = OrtTrainer.from_dir(art)
    params = np.fromfile(params_path, dtype=np.float32)
    xy = np.fromfile(data_path, dtype=np.float32).reshape(-1, 65)
    x, y = xy[:, :64], xy[:, 64].astype(np.int64)
    device = OrtDevice(trainer, x, y, codec=CodecConfig(topk=0.05, bits=4), batch_size=16)
    upload = device.run_round(params, np.random.default_rng(11))
    upload.result.params.tofile(params_path + ".out")
    print(json.dumps({
        "frame_bytes": len(upload.frame),
        "loss": upload.result.loss,
        "torch_loaded": any(m == "torch" or m.startswith("torch.") for m in sys.modules),
    }))
    """
)


def test_runtime_works_with_torch_blocked(artifacts: dict[str, Path], tmp_path: Path) -> None:
    # Prepare: inputs go through raw float32 files (the device side never unpickles anything).
    params = get_flat_params(build_model("digits_mlp"))
    x, y = _data(37, seed=6)
    params.tofile(tmp_path / "params.bin")
    np.hstack([x, y[:, None].astype(np.float32)]).tofile(tmp_path / "data.bin")
    script = tmp_path / "device.py"
    script.write_text(_TORCH_FREE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    # Execute
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(artifacts["sgd"]),
            str(tmp_path / "params.bin"),
            str(tmp_path / "data.bin"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )

    # Assert: it ran, never loaded torch, and trained exactly as this process does.
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["torch_loaded"] is False
    assert report["frame_bytes"] > 0
    got = np.fromfile(tmp_path / "params.bin.out", dtype=np.float32)
    want = OrtTrainer.from_dir(artifacts["sgd"]).train(
        params, x, y, epochs=1, batch_size=16, lr=0.05, rng=np.random.default_rng(11)
    )
    np.testing.assert_array_equal(got, want.params)
    assert report["loss"] == pytest.approx(want.loss, rel=1e-12)


def test_blocker_really_blocks_torch(tmp_path: Path) -> None:
    # The subprocess test is only meaningful if the finder stops a torch import.
    script = tmp_path / "probe.py"
    script.write_text(_TORCH_FREE_SCRIPT.split("import numpy")[0] + "import torch\n")
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode != 0
    assert "torch is blocked" in proc.stderr


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_mutated_manifests_fail_only_with_artifact_error(
    artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    # Prepare: replace one field (top level or one level down) with arbitrary JSON.
    d = tmp_path_factory.mktemp("fuzz")
    for name in ("train_step.onnx", "infer.onnx"):
        shutil.copy(artifacts["sgd"] / name, d / name)
    manifest = json.loads((artifacts["sgd"] / "manifest.json").read_text())
    key = data.draw(st.sampled_from(sorted(manifest)))
    target = manifest
    if isinstance(manifest[key], dict) and manifest[key] and data.draw(st.booleans()):
        target, key = manifest[key], data.draw(st.sampled_from(sorted(manifest[key])))
    target[key] = data.draw(_JSON)
    (d / "manifest.json").write_text(json.dumps(target if target is manifest else manifest))

    # Execute / Assert: either it still loads (the mutation was harmless), or ArtifactError.
    try:
        load_manifest(d)
    except ArtifactError:
        pass


def test_export_leaves_the_training_mode_alone(tmp_path: Path) -> None:
    model = build_model("digits_mlp").train()
    export_training_artifacts(model, torch.randn(4, 64), tmp_path)
    assert model.training


# --- what onnxruntime loads is what was checked; artifacts that do not fit the caller's model ---


def _relu_or_tanh(act: type[torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), act(), torch.nn.Linear(32, 10))


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory, export_cache: ExportCache) -> dict[str, Path]:
    """Two exports with the same graph signature (names, dtypes, shapes) but other activations."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("twins")
    for name, act in (("relu", torch.nn.ReLU), ("tanh", torch.nn.Tanh)):
        export_cache.export(_relu_or_tanh(act), example(4, 64), root / name)
    return {"relu": root / "relu", "tanh": root / "tanh"}


def test_a_graph_swapped_after_the_check_is_not_what_runs(
    twins: dict[str, Path], tmp_path: Path
) -> None:
    # Prepare: the manifest is read and every file hashed, then train_step.onnx is replaced
    # by a graph of the same signature (a re-export landing, a sync tool catching up).
    d = _copy(twins["relu"], tmp_path / "art")
    manifest = load_manifest(d)
    shutil.copy(twins["tanh"] / "train_step.onnx", d / "train_step.onnx")
    params = get_flat_params(_relu_or_tanh(torch.nn.ReLU))
    x, y = _data(20, seed=8)
    kwargs = {"epochs": 1, "batch_size": 8, "lr": 0.1}

    # Execute
    got = OrtTrainer(manifest).train(params, x, y, rng=np.random.default_rng(0), **kwargs)  # type: ignore[arg-type]

    # Assert: it trained the hashed (ReLU) graph, bit for bit, not the file now on disk.
    relu = OrtTrainer.from_dir(twins["relu"])
    tanh = OrtTrainer.from_dir(twins["tanh"])
    want = relu.train(params, x, y, rng=np.random.default_rng(0), **kwargs)  # type: ignore[arg-type]
    other = tanh.train(params, x, y, rng=np.random.default_rng(0), **kwargs)  # type: ignore[arg-type]
    np.testing.assert_array_equal(got.params, want.params)
    assert not np.array_equal(other.params, want.params)  # the swap would have been visible


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda raw: b"\x00garbage, not a protobuf" * 4,
        lambda raw: raw[: len(raw) // 2],
        lambda raw: b"",
    ],
    ids=["garbage", "truncated", "empty"],
)
def test_a_corrupt_graph_with_a_matching_manifest_is_an_artifact_error(
    artifacts: dict[str, Path], tmp_path: Path, corrupt: Callable[[bytes], bytes]
) -> None:
    # Prepare: the manifest's size and digest are brought in line, so only the load can tell.
    d = _copy(artifacts["sgd"], tmp_path / "bad")
    data = corrupt((d / "infer.onnx").read_bytes())
    (d / "infer.onnx").write_bytes(data)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["files"]["infer"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (d / "manifest.json").write_text(json.dumps(manifest))

    # Execute
    with pytest.raises(ArtifactError) as info:
        OrtTrainer.from_dir(d)

    # Assert: typed, names the file, one line. Bytes that are no protobuf message are refused
    # by the external-data walk before onnxruntime sees them (helper-201).
    assert str(info.value).startswith(
        ("infer: onnxruntime refused the artifact: ", "infer: the graph cannot be read (")
    )
    assert "\n" not in str(info.value)


def test_the_manifest_keeps_the_bytes_it_hashed(artifacts: dict[str, Path]) -> None:
    manifest = load_manifest(artifacts["momentum"])
    for what, path in (("train_step", "train_step.onnx"), ("infer", "infer.onnx")):
        raw = (artifacts["momentum"] / path).read_bytes()
        assert manifest.file_data[what] == raw
        assert manifest.file_bytes[what] == len(raw)


def test_artifacts_of_another_model_or_optimizer_are_refused_before_training(
    artifacts: dict[str, Path], twins: dict[str, Path]
) -> None:
    # Prepare
    digits = spec_from_module(build_model("digits_mlp"))
    sgd = OrtTrainer.from_dir(artifacts["sgd"])
    momentum = OrtTrainer.from_dir(artifacts["momentum"])

    # Execute / Assert: the model the artifacts came from, with the optimizer they bake in.
    sgd.check_matches(digits, momentum=0.0)
    momentum.check_matches(digits, momentum=0.9)
    momentum.check_matches(digits)  # momentum not given: only the layout is compared
    with pytest.raises(ArtifactError, match="--optimizer momentum --momentum 0.9"):
        sgd.check_matches(digits, momentum=0.9)
    with pytest.raises(ArtifactError, match="train with momentum 0.9 .*--optimizer sgd"):
        momentum.check_matches(digits, momentum=0.0)
    # Same size and shapes, other parameter names: another model, found by the layout.
    twin = OrtTrainer.from_dir(twins["relu"])
    assert twin.spec.size == digits.size
    with pytest.raises(ArtifactError, match=r"first difference at tensor 0: \('0.weight'"):
        twin.check_matches(digits)
    with pytest.raises(ArtifactError, match="2410 parameters; the model has 199210"):
        sgd.check_matches(spec_from_module(build_model("mlp")))


def test_evaluate_takes_class_indices_not_one_hot_targets(artifacts: dict[str, Path]) -> None:
    # Prepare: one-hot rows are whole numbers in [0, C), so only the shape can tell.
    trainer = OrtTrainer.from_dir(artifacts["sgd"])
    params = get_flat_params(build_model("digits_mlp"))
    x, y = _data(6, seed=9)
    one_hot = np.eye(10, dtype=np.int64)[y]

    # Execute / Assert: a ValueError naming the shapes (it was numpy's IndexError).
    with pytest.raises(ValueError, match=r"labels of shape \[6, 10\].*shaped \[6\]"):
        trainer.evaluate(params, x, one_hot)
    with pytest.raises(ValueError, match=r"labels of shape \[5\]"):
        trainer.evaluate(params, x, y[:5])
    accuracy, _ = trainer.evaluate(params, x, y)
    assert 0.0 <= accuracy <= 1.0


def test_ort_device_checks_its_data_and_settings_when_set_up(artifacts: dict[str, Path]) -> None:
    # Prepare
    trainer = OrtTrainer.from_dir(artifacts["sgd"])
    x, y = _data(8, seed=10)
    codec = CodecConfig(topk=0.1, bits=8)

    # Execute / Assert: refused at construction, not at the first round.
    with pytest.raises(ValueError, match="x of shape"):
        OrtDevice(trainer, x[:, :10], y, codec=codec)
    with pytest.raises(ValueError, match="out of range"):
        OrtDevice(trainer, x, y + 10, codec=codec)
    with pytest.raises(ValueError, match="lr must be finite"):
        OrtDevice(trainer, x, y, codec=codec, lr=float("nan"))
    with pytest.raises(ValueError, match="batch_size"):
        OrtDevice(trainer, x, y, codec=codec, batch_size=0)
    # float64 data is cast once; the rounds then train exactly as on float32 data.
    wide = OrtDevice(trainer, x.astype(np.float64), y, codec=codec)
    narrow = OrtDevice(trainer, x, y, codec=codec)
    assert wide.x.dtype == np.float32
    params = get_flat_params(build_model("digits_mlp"))
    got = wide.run_round(params, np.random.default_rng(5))
    want = narrow.run_round(params, np.random.default_rng(5))
    assert got.frame == want.frame


def test_oversized_graphs_are_refused_before_reading(
    artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a cap below the real train_step.onnx (rather than a huge file), and no reads.
    monkeypatch.setattr(_manifest, "_MAX_FILE_BYTES", 1000)
    real_open = Path.open

    def guarded(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.suffix == ".onnx":
            pytest.fail(f"read {self.name} before its size was checked")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", guarded)

    # Execute / Assert
    with pytest.raises(ArtifactError, match="more than the 1000 allowed"):
        load_manifest(artifacts["sgd"])


def test_a_graph_that_grows_while_read_is_refused(
    artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the file is one byte longer when read than when its size was checked.
    real_open = Path.open

    def growing(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.name == "infer.onnx":
            with real_open(self, "rb") as f:
                return io.BytesIO(f.read() + b"\x00")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", growing)

    # Execute / Assert: refused, whether or not the digests are checked.
    for verify in (True, False):
        with pytest.raises(ArtifactError, match="infer.onnx: changed while being read"):
            load_manifest(artifacts["sgd"], verify=verify)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda x, y: (x, np.where(np.arange(len(y)) == 2, 12, y)), r"class label 12 out of range"),
        (lambda x, y: (x, np.where(np.arange(len(y)) == 2, -1, y)), r"class label -1 out of range"),
        (lambda x, y: (np.where(np.arange(x.size).reshape(x.shape) == 70, np.nan, x), y),
         r"1 input values are NaN or infinite, in 1 of 8 examples \(the first is example 1\)"),
        (lambda x, y: (x, y[:5]), "x has 8 examples but y has 5 labels"),
        (lambda x, y: (x[:0], y[:0]), "at least one example"),
    ],
)  # fmt: skip
def test_both_trainers_refuse_the_same_bad_data_with_training_data_error(
    artifacts: dict[str, Path], mutate: Callable[..., Any], match: str
) -> None:
    # Prepare
    from sdk import TrainingDataError

    ort_trainer = OrtTrainer.from_dir(artifacts["sgd"])
    torch_trainer = TorchTrainer(build_model("digits_mlp"))
    params = get_flat_params(build_model("digits_mlp"))
    x, y = mutate(*_data(8, seed=11))
    kwargs: dict[str, Any] = {"epochs": 1, "batch_size": 4, "lr": 0.1}

    # Execute / Assert: the ORT device refuses it up front, at setup and in check_data too.
    for trainer in (ort_trainer, torch_trainer):
        with pytest.raises(TrainingDataError, match=match):
            trainer.train(params, x, y, rng=np.random.default_rng(0), **kwargs)
        with pytest.raises(TrainingDataError, match=match):
            trainer.check_data(x, y)
    with pytest.raises(TrainingDataError, match=match):
        OrtDevice(ort_trainer, x, y, codec=CodecConfig(topk=0.1, bits=8))


def test_participate_with_an_ort_trainer_refuses_bad_data_before_any_request(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    # Prepare
    import httpx

    from sdk import Client, TrainingDataError

    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(500))
    x, y = _data(8, seed=12)
    x[3, 5] = np.inf

    # Execute / Assert
    with (
        Client("http://plume.test", str(tmp_path), transport=transport) as client,
        pytest.raises(TrainingDataError, match="NaN or infinite"),
    ):
        client.participate(OrtTrainer.from_dir(artifacts["sgd"]), x, y, max_wait_s=0)
    assert sent == []
