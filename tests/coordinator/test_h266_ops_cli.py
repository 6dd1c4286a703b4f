"""`plume coordinator` help and serve's admin-token note (s25/ops findings 8 and 10).

Before: every admin example in `--help` passed `--admin-token s3cret` on the command line,
which docs/operations.md advises against (a flag's value shows in `ps` to every local user);
now the examples export PLUME_ADMIN_TOKEN once and pass no token. And serve's note with
`admin-token = ""` in its --config file and PLUME_ADMIN_TOKEN set said "no --admin-token (nor
PLUME_ADMIN_TOKEN)", while the file's empty value had overridden the variable.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from coordinator.cli import build_parser, iter_parsers, main
from coordinator.service import ServiceConfig


def _coordinator_helps() -> dict[str, str]:
    return {
        p.prog: p.format_help()
        for p in iter_parsers(build_parser())
        if p.prog == "plume" or p.prog.startswith("plume coordinator")
    }


def _example_lines(text: str) -> list[str]:
    """The command lines of a help's examples (continuation lines joined)."""
    lines, joined = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not joined and not line.startswith("plume "):
            continue
        joined += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            lines.append(joined.split("  #", 1)[0].strip())
            joined = ""
    return lines


def test_no_help_example_puts_the_admin_token_on_the_command_line() -> None:
    helps = _coordinator_helps()
    for prog, text in helps.items():
        for line in _example_lines(text):
            assert "--admin-token" not in shlex.split(line), (prog, line)
    assert "export PLUME_ADMIN_TOKEN=" in helps["plume coordinator"]
    for action in ("serve", "create-task", "status", "pause", "resume", "stop", "get-model"):
        assert "export PLUME_ADMIN_TOKEN=" in helps[f"plume coordinator {action}"], action


def test_the_coordinator_help_examples_parse() -> None:
    # Each example is a real command with real options (the token left to the variable)
    checked = 0
    for prog, text in _coordinator_helps().items():
        for line in _example_lines(text):
            argv = shlex.split(re.sub(r"\$\([^)]*\)", "X", line))  # $(date +%F): a word
            args, extras = build_parser().parse_known_args(argv[1:])
            assert extras == [] and getattr(args, "func", None) is not None, (prog, line)
            checked += 1
    assert checked >= 20


def _note(capsys: pytest.CaptureFixture[str]) -> str:
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert len(notes) == 1, notes
    return notes[0]


@pytest.fixture()
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[ServiceConfig]:
    import coordinator.service as service

    seen: list[ServiceConfig] = []
    monkeypatch.setattr(service, "serve", lambda config, *a, **kw: seen.append(config))
    return seen


def test_an_empty_token_in_the_config_file_is_said_to_override_the_variable(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    recorded: list[ServiceConfig],
) -> None:
    # Prepare: the variable set, the file's admin-token empty
    monkeypatch.setenv("PLUME_ADMIN_TOKEN", "from-the-environment")
    conf = tmp_path / "coordinator.toml"
    conf.write_text('db = "plume.db"\nadmin-token = ""\n')
    conf.chmod(0o600)
    # Execute
    code = main(["coordinator", "serve", "--config", str(conf)])
    # Assert: served without a token, and the note says why
    assert code == 0 and not recorded[0].admin_token
    note = _note(capsys)
    assert (
        f"--config {conf} sets admin-token to an empty value, which overrides "
        "PLUME_ADMIN_TOKEN: the admin API" in note
    ), note
    assert "nor PLUME_ADMIN_TOKEN" not in note


def test_an_empty_token_flag_is_said_to_override_the_variable(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    recorded: list[ServiceConfig],
) -> None:
    monkeypatch.setenv("PLUME_ADMIN_TOKEN", "from-the-environment")
    code = main(["coordinator", "serve", "--db", str(tmp_path / "x.db"), "--admin-token", ""])
    assert code == 0
    note = _note(capsys)
    assert "--admin-token is empty, which overrides PLUME_ADMIN_TOKEN: the admin API" in note


def test_no_token_anywhere_keeps_its_note(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    recorded: list[ServiceConfig],
) -> None:
    monkeypatch.delenv("PLUME_ADMIN_TOKEN", raising=False)
    conf = tmp_path / "coordinator.toml"
    conf.write_text('db = "plume.db"\nadmin-token = ""\n')
    conf.chmod(0o600)
    assert main(["coordinator", "serve", "--db", str(tmp_path / "x.db")]) == 0
    assert "no --admin-token (nor PLUME_ADMIN_TOKEN): the admin API" in _note(capsys)
    # An empty value in the file with no variable: the file is named, nothing overridden
    assert main(["coordinator", "serve", "--config", str(conf)]) == 0
    note = _note(capsys)
    assert f"--config {conf} sets admin-token to an empty value: the admin API" in note, note
