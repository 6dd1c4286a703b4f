"""`plume sim report DIR` refuses a folder whose runs trained different datasets or models
(before, it drew them on one plot under the first run's title and wrote the PNGs into DIR);
a sweep of one dataset and model still reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.cli import main as plume
from mobile_sim.report_extra import RunDirError, RunDirMixed, load_runs

PLOTS = ("accuracy_vs_upload_bytes.png", "bytes_per_round.png", "round_durations.png")


def _write_run(folder: Path, dataset: str, model: str | None, **config: object) -> None:
    folder.mkdir(parents=True)
    row = {"round": 1, "accuracy": 0.5, "bytes_up": 500, "bytes_down": 5000, "wall_s": 0.1}
    doc = {
        "config": {"dataset": dataset, "model": None, **config},
        "summary": {"label": "compressed", **({"model": model} if model else {})},
        "rounds": [row],
    }
    (folder / "rounds.json").write_text(json.dumps(doc))


def test_runs_of_two_datasets_are_refused_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a parent folder holding two unrelated runs
    _write_run(tmp_path / "a", "digits", "digits_mlp")
    _write_run(tmp_path / "b", "mnist", "mnist_cnn")

    # Execute
    code = plume(["sim", "report", str(tmp_path)])

    # Assert: a usage error naming each run with its dataset and model; nothing written
    err = capsys.readouterr().err
    assert code == 2
    assert "different datasets or models" in err
    assert "a (digits / digits_mlp)" in err and "b (mnist / mnist_cnn)" in err
    assert len(err.strip().splitlines()) == 1
    assert not any((tmp_path / name).exists() for name in PLOTS)


def test_runs_of_two_models_of_one_dataset_are_refused(tmp_path: Path) -> None:
    _write_run(tmp_path / "mlp", "digits", "digits_mlp")
    _write_run(tmp_path / "other", "digits", "my_net")
    with pytest.raises(
        RunDirMixed, match=r"mlp \(digits / digits_mlp\), other \(digits / my_net\)"
    ):
        load_runs(tmp_path)
    assert issubclass(RunDirMixed, RunDirError)


def test_a_sweep_of_one_dataset_and_model_still_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: other knobs differ; an older file without summary.model runs the default
    _write_run(tmp_path / "k0.01", "digits", "digits_mlp", topk=0.01)
    _write_run(tmp_path / "k0.1", "digits", None, topk=0.1)

    # Execute + Assert
    assert plume(["sim", "report", str(tmp_path)]) == 0
    assert all((tmp_path / name).is_file() for name in PLOTS)
    assert [label for label, _ in load_runs(tmp_path)] == ["k0.01", "k0.1"]
