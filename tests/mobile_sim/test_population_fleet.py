"""Tests for SimFleet (population + clock as the runner uses them) and the extra run plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mobile_sim.fleet import SimFleet, relative_cost
from mobile_sim.models import build_model
from mobile_sim.report_extra import load_runs, plot_run_dir


def test_fleet_waits_until_enough_devices_are_eligible() -> None:
    # Prepare: 40 devices, simulated time 0 is 20:00 UTC; at 14:00 few phones are charging.
    fleet = SimFleet(40, seed=1)
    fleet.clock.advance(18 * 3600.0)

    # Execute
    ids = fleet.wait_for(10, np.random.default_rng(0))

    # Assert
    assert ids.size == 10
    assert fleet.idle_s > 0 and fleet.now_s == pytest.approx(18 * 3600.0 + fleet.idle_s)
    assert fleet.population.is_available(ids, fleet.now_s).all()


def test_fleet_times_a_round_and_advances() -> None:
    # Prepare
    fleet = SimFleet(100, seed=2, availability="always", deadline_s=600.0)
    cohort = list(range(13))

    # Execute
    timing = fleet.time_round(
        5, cohort, down_bytes=6_653_480, up_bytes=[20_000] * 13, samples=80, epochs=5, per_round=10
    )
    now = fleet.advance(timing)

    # Assert
    assert timing.kept.size + timing.stragglers.size + timing.dropped.size == 13
    assert timing.kept.size <= 10
    assert 0 < timing.duration_s <= 600.0
    assert now == pytest.approx(timing.duration_s)
    np.testing.assert_array_equal(fleet.dropped(5, cohort), np.isin(cohort, timing.dropped))


def test_fleet_without_dropouts_keeps_everyone_that_finishes() -> None:
    # Prepare
    fleet = SimFleet(1000, seed=3, availability="always", dropouts=False)

    # Execute
    timing = fleet.time_round(
        1, list(range(200)), down_bytes=1000, up_bytes=100, samples=10, epochs=1, per_round=200
    )

    # Assert
    assert timing.dropped.size == 0 and timing.kept.size == 200


def test_relative_cost_is_measured_against_the_mnist_cnn() -> None:
    assert relative_cost(build_model("mnist_cnn"), (1, 28, 28)) == pytest.approx(1.0)
    assert relative_cost(build_model("digits_mlp"), (64,)) < 1e-3


def _fake_run(folder: Path, label: str, with_sim: bool) -> None:
    rows = [
        {
            "round": r,
            "accuracy": 0.1 * r,
            "bytes_up": 1000 * r,
            "bytes_down": 50_000,
            "dense_up": 40_000,
            "wall_s": 0.5 + r,
            "sim_s": 60.0 * r if with_sim else None,
        }
        for r in range(1, 6)
    ]
    folder.mkdir(parents=True)
    (folder / "rounds.json").write_text(json.dumps({"summary": {"label": label}, "rounds": rows}))


@pytest.mark.parametrize("with_sim", [True, False])
def test_plots_are_rebuilt_from_a_run_folder(tmp_path: Path, with_sim: bool) -> None:
    # Prepare: a --compare-dense style run folder with two runs.
    _fake_run(tmp_path / "compressed", "compressed", with_sim)
    _fake_run(tmp_path / "dense", "dense", with_sim)

    # Execute
    paths = plot_run_dir(tmp_path)

    # Assert
    assert [p.name for p in paths] == ["bytes_per_round.png", "round_durations.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [label for label, _ in load_runs(tmp_path)] == ["compressed", "dense"]


def test_missing_run_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="rounds.json"):
        plot_run_dir(tmp_path)


def test_a_run_that_moved_no_bytes_plots_without_a_warning(tmp_path: Path) -> None:
    # Prepare: every round abandoned (no reports, no bytes, no accuracy); pytest turns
    # matplotlib's "no positive values to log-scale" warning into an error.
    from mobile_sim.report import plot_accuracy_vs_bytes

    rows = [
        {"round": r, "accuracy": None, "bytes_up": 0, "bytes_down": 0, "wall_s": 0.1, "sim_s": 1.0}
        for r in range(1, 4)
    ]
    (tmp_path / "rounds.json").write_text(json.dumps({"summary": {"label": "x"}, "rounds": rows}))

    # Execute
    paths = [
        *plot_run_dir(tmp_path),
        plot_accuracy_vs_bytes(load_runs(tmp_path), tmp_path / "a.png"),
    ]

    # Assert
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
