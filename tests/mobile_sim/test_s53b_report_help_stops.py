"""s53b: `plume sim report --help` said it reads a run "ended, or interrupted by Ctrl-C", and
prints a line for each run "that Ctrl-C interrupted"; SIGTERM, a closed stdout and an error
after some rounds also end a run with its finished rounds written as interrupted
(summary.interrupted true), which the report reads the same way. It now names them all, and
the in-progress refusal, in the same number of lines."""

from __future__ import annotations

import pytest

from coordinator.cli import main as plume


def test_report_help_names_every_way_a_run_stops_early(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Execute
    with pytest.raises(SystemExit) as exit_:
        plume(["sim", "report", "--help"])
    text = " ".join(capsys.readouterr().out.split())

    # Assert
    assert exit_.value.code == 0
    assert "interrupted by Ctrl-C" not in text and "that Ctrl-C interrupted" not in text
    assert "stopped early by Ctrl-C, SIGTERM, a closed stdout or an error" in text
    assert "one for each run stopped early" in text
    assert "a run still in progress is one line saying how far it got (status 1)" in text
