"""`plume sim --out` folders after helper-139's review: a failed run removes only the folders it
made (not an existing empty one named through `..`); a name the system refuses is the --out
error line; a run interrupted before any round finished leaves no empty --out behind."""

from __future__ import annotations

from pathlib import Path

import pytest

import mobile_sim._cli as sim_cli
from coordinator.cli import main as plume
from mobile_sim._cli import _make_folders

_FAILING = ["sim", "--dataset", "mnist", "--data-root", "emptydata", "--clients", "4"]
_FAILING += ["--per-round", "2", "--rounds", "1", "--no-progress"]


def test_a_failed_run_keeps_an_existing_empty_folder_named_through_dotdot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: keep_me (the user's, empty) was removed and new/ (made for the run) stayed.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep_me").mkdir()
    (tmp_path / "emptydata").mkdir()

    code = plume([*_FAILING, "--out", "new/../keep_me"])

    assert code == 1
    assert (tmp_path / "keep_me").is_dir()
    assert not (tmp_path / "new").exists()


def test_a_failed_run_removes_the_folders_it_made_and_no_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "emptydata").mkdir()
    (tmp_path / "runs").mkdir()

    code = plume([*_FAILING, "--out", "runs/a/b"])

    assert code == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emptydata", "runs"]
    assert list((tmp_path / "runs").iterdir()) == []


@pytest.mark.parametrize("out", ["a" * 300 + "/x", "x/" + "a" * 300])
def test_a_name_too_long_for_the_system_is_the_out_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], out: str
) -> None:
    # Before: a traceback (OSError: File name too long) from looking for the missing folders;
    # and a parent made before the folder that could not be is not left behind.
    monkeypatch.chdir(tmp_path)

    # --topk 0.1: 241 values an upload, so no few-kept note (test_s51_cli_few_kept.py) before it
    argv = ["sim", "--dataset", "digits", "--rounds", "1", "--topk", "0.1", "--no-progress"]
    code = plume([*argv, "--out", out])

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1
    assert err[0].startswith(f"plume sim: error: cannot create the output folder --out {out} (")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_before_any_round_leaves_no_empty_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: "nothing was written", and an empty runs/new was left behind.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep_me").mkdir()

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sim_cli, "_run_one", interrupted)
    argv = ["sim", "--dataset", "digits", "--clients", "4", "--per-round", "2", "--rounds", "3"]
    argv += ["--no-progress"]

    assert plume([*argv, "--out", "runs/new"]) == 130
    assert plume([*argv, "--out", "keep_me"]) == 130

    err = capsys.readouterr().err
    assert "interrupted after 0 of 3 rounds" in err
    assert "nothing was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep_me"]
    assert list((tmp_path / "keep_me").iterdir()) == []


@pytest.mark.parametrize(
    ("existing", "given", "made"),
    [
        ([], "a/b/c", ["a/b/c", "a/b", "a"]),
        (["a"], "a/b", ["a/b"]),
        (["a", "k"], "a/../k", []),
        (["k"], "n/../k", ["n"]),
        (["a/b"], "a/b", []),
        ([], ".", []),
    ],
)
def test_make_folders_returns_those_it_made_deepest_first(
    tmp_path: Path, existing: list[str], given: str, made: list[str]
) -> None:
    for name in existing:
        (tmp_path / name).mkdir(parents=True)

    got = _make_folders(tmp_path / given)

    assert got == [tmp_path / m for m in made]
    assert (tmp_path / given).is_dir()


def test_make_folders_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")

    # NotADirectoryError naming the file (stop 48: FileExistsError's "File exists" said the
    # opposite; tests/mobile_sim/test_s48_error_texts.py)
    with pytest.raises(NotADirectoryError) as caught:
        _make_folders(tmp_path / "f" / "g")
    assert caught.value.filename == str(tmp_path / "f")


def _no_writes(*args: object, **kwargs: object) -> None:
    raise PermissionError(13, "Permission denied")


@pytest.mark.parametrize("existing", [True, False])
def test_an_out_folder_that_takes_no_files_fails_before_any_round(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    existing: bool,
) -> None:
    """helper-331's finding 1: an existing --out that could not be written in (read-only, or
    immutable for root) passed the folder check, and the run failed after every round,
    writing nothing. Its write check fails first now. (The check's file is refused here by
    a patch: root writes through a chmod 555 folder, and not every file system has chattr.)"""
    # Prepare: no file can be made in --out; a round would be recorded
    monkeypatch.chdir(tmp_path)
    if existing:
        (tmp_path / "runs").mkdir()
    monkeypatch.setattr(sim_cli.tempfile, "NamedTemporaryFile", _no_writes)
    rounds: list[object] = []
    monkeypatch.setattr(sim_cli, "_run_one", lambda *a, **k: rounds.append(a))
    # Execute (--topk 0.1: no few-kept note, test_s51_cli_few_kept.py)
    argv = ["sim", "--dataset", "digits", "--rounds", "1", "--topk", "0.1", "--no-progress"]
    code = plume([*argv, "--out", "runs"])
    # Assert: one error line, no round run, and a folder made for the run removed again
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err == [
        "plume sim: error: cannot write in the output folder --out runs (Permission denied)"
    ]
    assert rounds == []
    assert (tmp_path / "runs").is_dir() is existing


def test_the_write_check_leaves_nothing_in_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sim_cli, "_run_one", _no_writes)  # fails after the check
    assert (
        plume(["sim", "--dataset", "digits", "--rounds", "1", "--no-progress", "--out", "o"]) != 0
    )
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []
