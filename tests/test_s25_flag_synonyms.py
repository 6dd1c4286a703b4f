"""A flag typed for the other command gets this command's name for the same setting:
`plume coordinator create-task --per-round 3` suggested `--rounds` (the closest spelling) and
`plume sim --secure-noise` suggested `--secure-bits` (helper-266's walkthrough); both now name
the flag that sets it here."""

from __future__ import annotations

import pytest

from coordinator.cli import OTHER_COMMANDS_NAME, build_parser, iter_parsers, main


def _options(prog: str) -> set[str]:
    parser = next(p for p in iter_parsers(build_parser()) if p.prog == prog)
    return {o for a in parser._actions for o in a.option_strings}


@pytest.mark.parametrize("prog", sorted(OTHER_COMMANDS_NAME))
def test_every_named_flag_exists_in_its_command_and_not_in_the_other(prog: str) -> None:
    mine = _options(prog)
    for theirs, ours in OTHER_COMMANDS_NAME[prog].items():
        assert ours in mine, (prog, ours)
        assert theirs not in mine, (prog, theirs)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["coordinator", "create-task", "--per-round", "3"],
            "plume coordinator create-task: error: unrecognized arguments: --per-round 3 "
            "(--per-round is plume sim's name; plume coordinator create-task calls it "
            "--clients-per-round)",
        ),
        (
            ["sim", "--secure-noise=discrete_gaussian"],
            "plume sim: error: unrecognized arguments: --secure-noise=discrete_gaussian "
            "(--secure-noise is plume coordinator create-task's name; plume sim calls it "
            "--dp-noise)",
        ),
    ],
)
def test_the_other_commands_flag_is_named_as_this_command_calls_it(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    with pytest.raises(SystemExit) as info:
        main(argv)

    # Assert: a usage error whose last line names this command's flag
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == line


def test_a_plain_typo_still_gets_the_closest_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["sim", "--per-rund", "3"])
    assert capsys.readouterr().err.strip().endswith("(did you mean --per-round?)")
