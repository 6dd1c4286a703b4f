"""s54c: the busy-CPU warning (every CPU busy at a run's start: torch's default threads can
make its rounds many times slower, so its wall times are skewed) is printed on a terminal
only, so a piped or CI run lost it. Every run now keeps it in its rounds.json
(`machine.busy_cpu_warning`), and `plume sim report` prints it under the report. The load is
injected (os.getloadavg patched), never measured."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from coordinator.cli import main as plume
from mobile_sim import _cli as sim_cli

TINY = [
    "sim", "--dataset", "digits", "--clients", "6", "--per-round", "3", "--rounds", "1",
    "--local-epochs", "1", "--no-progress",
]  # fmt: skip


@pytest.fixture
def two_threads() -> Iterator[None]:
    """torch on 2 threads, as its default on a 2-CPU machine (the tests' conftest sets 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _load(monkeypatch: pytest.MonkeyPatch, per_cpu: float, terminal: bool) -> float:
    value = per_cpu * (os.cpu_count() or 1)
    monkeypatch.setattr(os, "getloadavg", lambda: (value, value, value))
    monkeypatch.setattr(sim_cli, "_stderr_is_terminal", lambda: terminal)
    return value


@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("terminal", [False, True], ids=["piped", "terminal"])
def test_a_busy_run_records_its_warning_and_the_report_shows_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    terminal: bool,
) -> None:
    # Prepare: every CPU busy
    load = _load(monkeypatch, 2.0, terminal)
    cpus = os.cpu_count() or 1
    out = tmp_path / "run"

    # Execute
    code = plume([*TINY, "--out", str(out)])
    run_err = capsys.readouterr().err
    doc = json.loads((out / "rounds.json").read_text())
    report = plume(["sim", "report", str(out)])
    shown = capsys.readouterr().out

    # Assert: printed on a terminal only, recorded and reported either way
    assert (code, report) == (0, 0), run_err
    warning = (
        f"the load average ({load:.1f}) is at least the number of CPUs ({cpus}): torch's "
        "default 2 threads can make each round many times slower while other processes use "
        "the CPUs; --threads 1 (or --backend pool) avoids that"
    )
    assert doc["machine"]["busy_cpu_warning"] == warning
    assert (f"plume sim: warning: {warning}" in run_err) is terminal
    assert shown.splitlines()[-1] == f"compressed: warning at its start: {warning}"


@pytest.mark.usefixtures("two_threads")
def test_a_quiet_run_records_no_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _load(monkeypatch, 0.25, terminal=False)
    out = tmp_path / "run"
    assert plume([*TINY, "--out", str(out)]) == 0
    assert "busy_cpu_warning" not in json.loads((out / "rounds.json").read_text())["machine"]
    capsys.readouterr()
    assert plume(["sim", "report", str(out)]) == 0
    assert "warning" not in capsys.readouterr().out
