"""A torch-free device trains on onnxruntime and reports to a real (loopback) coordinator."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from mobile_sim.models import build_model
from sdk.onnx_export import export_training_artifacts

REPO = Path(__file__).resolve().parents[2]

_BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked on this device (import {name})")
            return None

    sys.meta_path.insert(0, NoTorch())
    """
)

_CHECK = textwrap.dedent(
    """
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch loaded"
    print("TORCH_FREE_OK", report.num_examples)
    """
)


def test_docs_example_runs_torch_free_against_a_coordinator(tmp_path: Path) -> None:
    """The embedding examples of docs/devices.md, verbatim, in a process that cannot import torch."""
    from coordinator.service import AdminClient, ServerThread, ServiceConfig
    from protocol.messages import TaskConfig, TensorShape, TrainingParams
    from sdk.flat import get_flat_params, spec_from_module

    # Prepare: the doc's artifacts, and a one-round task for one device.
    doc = (REPO / "docs" / "devices.md").read_text()
    section = doc.split("## Embedding the runtime", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    # The section's two embedding examples (its other blocks, e.g. the network-traffic one,
    # run under tests/test_docs_examples.py with torch).
    (code,) = [b for b in blocks if "OrtTrainer.from_dir" in b and "participate" in b]
    (standalone,) = [b for b in blocks if "OrtDevice" in b]
    assert "OrtTrainer.from_dir" in code and "participate" in code
    assert "OrtDevice" in standalone
    torch.set_num_threads(1)
    model = build_model("mlp")
    export_training_artifacts(model, torch.randn(4, 1, 28, 28), tmp_path / "artifacts" / "mlp")
    spec = spec_from_module(model)
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token="t", poll_s=0.05)
    with ServerThread(cfg) as url, AdminClient(url, "t") as admin:
        task_id = admin.create_task(
            TaskConfig(
                name="ort-device",
                model_name="mlp",
                spec=[TensorShape(e.name, list(e.shape)) for e in spec.entries],
                rounds=1,
                clients_per_round=1,
                selection_timeout_s=0.2,
                training=TrainingParams(1, 16, 0.05),
            ),
            get_flat_params(model),
        )
        script = tmp_path / "device.py"
        device_code = code.replace("http://127.0.0.1:8080", url)
        script.write_text(_BLOCK_TORCH + device_code + standalone + _CHECK)

        # Execute: the device runs in its own torch-free process.
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        for _ in range(300):  # the round closes asynchronously after the last report
            status = admin.status(task_id)
            if status.version == 1:
                break
            time.sleep(0.02)
        rounds = admin.rounds(task_id)

    # Assert: the device never loaded torch, and its ORT-trained update was committed.
    assert proc.returncode == 0, proc.stderr
    assert "TORCH_FREE_OK 64" in proc.stdout
    assert (tmp_path / "plume-app" / "device_key").exists()
    assert rounds[0].reports == 1 and rounds[0].state == "committed"
    assert status.version == 1
