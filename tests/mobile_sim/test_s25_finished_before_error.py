"""`plume sim` writes the rounds that finished before ANY error that ends a run, not only a
failed pool or Ray worker or a stopped HTTP device: the runners hand them on every error
(`finished_rounds`), and for an error it has no one line for (here an evaluation that breaks
in round 2 of an HTTP run; an external --coordinator that goes away is the real-world case) it
writes them and says so on one line before the error is reported as before. Before, those
rounds were lost with the traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import sdk.trainer
from coordinator.cli import main as plume

HTTP_TINY = [
    "sim", "--transport", "http", "--dataset", "digits", "--model", "digits_mlp", "--clients",
    "6", "--per-round", "3", "--rounds", "3", "--local-epochs", "1", "--no-progress",
]  # fmt: skip


def _evaluation_breaks_at(monkeypatch: pytest.MonkeyPatch, call: int) -> RuntimeError:
    real = sdk.trainer.evaluate
    calls = {"n": 0}
    boom = RuntimeError("evaluation broke")

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == call:
            raise boom
        return real(*args, **kwargs)

    monkeypatch.setattr(sdk.trainer, "evaluate", evaluate)
    return boom


@pytest.mark.timeout(90)
def test_an_unworded_error_after_round_1_still_writes_round_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    monkeypatch.delenv("PLUME_DEBUG", raising=False)
    boom = _evaluation_breaks_at(monkeypatch, 2)
    out = tmp_path / "run"

    # Execute: the error still propagates (a bug keeps its traceback)
    with pytest.raises(RuntimeError) as info:
        plume([*HTTP_TINY, "--out", str(out)])
    err = capsys.readouterr().err

    # Assert: the same error, and round 1 written first with a line saying where
    assert info.value is boom
    assert (
        f"plume sim: the run stopped on the error below; wrote its 1 finished round to {out}/ "
        in err
    ), err
    doc = json.loads((out / "rounds.json").read_text())
    assert doc["summary"]["interrupted"] is True
    assert [r["round"] for r in doc["rounds"]] == [1]
    assert (out / "rounds.csv").is_file() and (out / "ledger.csv").is_file()


@pytest.mark.timeout(90)
def test_under_plume_debug_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    monkeypatch.setenv("PLUME_DEBUG", "1")
    _evaluation_breaks_at(monkeypatch, 2)
    out = tmp_path / "run"

    # Execute
    with pytest.raises(RuntimeError):
        plume([*HTTP_TINY, "--out", str(out)])
    err = capsys.readouterr().err

    # Assert
    assert "finished round" not in err
    assert not (out / "rounds.json").exists()
