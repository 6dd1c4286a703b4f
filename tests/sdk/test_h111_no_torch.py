"""A device with only numpy, zstandard, httpx, onnxruntime and cryptography (and the standard
library) imports `sdk` and trains from an ONNX export: torch must never become an import-time
(or training-time) dependency of the device path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from coordinator.service import AdminClient, ServerThread, ServiceConfig
from protocol.messages import TaskConfig, TensorShape, TrainingParams
from sdk.flat import get_flat_params, spec_from_module
from sdk.onnx_export import export_training_artifacts

ROOT = Path(__file__).resolve().parents[2]

# What the device has installed besides the standard library: the five packages docs/devices.md
# lists, what they pull in, and the project's three torch-free packages.
DEVICE_PACKAGES = {
    "numpy",
    "zstandard",
    "httpx", "httpcore", "h11", "anyio", "sniffio", "idna", "certifi",
    "onnxruntime", "flatbuffers", "google", "packaging", "coloredlogs", "humanfriendly",
    "sympy", "mpmath",
    "cryptography", "cffi", "_cffi_backend", "_openssl", "pycparser",
    "typing_extensions",
    "compression", "protocol", "sdk",
}  # fmt: skip

_DEVICE = textwrap.dedent(
    """
    import importlib.abc, json, sys

    ALLOWED = set(json.loads(sys.argv[1]))
    blocked = []

    class OnlyTheDevicePackages(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in sys.stdlib_module_names or top in ALLOWED:
                return None
            blocked.append(name)
            raise ImportError(f"{name} is not installed on this device")

    sys.meta_path.insert(0, OnlyTheDevicePackages())
    sys.modules["torch"] = None  # and an `import torch` anywhere fails at once
    before = set(sys.modules)

    import numpy as np
    import sdk
    public = {name: type(getattr(sdk, name)).__name__ for name in sdk.__all__}
    import sdk.ort
    for name in sdk.ort.__all__:
        getattr(sdk.ort, name)
    from compression import CodecConfig
    from sdk import AppDirInUse, AsyncClient, Client
    from sdk.device import UpdateEncoder
    from sdk.device_store import DeviceStore
    from sdk.ort import OrtDevice, OrtTrainer
    from sdk.secure import SecureParticipant

    art, app_dir, url = sys.argv[2:5]
    trainer = OrtTrainer.from_dir(art)
    rng = np.random.default_rng(3)
    x = rng.random((24, 8), dtype=np.float32)
    y = rng.integers(0, 3, 24)
    params = np.zeros(trainer.spec.size, np.float32)
    device = OrtDevice(trainer, x, y, codec=CodecConfig(topk=0.5, bits=8), batch_size=8)
    upload = device.run_round(params, np.random.default_rng(4))

    with Client(url, app_dir=app_dir) as client:  # a whole round against the coordinator
        client.register()
        report = client.participate(trainer, x, y, max_wait_s=60)
        try:
            DeviceStore(app_dir + "-other").close()
        except AppDirInUse:
            raise SystemExit("another directory counted as in use")
    AsyncClient(url, app_dir=app_dir + "-async")

    try:
        import sdk.trainer  # the torch trainer: only for devices with torch
        trainer_module = "imported"
    except ImportError:
        trainer_module = "refused"
    print(json.dumps({
        "public": public,
        "frame_bytes": len(upload.frame),
        "accepted": report is not None and report.receipt.accepted,
        "loss": upload.result.loss,
        "moved": float(np.abs(upload.result.params).sum()),
        "loaded": sorted({m.partition(".")[0] for m in set(sys.modules) - before
                          if sys.modules.get(m) is not None}),
        "blocked": blocked,
        "trainer_module": trainer_module,
    }))
    """
)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("h111") / "tiny"
    export_training_artifacts(_model(), torch.randn(4, 8), out)
    return out


@pytest.fixture()
def coordinator(tmp_path: Path) -> Iterator[str]:
    """A loopback coordinator running a one-round task of `_model()` for one device."""
    model = _model()
    spec = spec_from_module(model)
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token="t", poll_s=0.05)
    with ServerThread(cfg) as url, AdminClient(url, "t") as admin:
        admin.create_task(
            TaskConfig(
                name="h111-device",
                model_name="tiny",
                spec=[TensorShape(e.name, list(e.shape)) for e in spec.entries],
                rounds=1,
                clients_per_round=1,
                selection_timeout_s=0.2,
                training=TrainingParams(1, 8, 0.05),
            ),
            get_flat_params(model),
        )
        yield url


def _run_device(
    artifacts: Path, app_dir: Path, url: str, allowed: set[str]
) -> subprocess.CompletedProcess[str]:
    args = [json.dumps(sorted(allowed)), str(artifacts), str(app_dir), url]
    return subprocess.run(
        [sys.executable, "-c", _DEVICE, *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def test_a_device_with_only_its_five_packages_imports_the_sdk_and_trains(
    artifacts: Path, coordinator: str, tmp_path: Path
) -> None:
    # Execute: the device process, where only the device's packages can be imported.
    proc = _run_device(artifacts, tmp_path / "app", coordinator, DEVICE_PACKAGES)

    # Assert: every public name of `sdk` resolved, an ORT round encoded an update, a Client
    # ran a round whose upload the coordinator accepted, the store and both clients opened;
    # nothing outside the device's packages was loaded (torch least of all), and the torch
    # trainer module is the one part that needs torch.
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report["public"]) == set(__import__("sdk").__all__)
    assert report["frame_bytes"] > 0 and report["moved"] > 0
    assert report["accepted"] is True
    assert np.isfinite(report["loss"])
    # Cython extensions (numpy's, zstandard's) register these two without importing anything.
    loaded = {m for m in report["loaded"] if m != "cython_runtime" and not m.startswith("_cython_")}
    assert loaded <= DEVICE_PACKAGES | set(sys.stdlib_module_names)
    assert "torch" not in report["loaded"]
    assert not any(name.partition(".")[0] == "torch" for name in report["blocked"])
    assert report["trainer_module"] == "refused"


def test_the_device_check_fails_when_the_sdk_needs_a_package_the_device_lacks(
    artifacts: Path, tmp_path: Path
) -> None:
    # The check above means something only if a missing package fails it: take onnxruntime
    # away, and the same device script cannot run.
    proc = _run_device(
        artifacts, tmp_path / "app", "http://127.0.0.1:9", DEVICE_PACKAGES - {"onnxruntime"}
    )
    assert proc.returncode != 0
    assert "onnxruntime is not installed on this device" in proc.stderr
