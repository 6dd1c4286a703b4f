"""An HTTP run's control traffic in its results files and in `plume sim report` (helper-303).

4766ce4 put each HTTP round's control traffic (its devices' exchanges that no round's ledger
holds: registrations, idle and outcome check-ins) in `measurements.control_traffic` of
rounds.json and its sums on the summary line, but nowhere else: rounds.json's `summary`,
rounds.csv and `plume sim report` (its lines and `bytes_per_round.png`) had none of it. Now:

- `summary` has `total_control_up_wire_bytes`, `total_control_down_wire_bytes` and
  `total_control_requests` when every round has the measurement (the summary line's rule);
- rounds.csv has `control_up_wire_bytes`, `control_down_wire_bytes`, `control_requests` after
  every other column in a run whose rounds have it (other runs' files are unchanged, every
  earlier column keeps its place), rebuilt by `plume sim report` from rounds.json (a run dir
  4766ce4's code wrote, without the summary keys, gains them too);
- `plume sim report` prints each such run's totals under its table, and `bytes_per_round.png`
  draws each run's control traffic as a dotted line beside its payload (wire bytes, named so);
- a run dir without the measurement loads and reports as before; a damaged one is refused
  naming the file, round and field.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.cli import main as plume
from coordinator.ledger import BandwidthLedger
from mobile_sim.report import rounds_csv, summary, write_run
from mobile_sim.report_extra import RunDirError, plot_bytes_per_round, read_run_dir
from mobile_sim.runner import RoundRecord, SimConfig, SimResult

KEYS = ("up_wire_bytes", "down_wire_bytes", "requests")
COLUMNS = ["control_up_wire_bytes", "control_down_wire_bytes", "control_requests"]
TOTALS = ["total_control_up_wire_bytes", "total_control_down_wire_bytes", "total_control_requests"]
# rounds.csv's columns in every run (test_h98_csv_columns): they keep their places
EVERY_RUN = [
    "round", "accuracy", "loss", "train_loss", "reports", "committed", "bytes_up", "bytes_down",
    "dense_up", "dense_down", "wire_up", "wire_down", "ratio_up", "wall_s", "sim_s", "wait_s",
    "available", "dp_epsilon", "dp_delta", "malicious_reports", "backdoor_accuracy",
    "wall_train_s", "wall_encode_s", "wall_aggregate_s", "wall_eval_s", "wall_other_s",
]  # fmt: skip
CFG = SimConfig(dataset="digits", model="digits_mlp", clients=6, per_round=3, rounds=3)
# Three rounds' control traffic, as an HTTP run records it (round 1 with the registrations)
CONTROL = [
    {"up_wire_bytes": 9_001, "down_wire_bytes": 3_002, "requests": 13},
    {"up_wire_bytes": 2_100, "down_wire_bytes": 700, "requests": 3},
    {"up_wire_bytes": 4_250, "down_wire_bytes": 1_420, "requests": 6},
]
DOC = Path(__file__).resolve().parents[2] / "docs" / "simulator.md"


def _result(control: list[dict[str, int] | None]) -> SimResult:
    """A 3-round HTTP-like result whose round i has `control[i]` (None: no measurement)."""
    records = [
        RoundRecord(
            round=i + 1,
            accuracy=0.5 + 0.1 * i,
            loss=1.0,
            train_loss=1.2,
            reports=3,
            committed=True,
            bytes_up=1_000 + i,
            bytes_down=40_000,
            dense_up=30_000,
            dense_down=60_000,
            wire_up=4_000 + i,
            wire_down=41_000,
            ratio_up=30.0,
            wall_s=1.5,
            available=6,
            measurements={"clients": 3} | ({"control_traffic": dict(c)} if c else {}),
        )
        for i, c in enumerate(control)
    ]
    return SimResult(CFG, records, BandwidthLedger(), 100, np.zeros(100, np.float32), "compressed")


def _csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    text = path.read_text()
    return next(csv.reader(io.StringIO(text))), list(csv.DictReader(io.StringIO(text)))


def _report(run: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert plume(["sim", "report", str(run)]) == 0
    return capsys.readouterr().out


def _line(total: dict[str, int]) -> str:
    return (
        f"compressed: control traffic outside the rounds {total['up_wire_bytes']:,} B up, "
        f"{total['down_wire_bytes']:,} B down in {total['requests']:,} requests "
        "(registrations, idle and outcome check-ins)"
    )


def test_the_summary_has_the_runs_control_totals() -> None:
    s = summary(_result(CONTROL))
    assert [s[k] for k in TOTALS] == [15_351, 5_122, 22]
    # a round without the measurement (in process, an older file): no totals, not partial
    # ones (the summary line's rule)
    for control in ([None, None, None], [CONTROL[0], None, CONTROL[2]]):
        assert not set(TOTALS) & set(summary(_result(control)))


def test_rounds_csv_has_each_rounds_control_traffic_after_every_other_column(
    tmp_path: Path,
) -> None:
    # Execute
    write_run(_result(CONTROL), tmp_path)

    # Assert: the three columns last, every other column in its place; each cell the round's
    header, rows = _csv(tmp_path / "rounds.csv")
    assert header == [*EVERY_RUN, *COLUMNS]
    for row, c in zip(rows, CONTROL, strict=True):
        assert [int(row[name]) for name in COLUMNS] == [c[k] for k in KEYS]
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert [doc["summary"][k] for k in TOTALS] == [15_351, 5_122, 22]
    # a round without it in such a run (not written by the runners): empty cells
    header, rows = _csv(Path(_written(tmp_path / "gap", [CONTROL[0], None, CONTROL[2]])))
    assert header == [*EVERY_RUN, *COLUMNS]
    assert [row["control_requests"] for row in rows] == ["13", "", "6"]


def _written(folder: Path, control: list[dict[str, int] | None]) -> str:
    write_run(_result(control), folder)
    return str(folder / "rounds.csv")


def test_a_run_without_control_traffic_writes_the_files_it_did(tmp_path: Path) -> None:
    write_run(_result([None, None, None]), tmp_path)
    header, _ = _csv(tmp_path / "rounds.csv")
    assert header == EVERY_RUN
    assert not set(TOTALS) & set(json.loads((tmp_path / "rounds.json").read_text())["summary"])


def test_report_rebuilds_the_columns_and_prints_the_totals_of_a_4766ce4_run_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a run dir as 4766ce4 wrote it: the rounds' measurement, no summary totals and
    # no control columns in rounds.csv
    run = tmp_path / "run"
    write_run(_result(CONTROL), run)
    doc = json.loads((run / "rounds.json").read_text())
    for k in TOTALS:
        del doc["summary"][k]
    (run / "rounds.json").write_text(json.dumps(doc, indent=2) + "\n")
    old = rounds_csv(doc["rounds"]).splitlines()[0].split(",")
    (run / "rounds.csv").write_text(",".join(old[: -len(COLUMNS)]) + "\nstale\n")

    # Execute
    out = _report(run, capsys)

    # Assert: the columns rebuilt from the rounds, the totals printed from them
    header, rows = _csv(run / "rounds.csv")
    assert header == [*EVERY_RUN, *COLUMNS]
    assert [int(r["control_up_wire_bytes"]) for r in rows] == [9_001, 2_100, 4_250]
    total = {k: sum(c[k] for c in CONTROL) for k in KEYS}
    assert _line(total) in out.splitlines()
    # after the runs' comparison table
    lines = out.splitlines()
    assert lines.index(_line(total)) > next(i for i, x in enumerate(lines) if x.startswith("run "))


def test_report_of_a_run_dir_without_the_measurement_is_as_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: an older (or in-process) run dir: no control_traffic anywhere
    run = tmp_path / "run"
    write_run(_result([None, None, None]), run)
    csv_before = (run / "rounds.csv").read_bytes()

    # Execute
    out = _report(run, capsys)

    # Assert: loaded and reported, no control line, the CSV byte for byte as written
    assert "control traffic" not in out
    assert (run / "rounds.csv").read_bytes() == csv_before


@pytest.mark.parametrize(
    "bad",
    [
        "lots",
        {"up_wire_bytes": 1, "down_wire_bytes": 2},
        {"up_wire_bytes": -1, "down_wire_bytes": 2, "requests": 1},
        {"up_wire_bytes": 1.5, "down_wire_bytes": 2, "requests": 1},
        {"up_wire_bytes": "9", "down_wire_bytes": 2, "requests": 1},
        {"up_wire_bytes": True, "down_wire_bytes": 2, "requests": 1},
    ],
)
def test_a_damaged_control_traffic_is_refused_naming_it(tmp_path: Path, bad: Any) -> None:
    write_run(_result(CONTROL), tmp_path)
    doc = json.loads((tmp_path / "rounds.json").read_text())
    doc["rounds"][1]["measurements"]["control_traffic"] = bad
    (tmp_path / "rounds.json").write_text(json.dumps(doc))
    with pytest.raises(RunDirError, match=r"round 2 has measurements\.control_traffic"):
        read_run_dir(tmp_path)


def test_bytes_per_round_draws_the_control_traffic_as_its_own_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: record every line the plot draws, with the axis it is on
    from matplotlib.axes import Axes

    drawn: list[tuple[str, str, list[float]]] = []
    plot = Axes.plot

    def noting(self: Axes, *args: Any, **kwargs: Any) -> Any:
        drawn.append((self.get_title(), str(kwargs.get("label")), list(args[1])))
        return plot(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", noting)
    http = json.loads(json.dumps([r.__dict__ for r in _result(CONTROL).records]))
    inproc = json.loads(json.dumps([r.__dict__ for r in _result([None] * 3).records]))

    # Execute: an HTTP run beside an in-process one
    plot_bytes_per_round([("http", http), ("inproc", inproc)], tmp_path / "b.png")

    # Assert: the HTTP run has a control series in each panel (its up and its down wire
    # bytes, round by round), the in-process run none; the payload lines are as before, but
    # for the in-process download line, which repeats the HTTP run's round for round and is
    # marked so (bf7833b: else it is drawn exactly over it)
    labels = [label for _, label, _ in drawn]
    control = [(ys, label) for _, label, ys in drawn if "control" in label]
    assert control == [
        ([9_001, 2_100, 4_250], "http: control traffic (wire bytes, outside the rounds)"),
        ([3_002, 700, 1_420], "http: control traffic (wire bytes, outside the rounds)"),
    ]
    assert labels.count("http") == 2
    assert labels.count("inproc") == labels.count("inproc (same bytes as http)") == 1
    assert (tmp_path / "b.png").stat().st_size > 0


def test_the_new_columns_and_summary_keys_are_documented() -> None:
    text = DOC.read_text()
    section = text[text.index("### What each column means") :]
    section = section[: section.index("\n## ")]
    rows = {
        name
        for line in section.splitlines()
        if line.startswith("| `")
        for name in re.findall(r"`([a-z_]+)`", line.split("|")[1])
    }
    header = next(
        csv.reader(io.StringIO(rounds_csv([{"measurements": {"control_traffic": CONTROL[0]}}])))
    )
    assert set(COLUMNS) <= set(header)
    assert set(header) - rows == set()
    assert set(TOTALS) <= set(re.findall(r"`([a-z_]+)`", section))


TINY = [
    "sim", "--transport", "http", "--dataset", "digits", "--model", "digits_mlp", "--clients",
    "6", "--per-round", "3", "--rounds", "2", "--local-epochs", "1", "--seed", "3",
    "--no-progress",
]  # fmt: skip


@pytest.mark.timeout(180)
def test_an_http_run_writes_its_control_traffic_in_the_summary_and_the_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: a real plain HTTP run (embedded coordinator), then its report
    run = tmp_path / "run"
    assert plume([*TINY, "--out", str(run)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("compressed: f"))
    png = (run / "bytes_per_round.png").read_bytes()
    csv_written = (run / "rounds.csv").read_bytes()
    report = _report(run, capsys)

    # Assert: the summary's totals are the rounds' sums, as the summary line gives them; the
    # CSV's cells are the rounds'; the report rebuilds both files byte for byte and prints
    # the line's figures
    doc = json.loads((run / "rounds.json").read_text())
    cells = [r["measurements"]["control_traffic"] for r in doc["rounds"]]
    total = {k: sum(c[k] for c in cells) for k in KEYS}
    assert [doc["summary"][k] for k in TOTALS] == [total[k] for k in KEYS]
    assert total["requests"] >= 6  # the registrations at least
    assert _line(total).removeprefix("compressed: ") in line
    header, rows = _csv(run / "rounds.csv")
    assert header == [*EVERY_RUN, *COLUMNS]
    assert [[int(r[c]) for c in COLUMNS] for r in rows] == [[c[k] for k in KEYS] for c in cells]
    assert (run / "rounds.csv").read_bytes() == csv_written
    assert (run / "bytes_per_round.png").read_bytes() == png
    assert _line(total) in report.splitlines()
