"""Stop 48, helper-407's review of the simulator: three error lines that named the wrong
thing.

- A plot `plume sim report` could not write was a bare "plume sim: error: /.../ro/
  accuracy_vs_upload_bytes.png: Operation not permitted": it now says that RUN_DIR cannot be
  written, and why the report writes there.
- `plume sim --out afile/sub` (a path under a regular file) said "File exists", where a file
  is in the way of a folder; now "afile is a file, not a folder". `--out afile` too.
- `plume sim report` of a RUN_DIR that does not exist said only "is not a folder", which read
  as a file being there; it now says it does not exist.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import matplotlib.figure
import pytest

from coordinator.cli import main as plume


def test_a_report_that_cannot_write_says_run_dir_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a run folder whose files cannot be replaced (a read-only mount, say)
    rounds = [{"round": 1, "accuracy": 0.5, "bytes_up": 400, "bytes_down": 9000, "wall_s": 1.0}]
    (tmp_path / "rounds.json").write_text(json.dumps({"rounds": rounds}))

    def savefig(self: Any, fname: Any, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(fname))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)

    # Execute
    code = plume(["sim", "report", str(tmp_path)])

    # Assert: one line, a failure of the system's (exit status 1), not a usage error
    err = capsys.readouterr().err
    assert code == 1
    assert err == (
        f"plume sim: error: RUN_DIR {tmp_path} cannot be written (Operation not permitted: "
        f"{tmp_path / 'accuracy_vs_upload_bytes.png'}); `plume sim report` redraws its plots "
        "and rewrites rounds.csv there\n"
    )


@pytest.mark.parametrize("below", ["afile/sub", "afile/sub/deeper", "afile"])
def test_an_out_under_a_file_says_the_file_is_in_the_way(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    below: str,
) -> None:
    # Prepare
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("a file")

    # Execute (--topk 0.1: no few-kept note before the line, test_s51_cli_few_kept.py)
    code = plume(["sim", "--dataset", "digits", "--rounds", "1", "--topk", "0.1", "--out", below])

    # Assert
    err = capsys.readouterr().err
    assert code == 1
    assert err == (
        f"plume sim: error: cannot create the output folder --out {below} (afile is a file, "
        "not a folder)\n"
    )
    assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_a_missing_run_dir_is_said_not_to_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = plume(["sim", "report", str(tmp_path / "missing")])

    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        f"plume sim: error: {tmp_path / 'missing'} is not a folder: it does not exist; "
        "RUN_DIR must be the --out folder of a `plume sim` run\n"
    )
