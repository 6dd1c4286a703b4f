"""What helper-222, reading README.md as a new user, was misled by: the headline's byte savings
were upload-only without saying so. The benchmark runs in process, where every model download
counts as an fp32 snapshot, so the compressed run's total traffic is half the dense run's, not
1/576. The README now says so, with download and total columns; these tests keep them equal to
the committed result the table quotes and to the simulator's accounting."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _headline_rows() -> dict[str, dict[str, str]]:
    """The headline table's rows (first cell -> {column: cell}): the first table under
    '## Headline result'."""
    section = README.split("## Headline result", 1)[1]
    table = section.split("\n\n| ", 1)[1].split("\n\n", 1)[0]
    lines = ("| " + table).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:  # after the header and the |---| line
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def test_the_pitch_says_upload_where_it_means_upload() -> None:
    pitch = README.split("```", 1)[0]
    assert "hundreds of times fewer upload bytes than dense" in " ".join(pitch.split())
    assert "redistributes the model as compressed deltas" not in pitch


def test_the_headline_table_has_downloads_as_the_simulator_counts_them() -> None:
    # Prepare: the run the table quotes, and the headline model's size
    from mobile_sim.models import build_model

    result = json.loads((ROOT / "bench" / "results" / "bandwidth_accuracy.json").read_text())
    cfg = result["config"]
    params = sum(p.numel() for p in build_model(cfg["model"]).parameters())
    snapshots = cfg["rounds"] * cfg["per_round"]  # one fp32 snapshot per device picked

    # Execute
    rows = _headline_rows()

    # Assert: a download column and a total, in both rows
    down = f"{snapshots * params * 4 / 1e9:.2f} GB (fp32)"
    dense, plume = rows["dense fp32 FedAvg"], next(v for k, v in rows.items() if "Plume" in k)
    assert dense["download bytes, 20 rounds"] == down == plume["download bytes, 20 rounds"]
    total_dense = 2 * snapshots * params * 4
    total_plume = result["compressed"]["upload_bytes"] + snapshots * params * 4
    assert dense["upload + download"] == f"{total_dense / 1e9:.2f} GB"
    assert plume["upload + download"] == (
        f"{total_plume / 1e9:.2f} GB, **{total_dense / total_plume:.1f}x fewer**"
    )
    assert f"{params * 4:,} bytes, 10 a round" in README
    assert "**The 576x is upload bytes only.**" in README


def test_the_in_process_simulator_counts_each_download_as_an_fp32_snapshot() -> None:
    # The accounting the download column rests on (docs/simulator.md), on a small run
    import torch

    from mobile_sim.runner import SimConfig, run_simulation

    torch.manual_seed(0)
    cfg = SimConfig(
        dataset="digits", clients=10, per_round=4, rounds=2, local_epochs=1, topk=0.05, seed=0
    )
    result = run_simulation(cfg, progress=False)
    for record in result.records:
        assert record.bytes_down == record.dense_down == record.dense_up
        assert record.bytes_up * 10 < record.bytes_down
