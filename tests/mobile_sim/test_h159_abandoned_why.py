"""The abandoned-rounds warning names the cause the round records give (review h157, item 1):
--deadline only for the engine's `N reports < min_reports M`, the check-in pool for a round
its selection abandoned (`selection: ...`), and rounds.json's `measurements.abandoned` for
anything else. Before, any reason mentioning min_reports was blamed on --deadline."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from coordinator.cli import main as plume
from mobile_sim.report import abandoned_warning

SELECTION = "selection: the pool held at most 5 devices in 172800 simulated s, below min_reports 6"
COHORT = "selection: the pool held at most 5 devices in 60 simulated s, short of the cohort of 6, with no selection timeout"
ENGINE_NONE = "0 reports < min_reports 6"
ENGINE_SOME = "2 reports < min_reports 6"


def _result(*reasons: str | None, deadline: float | None = 600.0) -> NS:
    """A stand-in SimResult whose round i+1 was abandoned for reasons[i] (None: committed)."""
    records = [
        NS(
            round=i + 1,
            committed=why is None,
            reports=int(why.split()[0]) if why and why[0].isdigit() else (6 if why is None else 0),
            measurements={} if why is None else {"abandoned": why},
        )
        for i, why in enumerate(reasons)
    ]
    return NS(records=records, config=NS(deadline_s=deadline, min_reports=6), dp_pool=lambda: None)


@pytest.mark.parametrize(
    ("reasons", "deadline", "expected"),
    [
        # the engine's reason with a deadline: the deadline wording, as before
        (
            [ENGINE_NONE, ENGINE_NONE],
            600.0,
            "warning: 2 of 2 rounds were abandoned (no report before --deadline 600 s); "
            "the model never changed",
        ),
        (
            [None, ENGINE_SOME],
            600.0,
            "warning: 1 of 2 rounds were abandoned (fewer than --min-reports 6 reports before "
            "--deadline 600 s): the model did not change in round 2",
        ),
        # the selection's pool below min_reports: not the deadline's doing
        (
            [SELECTION, SELECTION, SELECTION],
            600.0,
            "warning: 3 of 3 rounds were abandoned (the check-in pool never held --min-reports "
            "6 devices); the model never changed",
        ),
        (
            [None, SELECTION],
            None,
            "warning: 1 of 2 rounds were abandoned (the check-in pool never held --min-reports "
            "6 devices): the model did not change in round 2",
        ),
        # anything else, or a mix: rounds.json says why
        (
            [COHORT],
            600.0,
            "warning: 1 of 1 rounds were abandoned (measurements.abandoned in rounds.json says "
            "why); the model never changed",
        ),
        (
            [ENGINE_NONE, SELECTION],
            600.0,
            "warning: 2 of 2 rounds were abandoned (measurements.abandoned in rounds.json says "
            "why); the model never changed",
        ),
        (
            [ENGINE_NONE],
            None,
            "warning: 1 of 1 rounds were abandoned (measurements.abandoned in rounds.json says "
            "why); the model never changed",
        ),
    ],
)
def test_the_warning_names_the_recorded_cause(
    reasons: list[str | None], deadline: float | None, expected: str
) -> None:
    assert abandoned_warning(_result(*reasons, deadline=deadline)) == expected


def test_a_realistic_run_whose_pool_never_held_min_reports_does_not_blame_the_deadline(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: review h157's command: 6 devices, all 6 needed, a realistic fleet never has 6
    argv = ["sim", "--dataset", "digits", "--clients", "6", "--per-round", "6"]
    argv += ["--min-reports", "6", "--rounds", "3", "--fleet", "realistic", "--deadline", "600"]
    argv += ["--local-epochs", "1", "--no-progress", "--out", str(tmp_path)]
    assert plume(argv) == 0

    # Assert: one warning line, naming the pool
    lines = [line for line in capsys.readouterr().out.splitlines() if "abandoned" in line]
    assert lines == [
        "compressed: warning: 3 of 3 rounds were abandoned (the check-in pool never held "
        "--min-reports 6 devices); the model never changed"
    ]
