"""A run into an --out folder that holds an earlier run's files removes those files (and
only those) as its first round ends, and says so in one line: a run killed where it cannot
write (SIGKILL) used to leave the earlier run's rounds.json, which `plume sim report` then
rebuilt as if it were this run's. (Not before round 1: a run that fails while it sets up
leaves them, tests/mobile_sim/test_s24j_out_kept_on_setup_failure.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main as plume
from mobile_sim import _cli as sim_cli

TINY = [
    "sim", "--dataset", "digits", "--model", "digits_mlp", "--clients", "6", "--per-round",
    "3", "--rounds", "1", "--local-epochs", "1", "--no-progress",
]  # fmt: skip
OUTPUTS = [
    "accuracy_vs_upload_bytes.png", "bytes_per_round.png", "ledger.csv", "round_durations.png",
    "rounds.csv", "rounds.json",
]  # fmt: skip


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


class _Killed(Exception):
    pass


def test_an_earlier_runs_files_are_removed_as_round_1_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: an earlier --compare-dense run's files, and the user's own files beside them
    out = tmp_path / "out"
    assert plume([*TINY, "--compare-dense", "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    (out / "dense" / "extra.csv").write_text("mine too")
    (out / "other").mkdir()
    (out / "other" / "rounds.json").write_text("{}")  # not a folder plume sim writes
    capsys.readouterr()
    earlier = _files(out)
    seen: list[list[str]] = []
    real = sim_cli._run_one

    def killed(cfg: Any, args: Any, label: str, rows: Any) -> Any:
        # What --out holds when the run starts and as its first round ends; then the process
        # dies without writing anything (as SIGKILL would leave it)
        seen.append(_files(out))

        def round_ended(rec: Any) -> None:
            rows(rec)
            seen.append(_files(out))
            raise _Killed

        try:
            real(cfg, args, label, round_ended)
        except _Killed:
            pass
        raise KeyboardInterrupt

    monkeypatch.setattr(sim_cli, "_run_one", killed)

    # Execute
    assert plume([*TINY, "--out", str(out)]) == 130
    stdout = capsys.readouterr().out

    # Assert: only plume sim's own files went, as round 1 ended; one line named them
    kept = ["dense/extra.csv", "notes.txt", "other/rounds.json"]
    assert seen == [earlier, kept]
    assert _files(out) == kept
    [line] = [line for line in stdout.splitlines() if "earlier run" in line]
    assert line.startswith(f"replacing an earlier run's files in {out}/: removed ")
    for name in (
        "rounds.json",
        "bytes_per_round.png",
        "compressed/rounds.json",
        "dense/ledger.csv",
    ):
        assert name in line


def test_a_rerun_into_the_same_folder_writes_its_own_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert plume([*TINY, "--out", str(out)]) == 0
    assert "earlier run" not in capsys.readouterr().out  # a new folder: nothing to say

    assert plume([*TINY, "--rounds", "2", "--out", str(out)]) == 0

    assert "replacing an earlier run's files" in capsys.readouterr().out
    assert _files(out) == OUTPUTS
    assert (out / "rounds.csv").read_text().count("\n") == 3  # header and this run's 2 rounds
