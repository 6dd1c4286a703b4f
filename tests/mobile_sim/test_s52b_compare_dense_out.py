"""s52b: `plume sim --compare-dense --out DIR` where `DIR/dense` (or `DIR/compressed`) is a
file trained the compressed run, wrote it, trained every round of the dense run and only then
failed, with a bare `plume sim: error: DIR/dense: File exists`. The run's own folders are now
checked before the first round, as `--out` itself is: one line naming the file, no round run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coordinator.cli import main as plume


@pytest.mark.parametrize("label", ["compressed", "dense"])
def test_a_file_in_the_way_of_a_runs_folder_fails_before_any_round(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], label: str
) -> None:
    # Prepare
    out = tmp_path / "out"
    out.mkdir()
    (out / label).write_text("somebody's file")

    # Execute (--topk 0.1: no few-kept note before the line, test_s51_cli_few_kept.py)
    code = plume(
        [
            "sim",
            "--dataset",
            "digits",
            "--clients",
            "10",
            "--per-round",
            "2",
            "--rounds",
            "1",
            "--topk",
            "0.1",
            "--compare-dense",
            "--no-progress",
            "--out",
            str(out),
        ]
    )

    # Assert: one line, no round (no table), the file as it was and nothing else written
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    assert captured.err == (
        f"plume sim: error: cannot create the output folder {out / label} for the {label} run "
        f"of --compare-dense ({out / label} is a file, not a folder): move it, or give another "
        "--out\n"
    )
    assert os.listdir(out) == [label]
    assert (out / label).read_text() == "somebody's file"
