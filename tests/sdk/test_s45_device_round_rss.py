"""bench/device_round_rss.py, the peak RSS of a device's whole round (s45 review, item 2).

docs/devices.md quoted bench/onnx_train.py's training-only figure (108 MB) as the RAM a device
needs; a real `Client.participate` round (imports, model download, encoding, app-directory
writes, upload) peaks well above it. The script measures that in torch-free device processes
against a loopback coordinator. These tests run its device path on a tiny model (the full run
takes minutes): two rounds in fresh torch-blocked processes, the first downloading a snapshot,
the second a delta chain; and its choice of results file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="VmHWM is read from /proc/self/status"
)


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "s45_device_round_rss", ROOT / "bench/device_round_rss.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_device_rounds_are_measured_torch_free(tmp_path: Path) -> None:
    from coordinator.service import AdminClient, ServerThread, ServiceConfig
    from protocol.messages import TaskConfig, TensorShape, TrainingParams
    from sdk.flat import get_flat_params, spec_from_module
    from sdk.onnx_export import export_training_artifacts

    bench = _load()
    # Prepare: a tiny model's artifacts, 20 synthetic examples, a two-round task of one device
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    art, data = tmp_path / "art", tmp_path / "data.bin"
    export_training_artifacts(model, torch.randn(4, 1, 28, 28), art, model_name="tiny")
    bench.write_data(data, 20, synthetic=True)
    assert np.fromfile(data, np.float32).size == 20 * 785
    spec = spec_from_module(model)
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token="t", poll_s=0.05)
    with ServerThread(cfg) as url, AdminClient(url, "t") as admin:
        task_id = admin.create_task(
            TaskConfig(
                name="rss",
                model_name="tiny",
                spec=[TensorShape(e.name, list(e.shape)) for e in spec.entries],
                rounds=2,
                clients_per_round=1,
                over_selection=1.0,
                selection_timeout_s=0.2,
                training=TrainingParams(1, 10, 0.05),
            ),
            get_flat_params(model),
        )

        # Execute: two rounds, each in its own device process, on one app directory
        rounds = []
        for n in (1, 2):
            rounds.append(bench.device_round(url, tmp_path / "app", art, data, task_id))
            bench._wait_committed(url, "t", task_id, n)

    # Assert: both rounds accepted, torch never loaded, figures in order; the headline split
    assert [r["round_id"] for r in rounds] == [1, 2]
    assert [r["download_encoding"] for r in rounds] == ["snapshot", "delta-chain"]
    for r in rounds:
        assert r["accepted"] and not r["torch_loaded"]
        assert 0 < r["numpy_only_mib"] <= r["after_imports_mib"] <= r["peak_rss_mib"]
        assert r["bytes_down"] > 0 and r["bytes_up"] > 0
    headline = bench.summarize(rounds)
    assert headline["first_round_peak_rss_mib"] == rounds[0]["peak_rss_mib"]
    assert headline["later_rounds_peak_rss_mib"] == [rounds[1]["peak_rss_mib"]]
    assert headline["later_rounds_download"] == ["delta-chain"]
    assert headline["torch_loaded"] is False


def test_a_quick_run_does_not_write_the_canonical_file() -> None:
    bench = _load()

    class Args:
        out = None
        quick = True

    assert bench.results_path(Args()) == ROOT / "bench/results/device_round_rss_quick.json"
    Args.quick = False
    assert bench.results_path(Args()) == ROOT / "bench/results/device_round_rss.json"
