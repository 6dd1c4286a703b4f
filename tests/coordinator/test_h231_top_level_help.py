"""`plume --help` has examples, as every command's help has (README: "Every command has a
`--help` with an example"); helper-222 found the top-level help without one. Each example
parses as the command it shows."""

from __future__ import annotations

import shlex

import pytest

from coordinator.cli import build_parser, iter_parsers, main


def test_every_help_has_an_example() -> None:
    missing = [
        p.prog for p in iter_parsers(build_parser()) if "example" not in p.format_help().lower()
    ]
    assert missing == []


def test_the_top_level_examples_parse(capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: the example lines of `plume --help`, trailing comments dropped
    assert main([]) == 2  # no command: `plume --help`'s text, status 2
    text = capsys.readouterr().out
    _, _, rest = text.partition("\nexamples:\n")
    assert rest, text
    lines = [line.strip() for line in rest.split("\n\n", 1)[0].splitlines()]
    # Execute + Assert: each one's a real command with only real options
    assert len(lines) >= 3
    commands = set()
    for line in lines:
        argv = shlex.split(line.split("  #", 1)[0])
        assert argv[0] == "plume", line
        args, extras = build_parser().parse_known_args(argv[1:])
        assert extras == [] and getattr(args, "func", None) is not None, line
        commands.add(argv[1])
    assert commands == {"sim", "coordinator", "export"}
