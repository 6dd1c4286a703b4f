"""`plume sim report RUN_DIR` on damaged rounds.json files (found by helper-173, damage.py):
values Python cannot read or that no run writes are one error line naming the file, exit 2,
and no PNG; round_durations.png labels nearly equal durations without an axis offset, in
short tick labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main as plume
from mobile_sim import report_extra
from mobile_sim.report_extra import RunDirError, load_runs, plot_round_durations

_ROW = {
    "round": 1,
    "bytes_up": 10,
    "bytes_down": 20,
    "dense_up": 40,
    "wall_s": 0.1,
    "sim_s": 0.2,
    "wait_s": 0.0,
    "accuracy": 0.5,
}


def _doc(**top: Any) -> dict[str, Any]:
    """A run's rounds.json as `report.write_run` lays it out, two rounds."""
    doc: dict[str, Any] = {
        "config": {"dataset": "digits", "model": "digits_mlp"},
        "summary": {"label": "compressed", "rounds": 2, "interrupted": False},
        "rounds": [_ROW, {**_ROW, "round": 2}],
    }
    doc.update(top)
    return doc


def _assert_one_error_line(folder: Path, capsys: pytest.CaptureFixture[str], *named: str) -> None:
    with pytest.raises(RunDirError) as caught:
        load_runs(folder)
    for text in named:
        assert text in str(caught.value)
    assert plume(["sim", "report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plume sim: error: ") and err.count("\n") == 1, err[:300]
    assert str(folder / "rounds.json") in err and "Traceback" not in err
    for text in named:
        assert text in err
    assert len(err) < 400  # the value is cut, not printed whole
    assert not list(folder.glob("*.png"))


def test_unreadable_json_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: three files json.loads raises on with something other than JSONDecodeError
    text = json.dumps(_doc())
    cases = {
        # RecursionError before
        "deep": text.replace('"rounds": [', '"rounds": [' + "[" * 100_000 + "]" * 100_000 + ",", 1),
        # "Exceeds the limit (4300 digits)" naming no file before
        "digits": text.replace('"bytes_up": 10', '"bytes_up": ' + "9" * 5000, 1),
    }
    for name, body in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "rounds.json").write_text(body)
        # Execute / Assert
        named = "nested too deep" if name == "deep" else "an integer of over"
        _assert_one_error_line(folder, capsys, named)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"bytes_up": 10**400}, "bytes_up=1000"),  # OverflowError traceback before
        ({"sim_s": 10**400}, "sim_s=1000"),
        ({"bytes_up": -5}, "bytes_up=-5"),
        ({"bytes_down": -1}, "bytes_down=-1"),
        ({"dense_up": -40}, "dense_up=-40"),
        ({"sim_s": -5.0}, "sim_s=-5.0"),
        ({"wait_s": -1.0}, "wait_s=-1.0"),
        ({"wall_s": -0.1}, "wall_s=-0.1"),
        ({"accuracy": 7.0}, "accuracy=7.0, outside [0, 1]"),
        ({"accuracy": -0.25}, "accuracy=-0.25, outside [0, 1]"),
        ({"bytes_up": 1.5}, "bytes_up=1.5, not a whole number"),
        ({"round": 1}, "round 1 appears twice"),
    ],
)
def test_a_round_no_run_writes_is_refused_naming_round_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], named: str
) -> None:
    # Prepare: round 2 damaged
    doc = _doc()
    doc["rounds"][1] = {**doc["rounds"][1], **change}
    (tmp_path / "rounds.json").write_text(json.dumps(doc))
    # Execute / Assert: "round 2" (or the duplicated round 1) and the field
    round_named = "round 1" if "twice" in named else "round 2"
    _assert_one_error_line(tmp_path, capsys, round_named, named)


@pytest.mark.parametrize(
    ("top", "named"),
    [
        ({"summary": "x"}, "'summary' is str 'x', not an object"),
        ({"config": ["digits"]}, "'config' is list"),
        (
            {"summary": {"label": "compressed", "rounds": 2, "interrupted": "yes"}},
            "summary.interrupted is 'yes', not true or false",
        ),
    ],
)
def test_a_file_no_run_writes_is_refused_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], top: dict[str, Any], named: str
) -> None:
    # Prepare
    (tmp_path / "rounds.json").write_text(json.dumps(_doc(**top)))
    # Execute / Assert
    _assert_one_error_line(tmp_path, capsys, named)


def test_a_run_with_no_round_is_drawn_empty_without_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a sweep folder: one run with rounds, one with none (a --transport http task
    # stopped before round 1); pytest turns matplotlib's "No artists with labels found to put
    # in legend" warning, which the empty run's durations panel gave, into an error
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "rounds.json").write_text(json.dumps(_doc()))
    (tmp_path / "b" / "rounds.json").write_text(json.dumps(_doc(rounds=[])))
    alone = tmp_path / "b"
    # Execute
    both = plume(["sim", "report", str(tmp_path)])
    both_out = capsys.readouterr().out
    empty = plume(["sim", "report", str(alone)])
    empty_out = capsys.readouterr().out
    # Assert: both redrawn, the empty run named in a line under the table
    assert both == 0 and empty == 0
    assert "b: no round finished, nothing to draw" in both_out.splitlines()
    assert "compressed: no round finished, nothing to draw" in empty_out.splitlines()
    for folder in (tmp_path, alone):
        assert {p.name for p in folder.glob("*.png")} == {
            "accuracy_vs_upload_bytes.png",
            "bytes_per_round.png",
            "round_durations.png",
        }
    assert report_extra.interrupted_notes(alone) == []


def test_a_run_as_written_is_still_read(tmp_path: Path) -> None:
    # Prepare: the same file undamaged, zero bytes and durations, accuracy 0 and 1, no summary
    doc = _doc()
    doc["rounds"][0] = {**_ROW, "bytes_up": 0, "wall_s": 0, "accuracy": 0, "dense_up": 0}
    doc["rounds"][1] = {**_ROW, "round": 2, "accuracy": 1.0, "sim_s": None, "wait_s": None}
    del doc["summary"]
    (tmp_path / "rounds.json").write_text(json.dumps(doc))
    # Execute / Assert
    assert [len(rounds) for _, rounds in load_runs(tmp_path)] == [2]


def test_round_durations_axes_have_no_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: durations 1e-7 apart, which matplotlib labelled as "1e-6+2.052e-1"
    rounds = [
        {**_ROW, "round": i + 1, "sim_s": 0.2052 + i * 1e-7, "wall_s": 0.5 + i * 1e-7}
        for i in range(4)
    ]
    figures: list[Any] = []
    real_save = report_extra._save

    def keep(fig: Any, plt: Any, path: str | Path) -> Path:
        fig.canvas.draw()  # the tick labels and offsets are set when drawn
        figures.append(
            [
                (
                    ax.xaxis.get_major_formatter().get_offset(),
                    [t.get_text() for t in ax.get_xticklabels() if t.get_text()],
                )
                for ax in fig.axes
            ]
        )
        return real_save(fig, plt, path)

    monkeypatch.setattr(report_extra, "_save", keep)
    # Execute
    plot_round_durations([("run", rounds)], tmp_path / "round_durations.png")
    # Assert: both panels (simulated, wall) drawn, neither with an offset, and short tick
    # labels (with only the offset off they read 0.20520000, 0.20520005, ... run together)
    (axes,) = figures
    assert len(axes) == 2
    assert all(offset == "" for offset, _ in axes), axes
    assert all(labels and max(map(len, labels)) <= 6 for _, labels in axes), axes


@pytest.mark.parametrize(
    ("change", "named"),
    [
        # helper-345: finite but beyond any run's figures, these overflowed the cumulative
        # sums and the plots' axes (a traceback, or matplotlib's words naming no file), and
        # some plots were redrawn before the failure
        ({"bytes_up": 1e308}, "round 2 has bytes_up=1e+308, not a finite number"),
        ({"wall_s": 1.7e308}, "round 2 has wall_s=1.7e+308"),
        ({"bytes_down": 2**60}, "round 2 has bytes_down=1152921504606846976"),
        ({"round": 10**400}, "a round number is 1000"),
        # rounds out of order: read in file order the cumulative bytes and the final
        # accuracy were another round's, exit 0
        ({"round": 0}, "round 0 comes after round 1 in 'rounds'"),
    ],
)
def test_figures_no_run_can_have_and_rounds_out_of_order_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], named: str
) -> None:
    doc = _doc()
    doc["rounds"][1] = {**doc["rounds"][1], **change}
    (tmp_path / "rounds.json").write_text(json.dumps(doc))
    _assert_one_error_line(tmp_path, capsys, named)


def test_measurements_nested_deeper_than_any_run_writes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # helper-345: 985 levels passed the JSON read, and the CSV's flattening then raised
    # RecursionError after the plots were redrawn
    deep: Any = 1
    for _ in range(200):  # (json.dumps itself recurses; 200 is past the limit of 32)
        deep = {"x": deep}
    doc = _doc()
    doc["rounds"][1] = {**doc["rounds"][1], "measurements": deep}
    (tmp_path / "rounds.json").write_text(json.dumps(doc))
    _assert_one_error_line(tmp_path, capsys, "round 2 has measurements nested deeper than 32")
    doc["rounds"][1]["measurements"] = {"clock": {"kept": [1, 2, {"a": [3]}]}}
    (tmp_path / "rounds.json").write_text(json.dumps(doc))
    assert load_runs(tmp_path)


def test_names_that_are_not_text_are_drawn_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A sweep folder whose name is not UTF-8 (Python hands it over with a lone surrogate) and
    # a label or dataset holding one: matplotlib's font code raised TypeError after some
    # plots were redrawn. Escaped, the report draws and names them.
    sweep = tmp_path / "sweep"
    odd = sweep / "k\udcff"  # os.fsdecode(b"k\xff")
    odd.mkdir(parents=True)
    (odd / "rounds.json").write_text(json.dumps(_doc()))
    labelled = tmp_path / "labelled"
    labelled.mkdir()
    doc = _doc(config={"dataset": "digits\udcfe", "model": "digits_mlp"})
    doc["summary"]["label"] = "\ud800"
    (labelled / "rounds.json").write_text(json.dumps(doc))  # json escapes the surrogates
    for folder, shown in ((sweep, "k\\udcff"), (labelled, "\\ud800")):
        assert plume(["sim", "report", str(folder)]) == 0
        out = capsys.readouterr().out
        assert shown in out
        assert {p.name for p in folder.glob("*.png")} >= {"bytes_per_round.png"}
    assert load_runs(labelled)[0][0] == "\\ud800"
    assert report_extra.run_title(labelled) == "digits\\udcfe / digits_mlp"
