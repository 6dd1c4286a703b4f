"""What a label-skew experiment reports: how skewed the split it ran really was (rounds.json's
summary `partition`), so runs at several Dirichlet alphas can be described, not only ranked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coordinator.cli import main as plume
from mobile_sim.partition import partition_stats


def test_partition_stats_counts_examples_and_classes_per_device() -> None:
    # Prepare: three devices; labels 0,0,1 | 2 | 0,1,2,2
    labels = np.array([0, 0, 1, 2, 0, 1, 2, 2], dtype=np.int64)
    parts = [np.array([0, 1, 2]), np.array([3]), np.array([4, 5, 6, 7])]

    # Execute
    stats = partition_stats(parts, labels)

    # Assert
    assert stats == {
        "devices": 3,
        "examples_min": 1,
        "examples_median": 3.0,
        "examples_max": 4,
        "classes_min": 1,
        "classes_mean": 2.0,
        "classes_max": 3,
    }


@pytest.mark.parametrize(("alpha", "skewed"), [("0.05", True), ("1000", False)])
def test_a_run_records_the_skew_of_its_split(tmp_path: Path, alpha: str, skewed: bool) -> None:
    # Execute
    flags = ["sim", "--dataset", "digits", "--clients", "10", "--per-round", "4"]
    flags += ["--rounds", "1", "--local-epochs", "1", "--no-progress", "--alpha", alpha]
    assert plume([*flags, "--out", str(tmp_path)]) == 0

    # Assert: near-single-class devices at a small alpha, every class everywhere at a large one
    stats = json.loads((tmp_path / "rounds.json").read_text())["summary"]["partition"]
    assert stats["devices"] == 10
    assert (stats["classes_mean"] < 6) is skewed
    assert (stats["classes_min"] == 10) is not skewed
