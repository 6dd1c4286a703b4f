"""`plume sim report A B` says that the report takes one run folder and how runs are compared.

It was argparse's `unrecognized arguments: B` under `plume sim`'s usage line, which said neither
that the report reads one folder nor that a sweep folder (docs/simulator.md's `plume sim report
runs/topk`, one subfolder a run) is how several runs are drawn together. Other stray words keep
argparse's message under `plume sim`'s usage.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main

HINT = (
    "(`plume sim report` takes one run folder; to compare runs, give it a sweep folder, one "
    "holding each run's folder: `plume sim report runs/topk` for runs/topk/k0.01, "
    "runs/topk/k0.2, ...)"
)


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.splitlines()


@pytest.mark.parametrize("extra", [["b"], ["b", "c"]], ids=["two", "three"])
def test_more_than_one_folder_says_report_takes_one_and_how_to_compare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    # Prepare: real run-like folders, so that nothing but their count is wrong
    folders = [tmp_path / name for name in ["a", *extra]]
    for folder in folders:
        folder.mkdir()
    # Execute
    lines = _usage_error(["sim", "report", *map(str, folders)], capsys)
    # Assert: the report's own usage, and one error line naming the extra folders
    stray = " ".join(str(f) for f in folders[1:])
    assert lines == [
        "usage: plume sim report [-h] RUN_DIR",
        f"plume sim: error: unrecognized arguments: {stray} {HINT}",
    ]
    assert not any((f / "accuracy_vs_upload_bytes.png").exists() for f in folders)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["sim", "report", "a", "b", "--bogus"],
            "plume sim: error: unrecognized arguments: b --bogus (did you mean --rounds?)",
        ),
        (
            ["sim", "report", "a", "--bogus"],
            "plume sim: error: unrecognized arguments: --bogus (did you mean --rounds?)",
        ),
        (["sim", "run", "a", "b"], "plume sim: error: unrecognized arguments: b"),
    ],
    ids=["folder-and-option", "option", "run"],
)
def test_other_stray_words_keep_their_message(
    capsys: pytest.CaptureFixture[str], argv: list[str], line: str
) -> None:
    lines = _usage_error(argv, capsys)
    assert lines == ["usage: plume sim [OPTIONS] (`plume sim --help` lists them)", line]
