"""The README's headline figures are the ones in the result files they come from (s45).

`bench/summarize.py --check` keeps docs/benchmarks.md in step with bench/results/, but nothing
checked the figures the README quotes: a result file re-run in place (its command writes over
it) could leave the README quoting the old run. Each check below reads one figure from its
file, formats it as the README prints it, and looks for it on the README's line for that row.
A figure moved by a re-run fails here until the README is updated with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _get(path: str, key: str) -> Any:
    value: Any = json.loads((RESULTS / path).read_text())
    for part in key.split("."):
        value = value[part]
    return value


def _pct2(v: float) -> str:
    return f"{v * 100:.2f}%"


# (a text that starts the README line, result file, key (dots go into objects), how the README
# writes the value)
FIGURES: list[tuple[str, str, str, Callable[[Any], str]]] = [
    ("| dense fp32 FedAvg |", "bandwidth_accuracy.json", "dense.final_accuracy", _pct2),
    ("| Plume: top-k 0.5%", "bandwidth_accuracy.json", "compressed.final_accuracy", _pct2),
    (
        "| Plume: top-k 0.5%",
        "bandwidth_accuracy.json",
        "compressed.upload_bytes",
        lambda v: f"{v / 1e6:.2f} MB",
    ),
    (
        "| Plume: top-k 0.5%",
        "bandwidth_accuracy.json",
        "compressed.upload_ratio_vs_dense",
        lambda v: f"**{v:.0f}x fewer**",
    ),
    ("| codec, one MNIST-CNN update |", "codec.json", "encode_ms", lambda v: f"encode {v:.1f} ms"),
    ("| codec, one MNIST-CNN update |", "codec.json", "decode_ms", lambda v: f"decode {v:.2f} ms"),
    (
        "| coordinator ingest |",
        "coordinator_ingest.json",
        "inprocess_updates_per_s",
        lambda v: f"{v:,.0f}/s in-process",
    ),
    (
        "| coordinator ingest |",
        "coordinator_ingest.json",
        "http_updates_per_s",
        lambda v: f"{v:,.0f}/s over HTTP",
    ),
    (
        "| SecAgg+ at n=100",
        "secagg.json",
        "plain_frame_bytes",
        lambda v: f"{v:,.0f} bytes on average",
    ),
    (
        "| the same on the MLP (full matrix",
        "robustness.json",
        "worst_case_accuracy_fraction_20pct",
        lambda v: f"| {v:.3f} |",
    ),
    (
        "| backdoor defence",
        "robustness.json",
        "backdoor_accuracy",
        lambda v: f"{v * 100:.2f}% backdoor",
    ),
    (
        "| backdoor defence",
        "robustness.json",
        "main_task_loss_pp",
        lambda v: f"+{v:.2f} pp main-task",
    ),
    (
        "| backdoor defence",
        "robustness.json",
        "backdoor_accuracy_max_over_seeds",
        lambda v: f"worst seeds {v * 100:.1f}%",
    ),
    (
        "| backdoor defence",
        "robustness.json",
        "main_task_loss_pp_max_over_seeds",
        lambda v: f"+{v:.2f} pp (seed",
    ),
    (
        "| ONNX training step vs torch",
        "onnx_train.json",
        "ort_over_torch_step_time",
        lambda v: f"| {v:.2f}x (",
    ),
    (
        "| ONNX training step vs torch",
        "onnx_train.json",
        "worst_ort_over_torch_step_time",
        lambda v: f"({v:.2f}x at B=32)",
    ),
    (
        "| simulator, digits-many |",
        "sim_throughput.json",
        "digits_many_updates_per_s",
        lambda v: f"{v:,.0f} client updates/s",
    ),
    (
        "| simulator, MNIST CNN vs plain torch loop |",
        "sim_throughput.json",
        "mnist_cnn_ratios_by_backend.pool",
        lambda v: f"| {v:.2f}x wall time (pool;",
    ),
    (
        "| simulator, MNIST CNN vs plain torch loop |",
        "sim_throughput.json",
        "mnist_cnn_ratios_by_backend.sequential",
        lambda v: f"sequential {v:.2f}x",
    ),
    (
        "| 10^6 registered devices |",
        "sim_throughput.json",
        "million_devices_rss_gb",
        lambda v: f"| {v:.2f} GB peak RSS",
    ),
    (
        "Intel Xeon VM it ends near",
        "demo_http_mlp/rounds.json",
        "summary.final_accuracy",
        lambda v: f"{v:.4f}",
    ),
]


def _line(start: str) -> str:
    """The README line that starts with `start`, with the next one (a sentence may wrap)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    found = [i for i, line in enumerate(lines) if line.startswith(start)]
    assert len(found) == 1, f"README.md: {len(found)} lines start with {start!r}"
    return " ".join(lines[found[0] : found[0] + 2])


@pytest.mark.parametrize(
    ("start", "path", "key", "fmt"), FIGURES, ids=[f"{p}:{k}" for _, p, k, _ in FIGURES]
)
def test_the_readme_quotes_the_result_file(
    start: str, path: str, key: str, fmt: Callable[[Any], str]
) -> None:
    # Execute
    want = fmt(_get(path, key))
    # Assert
    assert want in _line(start), f"README.md's row {start!r} does not say {want!r} ({path}: {key})"


def test_the_demo_ratio_is_the_run_kept() -> None:
    # The demo paragraph wraps: "0.9115\nand 74.7x in the run kept ..."
    ratio = _get("demo_http_mlp/rounds.json", "summary.upload_ratio_vs_dense")
    text = (ROOT / "README.md").read_text()
    assert f"and {ratio:.1f}x in the run kept in `bench/results/demo_http_mlp`" in text
