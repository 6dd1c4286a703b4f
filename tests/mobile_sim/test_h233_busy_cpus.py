"""On torch's default thread count a `plume sim` round runs 10-30x slower while another
process keeps a CPU busy (helper-222's finding 1: an MNIST round 3.4 s quiet, 108 s beside one
busy loop, 11 s there with --threads 1). The default stays (a thread count can change a run's
float results); instead a run without --threads, on the sequential backend, whose 1-minute
load average at its start is at least the CPU count prints one warning line. The load is
injected (os.getloadavg patched), never measured."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from coordinator.cli import main as plume
from mobile_sim import _cli as sim_cli

TINY = (
    "sim",
    "--dataset",
    "digits",
    "--clients",
    "6",
    "--per-round",
    "3",
    "--rounds",
    "1",
    "--local-epochs",
    "1",
    "--no-progress",
)


@pytest.fixture
def two_threads() -> Iterator[None]:
    """torch on 2 threads, as its default on a 2-CPU machine (the tests' conftest sets 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _load(monkeypatch: pytest.MonkeyPatch, value: float, terminal: bool = True) -> None:
    """The load average `value`, and stderr a terminal (the warning is for someone watching
    one; a piped or captured stderr never gets it)."""
    monkeypatch.setattr(os, "getloadavg", lambda: (value, value, value))
    monkeypatch.setattr(sim_cli, "_stderr_is_terminal", lambda: terminal)


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("plume sim: warning: the load")]


@pytest.mark.usefixtures("two_threads")
def test_a_busy_machine_gets_one_warning_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: every CPU busy
    cpus = os.cpu_count() or 1
    _load(monkeypatch, float(cpus))

    # Execute
    code = plume([*TINY, "--out", str(tmp_path)])

    # Assert: one line, naming the load, the CPUs and what to do; the run still runs on
    # torch's threads (not changed by the load)
    err = capsys.readouterr().err
    assert code == 0, err
    lines = _warnings(err)
    assert len(lines) == 1, err
    assert f"the load average ({cpus:.1f}) is at least the number of CPUs ({cpus})" in lines[0]
    assert "--threads 1 (or --backend pool)" in lines[0]
    assert torch.get_num_threads() == 2


@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize(
    ("flags", "load_per_cpu"),
    [
        ((), 0.5),  # a quiet machine
        (("--threads", "2"), 4.0),  # threads chosen
        (("--backend", "vectorized"), 4.0),  # not the sequential backend
    ],
)
def test_no_warning_otherwise(
    flags: tuple[str, ...],
    load_per_cpu: float,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _load(monkeypatch, load_per_cpu * (os.cpu_count() or 1))
    code = plume([*TINY, *flags, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert _warnings(err) == []


def test_one_torch_thread_needs_no_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The tests' conftest runs torch on 1 thread: nothing to warn about
    assert torch.get_num_threads() == 1
    _load(monkeypatch, 4.0 * (os.cpu_count() or 1))
    assert plume([*TINY, "--out", str(tmp_path)]) == 0
    assert _warnings(capsys.readouterr().err) == []


@pytest.mark.usefixtures("two_threads")
def test_no_warning_when_stderr_is_not_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A piped or logged run (a script, CI, a test's subprocess) keeps stderr to what the run
    # did, whatever else loads the machine: test_cli_ux_walkthrough's piped run expects none.
    _load(monkeypatch, 4.0 * (os.cpu_count() or 1), terminal=False)
    assert plume([*TINY, "--out", str(tmp_path)]) == 0
    assert _warnings(capsys.readouterr().err) == []


@pytest.mark.usefixtures("two_threads")
def test_a_usage_error_stays_one_line_on_a_busy_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A run that cannot start gets its error alone (test_cli_ux pins that line)
    _load(monkeypatch, 4.0 * (os.cpu_count() or 1))
    code = plume([*TINY, "--per-round", "9", "--out", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [
        "plume sim: error: --per-round 9 exceeds --clients 6: a round cannot aggregate more "
        "devices than the fleet has"
    ]
