"""`plume sim` refuses a dp stage accounting fewer devices per round than it selects before any
data loads, like its other value rules (SimConfig). The round engine refused it only once the
data had loaded, so a run with a missing data folder reported the data instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main as plume
from mobile_sim.runner import SimConfig

MESSAGE = (
    "dp accounts cohorts of sample=2 but the engine selects 3 (over-selection included): "
    "set sample= to the cohort"
)


def test_simconfig_refuses_a_sample_below_the_cohort() -> None:
    with pytest.raises(ValueError) as info:
        SimConfig(
            dataset="digits", clients=10, per_round=3,
            aggregator="dp:clip=1,z=1,population=6,sample=2,denom=2+fedavg",
        )  # fmt: skip
    assert MESSAGE in str(info.value)


def test_the_cli_refuses_it_before_the_data_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: mnist from a folder that does not exist (loading it would fail with exit 1)
    monkeypatch.setenv("PLUME_DATA", str(tmp_path / "nonexistent"))
    # Execute
    code = plume(
        [
            "sim", "--dataset", "mnist", "--rounds", "1", "--no-progress", "--per-round", "3",
            "--over-selection", "1.0", "--out", str(tmp_path / "run"),
            "--aggregator", "dp:clip=1,z=1,population=6,sample=2,denom=2+fedavg",
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    # Assert: a usage error naming the flag
    assert code == 2, err
    assert f"plume sim: error: --aggregator: {MESSAGE}" in err
