"""accuracy_vs_upload_bytes.png shows accuracy against cumulative upload bytes and against
cumulative upload + download bytes (issue 7 asks for "cumulative bytes"; a 2-round digits run
uploads 842 B and downloads 77,120 B, which the upload-only plot left out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.figure
import pytest

from mobile_sim.report import plot_accuracy_vs_bytes


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    out: list[Any] = []
    real = matplotlib.figure.Figure.savefig

    def savefig(self: Any, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        out.append(self)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return out


def _round(i: int, up: int, down: int, accuracy: float | None) -> dict[str, Any]:
    return {"round": i, "accuracy": accuracy, "bytes_up": up, "bytes_down": down, "wall_s": 0.1}


def test_accuracy_is_drawn_against_upload_and_against_all_bytes(
    saved: list[Any], tmp_path: Path
) -> None:
    # Prepare: the 2-round digits run's figures; a third round not evaluated
    rounds = [
        _round(1, 422, 38_560, 0.0752),
        _round(2, 420, 38_560, 0.2006),
        _round(3, 430, 38_560, None),
    ]

    # Execute
    plot_accuracy_vs_bytes([("compressed", rounds)], tmp_path / "a.png", "digits / digits_mlp")

    # Assert: two panels, each labelled with what its x axis counts
    (fig,) = saved
    up, both = fig.axes
    assert list(up.lines[0].get_xdata()) == [422, 842]
    assert list(both.lines[0].get_xdata()) == [422 + 38_560, 842 + 77_120]
    assert list(up.lines[0].get_ydata()) == list(both.lines[0].get_ydata()) == [0.0752, 0.2006]
    assert up.get_xlabel() == "cumulative upload bytes (all devices)"
    assert both.get_xlabel() == "cumulative upload + download bytes (all devices)"
    assert "upload + download" in both.get_title()
    assert fig.get_suptitle() == "digits / digits_mlp"
    assert [t.get_text() for t in both.get_legend().get_texts()] == ["compressed"]
