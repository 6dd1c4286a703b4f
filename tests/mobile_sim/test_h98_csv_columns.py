"""rounds.csv carries the per-round figures that were only in rounds.json: the dp epsilon spent,
the attackers among a round's reports and the backdoor accuracy, with one header for every
run (empty cells where a run has no such figure) so that files of several runs load as one."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from coordinator.cli import main as plume

TINY = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "10", "--per-round",
    "4", "--rounds", "2", "--local-epochs", "1", "--no-progress",
]  # fmt: skip

# The columns rounds.csv had before: readers that index them keep working.
OLD = [
    "round", "accuracy", "loss", "train_loss", "reports", "committed", "bytes_up", "bytes_down",
    "dense_up", "dense_down", "wire_up", "wire_down", "ratio_up", "wall_s", "sim_s", "wait_s",
    "available",
]  # fmt: skip
NEW = ["dp_epsilon", "dp_delta", "malicious_reports", "backdoor_accuracy"]
# Where each round's wall_s went (helper-206), after those.
WALL = ["wall_train_s", "wall_encode_s", "wall_aggregate_s", "wall_eval_s", "wall_other_s"]


def _csv(folder: Path) -> list[dict[str, str]]:
    with (folder / "rounds.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_dp_backdoor_run_has_its_epsilon_and_attack_figures_in_the_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: an accounted dp stage under a backdoor attack by 2 of the 10 devices
    dp = "dp:clip=1,z=0.5,population=10,sample=4+fedavg"
    flags = ["--aggregator", dp, "--attack", "backdoor:target=0", "--malicious", "0.2"]
    code = plume([*TINY, *flags, "--out", str(tmp_path)])
    capsys.readouterr()

    # Assert: the old columns first and in order, then the new ones; each cell is the
    # round's figure in rounds.json
    assert code == 0
    header = (tmp_path / "rounds.csv").read_text().splitlines()[0].split(",")
    assert header == [*OLD, *NEW, *WALL]
    rows = _csv(tmp_path)
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert len(rows) == len(doc["rounds"]) == 2
    for row, rec in zip(rows, doc["rounds"], strict=True):
        dp_meas = rec["measurements"]  # the dp stage's, at the top of the round's
        attack = rec["measurements"]["attack"]
        assert float(row["dp_epsilon"]) == dp_meas["epsilon"] > 0
        assert float(row["dp_delta"]) == dp_meas["delta"]
        assert int(row["malicious_reports"]) == attack["malicious_reports"]
        assert float(row["backdoor_accuracy"]) == attack["backdoor_accuracy"]
    assert float(rows[-1]["dp_epsilon"]) == doc["summary"]["dp_epsilon"]
    assert float(rows[-1]["backdoor_accuracy"]) == doc["summary"]["backdoor_accuracy"]


def test_a_plain_run_has_the_same_header_with_empty_cells(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = plume([*TINY, "--eval-every", "2", "--out", str(tmp_path)])
    capsys.readouterr()

    # Assert: same header as a dp/attack run; no figure is an empty cell, not 0
    assert code == 0
    header = (tmp_path / "rounds.csv").read_text().splitlines()[0].split(",")
    assert header == [*OLD, *NEW, *WALL]
    rows = _csv(tmp_path)
    assert [row["round"] for row in rows] == ["1", "2"]
    assert all(row[name] == "" for row in rows for name in NEW)
    assert rows[0]["accuracy"] == ""  # an unevaluated round, as before
