"""`plume sim report RUN_DIR` on a rounds.json whose rows hold values the plots cannot read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.cli import main as plume
from mobile_sim.report_extra import RunDirError, load_runs, rebuild_run_dir

_ROW = {"round": 1, "bytes_up": 10, "bytes_down": 20, "wall_s": 0.1, "accuracy": 0.5}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"bytes_up": None}, "bytes_up=None"),  # a TypeError traceback before
        ({"bytes_down": "20"}, "bytes_down='20'"),
        ({"wall_s": "x"}, "wall_s='x'"),  # the first two PNGs were written, then a ValueError
        ({"accuracy": "high"}, "accuracy='high'"),  # a ValueError naming no file
        ({"sim_s": [1]}, "sim_s=[1]"),
        ({"dense_up": True}, "dense_up=True"),
        ({"round": "1"}, "round number is '1'"),
        ({"round": None}, "round number is None"),
    ],
)
def test_a_round_with_a_value_the_plots_cannot_read_is_a_clear_error_before_any_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, object], named: str
) -> None:
    # Prepare: a good round, then the damaged one
    (tmp_path / "rounds.json").write_text(
        json.dumps({"rounds": [_ROW, {**_ROW, "round": 2, **change}]})
    )
    # Execute / Assert: RunDirError naming the file, the round and the field; exit 2, one line
    with pytest.raises(RunDirError, match=named.replace("[", r"\[").replace("]", r"\]")):
        rebuild_run_dir(tmp_path)
    assert plume(["sim", "report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "rounds.json" in err and named in err and "Traceback" not in err
    assert err.count("\n") == 1
    assert not list(tmp_path.glob("*.png"))


def test_null_optional_values_are_a_run_s_own_and_are_accepted(tmp_path: Path) -> None:
    # Prepare: what a real run writes for an abandoned round and a run without a clock
    row = {**_ROW, "accuracy": None, "sim_s": None, "wait_s": None, "dense_up": 0}
    (tmp_path / "rounds.json").write_text(json.dumps({"rounds": [_ROW, {**row, "round": 2}]}))
    # Execute / Assert
    assert [len(rounds) for _, rounds in load_runs(tmp_path)] == [2]
