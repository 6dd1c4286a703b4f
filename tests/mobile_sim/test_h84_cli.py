"""`plume sim` as a newcomer meets it: what a run spent and ran is said in its summary, flags a
run cannot use are refused, and `plume sim report --help` is the report's help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.cli import main as plume

# A tiny `plume sim` (10 digits clients, 4 a round, one local epoch), rounds and the rest to add;
# a tuple, as test_h96_dp_attack, test_h96_report and test_h182_cohort_bounds share it.
TINY = (
    "sim",
    "--dataset",
    "digits",
    "--clients",
    "10",
    "--per-round",
    "4",
    "--local-epochs",
    "1",
    "--no-progress",
)


def test_a_dp_run_prints_and_records_the_epsilon_it_spent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a dp stage accounting without amplification (population = sample = the cohort).
    spec = "dp:clip=1,z=1,population=4,sample=4+fedavg"

    # Execute
    code = plume([*TINY, "--rounds", "2", "--aggregator", spec, "--out", str(tmp_path)])

    # Assert: the summary line and rounds.json's summary give the epsilon after the last
    # round, equal to what the last round's dp measurement says.
    out = capsys.readouterr().out
    assert code == 0
    doc = json.loads((tmp_path / "rounds.json").read_text())
    eps = doc["rounds"][-1]["measurements"]["epsilon"]
    assert doc["summary"]["dp_epsilon"] == eps
    assert doc["summary"]["dp_delta"] == doc["rounds"][-1]["measurements"]["delta"]
    line = next(x for x in out.splitlines() if x.startswith("compressed: final accuracy"))
    assert f"dp epsilon {eps:.2f} at delta 1e-05 over 2 rounds" in line


def test_the_summary_names_the_model_that_ran_and_sub_second_simulated_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: no --model, so the dataset's default runs (config.model stays null)
    code = plume([*TINY, "--rounds", "1", "--out", str(tmp_path)])

    # Assert
    out = capsys.readouterr().out
    assert code == 0
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert doc["config"]["model"] is None
    assert doc["summary"]["model"] == "digits_mlp"
    sim_s = doc["summary"]["sim_s"]
    assert 0 < sim_s < 1  # one digits round: a fraction of a simulated second
    line = next(x for x in out.splitlines() if x.startswith("compressed: final accuracy"))
    assert f"simulated {sim_s:.2f} s in rounds" in line  # not "0 s"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--dense", "--warmup-rounds", "2"],
            "--warmup-rounds only applies to compressed updates; --dense runs only",
        ),
        (["--bits", "32", "--block", "64"], "--block only applies to quantized values"),
        (["--bits", "16", "--block", "64"], "--block only applies to quantized values"),
    ],
)
def test_flags_a_run_has_no_use_for_are_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    expected: str,
) -> None:
    monkeypatch.setenv("PLUME_DATA", str(tmp_path / "nonexistent"))

    code = plume([*TINY, "--rounds", "1", *flags, "--out", str(tmp_path / "run")])

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "plume sim: error:" in line]
    assert code == 2, err
    assert len(lines) == 1 and expected in lines[0], err


def test_block_is_still_taken_with_quantized_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A usage check that passes goes on to load the data: exit 1 for the missing folder.
    monkeypatch.setenv("PLUME_DATA", str(tmp_path / "nonexistent"))
    code = plume(["sim", "--dataset", "mnist", "--bits", "8", "--block", "64", "--no-progress"])
    assert code == 1, capsys.readouterr().err


def test_plume_sim_report_help_is_the_reports_own(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    with pytest.raises(SystemExit) as exit_:
        plume(["sim", "report", "--help"])

    # Assert: a short help about RUN_DIR, not the 150 lines of the training flags
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert out.startswith("usage: plume sim report [-h] RUN_DIR")
    assert "accuracy_vs_upload_bytes.png" in out
    assert "--dataset" not in out and len(out.splitlines()) < 25


def test_plume_sim_help_is_unchanged_by_the_report_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        plume(["sim", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: plume sim [-h]") and "--dataset NAME" in out


def test_plume_sim_report_refuses_run_flags_it_would_ignore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: `plume sim report DIR --dataset mnist --rounds 50` redrew DIR and said nothing of
    # the flags, as if they had been used.
    rounds = [{"round": 1, "accuracy": 0.5, "bytes_up": 400, "bytes_down": 9000, "wall_s": 1.0}]
    (tmp_path / "rounds.json").write_text(json.dumps({"rounds": rounds}))

    code = plume(["sim", "report", str(tmp_path), "--dataset", "digits", "--rounds", "50"])

    err = capsys.readouterr().err
    assert code == 2
    assert "takes no run flags (got --dataset, --rounds)" in err
    assert not (tmp_path / "bytes_per_round.png").exists()


def test_a_krum_run_whose_guarantee_never_held_says_so_under_its_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: Krum with f=2 needs at least 2f + 3 = 7 reports a round; the run gets 4. Before,
    # the run ended as if all were well: `guarantee_holds: false` sat in each round's JSON.
    flags = ["--rounds", "2", "--aggregator", "krum:f=2", "--out", str(tmp_path)]

    # Execute
    code = plume([*TINY, *flags])

    # Assert
    out = capsys.readouterr().out
    assert code == 0
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert doc["summary"]["robust_guarantee_failed_rounds"] == [1, 2]
    warning = next(x for x in out.splitlines() if "warning" in x)
    assert warning.startswith("compressed: warning: in 2 of 2 rounds the aggregator's")
    assert "f=2 needs more than 2f + 2 = 6 reports, the round had 4" in warning


def test_a_krum_run_with_enough_reports_has_no_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 5 reports a round: more than 2f + 2 = 4
    flags = ["--rounds", "1", "--per-round", "5", "--aggregator", "krum:f=1"]
    code = plume([*TINY, *flags, "--out", str(tmp_path)])

    out = capsys.readouterr().out
    assert code == 0 and "warning" not in out
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert "robust_guarantee_failed_rounds" not in doc["summary"]
