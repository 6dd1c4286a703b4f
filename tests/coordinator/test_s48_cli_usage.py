"""Stop 48, helper-411's review of the operator's command line: usage mistakes that went on as
if they were not, or exited 1 where the same mistake elsewhere exits 2:

- finding 3: `get-model --initial FILE` without `--version` was silently ignored (the current
  model needs no rebuild, and the help says --initial is for --version); now refused;
- finding 9: `--task -1` / `--task 0` went to the coordinator and exited 1 with its 422; now
  argparse refuses them (a positive task id), as `get-model --version -1` (it exited 1);
  `backup --db DIR` and `restore --db DIR` exited 1 where `serve --db DIR` exits 2;
- finding 12: the "is a folder" sentence had four wordings across serve, backup, restore,
  create-task and get-model (`--initial DIR: not a file`, `--db DIR: is a folder, not a
  file`, ...); now one, `FLAG DIR is a folder; give ...`, and each a usage mistake, status 2.

Nothing listens at the URL: a request would end "cannot reach the coordinator", status 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main

_ADMIN = ["--url", "http://127.0.0.1:9", "--admin-token", "t"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and the one error line of `plume coordinator ARGV`."""
    try:
        code = main(["coordinator", *argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"plume coordinator {argv[0]}: error: "), err
    return code, lines[0].split(": error: ", 1)[1]


@pytest.mark.parametrize("task", ["-1", "0"])
@pytest.mark.parametrize("command", ["status", "pause", "resume", "stop", "get-model"])
def test_a_task_id_below_1_is_a_usage_mistake(
    command: str, task: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--out", str(tmp_path / "m.npz")] if command == "get-model" else []
    code, said = _run([command, *_ADMIN, "--task", task, *out], capsys)
    assert code == 2, said
    assert said == f"argument --task: a task id is 1 to 2**63 - 1, got {task}"


def test_a_negative_model_version_is_a_usage_mistake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["get-model", *_ADMIN, "--task", "1", "--out", str(tmp_path / "m.npz")]
    code, said = _run([*argv, "--version", "-1"], capsys)
    assert code == 2
    assert said == "argument --version: a model version is 0 to 2**63 - 1, got -1"


def test_get_model_initial_without_version_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a file that would be read as the initial model
    initial = tmp_path / "v0.npz"
    initial.write_bytes(b"")
    argv = ["get-model", *_ADMIN, "--task", "1", "--out", str(tmp_path / "m.npz")]
    # Execute
    code, said = _run([*argv, "--initial", str(initial)], capsys)
    # Assert: before any request, naming --version; nothing written
    assert code == 2
    assert said.startswith(f"--initial {initial} is the initial model an older --version is"), said
    assert "(give --version N, or drop --initial)" in said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v0.npz"]


def test_get_model_initial_with_version_still_reaches_the_coordinator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    initial = tmp_path / "v0.npz"
    initial.write_bytes(b"")
    argv = ["get-model", *_ADMIN, "--task", "1", "--out", str(tmp_path / "m.npz")]
    code, said = _run([*argv, "--version", "1", "--initial", str(initial)], capsys)
    assert code == 1 and said.startswith("cannot reach the coordinator at "), said


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["serve", "--db", "{d}"], "--db {d} is a folder; give the database file's path, e.g. "
         "--db {d}/plume.db"),
        (["backup", "--db", "{d}", "--out", "{t}/x.bak"], "--db {d} is a folder; give the "
         "database file's path, e.g. --db {d}/plume.db"),
        (["backup", "--db", "{t}/ok.db", "--out", "{d}"], "--out {d} is a folder; give the file "
         "to write, e.g. --out {d}/ok.db"),
        (["restore", "--db", "{d}", "--from", "{t}/ok.db"], "--db {d} is a folder; give the "
         "database file's path, e.g. --db {d}/plume.db"),
        (["restore", "--db", "{t}/new.db", "--from", "{d}"], "--from {d} is a folder; give the "
         "backup file's path"),
        (["create-task", *_ADMIN, "--initial", "{d}"], "--initial {d} is a folder; give the "
         "model file's path"),
        (["get-model", *_ADMIN, "--task", "1", "--out", "{d}"], "--out {d} is a folder; give "
         "the file to write, e.g. --out {d}/model.pt"),
        (["get-model", *_ADMIN, "--task", "1", "--out", "{t}/m.npz", "--version", "1",
          "--initial", "{d}"], "--initial {d} is a folder; give the model file's path"),
    ],
)  # fmt: skip
def test_a_folder_for_a_file_is_one_sentence_and_a_usage_mistake(
    argv: list[str], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a folder, and a database file for the commands that need one besides
    from ._restore import marked

    folder = tmp_path / "adir"
    folder.mkdir()
    marked(tmp_path / "ok.db", "ok")
    fill = {"d": str(folder), "t": str(tmp_path)}
    # Execute
    code, text = _run([a.format(**fill) for a in argv], capsys)
    # Assert: the one wording, status 2 as serve's; nothing created
    assert code == 2, text
    assert text == said.format(**fill)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "ok.db"]
    assert list(folder.iterdir()) == []
