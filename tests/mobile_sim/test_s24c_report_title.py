"""`plume sim report` titles the accuracy plot with the model the run's file records
(`summary.model`), not with what this process's registry would pick for the dataset."""

from __future__ import annotations

import json
from pathlib import Path

from mobile_sim.report_extra import read_run_dir, run_title


def _write(folder: Path, config: dict[str, object], summary: dict[str, object]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"config": config, "summary": summary, "rounds": []}
    (folder / "rounds.json").write_text(json.dumps(doc))


def test_the_title_names_the_model_the_summary_records(tmp_path: Path) -> None:
    # Prepare: a run of the dataset's default that was (say) a plugin's model when it ran,
    # or a default changed since: the registry would now say digits_mlp
    _write(
        tmp_path,
        {"dataset": "digits", "model": None},
        {"label": "compressed", "model": "my_digits_net"},
    )

    # Execute + Assert
    assert run_title(tmp_path) == "digits / my_digits_net"
    assert read_run_dir(tmp_path).title == "digits / my_digits_net"


def test_the_config_model_is_used_without_a_summary_model(tmp_path: Path) -> None:
    _write(tmp_path, {"dataset": "digits", "model": "digits_cnn"}, {"label": "compressed"})
    assert run_title(tmp_path) == "digits / digits_cnn"


def test_a_file_recording_no_model_falls_back_to_the_datasets_default(tmp_path: Path) -> None:
    # An older file (no summary.model) of a run of the default model
    _write(tmp_path, {"dataset": "digits", "model": None}, {"label": "compressed"})
    assert run_title(tmp_path) == "digits / digits_mlp"
