"""`plume sim report RUN_DIR` rebuilds rounds.csv from rounds.json byte for byte, prints each
run's per-round table as the run printed it, and says in one line that a missing ledger.csv
cannot be rebuilt (before it only redrew the PNGs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main as plume

TINY = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "6", "--per-round",
    "3", "--rounds", "2", "--local-epochs", "1", "--no-progress",
]  # fmt: skip
PLOTS = ("accuracy_vs_upload_bytes.png", "bytes_per_round.png", "round_durations.png")


def _table(out: str, label: str) -> list[str]:
    """The per-round table under `[label]` in `out`: its header, rule and rows."""
    lines = out.splitlines()
    start = lines.index(f"[{label}]")
    end = start + 1
    while end < len(lines) and lines[end].strip() and not lines[end].startswith("["):
        end += 1
    return lines[start:end]


def test_report_rebuilds_rounds_csv_and_prints_the_runs_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a run; its files as it wrote them; rounds.csv and ledger.csv then lost
    out = tmp_path / "run"
    assert plume([*TINY, "--out", str(out)]) == 0
    run_out = capsys.readouterr().out
    written = {name: (out / name).read_bytes() for name in ("rounds.csv", *PLOTS)}
    (out / "rounds.csv").unlink()
    (out / "ledger.csv").unlink()

    # Execute
    code = plume(["sim", "report", str(out)])
    report_out = capsys.readouterr().out

    # Assert: rounds.csv and the plots are the run's bytes; the table is the run's
    assert code == 0
    assert {name: (out / name).read_bytes() for name in written} == written
    table = _table(run_out, "compressed")
    assert len(table) == 2 + 2 + 1  # label, header, rule, two rounds
    assert _table(report_out, "compressed") == table
    assert f"rebuilt {out / 'rounds.csv'}" in report_out.splitlines()
    [ledger_line] = [line for line in report_out.splitlines() if "ledger.csv" in line]
    assert ledger_line.startswith(f"compressed: no {out / 'ledger.csv'}; it cannot be rebuilt")
    assert not (out / "ledger.csv").exists()


def test_report_rebuilds_each_compare_dense_runs_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a --compare-dense run, and its CSV files overwritten with something else
    out = tmp_path / "pair"
    assert plume([*TINY, "--compare-dense", "--out", str(out)]) == 0
    run_out = capsys.readouterr().out
    written = {
        label: (out / label / "rounds.csv").read_bytes() for label in ("compressed", "dense")
    }
    for label in written:
        (out / label / "rounds.csv").write_text("stale\n")

    # Execute
    assert plume(["sim", "report", str(out)]) == 0
    report_out = capsys.readouterr().out

    # Assert: both files rebuilt as the run wrote them, both tables printed, no ledger line
    assert {label: (out / label / "rounds.csv").read_bytes() for label in written} == written
    for label in written:
        assert _table(report_out, label) == _table(run_out, label)
    assert "ledger.csv" not in report_out


def test_an_abandoned_rounds_csv_is_rebuilt_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: every round abandoned (train_loss NaN, accuracy null): the empty cells too
    out = tmp_path / "lost"
    assert plume([*TINY, "--deadline", "0.01", "--out", str(out)]) == 0
    run_out = capsys.readouterr().out
    written = (out / "rounds.csv").read_bytes()
    (out / "rounds.csv").unlink()

    # Execute
    assert plume(["sim", "report", str(out)]) == 0

    # Assert
    assert (out / "rounds.csv").read_bytes() == written
    assert _table(capsys.readouterr().out, "compressed") == _table(run_out, "compressed")
