"""helper-178, after helper-173's review of mobile_sim: `plume sim --min-memory-mb N`
(`SimConfig.min_memory_mb`) keeps devices with less memory out of the realistic fleet's
selection. Before, the runner never passed a memory floor to `SimFleet.select`, so the tiers'
memory sizes changed nothing."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from coordinator.cli import main as plume
from mobile_sim.population import Population, PopulationConfig
from mobile_sim.runner import SimConfig, SimResult, run_simulation

FLOOR = 4096.0  # MiB: the low tier's 2 and 3 GB phones fall below it
CFG = SimConfig(
    dataset="digits",
    clients=200,
    per_round=10,
    rounds=2,
    local_epochs=1,
    lr=0.2,
    fleet="realistic",
    deadline_s=300.0,
    seed=0,
)


def _memory_of_selected(res: SimResult) -> list[float]:
    """Memory (MiB) of every device the run sent the model to, from the ledger's downloads and
    the population the runner's fleet draws (same size and seed)."""
    pop = Population(PopulationConfig(res.config.clients, res.config.seed))
    devices = {row.device_id for row in res.ledger.rows() if row.direction == "down"}
    idx = np.array(sorted(int(d.split("-")[1]) for d in devices), dtype=np.int64)
    assert idx.size >= 10
    return pop.profiles(idx).memory_mb.tolist()


def test_min_memory_keeps_low_memory_devices_out_of_the_selection() -> None:
    # Execute
    without = run_simulation(CFG, progress=False)
    floored = run_simulation(replace(CFG, min_memory_mb=FLOOR), progress=False)

    # Assert: without a floor (the default, as before) some selected phones have less
    # memory; with it none do, and rounds still commit
    assert min(_memory_of_selected(without)) < FLOOR
    assert min(_memory_of_selected(floored)) >= FLOOR
    assert all(r.committed for r in floored.records)
    assert floored.config.min_memory_mb == FLOOR and CFG.min_memory_mb is None


def test_the_flag_reaches_the_selection_and_rounds_json(tmp_path: Path) -> None:
    # Execute
    argv = ["sim", "--dataset", "digits", "--clients", "60", "--per-round", "5", "--rounds", "1"]
    argv += ["--local-epochs", "1", "--no-progress", "--fleet", "realistic"]
    code = plume([*argv, "--min-memory-mb", "8000", "--out", str(tmp_path)])

    # Assert: recorded, and written into the rerun line
    assert code == 0
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert doc["config"]["min_memory_mb"] == 8000.0
    assert "--min-memory-mb 8000" in doc["command"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--min-memory-mb", "4096"], "--min-memory-mb only applies with --fleet realistic"),
        (
            ["--fleet", "realistic", "--min-memory-mb", "nan"],
            "--min-memory-mb must be a finite number of MiB >= 0",
        ),
        (
            ["--fleet", "realistic", "--min-memory-mb", "-1"],
            "--min-memory-mb must be a finite number of MiB >= 0",
        ),
    ],
)
def test_bad_min_memory_is_a_usage_error(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sim", "--dataset", "digits", "--clients", "10", "--per-round", "4", "--rounds", "1"]
    code = plume([*argv, "--no-progress", *extra, "--out", str(tmp_path)])
    assert code == 2
    assert message in capsys.readouterr().err


def test_sim_config_refuses_a_floor_outside_the_realistic_fleet() -> None:
    with pytest.raises(ValueError, match="min_memory_mb applies to the realistic fleet"):
        replace(CFG, fleet="timing", min_memory_mb=FLOOR)
    with pytest.raises(ValueError, match="min_memory_mb must be a finite number"):
        replace(CFG, min_memory_mb=math.inf)
