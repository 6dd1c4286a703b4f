"""A completed `plume sim` run draws its three plots from its own runs alone."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import mobile_sim.report_extra as report_extra
from coordinator.cli import main as plume

TINY = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "6", "--per-round",
    "3", "--rounds", "1", "--local-epochs", "1", "--no-progress",
]  # fmt: skip


def test_a_run_beside_an_earlier_runs_folder_plots_only_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: --out already holds an earlier run's folder (a stale `old/rounds.json`)
    assert plume([*TINY, "--out", str(tmp_path / "first")]) == 0
    out = tmp_path / "second"
    (out / "old").mkdir(parents=True)
    shutil.copy(tmp_path / "first" / "rounds.json", out / "old" / "rounds.json")
    drawn: dict[str, list[str]] = {}

    def spy(name: str) -> Any:
        real = getattr(report_extra, name)

        def draw(runs: Sequence[Any], path: Any) -> Path:
            drawn[name] = [label for label, _ in runs]
            return real(runs, path)  # type: ignore[no-any-return]

        return draw

    for name in ("plot_bytes_per_round", "plot_round_durations"):
        monkeypatch.setattr(report_extra, name, spy(name))

    # Execute
    assert plume([*TINY, "--compare-dense", "--out", str(out)]) == 0

    # Assert: the bytes and durations plots hold this run's two runs, as its accuracy plot does
    both = ["compressed", "dense"]
    assert drawn == {"plot_bytes_per_round": both, "plot_round_durations": both}
