"""rounds.csv writes an empty cell for a value that is not a finite number (an abandoned
round's train_loss), as docs/simulator.md promises and as rounds.json writes null."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from coordinator.cli import main as plume

ABANDONED = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "10", "--per-round",
    "4", "--rounds", "1", "--local-epochs", "1", "--deadline", "0.01", "--no-progress",
]  # fmt: skip


def test_an_abandoned_rounds_train_loss_is_an_empty_cell(tmp_path: Path) -> None:
    # Execute: no report arrives before the 0.01 s deadline, so the round is abandoned and
    # its train_loss is NaN in the record
    assert plume([*ABANDONED, "--out", str(tmp_path)]) == 0

    # Assert: empty in the CSV (it was "nan"), null in the JSON
    [row] = list(csv.DictReader((tmp_path / "rounds.csv").open()))
    assert row["committed"] == "False"
    assert row["train_loss"] == ""
    assert "nan" not in (tmp_path / "rounds.csv").read_text().lower()
    [rnd] = json.loads((tmp_path / "rounds.json").read_text())["rounds"]
    assert rnd["train_loss"] is None
