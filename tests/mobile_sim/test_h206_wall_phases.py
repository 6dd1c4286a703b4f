"""Each round record says where its wall time went (helper-206): `wall_train_s`,
`wall_encode_s`, `wall_aggregate_s`, `wall_eval_s` and `wall_other_s` (`WALL_PHASES`), which
sum to `wall_s`, in rounds.json and as rounds.csv's last columns. Rounds with no measured split
(HTTP, secure) have None there, and an old rounds.json without them still reports."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from coordinator.cli import main as plume
from mobile_sim.report import write_run
from mobile_sim.runner import WALL_PHASES, RoundRecord, SimConfig, run_simulation

TINY = SimConfig(
    dataset="digits",
    model="digits_mlp",
    clients=10,
    per_round=4,
    rounds=2,
    local_epochs=1,
    lr=0.2,
    eval_every=2,
    seed=0,
)
TINY_ARGV = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "10", "--per-round",
    "4", "--rounds", "2", "--local-epochs", "1", "--no-progress",
]  # fmt: skip
# The parts are disjoint spans inside wall_s and the rest is wall_s minus them: equal up to
# float rounding.
TOLERANCE_S = 1e-6


def _check_split(rec: RoundRecord) -> None:
    parts = [getattr(rec, name) for name in WALL_PHASES]
    assert all(isinstance(p, float) and math.isfinite(p) and p >= 0.0 for p in parts), parts
    assert math.isclose(sum(parts), rec.wall_s, rel_tol=0.0, abs_tol=TOLERANCE_S), parts


def test_a_run_splits_each_round_wall_time_into_phases_that_sum_to_it() -> None:
    # Execute: round 1 is not evaluated (eval_every 2), round 2 is
    result = run_simulation(TINY, progress=False)

    # Assert
    assert [r.round for r in result.records] == [1, 2]
    for rec in result.records:
        _check_split(rec)
        assert rec.wall_train_s is not None and rec.wall_train_s > 0.0  # 4 devices trained
        assert rec.wall_encode_s is not None and rec.wall_encode_s > 0.0
        assert rec.wall_aggregate_s is not None and rec.wall_aggregate_s > 0.0
    first, second = result.records
    assert first.accuracy is None and first.wall_eval_s == 0.0  # nothing evaluated
    assert second.accuracy is not None and second.wall_eval_s is not None
    assert second.wall_eval_s > 0.0


def test_a_round_abandoned_at_selection_trained_nothing() -> None:
    # Prepare: a realistic fleet of 6 that never holds all 6 at once (test_h159's run)
    cfg = replace(TINY, clients=6, per_round=6, min_reports=6, fleet="realistic", deadline_s=600.0)

    # Execute
    result = run_simulation(cfg, progress=False)

    # Assert: the selection and the engine's close took its time; no phase invented
    assert result.records and not any(r.committed for r in result.records)
    for rec in result.records:
        assert rec.measurements["abandoned"].startswith("selection:")
        _check_split(rec)
        assert (rec.wall_train_s, rec.wall_encode_s, rec.wall_eval_s) == (0.0, 0.0, 0.0)


def test_the_phases_reach_rounds_json_and_the_last_csv_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = plume([*TINY_ARGV, "--out", str(tmp_path)])
    capsys.readouterr()

    # Assert: every round of rounds.json has them; rounds.csv ends with them, same values
    assert code == 0
    doc = json.loads((tmp_path / "rounds.json").read_text())
    for r in doc["rounds"]:
        parts = [r[name] for name in WALL_PHASES]
        assert all(isinstance(p, float) and p >= 0.0 for p in parts)
        assert math.isclose(sum(parts), r["wall_s"], rel_tol=0.0, abs_tol=TOLERANCE_S)
    with (tmp_path / "rounds.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        assert reader.fieldnames is not None
        assert reader.fieldnames[-len(WALL_PHASES) :] == list(WALL_PHASES)
    assert len(rows) == len(doc["rounds"]) == 2
    for row, r in zip(rows, doc["rounds"], strict=True):
        for name in WALL_PHASES:
            assert float(row[name]) == r[name]


def test_an_old_rounds_json_without_the_phases_still_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a run's folder, its rounds.json as written before the phases existed
    assert plume([*TINY_ARGV, "--out", str(tmp_path)]) == 0
    path = tmp_path / "rounds.json"
    doc = json.loads(path.read_text())
    for r in doc["rounds"]:
        for name in WALL_PHASES:
            del r[name]
    path.write_text(json.dumps(doc))
    for png in tmp_path.glob("*.png"):
        png.unlink()
    capsys.readouterr()

    # Execute
    code = plume(["sim", "report", str(tmp_path)])

    # Assert: the plots are drawn again, as from any run
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "round_durations.png").stat().st_size > 1000
    assert (tmp_path / "accuracy_vs_upload_bytes.png").stat().st_size > 1000


def test_records_without_a_split_write_empty_cells_not_zeros(tmp_path: Path) -> None:
    # Prepare: a run's records as the HTTP and secure paths make them (no split measured)
    result = run_simulation(replace(TINY, rounds=1), progress=False)
    unsplit = [replace(r, **dict.fromkeys(WALL_PHASES)) for r in result.records]

    # Execute
    write_run(replace(result, records=unsplit), tmp_path)

    # Assert
    doc = json.loads((tmp_path / "rounds.json").read_text())
    assert all(r[name] is None for r in doc["rounds"] for name in WALL_PHASES)
    with (tmp_path / "rounds.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(row[name] == "" for row in rows for name in WALL_PHASES)


def test_an_http_run_records_no_split() -> None:
    # Over HTTP the devices train concurrently and wall_s is the coordinator's open-to-close:
    # there is no per-phase split to give, so none is made up.
    from mobile_sim.http_fleet import run_http_simulation

    cfg = replace(TINY, clients=6, per_round=3, rounds=1, partition="iid", eval_every=1)
    result = run_http_simulation(cfg, progress=False, label="http")

    assert [r.round for r in result.records] == [1]
    assert all(getattr(r, name) is None for r in result.records for name in WALL_PHASES)
