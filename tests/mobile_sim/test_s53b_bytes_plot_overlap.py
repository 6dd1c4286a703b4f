"""s53b: with --compare-dense, bytes_per_round.png drew the dense run's download line exactly
over the compressed run's (both download the same dense model), so one of them could not be
seen. A run's line that repeats an earlier run's, round for round, is now dashed with hollow
square markers and its legend says whose bytes it shares; other lines are drawn as before.
Checked on the figure's lines and legend, not its pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import mobile_sim.report_extra as report_extra


def _rounds(up: list[int], down: list[int]) -> list[dict[str, Any]]:
    return [
        {"round": i + 1, "bytes_up": u, "bytes_down": d, "dense_up": 4000, "wall_s": 1.0}
        for i, (u, d) in enumerate(zip(up, down, strict=True))
    ]


def _figure(monkeypatch: pytest.MonkeyPatch, runs: list[Any], tmp_path: Path) -> Any:
    seen: list[Any] = []
    real = report_extra._save

    def save(fig: Any, plt: Any, path: Any) -> Any:
        seen.append(fig)
        return real(fig, plt, path)

    monkeypatch.setattr(report_extra, "_save", save)
    report_extra.plot_bytes_per_round(runs, tmp_path / "b.png")
    return seen[0]


def _lines(ax: Any) -> list[tuple[str, str, str, str]]:
    return [
        (ln.get_label(), ln.get_linestyle(), ln.get_marker(), ln.get_markerfacecolor())
        for ln in ax.get_lines()
    ]


def test_a_dense_download_line_on_the_compressed_ones_is_told_apart(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Prepare: the same downloads, different uploads (as --compare-dense)
    down = [9000, 9000, 9000]
    runs = [("compressed", _rounds([40, 41, 42], down)), ("dense", _rounds([4000] * 3, down))]

    # Execute
    fig = _figure(monkeypatch, runs, tmp_path)
    ax_up, ax_down = fig.axes

    # Assert: the download panel's dense line is dashed, hollow, and says so in the legend
    (first, second) = _lines(ax_down)
    assert first[:3] == ("compressed", "-", "o")
    assert second[:3] == ("dense (same bytes as compressed)", "--", "s")
    assert second[3] == "none"
    legend = [t.get_text() for t in ax_down.get_legend().get_texts()]
    assert legend == ["compressed", "dense (same bytes as compressed)"]
    # the upload panel's lines differ: drawn as before
    assert [(lbl, ls, m) for lbl, ls, m, _ in _lines(ax_up)][:2] == [
        ("compressed", "-", "o"),
        ("dense", "-", "o"),
    ]


def test_download_lines_that_differ_in_one_round_are_drawn_as_before(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Prepare: the same uploads (the upload panel is left as it was: test_h84_plots.py)
    runs = [("a", _rounds([40, 41], [9000, 9000])), ("b", _rounds([40, 41], [9000, 9001]))]

    # Execute
    fig = _figure(monkeypatch, runs, tmp_path)
    ax_up, ax_down = fig.axes

    # Assert
    assert [x[:3] for x in _lines(ax_down)] == [("a", "-", "o"), ("b", "-", "o")]
    assert [x[:3] for x in _lines(ax_up)][:2] == [("a", "-", "o"), ("b", "-", "o")]
