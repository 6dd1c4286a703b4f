"""`plume sim` on a terminal says what it is doing before the first round row and after the
last (loading the data, building the model, starting workers, writing plots): before, those
seconds passed with nothing on the screen. Nothing extra with --no-progress or off a terminal."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from coordinator.cli import main as plume
from mobile_sim import status

TINY = ["sim", "--dataset", "digits", "--clients", "6", "--per-round", "3", "--rounds", "1"]
TINY += ["--local-epochs", "1"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *flags: str, tty: bool) -> str:
    err = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    assert plume([*TINY, *flags, "--out", str(tmp_path)]) == 0
    return err.getvalue()


def test_a_terminal_is_told_each_slow_step_outside_the_rounds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Execute
    err = _run(monkeypatch, tmp_path, tty=True)

    # Assert: each step in order, and the line erased after the last
    steps = ["loading digits...", "building digits_mlp...", "writing plots..."]
    at = [err.find(s) for s in steps]
    assert -1 not in at and at == sorted(at), err
    assert err.endswith("\r\x1b[K")


@pytest.mark.parametrize(("flags", "tty"), [(("--no-progress",), True), ((), False)])
def test_no_status_line_with_no_progress_or_off_a_terminal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: tuple[str, ...], tty: bool
) -> None:
    # Execute
    err = _run(monkeypatch, tmp_path, *flags, tty=tty)

    # Assert
    assert "..." not in err and "\x1b[K" not in err


def test_an_error_after_a_status_line_starts_on_a_clean_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Prepare: more speakers than Shakespeare has, found once the data is loaded
    err = _Terminal()
    monkeypatch.setattr("sys.stderr", err)

    # Execute
    code = plume(["sim", "--dataset", "shakespeare", "--clients", "99", "--out", str(tmp_path)])

    # Assert: the status line is erased before the error
    assert code == 2
    assert "loading shakespeare...\r\x1b[Kplume sim: error: --clients" in err.getvalue()


def test_the_pool_says_it_is_starting_its_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    from mobile_sim.backends import TrainContext
    from mobile_sim.backends.process_pool import ProcessPoolBackend

    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 64)).astype(np.float32)
    ctx = TrainContext("digits_mlp", x, rng.integers(0, 10, 20), epochs=1, batch_size=10, lr=0.1)
    backend = ProcessPoolBackend(workers=1)

    # Execute
    with status.status_line(True):
        try:
            backend.start(ctx)
        finally:
            backend.close()

    # Assert
    assert "starting 1 pool worker..." in err.getvalue()
