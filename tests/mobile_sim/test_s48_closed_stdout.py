"""Stop 48, helper-407's review of the simulator: `plume sim ... | head -1` ended quietly with
exit status 141 when head closed the pipe, but after the earlier run's files in --out had been
removed (as the first round ended) and without writing the rounds that had finished, which
Ctrl-C and SIGTERM do write. A closed stdout now keeps them as those do (rounds.json marked
interrupted, rounds.csv, ledger.csv, the plots), and the run still ends quietly with 141."""

from __future__ import annotations

import errno
import io
import json
import os
import sys
from pathlib import Path

import pytest

from coordinator.cli import main as plume

# --topk 0.1: no few-kept note on stderr (test_s51_cli_few_kept.py), which stays empty
_RUN = [
    "sim", "--dataset", "digits", "--clients", "6", "--per-round", "3", "--rounds", "3",
    "--local-epochs", "1", "--topk", "0.1", "--no-progress",
]  # fmt: skip


class _ReadByHeadOne(io.TextIOBase):
    """A stdout piped into `head -1`: its first line is read, and every write after it fails
    as one into a closed pipe does (EPIPE)."""

    def __init__(self, fd: int) -> None:
        self.text = ""
        self.fd = fd  # `plume` points this at /dev/null when the pipe breaks

    def write(self, s: str) -> int:
        if "\n" in self.text:
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
        self.text += s
        return len(s)

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return False


def test_a_closed_stdout_keeps_the_finished_rounds_and_ends_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: an earlier run's rounds.json in --out (removed as round 1 ends, with a line
    # that is the one `head -1` reads), and a stdout that closes after that line
    out = tmp_path / "run"
    out.mkdir()
    (out / "rounds.json").write_text('{"earlier": true}')
    fd = os.open(tmp_path / "stdout", os.O_WRONLY | os.O_CREAT)
    stdout = _ReadByHeadOne(fd)
    monkeypatch.setattr(sys, "stdout", stdout)

    # Execute
    try:
        code = plume([*_RUN, "--out", str(out)])
    finally:
        os.close(fd)

    # Assert: a SIGPIPE death's status and nothing said, ...
    assert code == 141
    assert capsys.readouterr().err == ""
    assert stdout.text == f"replacing an earlier run's files in {out}/: removed rounds.json\n"
    # ... and round 1 (whose table row met the closed pipe) written as an interrupted run's
    doc = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [1]
    assert doc["summary"]["interrupted"] is True
    for name in ("rounds.csv", "ledger.csv", "accuracy_vs_upload_bytes.png"):
        assert (out / name).is_file(), name
