"""`plume sim` findings of review h146: a dp stage without seed= is reproducible in process
(its seed derived from --seed and recorded), a run whose rounds were abandoned says so,
--momentum must be below 1 and --warmup-rounds below --rounds."""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.aggregators._dp import find_dp
from coordinator.cli import main as plume
from mobile_sim.runner import (
    WALL_PHASES,
    SimConfig,
    build_aggregator,
    dp_seed_for,
    run_simulation,
)

TINY = ["sim", "--dataset", "digits", "--clients", "10", "--per-round", "4"]
TINY += ["--local-epochs", "1", "--no-progress", "--rounds", "2", "--lr", "0.2"]
DP = "dp:clip=1,z=0.5,population=10,sample=4+fedavg"
CFG = SimConfig(
    dataset="digits", clients=10, per_round=4, rounds=2, local_epochs=1, lr=0.2, aggregator=DP
)
# Fields of rounds.json that differ between two runs (simulator.md, Rerunning a run): wall
# times (a round's and its parts) and dates.
# Also `command` (its --out) and `code` (the tree may change under a test: other commits).
_TIMES = ("wall_s", *WALL_PHASES, "started_at", "finished_at", "command", "code")
# `argv` too (its --out), and the load averages in `machine` (other processes' load).
_TIMES += ("argv", "load_average_start", "load_average_end")


def _stable(doc: Any) -> Any:
    """`doc` without its wall-clock fields."""
    if isinstance(doc, dict):
        return {k: _stable(v) for k, v in doc.items() if k not in _TIMES}
    if isinstance(doc, list):
        return [_stable(v) for v in doc]
    return doc


def _rounds_json(folder: Path) -> Any:
    return json.loads((folder / "rounds.json").read_text())


def test_a_dp_run_without_seed_reruns_to_the_same_rounds_json(tmp_path: Path) -> None:
    # Execute: one command twice, and the command the first run recorded
    argv = [*TINY, "--aggregator", DP]
    assert plume([*argv, "--out", str(tmp_path / "a")]) == 0
    assert plume([*argv, "--out", str(tmp_path / "b")]) == 0
    first = _rounds_json(tmp_path / "a")
    words = shlex.split(first["command"])
    words[words.index("--out") + 1] = str(tmp_path / "c")
    assert plume(words[1:]) == 0

    # Assert: the noise, and so every round, is the same; the seed used is on record
    second, rerun = _rounds_json(tmp_path / "b"), _rounds_json(tmp_path / "c")
    assert _stable(first) == _stable(second)
    assert _stable(first)["rounds"] == _stable(rerun)["rounds"]
    assert first["config"]["aggregator"] == DP  # the spec as given
    assert first["config"]["dp_seed"] == dp_seed_for(0)


def test_the_dp_seed_follows_seed_and_an_explicit_one_is_kept() -> None:
    # Execute
    derived = [replace(CFG, seed=s).run_aggregator for s in (0, 1)]
    explicit = replace(CFG, aggregator="avgm:0.5+dp:clip=1,z=0.5,seed=7+fedavg")

    # Assert: distinct per --seed, never --seed itself (its streams draw the cohorts)
    seeds = [find_dp(build_aggregator(spec)).seed for spec in derived]  # type: ignore[union-attr]
    assert seeds == [dp_seed_for(0), dp_seed_for(1)] and seeds[0] != seeds[1]
    assert 0 not in seeds and 1 not in seeds
    assert explicit.run_aggregator == explicit.aggregator and explicit.dp_seed == 7
    assert replace(CFG, aggregator="median").run_aggregator == "median"
    assert replace(CFG, aggregator="median").dp_seed is None


def test_in_process_dp_runs_agree_across_backends() -> None:
    # Execute: the same seedless dp run twice in sequential, once in vectorized
    runs = [run_simulation(CFG, progress=False) for _ in range(2)]
    runs.append(run_simulation(replace(CFG, backend="vectorized"), progress=False))

    # Assert: bit for bit in one backend, up to float rounding across backends
    assert np.array_equal(runs[0].final_params, runs[1].final_params)
    np.testing.assert_allclose(runs[0].final_params, runs[2].final_params, atol=1e-5)


def test_a_run_whose_rounds_were_all_abandoned_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: no device reports within a 0.01 s deadline
    code = plume([*TINY, "--deadline", "0.01", "--out", str(tmp_path)])

    # Assert: exit 0 as documented, and one line that says the model never changed
    out = capsys.readouterr().out
    assert code == 0
    lines = [line for line in out.splitlines() if "abandoned" in line]
    assert lines == [
        "compressed: warning: 2 of 2 rounds were abandoned (no report before --deadline "
        "0.01 s); the model never changed"
    ], out


def test_a_run_with_no_abandoned_round_has_no_such_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert plume([*TINY, "--out", str(tmp_path)]) == 0
    assert "were abandoned" not in capsys.readouterr().out


def test_momentum_below_one_and_warmup_below_rounds_still_run() -> None:
    # Execute: the largest legal values
    SimConfig(dataset="digits", rounds=2, momentum=0.99, warmup_rounds=1)


def test_an_http_run_says_the_error_feedback_note_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Execute: the embedded coordinator logs the same note at create-task (on stderr from
    # the command line; here pytest's handler takes plume.coordinator's records)
    argv = [*TINY[:-4], "--rounds", "1", "--transport", "http", "--aggregator", DP]
    with caplog.at_level(logging.WARNING, logger="plume.coordinator"):
        code = plume([*argv, "--out", str(tmp_path)])

    # Assert: plume sim's line, and not the coordinator's copy of it
    err = capsys.readouterr().err
    logged = [r.getMessage() for r in caplog.records if r.name == "plume.coordinator"]
    assert code == 0, err
    assert "plume sim: note: the dp stage accounts epsilon" in err
    assert not [m for m in logged if "amplification by fixed-size sampling" in m], logged


def test_a_secure_run_with_distributed_dp_noise_reruns_to_the_same_rounds(tmp_path: Path) -> None:
    # Execute: --dp-noise draws each device's noise; the same command twice
    argv = ["sim", "--dataset", "digits", "--clients", "10", "--per-round", "5", "--rounds", "2"]
    argv += ["--local-epochs", "1", "--lr", "0.2", "--no-progress", "--secure"]
    argv += ["--dp-noise", "gaussian", "--noise-multiplier", "0.5"]
    assert plume([*argv, "--out", str(tmp_path / "a")]) == 0
    assert plume([*argv, "--out", str(tmp_path / "b")]) == 0

    # Assert: the noise, and so every round's model, is the same (measurements hold timings)
    first, second = _rounds_json(tmp_path / "a"), _rounds_json(tmp_path / "b")
    figures = ("accuracy", "loss", "train_loss", "bytes_up")
    assert [[r[k] for k in figures] for r in first["rounds"]] == [
        [r[k] for k in figures] for r in second["rounds"]
    ]
