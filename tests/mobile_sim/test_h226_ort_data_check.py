"""ORT artifacts are checked against the run's data before round 1, as torch devices' data is
(`mobile_sim.runner.prepare`): an export for another loss or input shape used to start the run
and fail at the first round that picked an onnxruntime device, in words that named neither the
artifacts nor the dataset (helper-221's review, simmse.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from coordinator.cli import main as plume
from mobile_sim.models import build_model
from mobile_sim.runner import SimConfig, run_simulation
from tests._export_cache import ExportCache, example

TINY = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "10", "--per-round",
    "4", "--rounds", "1", "--local-epochs", "1", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, export_cache: ExportCache) -> dict[str, Path]:
    """digits_mlp exported three ways: as the run needs it, with --loss mse, and for 8x8 inputs
    (`plume export --input-shape 8,8`; the MLP flattens them, so the export succeeds). Once a
    run (tests/_export_cache)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("h226")
    model = build_model("digits_mlp", seed=0)
    out = {"ok": root / "ok", "mse": root / "mse", "x88": root / "x88"}
    export_cache.export(model, example(4, 64), out["ok"])
    export_cache.export(model, example(4, 64), out["mse"], loss="mse")
    export_cache.export(model, example(4, 8, 8), out["x88"])
    return out


class _NeverStarted:
    """A backend that fails the test if the run gets as far as starting its devices."""

    name = "never"

    def start(self, ctx: Any) -> None:
        raise AssertionError("the run started its devices before refusing the artifacts")

    def train(self, params: Any, jobs: Sequence[Any]) -> list[Any]:
        raise AssertionError("a round ran")

    def close(self) -> None:
        pass


def _cfg(artifacts: Path, **kw: Any) -> SimConfig:
    base: dict[str, Any] = {
        "dataset": "digits",
        "model": "digits_mlp",
        "clients": 10,
        "per_round": 4,
        "rounds": 1,
        "local_epochs": 1,
        "ort_fraction": 0.5,
        "ort_artifacts": str(artifacts),
    }
    base.update(kw)
    return SimConfig(**base)


@pytest.mark.parametrize(
    ("which", "words"),
    [
        ("mse", ["was exported with --loss mse", "export with --loss ce"]),
        ("x88", ["x of shape (8, 8)", "(64,)", "--input-shape 64"]),
    ],
)
def test_an_export_that_does_not_fit_the_data_is_refused_before_round_1(
    exports: dict[str, Path], which: str, words: list[str]
) -> None:
    # Prepare
    rounds: list[Any] = []
    # Execute: it used to start round 1 and fail in it ("y of shape (166,), the model takes
    # [B, (10,)]", "x of shape (166, 64), the model takes [B, (8, 8)]")
    with pytest.raises(ValueError) as info:
        run_simulation(
            _cfg(exports[which]), progress=False, on_round=rounds.append, backend=_NeverStarted()
        )
    # Assert: one error naming the artifacts, the dataset and what disagrees; no round ran
    text = str(info.value)
    assert str(exports[which]) in text and "digits" in text, text
    for w in words:
        assert w in text, text
    assert rounds == []


def test_a_late_first_ort_device_no_longer_lets_rounds_run_first(
    exports: dict[str, Path],
) -> None:
    # Prepare: one onnxruntime device in 10, two devices a round: rounds that picked torch
    # devices only used to run (and be reported) before the export was found wrong; in these
    # five rounds the onnxruntime device is never picked, and the run ended without an error
    rounds: list[Any] = []
    cfg = _cfg(exports["x88"], ort_fraction=0.1, per_round=2, rounds=5, fleet="off")
    # Execute
    with pytest.raises(ValueError, match="x of shape"):
        run_simulation(cfg, progress=False, on_round=rounds.append)
    # Assert
    assert rounds == []


@pytest.mark.parametrize(
    ("which", "words"),
    [
        ("mse", ["was exported with --loss mse", "export with --loss ce"]),
        ("x88", ["x of shape (8, 8)", "digits", "--input-shape 64"]),
    ],
)
def test_the_cli_prints_one_line_and_exits_2(
    exports: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    which: str,
    words: list[str],
) -> None:
    # Execute
    out = tmp_path / "run"
    code = plume(
        [*TINY, "--ort-fraction", "0.5", "--ort-artifacts", str(exports[which]), "--out", str(out)]
    )
    # Assert: a usage error in one line, with no traceback and no results
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("plume sim: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert f"--ort-artifacts {exports[which]}" in lines[0], lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    assert not (out / "rounds.json").exists()


def test_an_export_that_fits_still_runs(exports: dict[str, Path]) -> None:
    # Execute
    res = run_simulation(_cfg(exports["ok"]), progress=False)
    # Assert
    assert len(res.records) == 1
    assert res.final_accuracy is not None
