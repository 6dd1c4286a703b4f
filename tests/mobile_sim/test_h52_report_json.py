"""rounds.json is JSON that any parser reads: a value the run does not have is null, not NaN.

An abandoned round has no training loss; `RoundRecord.train_loss` is NaN then, and rounds.json
carried the bare token `NaN`, which strict parsers (jq, JavaScript's JSON.parse, Python's json
with `parse_constant` refusing it) reject. A realistic fleet that never holds a dp stage's
population abandons every round, so such a run's rounds.json could not be read at all."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from mobile_sim.report import write_run
from mobile_sim.runner import run_simulation

from .test_h50_dp_pool import TINY as H50_TINY

TINY = replace(
    H50_TINY,
    fleet="realistic",
    # 30 devices are never all eligible at once: both rounds are abandoned
    aggregator="dp:clip=1,z=1,population=30,sample=3,denom=3,seed=0+fedavg",
)


def _strict(token: str) -> Any:
    raise ValueError(f"not JSON: {token}")


def test_an_abandoned_round_writes_a_null_loss_not_nan(tmp_path: Path) -> None:
    # Prepare
    res = run_simulation(TINY, progress=False)
    assert not any(r.committed for r in res.records)
    assert all(math.isnan(r.train_loss) for r in res.records)
    # Execute
    paths = write_run(res, tmp_path)
    # Assert: strict JSON, the missing loss null; an empty CSV cell (it was "nan" before
    # test_s24c_csv_nonfinite.py: docs/simulator.md promises empty cells)
    doc = json.loads(paths["json"].read_text(), parse_constant=_strict)
    assert [row["train_loss"] for row in doc["rounds"]] == [None, None]
    assert doc["summary"]["dp_pool_abandoned_rounds"] == [1, 2]
    csv_rows = paths["csv"].read_text().splitlines()
    header = csv_rows[0].split(",")
    assert csv_rows[1].split(",")[header.index("train_loss")] == ""


def test_a_committed_round_keeps_its_figures(tmp_path: Path) -> None:
    # Prepare: the same fleet with a population it holds
    cfg = replace(TINY, aggregator="dp:clip=1,z=1,population=8,sample=3,denom=3,seed=0+fedavg")
    res = run_simulation(cfg, progress=False)
    # Execute
    doc = json.loads(write_run(res, tmp_path)["json"].read_text(), parse_constant=_strict)
    # Assert
    assert [row["train_loss"] for row in doc["rounds"]] == [r.train_loss for r in res.records]
    assert all(isinstance(row["train_loss"], float) for row in doc["rounds"])
