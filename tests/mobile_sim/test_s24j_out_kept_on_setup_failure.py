"""A `plume sim` run that fails while it sets up (before any round of its own finished) leaves
an earlier run's files in --out as they were: it used to remove them before calling the
runner, so a missing admin token, an unreachable --coordinator or a data folder without the
dataset (errors only the runner sees) cost the earlier run's results and wrote nothing in
their place (s24/r5). A run that gets a round done still replaces them, in process, --secure
and --transport http alike."""

from __future__ import annotations

from pathlib import Path

import pytest

import mobile_sim.runner as runner
from coordinator.cli import main as plume

TINY = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "6", "--per-round",
    "3", "--rounds", "1", "--local-epochs", "1", "--no-progress",
]  # fmt: skip
EARLIER = ("rounds.json", "rounds.csv", "ledger.csv", "dense/rounds.json")


def _earlier_run(out: Path) -> None:
    (out / "dense").mkdir(parents=True)
    for name in EARLIER:
        (out / name).write_text("old\n")
    (out / "notes.txt").write_text("mine\n")


def _kept(out: Path) -> bool:
    return all((out / name).read_text() == "old\n" for name in EARLIER)


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_a_missing_admin_token_leaves_the_earlier_runs_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the reviewer's repro (nothing listens on port 9; no token either)
    pytest.importorskip("httpx")
    monkeypatch.delenv("PLUME_ADMIN_TOKEN", raising=False)
    out = tmp_path / "out"
    _earlier_run(out)

    # Execute
    code = plume(
        [*TINY, "--transport", "http", "--coordinator", "http://127.0.0.1:9", "--out", str(out)]
    )
    captured = capsys.readouterr()

    # Assert: the error, and the earlier run's files untouched
    assert code == 2
    assert "--coordinator needs an admin token" in captured.err
    assert "earlier run" not in captured.out
    assert _kept(out)


def test_an_unreachable_coordinator_leaves_the_earlier_runs_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("httpx")
    monkeypatch.setenv("PLUME_ADMIN_TOKEN", "secret")
    out = tmp_path / "out"
    _earlier_run(out)

    code = plume(
        [*TINY, "--transport", "http", "--coordinator", "http://127.0.0.1:9", "--out", str(out)]
    )
    captured = capsys.readouterr()

    assert code == 1
    assert "cannot reach the coordinator" in captured.err
    assert "earlier run" not in captured.out
    assert _kept(out)


@pytest.mark.parametrize("secure", [False, True])
def test_a_data_folder_without_the_dataset_leaves_the_earlier_runs_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], secure: bool
) -> None:
    # Prepare: --data-root is a folder (checked before the run) without MNIST in it (a
    # DataError only loading the data finds)
    out = tmp_path / "out"
    _earlier_run(out)
    empty = tmp_path / "data"
    empty.mkdir()
    args = [
        "sim", "--dataset", "mnist", "--model", "mlp", "--clients", "6", "--per-round", "3",
        "--rounds", "1", "--no-progress", "--data-root", str(empty), "--out", str(out),
    ]  # fmt: skip

    code = plume([*args, "--secure"] if secure else args)
    captured = capsys.readouterr()

    assert code == 1
    assert "not found; pass --data-root" in captured.err
    assert "earlier run" not in captured.out
    assert _kept(out)


def test_ctrl_c_in_round_1_leaves_the_earlier_runs_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: Ctrl-C while round 1 encodes its updates (no round of this run finished)
    def encode(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "encode_reports", encode)
    out = tmp_path / "out"
    _earlier_run(out)

    code = plume([*TINY, "--out", str(out)])
    captured = capsys.readouterr()

    assert code == 130
    assert "no round finished, so nothing was written" in captured.err
    assert "earlier run" not in captured.out
    assert _kept(out)


@pytest.mark.parametrize(
    "mode", [[], ["--secure"], ["--transport", "http"]], ids=["inproc", "secure", "http"]
)
def test_a_run_that_finishes_a_round_replaces_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: list[str]
) -> None:
    if "http" in mode:
        pytest.importorskip("httpx")
    out = tmp_path / "out"
    _earlier_run(out)

    code = plume([*TINY, *mode, "--out", str(out)])
    stdout = capsys.readouterr().out

    # Assert: the line names what went (before the table), this run's files replace them, the
    # user's own file stays
    assert code == 0
    lines = stdout.splitlines()
    [i] = [i for i, line in enumerate(lines) if "earlier run" in line]
    assert lines[i] == (
        f"replacing an earlier run's files in {out}/: removed rounds.json, rounds.csv, "
        "ledger.csv, dense/rounds.json"
    )
    assert i < min(j for j, line in enumerate(lines) if line.lstrip().startswith("round"))
    assert _files(out) == [
        "accuracy_vs_upload_bytes.png", "bytes_per_round.png", "ledger.csv", "notes.txt",
        "round_durations.png", "rounds.csv", "rounds.json",
    ]  # fmt: skip
    assert (out / "rounds.csv").read_text().count("\n") == 2  # the header and round 1


@pytest.mark.parametrize(
    "mode", [[], ["--secure"], ["--transport", "http"]], ids=["inproc", "secure", "http"]
)
def test_a_file_that_cannot_be_removed_ends_the_run_with_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    mode: list[str],
) -> None:
    # Prepare: the removal at the end of round 1 fails (a folder made read-only meanwhile)
    if "http" in mode:
        pytest.importorskip("httpx")
    from mobile_sim import _cli as sim_cli

    out = tmp_path / "out"
    _earlier_run(out)

    def refused(folder: Path) -> list[Path]:
        raise PermissionError(13, "Permission denied", str(folder / "rounds.json"))

    monkeypatch.setattr(sim_cli, "_remove_earlier_outputs", refused)

    code = plume([*TINY, *mode, "--out", str(out)])
    captured = capsys.readouterr()

    # Assert: exit 1 and the error naming the file; nothing of this run written over them
    assert code == 1
    assert captured.err.strip().splitlines()[-1] == (
        f"plume sim: error: cannot remove an earlier run's {out}/rounds.json from --out {out} "
        "(Permission denied)"
    )
    assert _kept(out)
    assert _files(out) == [
        "dense/rounds.json",
        "ledger.csv",
        "notes.txt",
        "rounds.csv",
        "rounds.json",
    ]
