"""docs/devices.md's figures that a committed bench file holds, read from that file: the
installed sizes (bench/results/device_footprint.json), the Speed table, the optimization levels,
the parity error and the mixed fleet's accuracy (bench/results/onnx_train.json), the artifact
sizes and the model sizes. (The RSS figures are tests/test_s49_docs_figures.py's.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "devices.md").read_text()


def _json(name: str) -> Any:
    return json.loads((ROOT / "bench" / "results" / name).read_text())


def _sci(x: float) -> str:
    """4.8e-6, as the doc writes it (Python's `:.1e` gives 4.8e-06)."""
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def test_installed_sizes_are_the_footprint_files() -> None:
    packages = _json("device_footprint.json")
    size = {name: p["installed_bytes"] for name, p in packages["packages"].items()}
    assert f"{_mb(size['onnxruntime'])} installed" in DOC
    pulled = size["flatbuffers"] + size["protobuf"] + size["packaging"]
    assert f"`packaging` ({_mb(pulled)} installed)" in DOC
    assert f"| `numpy` | {_mb(size['numpy'])} installed" in DOC
    http = sum(size[n] for n in ("httpx", "httpcore", "h11", "anyio", "idna", "certifi"))
    crypto = size["cryptography"] + size["cffi"] + size["pycparser"]
    assert f"| {_mb(size['zstandard'])}, {_mb(http)}, {_mb(crypto)} installed |" in DOC
    total = packages["onnx_device_total_bytes"]
    assert total == sum(v for n, v in size.items() if n != "torch")
    assert f"{_mb(total)} for the whole ONNX device set above, against " in DOC
    assert f"against {_mb(packages['torch_bytes'])} for\ntorch alone" in DOC
    assert f"the CPU build takes {packages['torch_bytes'] / 1e6:.0f} MB installed" in DOC


def test_the_speed_table_and_the_runs_other_figures_are_onnx_train_json() -> None:
    run = _json("onnx_train.json")
    for model, label in (("mnist_cnn", "mnist_cnn (1.66M params)"), ("mlp", "mlp (199k params)")):
        m = run["models"][model]
        for i, batch in enumerate((10, 32)):
            t = m["step_time"][f"B={batch}"]
            ratio = f"{t['ort_over_torch']:.2f}"
            if (model, batch) == ("mnist_cnn", 10):
                ratio = f"**{ratio}** (the headline `ort_over_torch_step_time`)"
            name = label if i == 0 else model
            row = f"| {name} | {batch} | {t['torch_ms']:.{1 if t['torch_ms'] > 1 else 2}f} | "
            row += f"{t['ort_ms']:.{1 if t['ort_ms'] > 1 else 2}f} | {ratio} |"
            assert row in DOC, row
    cnn = run["models"]["mnist_cnn"]
    assert f"{cnn['params'] / 1e6:.2f}M" == "1.66M"
    assert f"{run['models']['mlp']['params'] / 1e3:.0f}k" == "199k"
    levels = cnn["ort_ms_by_optimization_level"]
    assert (
        f"came to {levels['disable']:.1f} ms\nwith optimizations disabled, "
        f"{levels['basic']:.1f} ms for `basic`, {levels['extended']:.1f} ms for `extended` and "
        f"{levels['all']:.1f} ms for `all`." in DOC
    )
    assert f"over 1 and 50 steps on MNIST was {_sci(run['parity_max_rel_err'])}" in DOC
    assert f"agrees to about {_sci(run['parity_max_rel_err'])}" in DOC
    mixed = run["mixed_run"]
    assert mixed["mixed_accuracy"] == mixed["torch_only_accuracy"]
    assert f"reached {mixed['mixed_accuracy'] * 100:.2f}% accuracy with half the" in DOC
    assert (
        f"(a {mixed['accuracy_gap_pp']:.1f} pp gap; the target is {mixed['target_pp']} pp)" in DOC
    )
    sizes = cnn["artifact_bytes"]
    assert f"went from 92,802 to {sizes['train_step.onnx']:,} bytes" in DOC
    assert f"14,395 to {sizes['infer.onnx']:,}" in " ".join(DOC.split())
    assert (
        f"weights | 4 bytes per parameter ({_mb(cnn['dense_params_bytes'])} for `mnist_cnn`)" in DOC
    )
