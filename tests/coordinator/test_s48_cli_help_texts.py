"""Stop 48, helper-411's review of the operator's command line, findings 13 and 14: the help
texts.

- The secure example in `plume coordinator --help` (`--secure --secure-fraction 0.05
  --stage-timeout 30`) drew the tool's own note, "--deadline 60 s is shorter than 4 stages x
  --stage-timeout 30 s": the example now gives a --deadline that fits, and runs clean.
- The last paragraph of `get-model --help` was one unwrapped line of about 400 characters (its
  parser does not reflow an epilog): wrapped now, as the rest of the help is."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from coordinator._cli import _EXAMPLES
from coordinator.cli import main
from coordinator.service import ServerThread, ServiceConfig

from .test_service_support import ADMIN


def _secure_example() -> list[str]:
    """The arguments after `plume` of the secure create-task example in the --help text."""
    commands = _EXAMPLES.replace("\\\n", " ").splitlines()
    (line,) = [c for c in commands if "create-task" in c and "--secure" in c]
    return shlex.split(line.split("#")[0])[1:]


def test_the_secure_example_of_the_help_runs_without_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a coordinator at the example's URL's place
    argv = _secure_example()
    at = argv.index("--url") + 1
    with ServerThread(ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN)) as url:
        argv[at] = url
        # Execute: as the help shows it
        try:
            code = main([*argv, "--admin-token", ADMIN])
        except SystemExit as exc:
            code = int(exc.code or 0)
    # Assert: the task is made, and the tool says nothing about its own example
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert '"task_id": 1' in captured.out
    assert captured.err == ""


def test_get_model_help_is_wrapped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: at an 80-column terminal
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        main(["coordinator", "get-model", "--help"])
    text = capsys.readouterr().out
    # Assert: no line past 80 columns, the last paragraph included
    assert "compression.decode_snapshot(bytes, spec)." in text
    long = [line for line in text.splitlines() if len(line) > 80]
    assert long == []
