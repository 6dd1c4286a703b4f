"""The run plots read as bytes and rounds: a log byte axis spans at least a decade and is
labelled in B / KB / MB (not 5.5775x10^4 tick labels stretching a 0.4 % change over the whole
panel), and the duration histograms count rounds in whole numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.figure
import pytest

from mobile_sim.report import plot_accuracy_vs_bytes
from mobile_sim.report_extra import plot_bytes_per_round, plot_round_durations


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every figure saved, drawn: its axes' limits and the tick labels as rendered."""
    out: list[Any] = []
    real = matplotlib.figure.Figure.savefig

    def savefig(self: Any, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)  # draws, so tick labels hold their text
        out.append(self)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return out


def _labels(ticks: list[Any]) -> list[str]:
    return [t.get_text() for t in ticks if t.get_text()]


def _round(i: int, up: int, down: int) -> dict[str, Any]:
    return {
        "round": i,
        "accuracy": 0.1 * i,
        "bytes_up": up,
        "bytes_down": down,
        "dense_up": 48_200,
        "wall_s": 0.5 + i,
        "sim_s": 0.2 * i,
        "wait_s": 0.0,
    }


def test_a_narrow_byte_range_is_drawn_on_a_decade_with_byte_labels(
    saved: list[Any], tmp_path: Path
) -> None:
    # Prepare: a secure run's downloads, 55,574 then 55,775 bytes (0.4 % apart).
    runs = [("secure", [_round(1, 7400, 55_574), _round(2, 7410, 55_775)])]

    # Execute
    plot_bytes_per_round(runs, tmp_path / "bytes_per_round.png")

    # Assert
    (fig,) = saved
    for ax in fig.axes:
        lo, hi = ax.get_ylim()
        assert hi / lo >= 10, ax.get_title()
        shown = _labels(ax.get_yticklabels()) + _labels(ax.yaxis.get_minorticklabels())
        assert shown, ax.get_title()
        assert all(label.endswith((" B", " KB", " MB", " GB")) for label in shown), shown
        assert len(_labels(ax.get_yticklabels())) >= 2, shown
    down = fig.axes[1]
    assert "55.6 KB" not in _labels(down.get_yticklabels())  # ticks at 1-2-5 steps
    assert {"20.0 KB", "50.0 KB", "100.0 KB"} <= set(_labels(down.get_yticklabels()))


def test_the_accuracy_plot_labels_its_byte_axis_in_bytes(saved: list[Any], tmp_path: Path) -> None:
    runs = [("compressed", [_round(1, 422, 38_560), _round(2, 420, 38_560)])]

    plot_accuracy_vs_bytes(runs, tmp_path / "acc.png", title="digits / digits_mlp")

    (fig,) = saved
    for ax in fig.axes:  # upload bytes, and upload + download bytes (test_s24c_accuracy_bytes)
        shown = _labels(ax.get_xticklabels()) + _labels(ax.xaxis.get_minorticklabels())
        assert len(shown) >= 2, shown
        assert all(label.endswith((" B", " KB", " MB", " GB")) for label in shown), shown


def test_duration_histograms_count_whole_rounds(saved: list[Any], tmp_path: Path) -> None:
    runs = [("compressed", [_round(1, 422, 38_560), _round(2, 420, 38_560)])]

    plot_round_durations(runs, tmp_path / "round_durations.png")

    (fig,) = saved
    for ax in fig.axes:
        ticks = [float(t) for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
        assert ticks and all(t == int(t) for t in ticks), (ax.get_title(), ticks)


def test_plume_sim_report_draws_a_run_whose_dense_up_is_null(tmp_path: Path) -> None:
    # Prepare: a run folder whose rounds.json passes the file check with a null dense_up
    # (before: a TypeError traceback from `plume sim report`).
    import json

    from mobile_sim.report_extra import rebuild_run_dir

    rounds = [_round(1, 422, 38_560), _round(2, 420, 38_560)]
    rounds[0]["dense_up"] = None
    doc = {"config": {"dataset": "digits"}, "summary": {"label": "compressed"}, "rounds": rounds}
    (tmp_path / "rounds.json").write_text(json.dumps(doc))

    # Execute
    paths = rebuild_run_dir(tmp_path)

    # Assert
    assert [p.name for p in paths] == [
        "accuracy_vs_upload_bytes.png",
        "bytes_per_round.png",
        "round_durations.png",
    ]
    assert all(p.stat().st_size > 0 for p in paths)


def test_runs_compared_in_one_histogram_share_its_bins(saved: list[Any], tmp_path: Path) -> None:
    # Prepare: --compare-dense's two runs, whose wall seconds cover different ranges (before,
    # each run was binned over its own range: bars of different widths side by side).
    slow = [_round(i, 422, 38_560) | {"wall_s": 0.6 + i} for i in (1, 2, 3)]
    fast = [_round(i, 28_000, 38_560) | {"wall_s": 0.3 + 0.1 * i} for i in (1, 2, 3)]

    plot_round_durations([("compressed", slow), ("dense", fast)], tmp_path / "d.png")

    (fig,) = saved
    for ax in fig.axes:
        widths = {round(p.get_width(), 9) for p in ax.patches}
        assert len(widths) == 1, (ax.get_title(), widths)


def test_compared_runs_with_the_same_dense_size_draw_one_dense_reference(
    saved: list[Any], tmp_path: Path
) -> None:
    # Prepare: --compare-dense's runs train the same cohorts, so their dense fp32 sizes agree;
    # before, two identical dashed lines were drawn, one hiding the other, with two legend rows.
    comp = [_round(i, 422, 38_560) for i in (1, 2)]
    dense = [_round(i, 28_000, 38_560) for i in (1, 2)]

    plot_bytes_per_round([("compressed", comp), ("dense", dense)], tmp_path / "b.png")

    (fig,) = saved
    up = fig.axes[0]
    labels = [t.get_text() for t in up.get_legend().get_texts()]
    assert labels == ["compressed", "dense", "dense fp32 (uncompressed)"]


def test_runs_with_different_dense_sizes_keep_one_reference_each(
    saved: list[Any], tmp_path: Path
) -> None:
    a = [_round(i, 422, 38_560) for i in (1, 2)]
    b = [_round(i, 422, 38_560) | {"dense_up": 96_400} for i in (1, 2)]

    plot_bytes_per_round([("a", a), ("b", b)], tmp_path / "b.png")

    (fig,) = saved
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["a", "a: dense fp32", "b", "b: dense fp32"]
