"""Two edges of the run plots: a run that moved no bytes draws its byte axis from 0 B (it was
-0.04 to 0.04 bytes), and a plot (or rounds.csv) that cannot be written is an error naming
that file, not the temporary file it was being written under."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import matplotlib.figure
import pytest

from coordinator.cli import main as plume
from mobile_sim.report import plot_accuracy_vs_bytes, replace_atomically
from mobile_sim.report_extra import plot_bytes_per_round


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    out: list[Any] = []
    real = matplotlib.figure.Figure.savefig

    def savefig(self: Any, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        out.append(self)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return out


# Every round abandoned at the deadline: evaluated, the model downloaded, nothing uploaded.
ABANDONED = [
    {
        "round": r,
        "accuracy": 0.0501,
        "bytes_up": 0,
        "bytes_down": 38_560,
        "dense_up": 0,
        "wall_s": 0.1,
    }
    for r in (1, 2)
]


def test_an_axis_of_no_bytes_starts_at_zero(saved: list[Any], tmp_path: Path) -> None:
    # Execute
    plot_accuracy_vs_bytes([("compressed", ABANDONED)], tmp_path / "a.png")
    plot_bytes_per_round([("compressed", ABANDONED)], tmp_path / "b.png")

    # Assert: the upload axes (x of the accuracy plot, y of the bytes plot) start at 0 B
    accuracy, per_round = saved
    up_x = accuracy.axes[0]
    assert up_x.get_xlim()[0] == 0
    assert [t.get_text() for t in up_x.get_xticklabels() if t.get_text()][0] == "0 B"
    up_y = per_round.axes[0]
    assert up_y.get_ylim()[0] == 0
    assert [t.get_text() for t in up_y.get_yticklabels() if t.get_text()][0] == "0 B"


def test_a_file_that_cannot_be_written_is_named_not_its_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "rounds.csv"

    def denied(tmp: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp))

    with pytest.raises(PermissionError) as caught:
        replace_atomically(target, denied)

    assert caught.value.filename == str(target)
    assert ".tmp" not in str(caught.value)


def test_plume_sim_report_names_the_plot_it_could_not_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a run folder; saving a PNG fails as in a folder the user may not write
    doc = {"config": {"dataset": "digits"}, "summary": {"label": "x"}, "rounds": ABANDONED}
    (tmp_path / "rounds.json").write_text(json.dumps(doc))

    def savefig(self: Any, fname: Any, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(fname))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)

    # Execute
    code = plume(["sim", "report", str(tmp_path)])

    # Assert
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == (
        f"plume sim: error: RUN_DIR {tmp_path} cannot be written (Permission denied: "
        f"{tmp_path / 'accuracy_vs_upload_bytes.png'}); `plume sim report` redraws its plots "
        "and rewrites rounds.csv there"
    )
