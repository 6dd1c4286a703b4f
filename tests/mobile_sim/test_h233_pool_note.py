"""helper-222's finding 10: `--backend pool` spent tens of seconds starting its workers with
nothing said when stderr is not a terminal (the status line shows on a terminal only). It now
prints one plain line there, unless --no-progress."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main as plume
from mobile_sim import status

# --topk 0.1: no few-kept note (test_s51_cli_few_kept.py), so stderr holds the pool's line only
TINY = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "6", "--per-round",
    "3", "--rounds", "1", "--local-epochs", "1", "--threads", "1", "--topk", "0.1",
]  # fmt: skip


@pytest.mark.timeout(300)
def test_starting_pool_workers_is_one_line_in_a_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: stderr is captured, so not a terminal
    code = plume([*TINY, "--backend", "pool", "--workers", "1", "--out", str(tmp_path)])

    # Assert: one line, before the rounds; nothing else on stderr
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.splitlines() == ["plume sim: starting 1 pool worker..."], err


@pytest.mark.timeout(300)
def test_no_progress_keeps_it_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = plume(
        [*TINY, "--backend", "pool", "--workers", "1", "--no-progress", "--out", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert err == ""


def test_a_sequential_run_says_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert plume([*TINY, "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""


def test_a_note_is_a_status_line_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare / Execute: the status line on (what a terminal gets), then notes without it
    with status.status_line(True):
        status.note("starting 2 pool workers")
    on_terminal = capsys.readouterr().err
    with status.status_line(False, notes=True):
        status.note("starting 2 pool workers")
    in_a_log = capsys.readouterr().err
    with status.status_line(False):
        status.note("starting 2 pool workers")
    off = capsys.readouterr().err

    # Assert: rewritten in place and erased there; a plain line here; nothing when off
    assert on_terminal == "\r\x1b[Kstarting 2 pool workers...\r\x1b[K"
    assert in_a_log == "plume sim: starting 2 pool workers...\n"
    assert off == ""
