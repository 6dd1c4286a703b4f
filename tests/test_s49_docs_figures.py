"""Figures in the docs come from committed result files, and none is kept as "an indication" (s49).

A review found docs quoting runs that were never committed, labelled "an indication only", a
downlink ratio taken against raw fp32 where the coordinator serves fp32 through zstd, RSS
figures in MiB written as MB, and the server-optimizer table calling a pool-backend run of
another time "the headline's". These checks read each figure from its result file, format it
as the doc prints it, and look for it on the doc's line; the last one keeps the label out.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
OWNED = [
    "README.md",
    "docs/devices.md",
    "docs/operations.md",
    "docs/http-api.md",
    "docs/secure-aggregation.md",
    "docs/robustness.md",
]


def _json(name: str) -> Any:
    return json.loads((RESULTS / name).read_text())


def _mib(entry: dict[str, Any], name: str) -> float:
    """An RSS field in MiB: `NAME_mib`, or `NAME_mb` as the files named these MiB before."""
    return float(entry[f"{name}_mib"] if f"{name}_mib" in entry else entry[f"{name}_mb"])


def _line(doc: str, start: str) -> str:
    """The one line of `doc` that starts with `start`."""
    lines = [line for line in (ROOT / doc).read_text().splitlines() if line.startswith(start)]
    assert len(lines) == 1, f"{doc}: {len(lines)} lines start with {start!r}"
    return lines[0]


def _prose(doc: str) -> str:
    return " ".join((ROOT / doc).read_text().split())


def test_the_operations_downlink_rows_are_the_ingest_files() -> None:
    # Prepare
    ingest = _json("coordinator_ingest.json")
    down = ingest["details"]["downlink"]
    chains = [down["by_lag"][str(lag)]["bytes"] for lag in range(1, 6)]
    rows = {
        "| downlink, 1..5 versions behind, vs raw fp32": (
            down["dense_bytes"],
            ingest["downlink_ratio_vs_dense"],
        ),
        "| the same vs the fp32 snapshot the coordinator serves": (
            down["snapshot_fp32_zstd_bytes"],
            [down["snapshot_fp32_zstd_bytes"] / b for b in chains],
        ),
        "| the same vs the fp16 snapshot (zstd'd)": (
            down["snapshot_fp16_zstd_bytes"],
            [down["snapshot_fp16_zstd_bytes"] / b for b in chains],
        ),
    }
    for start, (size, ratios) in rows.items():
        # Execute
        line = _line("docs/operations.md", start)
        # Assert
        assert f"{size:,} B" in line, (start, size)
        assert ", ".join(f"{r:.0f}x" for r in ratios) + " fewer bytes" in line, (start, ratios)
    text = _prose("docs/operations.md")
    assert f"({chains[0]:,} to {chains[-1]:,} bytes)" in text


def test_the_devices_rss_figures_are_mib_from_their_files() -> None:
    # The scripts divide VmHWM's KiB by 1024: MiB, never MB.
    rss = _json("device_round_rss.json")
    cnn = _json("onnx_train.json")["models"]["mnist_cnn"]["peak_rss"]
    first = _mib(rss["rounds"][0], "peak_rss")
    imports = _mib(rss["rounds"][0], "after_imports")
    later = [_mib(r, "peak_rss") for r in rss["rounds"][1:]]
    ort, ort_imports = (
        _mib(cnn["ort_process"], "peak_rss"),
        _mib(cnn["ort_process"], "after_imports"),
    )
    torch_peak = _mib(cnn["torch_process"], "peak_rss")
    row = _line("docs/devices.md", "| RAM (`mnist_cnn`, B=10) |")
    for phrase in (
        f"peak RSS {first:.0f} MiB on the device's first round",
        f"{later[0]:.0f} and {later[1]:.0f} MiB on later rounds",
        f"{imports:.0f} MiB after its imports",
        f"{ort:.0f} MiB for an ORT process ({ort_imports:.0f} MiB after imports)",
        f"against {torch_peak:.0f} MiB for a torch process",
    ):
        assert phrase in row, phrase
    assert not re.search(r"\d MB\b", row.split("| `VmHWM`")[0]), "RSS written as MB"
    speed = _prose("docs/devices.md")
    assert (
        f"peaks at {first:.0f} MiB (the first, a snapshot download) and "
        f"{min(later):.0f}–{max(later):.0f} MiB (later ones, a delta chain)" in speed
    )
    assert f"{ort:.0f} MiB for an ORT-only process" in speed
    assert f"against {torch_peak:.0f} MiB for torch" in speed


def test_the_server_optimizer_run_is_named_by_its_backend_and_date() -> None:
    # Prepare
    arm = _json("server_opt.json")["arms"]["fedavg@2"]
    headline = _json("bandwidth_accuracy.json")["compressed"]["final_accuracy"]
    date = _json("server_opt.json")["measured_at"][:10]
    # Execute
    row = _line("docs/robustness.md", "| FedAvg, server step 2")
    # Assert
    assert f"**{arm['final_accuracy'] * 100:.2f}%**" in row
    assert "pool backend" in row and date in row
    assert f"sequential backend, reached {headline * 100:.2f}%" in row
    assert "(the headline's)" not in row


def test_the_unmask_figures_are_the_unmask_file() -> None:
    by_k = {r["k"]: r for r in _json("secagg_unmask.json")["honest_unmask"]}
    text = _prose("docs/secure-aggregation.md")
    at = by_k[1024]
    assert (
        f"at k = 1,024 they took `finish` from {at['finish_new_s']:.1f} s to "
        f"{at['finish_new_8_liars_s']:.1f} s" in text
    )
    assert f"the former function's {by_k[240]['finish_old_s']:.2f} s, `finish_old_s`" in text


@pytest.mark.parametrize("doc", OWNED)
def test_no_figure_is_kept_as_an_indication(doc: str) -> None:
    # A run that no committed file holds is not quoted under any label: the doc names the
    # command that measures it instead.
    text = (ROOT / doc).read_text()
    found = re.findall(r"[^.\n]*\bindication\b[^.\n]*", text, flags=re.IGNORECASE)
    assert not found, f"{doc}: {found}"


@pytest.mark.parametrize("row", ["exact", "k0.05", "k0.02"])
def test_the_simulators_downlink_table_is_its_committed_runs(row: str) -> None:
    # docs/simulator.md's digits downlink table: each cell is the run's rounds.json summary
    # (bench/results/downlink_digits/<row>-s<seed>/), accuracy to 4 places, bytes as printed
    runs = [_json(f"downlink_digits/{row}-s{seed}/rounds.json")["summary"] for seed in (0, 1, 2)]
    acc = " / ".join(f"{r['final_accuracy']:.4f}" for r in runs)
    down = [r["total_download_bytes"] for r in runs]
    label = (
        "exact (no flags)" if row == "exact" else f"`--downlink-topk {row[1:]} --downlink-bits 8`"
    )
    line = _line("docs/simulator.md", f"| {label} |")
    assert acc in line, (acc, line)
    if len(set(down)) == 1:
        assert f"{down[0]:,} each" in line, (down, line)
    else:
        assert " / ".join(f"{b:,}" for b in down) in line, (down, line)
