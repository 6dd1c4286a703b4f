"""`plume sim --secure --dp-noise ... --epsilon-budget EPS`: the run's SecureConfig carries the
budget (in process and over HTTP, where the run's loopback coordinator enforces it), and once
the budget stops the task (a round refused before unmasking, or a released round after which
no round fits) the run ends there: one line says so with the final epsilon, rounds.json's
`secure.stopped_by` is "epsilon_budget", and the exit status is 0.

Over HTTP the run used to hang: the service ends a task whose budget is spent, and the next
round's devices, answered "end" at check-in, went on checking in as if told "wait", forever
(`HttpSecureFleet.run_round`). The flag is a usage error (exit 2) without --secure, without
--dp-noise, for a value that is not finite and > 0, or one no round fits.

Budgets, for this config (skellam, z = 1, cohorts of 4): round 1 releases epsilon 4.77, after
which the most favourable round would take it to 6.90 and round 2 really takes it to 7.12. So
6 stops the run after round 1 (released, no round fits after it) and 7 after round 2 (refused
before unmasking)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.cli import main as plume
from coordinator.secure import SecureConfig, SecureCoordinator
from mobile_sim.secure import HttpSecureFleet, TaskEnded
from protocol.secagg import NoiseKind
from protocol.secagg._noise import CtrRandom
from sdk.secure import SecureParticipant

ROOT = Path(__file__).resolve().parents[2]
RUN = [
    "sim", "--secure", "--dataset", "digits", "--model", "digits_mlp", "--clients", "8",
    "--per-round", "4", "--rounds", "4", "--local-epochs", "1", "--dp-noise", "skellam",
    "--noise-multiplier", "1", "--no-progress",
]  # fmt: skip


GAUSSIAN = ["--secure", "--dp-noise", "gaussian", "--noise-multiplier", "1"]


def _doc(out: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((out / "rounds.json").read_text())
    return doc


@pytest.mark.parametrize(
    ("budget", "rounds", "why"),
    [
        ("6", 1, "no further round could be released within it"),
        ("7", 2, "the last round was refused before unmasking (it could take epsilon to 7.12)"),
    ],
)
def test_the_budget_stops_an_in_process_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], budget: str, rounds: int, why: str
) -> None:
    # Execute
    code = plume([*RUN, "--epsilon-budget", budget, "--out", str(tmp_path / "run")])

    # Assert: exit 0, the stop line with the final epsilon, and rounds.json records the stop
    out = capsys.readouterr().out
    assert code == 0
    line = (
        f"secure: stopped after {rounds} of 4 rounds: the epsilon budget {budget} "
        "(--epsilon-budget) stopped the run: final epsilon 4.77 at delta 1e-05 over 1 released "
        f"round; {why}"
    )
    assert line in out.splitlines()
    doc = _doc(tmp_path / "run")
    assert doc["secure"]["epsilon_budget"] == float(budget)
    assert doc["secure"]["stopped_by"] == "epsilon_budget"
    assert doc["summary"]["rounds"] == len(doc["rounds"]) == rounds
    assert doc["summary"]["dp_rounds"] == 1
    assert doc["summary"]["dp_epsilon"] == pytest.approx(4.77, abs=0.01)
    assert "--epsilon-budget" in doc["command"]
    assert (doc["summary"]["stopped_by"], doc["summary"]["rounds_planned"]) == (
        "epsilon_budget",
        4,
    )
    last = doc["rounds"][-1]["measurements"]
    assert last.get("budget_exhausted") or last["dp"]["budget_exhausted"]


def test_a_budget_the_run_never_reaches_records_no_stop(tmp_path: Path) -> None:
    code = plume([*RUN, "--rounds", "2", "--epsilon-budget", "100", "--out", str(tmp_path)])

    doc = _doc(tmp_path)
    assert code == 0
    assert doc["summary"]["rounds"] == 2 and "stopped_by" not in doc["secure"]
    assert doc["secure"]["epsilon_budget"] == 100.0
    assert "stopped_by" not in doc["summary"] and "rounds_planned" not in doc["summary"]


def test_a_plain_dp_budget_stop_is_in_the_summary(tmp_path: Path) -> None:
    # Execute: a dp: stage whose eps= budget holds 2 rounds (z = 2 over 8 of 8: 7.08 after 2)
    code = plume(
        [
            "sim",
            "--dataset",
            "digits",
            "--model",
            "digits_mlp",
            "--clients",
            "8",
            "--per-round",
            "8",
            "--rounds",
            "4",
            "--local-epochs",
            "1",
            "--no-progress",
            "--aggregator",
            "dp:clip=1,z=2,population=8,sample=8,eps=8+fedavg",
            "--out",
            str(tmp_path),
        ]
    )

    # Assert: fewer rounds than planned, and the summary says which stopped it
    s = _doc(tmp_path)["summary"]
    assert code == 0
    assert (s["rounds"], s["rounds_planned"]) == (2, 4)
    assert (s["stopped_by"], s["interrupted"]) == ("epsilon_budget", False)


@pytest.mark.timeout(300)
def test_the_budget_stops_an_http_run_within_a_bounded_time(tmp_path: Path) -> None:
    # Execute: in a process of its own, which the timeout kills if it hangs (as it did)
    argv = [*RUN, "--transport", "http", "--epsilon-budget", "6", "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *argv],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=ROOT,
    )
    took = time.monotonic() - started

    # Assert: a clean end, well within one round's device wait (4 stage caps + 2 min)
    assert done.returncode == 0, done.stderr
    assert took < 240
    assert (
        "secure: stopped after 1 of 4 rounds: the epsilon budget 6 (--epsilon-budget) stopped "
        "the run: final epsilon"
    ) in done.stdout
    doc = _doc(tmp_path)
    assert doc["secure"]["stopped_by"] == "epsilon_budget"
    assert doc["summary"]["rounds"] == len(doc["rounds"]) == 1
    assert doc["http"] is not None


@pytest.mark.timeout(120)
def test_devices_answered_end_stop_waiting() -> None:
    # Prepare: a loopback coordinator whose task's budget round 1 spends (the service then
    # ends the task)
    d, devs = 400, [f"d{i}" for i in range(5)]
    config = SecureConfig(
        coord_fraction=0.2,
        noise=NoiseKind.SKELLAM,
        noise_multiplier=1.0,
        epsilon_budget=6.0,
    )
    fleet = HttpSecureFleet(SecureCoordinator(np.zeros(d, np.float32), config))
    rng = np.random.default_rng(3)
    parts = {
        x: SecureParticipant(d, noise_rng=CtrRandom(bytes([i]) * 32)) for i, x in enumerate(devs)
    }
    try:
        ups = {x: (rng.normal(0, 0.05, d).astype(np.float32), 1) for x in devs}
        first = fleet.run_round(parts, ups)
        assert first.committed and first.measurements["dp"]["budget_exhausted"] is True

        # Execute: another round of the ended task
        started = time.monotonic()
        with pytest.raises(TaskEnded, match="runs no more rounds"):
            fleet.run_round(parts, ups)

        # Assert: the devices stopped at their first "end", not after the round's wait
        assert time.monotonic() - started < 30
    finally:
        fleet.close()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--epsilon-budget", "5"],
            "--epsilon-budget only applies to secure runs: add --secure",
        ),
        (
            ["--secure", "--epsilon-budget", "5"],
            "--epsilon-budget caps the epsilon of --dp-noise gaussian or skellam; with "
            "--dp-noise none (the default) no noise is added and no epsilon is accounted",
        ),
        *(
            (
                [*GAUSSIAN, "--epsilon-budget", v],
                f"--epsilon-budget must be finite and > 0, got {shown}",
            )
            for v, shown in (("0", "0"), ("-1", "-1"), ("nan", "nan"), ("inf", "inf"))
        ),
        (
            [*GAUSSIAN, "--epsilon-budget", "2"],
            "--epsilon-budget 2 is below what any one round spends (at least epsilon 4.451 at "
            "delta 1e-05 with --noise-multiplier 1 and --secure-dropout 0.1): no round could be "
            "released; raise --epsilon-budget or --noise-multiplier",
        ),
    ],
)
def test_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    # Execute
    code = plume(["sim", *flags, "--out", str(tmp_path / "run")])

    # Assert: one line, exit 2, before anything is made
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == f"plume sim: error: {message}"
    assert not (tmp_path / "run").exists()


def test_help_shows_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        plume(["sim", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--epsilon-budget EPS with --dp-noise: the epsilon" in text
