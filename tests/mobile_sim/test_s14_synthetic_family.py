"""synthetic(α,β) and synthetic_iid had no default model: `plume sim --dataset
"synthetic(0.5,0.5)"` printed its natural-split line, then failed with "no default model ...;
pass --model" (helper-89's review of 02848d7, which made natural their default split). The
dataset's family names the default model."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main as plume
from mobile_sim.runner import SimConfig, dataset_family


@pytest.mark.parametrize(
    ("dataset", "family"),
    [("synthetic(0.5,0.5)", "synthetic"), ("synthetic_iid", "synthetic"), ("mnist", "mnist")],
)
def test_the_family_names_the_default_model(dataset: str, family: str) -> None:
    assert dataset_family(dataset) == family
    assert SimConfig(dataset=dataset).model_name == SimConfig(dataset=family).model_name


def test_a_synthetic_alpha_beta_run_needs_no_model_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = plume(["sim", "--dataset", "synthetic(0.5,0.5)", "--rounds", "1", "--per-round", "3",
                  "--local-epochs", "1", "--no-progress", "--out", str(tmp_path)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "synthetic_lr" in (tmp_path / "rounds.json").read_text()
