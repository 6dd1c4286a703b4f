"""Ctrl-C in a long `plume sim` run keeps its finished rounds: they are written, marked
interrupted, and `plume sim report` reads them; a second Ctrl-C while they are written leaves
no half-written file. Interrupted deterministically: a KeyboardInterrupt raised from inside a
chosen round, never a signal at a wall-clock time."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

import mobile_sim.runner as runner
from coordinator.cli import main as plume
from coordinator.ledger import BandwidthLedger
from mobile_sim.report import replace_atomically

# --topk 0.1 keeps 241 values an upload: stderr holds the interruption's line alone, without
# the few-kept note of the default 0.01 (test_s51_cli_few_kept.py).
TINY = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "6", "--per-round",
    "3", "--rounds", "3", "--local-epochs", "1", "--topk", "0.1", "--no-progress",
]  # fmt: skip
PLOTS = ("accuracy_vs_upload_bytes.png", "bytes_per_round.png", "round_durations.png")


def _ctrl_c_in_round(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Ctrl-C while round `n` encodes its updates: after it opened (its downloads are in the
    ledger), before it ends."""
    real = runner.encode_reports
    calls = {"n": 0}

    def encode(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "encode_reports", encode)


def _tmp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def test_ctrl_c_writes_the_finished_rounds_marked_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: Ctrl-C in round 3 of 3
    _ctrl_c_in_round(monkeypatch, 3)
    out = tmp_path / "run"

    # Execute
    code = plume([*TINY, "--out", str(out)])
    captured = capsys.readouterr()

    # Assert: exit 130 and one line saying where the 2 finished rounds are
    assert code == 130
    lines = [line for line in captured.err.splitlines() if line.strip()]
    plots = ", ".join(str(out / name) for name in PLOTS)
    assert lines == [
        f"plume sim: interrupted after 2 of 3 rounds; wrote its 2 finished rounds to {out}/ "
        f"(rounds.json with summary.interrupted true, rounds.csv, ledger.csv) and {plots}"
    ]
    assert "final accuracy" not in captured.out  # no summary line of a completed run
    doc = json.loads((out / "rounds.json").read_text())
    s = doc["summary"]
    assert (s["interrupted"], s["rounds"], s["rounds_planned"]) == (True, 2, 3)
    assert [r["round"] for r in doc["rounds"]] == [1, 2]
    assert s["final_accuracy"] == doc["rounds"][-1]["accuracy"] is not None
    assert s["total_upload_bytes"] == sum(r["bytes_up"] for r in doc["rounds"])
    assert doc["command"].startswith("plume sim --dataset digits")
    with (out / "rounds.csv").open(newline="") as f:
        assert [row["round"] for row in csv.DictReader(f)] == ["1", "2"]
    # Round 3 had opened (3 downloads recorded): the ledger holds the finished rounds only
    with (out / "ledger.csv").open(newline="") as f:
        ledger = list(csv.DictReader(f))
    assert {row["round_id"] for row in ledger} == {"1", "2"}
    assert sum(int(r["payload_bytes"]) for r in ledger if r["direction"] == "up") == sum(
        r["bytes_up"] for r in doc["rounds"]
    )
    assert all((out / name).stat().st_size > 0 for name in PLOTS)
    assert _tmp_files(out) == []


def test_plume_sim_report_reads_an_interrupted_run_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: an interrupted run's folder, its plots as the run drew them
    _ctrl_c_in_round(monkeypatch, 2)
    out = tmp_path / "run"
    assert plume([*TINY, "--out", str(out)]) == 130
    drawn = {name: (out / name).read_bytes() for name in PLOTS}
    capsys.readouterr()

    # Execute
    code = plume(["sim", "report", str(out)])
    report = capsys.readouterr().out

    # Assert: the plots redrawn byte for byte, the table, and a line saying it was interrupted
    assert code == 0
    assert {name: (out / name).read_bytes() for name in PLOTS} == drawn
    row = next(line for line in report.splitlines() if line.startswith("compressed "))
    assert row.split()[1] == "1"  # rounds
    assert report.rstrip("\n").splitlines()[-1] == (
        "compressed: interrupted after 1 of 3 rounds; its figures stop at round 1, the last "
        "that finished"
    )


def test_a_completed_run_is_marked_not_interrupted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    assert plume([*TINY, "--rounds", "1", "--out", str(tmp_path)]) == 0
    report_code = plume(["sim", "report", str(tmp_path)])

    # Assert: the key is there in every run (false), with no rounds_planned; report adds no line
    summary = json.loads((tmp_path / "rounds.json").read_text())["summary"]
    assert summary["interrupted"] is False and "rounds_planned" not in summary
    assert report_code == 0
    assert "interrupted" not in capsys.readouterr().out


def test_a_second_ctrl_c_while_writing_leaves_no_rounds_json_that_looks_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: an earlier run's files in the folder; Ctrl-C in round 2, and again while the
    # ledger is written
    out = tmp_path / "run"
    out.mkdir()
    (out / "rounds.json").write_text('{"rounds": []}\n')
    (out / "ledger.csv").write_text("an earlier run's ledger\n")
    _ctrl_c_in_round(monkeypatch, 2)

    def ledger_interrupted(self: BandwidthLedger, round_id: int | None = None) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(BandwidthLedger, "to_csv", ledger_interrupted)

    # Execute
    code = plume([*TINY, "--out", str(out)])
    err = capsys.readouterr().err

    # Assert: still 130 and one line; no rounds.json (neither a part of this run's nor the
    # earlier run's beside this run's rounds.csv), no temporary file left behind; the earlier
    # run's files were removed before round 1 (test_s24c_out_replaced.py)
    assert code == 130
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [
        "plume sim: interrupted after 1 of 3 rounds; interrupted again while writing its 1 "
        f"finished round: {out}/rounds.json was not written"
    ]
    assert not (out / "rounds.json").exists()
    assert not (out / "ledger.csv").exists()
    assert _tmp_files(out) == []


def test_replace_atomically_keeps_the_old_file_when_the_write_is_interrupted(
    tmp_path: Path,
) -> None:
    # Prepare
    path = tmp_path / "rounds.json"
    path.write_text("old")

    def half(tmp: Path) -> None:
        tmp.write_text("new, half of it")
        raise KeyboardInterrupt

    # Execute / Assert: the old file whole, no temporary file; a whole write replaces it
    with pytest.raises(KeyboardInterrupt):
        replace_atomically(path, half)
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]
    replace_atomically(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new"
    assert list(tmp_path.iterdir()) == [path]


def test_the_runner_raises_run_interrupted_with_the_finished_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare
    _ctrl_c_in_round(monkeypatch, 2)
    cfg = runner.SimConfig(
        dataset="digits", model="digits_mlp", clients=6, per_round=3, rounds=3, local_epochs=1
    )

    # Execute
    with pytest.raises(KeyboardInterrupt) as info:
        runner.run_simulation(cfg, progress=False)

    # Assert: a KeyboardInterrupt still, carrying round 1 and its ledger rows only
    assert isinstance(info.value, runner.RunInterrupted)
    partial = info.value.result
    assert partial.interrupted
    assert [r.round for r in partial.records] == [1]
    assert {row.round_id for row in partial.ledger.rows()} == {1}


def test_ctrl_c_in_the_first_run_of_compare_dense_writes_it_in_its_subfolder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: Ctrl-C in round 2 of the compressed run; the dense run never starts
    _ctrl_c_in_round(monkeypatch, 2)
    out = tmp_path / "run"

    # Execute
    code = plume([*TINY, "--compare-dense", "--out", str(out)])
    err = capsys.readouterr().err

    # Assert
    assert code == 130
    line = next(line for line in err.splitlines() if line.strip())
    assert line.startswith(
        "plume sim: interrupted after 1 of 3 rounds of the compressed run; wrote its 1 finished "
        f"round to {out / 'compressed'}/ (rounds.json with summary.interrupted true, "
        f"rounds.csv, ledger.csv) and {out / 'accuracy_vs_upload_bytes.png'}"
    )
    assert json.loads((out / "compressed" / "rounds.json").read_text())["summary"]["interrupted"]
    assert not (out / "dense").exists()


def test_a_runner_that_keeps_no_partial_results_says_nothing_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a runner that lets a plain KeyboardInterrupt through after one round (every
    # runner of plume sim now keeps its finished rounds; this is the fallback for one that
    # does not)
    def plain(cfg: Any, progress: bool, label: str, on_round: Any) -> Any:
        on_round(
            runner.RoundRecord(
                round=1,
                accuracy=0.1,
                loss=2.3,
                train_loss=2.3,
                reports=3,
                committed=True,
                bytes_up=100,
                bytes_down=400,
                dense_up=400,
                dense_down=400,
                wire_up=100,
                wire_down=400,
                ratio_up=4.0,
                wall_s=0.01,
            )  # fmt: skip
        )
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_simulation", plain)

    # Execute
    code = plume([*TINY, "--out", str(tmp_path)])
    err = capsys.readouterr().err

    # Assert
    assert code == 130
    assert [line for line in err.splitlines() if line.strip()] == [
        "plume sim: interrupted after 1 of 3 rounds; its results were not written (this runner "
        "keeps no partial results)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_a_completed_run_is_written_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: every round ran; Ctrl-C while its ledger is written
    def ledger_interrupted(self: BandwidthLedger, round_id: int | None = None) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(BandwidthLedger, "to_csv", ledger_interrupted)

    # Execute
    code = plume([*TINY, "--rounds", "1", "--out", str(tmp_path)])
    err = capsys.readouterr().err

    # Assert: 130, one line, no traceback, no rounds.json nor temporary file
    assert code == 130
    assert [line for line in err.splitlines() if line.strip()] == [
        "plume sim: interrupted while writing the results of all 1 rounds: "
        f"{tmp_path}/rounds.json was not written"
    ]
    assert not (tmp_path / "rounds.json").exists()
    assert _tmp_files(tmp_path) == []


def test_ctrl_c_while_the_plots_are_drawn_points_at_plume_sim_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: Ctrl-C while the extra plots are drawn, after the run's files are written
    import mobile_sim.report_extra as report_extra

    def plots_interrupted(*args: Any, **kwargs: Any) -> list[Path]:
        raise KeyboardInterrupt

    monkeypatch.setattr(report_extra, "plot_runs", plots_interrupted)

    # Execute
    code = plume([*TINY, "--rounds", "1", "--out", str(tmp_path)])
    err = capsys.readouterr().err

    # Assert
    assert code == 130
    assert [line for line in err.splitlines() if line.strip()] == [
        f"plume sim: interrupted while drawing the plots; the runs' files are in {tmp_path}/ "
        f"(rounds.json, rounds.csv, ledger.csv): plume sim report {tmp_path} draws them"
    ]
    assert json.loads((tmp_path / "rounds.json").read_text())["summary"]["interrupted"] is False
