"""A run with onnxruntime devices says how many trained on it: each round record has
`ort_trained` (its devices that trained on onnxruntime) and `ort_reports` (its reports that
came from them), in rounds.json and rounds.csv, and the summary line and summary say the
totals. Before, nothing did: `--ort-tier low` runs whose accuracies matched a torch-only run
could not be told apart from runs where no onnxruntime device trained (helper-222's finding 9).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from coordinator.cli import main as plume
from mobile_sim.backends.sequential import SequentialBackend
from mobile_sim.models import build_model
from mobile_sim.runner import SimConfig, run_simulation
from tests._export_cache import ExportCache, example

TINY = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "10", "--per-round",
    "4", "--rounds", "2", "--local-epochs", "1", "--no-progress", "--threads", "1",
]  # fmt: skip
WALL = ["wall_train_s", "wall_encode_s", "wall_aggregate_s", "wall_eval_s", "wall_other_s"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, export_cache: ExportCache) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("h233") / "digits_mlp"
    export_cache.export(build_model("digits_mlp", seed=0), example(4, 64), out)
    return out


class _Counting(SequentialBackend):
    """The sequential backend, counting each train call's onnxruntime jobs."""

    def __init__(self) -> None:
        super().__init__()
        self.ort_jobs: list[int] = []

    def train(self, params: Any, jobs: Sequence[Any]) -> Any:
        self.ort_jobs.append(sum(job.trainer == "ort" for job in jobs))
        return super().train(params, jobs)


def test_each_round_counts_the_devices_that_trained_on_onnxruntime(artifacts: Path) -> None:
    # Prepare: half of 10 devices on onnxruntime, 4 a round, 4 rounds
    cfg = SimConfig(
        dataset="digits",
        model="digits_mlp",
        clients=10,
        per_round=4,
        rounds=4,
        local_epochs=1,
        ort_fraction=0.5,
        ort_artifacts=str(artifacts),
        seed=1,
    )
    backend = _Counting()

    # Execute
    res = run_simulation(cfg, progress=False, backend=backend)

    # Assert: the counts are those of the jobs the backend got; every report was trained
    # (no clock drops any here), and some rounds had onnxruntime devices
    assert [r.ort_trained for r in res.records] == backend.ort_jobs
    assert [r.ort_reports for r in res.records] == backend.ort_jobs
    assert sum(backend.ort_jobs) > 0
    assert all(0 <= (r.ort_trained or 0) <= r.reports for r in res.records)


def test_a_run_without_onnxruntime_devices_has_no_counts() -> None:
    cfg = SimConfig(dataset="digits", model="digits_mlp", clients=6, per_round=3, rounds=1)
    res = run_simulation(cfg, progress=False)
    assert res.records[0].ort_trained is None and res.records[0].ort_reports is None


def test_the_files_and_the_summary_line_say_so(
    artifacts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: every device on onnxruntime
    flags = ["--ort-fraction", "1", "--ort-artifacts", str(artifacts), "--out", str(tmp_path)]
    code = plume([*TINY, *flags])
    out = capsys.readouterr().out

    # Assert: rounds.json per round and in its summary, rounds.csv's columns before the wall
    # phases, and the summary line
    assert code == 0
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert [r["ort_trained"] for r in doc["rounds"]] == [4, 4]
    assert [r["ort_reports"] for r in doc["rounds"]] == [r["reports"] for r in doc["rounds"]]
    assert doc["summary"]["ort_trained"] == 8 and doc["summary"]["ort_reports"] == 8
    with (tmp_path / "rounds.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames is not None
    assert reader.fieldnames[-len(WALL) - 2 :] == ["ort_trained", "ort_reports", *WALL]
    assert [int(r["ort_trained"]) for r in rows] == [4, 4]
    line = next(x for x in out.splitlines() if x.startswith("compressed: final accuracy"))
    assert "; 8 of 8 reports trained on onnxruntime (8 device trainings on it)" in line


def test_a_plain_runs_files_have_no_ort_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert plume([*TINY, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header = (tmp_path / "rounds.csv").read_text().splitlines()[0].split(",")
    assert "ort_trained" not in header
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert "ort_trained" not in doc["summary"]
    assert doc["rounds"][0]["ort_trained"] is None
    assert "onnxruntime" not in out
    assert np.isfinite(doc["summary"]["final_accuracy"])
