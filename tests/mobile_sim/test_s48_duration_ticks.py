"""Stop 48, helper-407's review of the simulator: round_durations.png of a run whose rounds
all took the same simulated time (`--deadline 0.01`, the docs' example: every round ends at
its deadline) labelled its x axis 0.009775, 0.009800, ... 0.010025, nine or more labels of
eight characters that ran into one another ("0.009900.009925..."). The axis now has at most
five ticks. Checked on the figure's tick labels as matplotlib lays them out, not on pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mobile_sim import report_extra
from mobile_sim.report_extra import plot_round_durations


def _laid_out(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[str, list[Any]]]]:
    """Each figure saved: per panel, its title and its x tick labels within the axis, drawn."""
    figures: list[list[tuple[str, list[Any]]]] = []
    real_save = report_extra._save

    def keep(fig: Any, plt: Any, path: str | Path) -> Path:
        fig.canvas.draw()  # lays the tick labels out
        renderer = fig.canvas.get_renderer()
        panels = []
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            labels = [
                t for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi
            ]
            panels.append(
                (ax.get_title(), [(t.get_text(), t.get_window_extent(renderer)) for t in labels])
            )
        figures.append(panels)
        return real_save(fig, plt, path)

    monkeypatch.setattr(report_extra, "_save", keep)
    return figures


@pytest.mark.parametrize("seconds", [0.0099, 0.2052, 99_999.0])
def test_equal_durations_have_tick_labels_that_do_not_overlap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seconds: float
) -> None:
    # Prepare: five rounds of the same simulated time and waits, and wall times that differ
    figures = _laid_out(monkeypatch)
    rounds = [
        {"round": i, "sim_s": seconds, "wait_s": 2 * seconds, "wall_s": 0.2 + 0.01 * i}
        for i in range(1, 6)
    ]

    # Execute
    plot_round_durations([("compressed", rounds)], tmp_path / "round_durations.png")

    # Assert: every panel (simulated, waited, wall) has 2 to 5 distinct labels, each ending
    # left of where the next begins
    ((*panels,),) = figures
    assert len(panels) == 3
    for title, labels in panels:
        texts = [text for text, _ in labels]
        assert 2 <= len(texts) <= 5, (title, texts)
        assert len(set(texts)) == len(texts), (title, texts)
        for (left, a), (right, b) in zip(labels, labels[1:], strict=False):
            assert a.x1 < b.x0, (title, left, right)
