"""docs/simulator.md defines every column of rounds.csv (every field of a rounds.json round),
every summary key and every ledger.csv column under "What each column means" (the files'
list named them without saying what they mean: which test set, which loss, what dense_up
counts, what wire bytes are)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from coordinator.cli import main as plume
from coordinator.ledger import BandwidthLedger
from mobile_sim.report import rounds_csv
from mobile_sim.runner import ORT_FIELDS

DOC = Path(__file__).resolve().parents[2] / "docs" / "simulator.md"


def _section() -> str:
    text = DOC.read_text()
    start = text.index("### What each column means")
    return text[start : text.index("\n## ", start)]


def _named(section: str) -> set[str]:
    return set(re.findall(r"`([a-z_]+)`", section))


def _table_rows(section: str) -> set[str]:
    """The names in the first cell of the section's table rows: the columns it defines."""
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    return names


def test_every_rounds_csv_and_ledger_column_has_a_row() -> None:
    defined = _table_rows(_section())
    rounds = next(csv.reader(io.StringIO(rounds_csv([{"ort_trained": 1}]))))
    ledger = next(csv.reader(io.StringIO(BandwidthLedger().to_csv())))
    assert set(ORT_FIELDS) <= set(rounds)
    assert set(rounds) - defined == set()
    assert set(ledger) - defined == set()


def test_every_summary_key_and_the_aggregators_measurements_are_named(tmp_path: Path) -> None:
    # Prepare: a real run's rounds.json
    flags = ["sim", "--dataset", "digits", "--clients", "6", "--per-round", "3", "--rounds", "1"]
    assert plume([*flags, "--local-epochs", "1", "--no-progress", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "rounds.json").read_text())

    # Assert
    named = _named(_section())
    assert set(doc["summary"]) - named == set()
    assert set(doc["rounds"][0]) - {"measurements"} - named == set()
    assert {"clients", "total_weight", "measurements", "ledger_totals"} <= named
    assert set(doc["ledger_totals"]["up"]) - named == set()
