"""A mistyped subcommand gets the closest real one suggested, as a mistyped option does:
`plume coordinator creat-task` said only "invalid choice: 'creat-task' (choose from ...)"."""

from __future__ import annotations

import pytest

from coordinator.cli import main

from .test_cli_ux import _one_error_line


@pytest.mark.parametrize(
    ("argv", "prog", "suggestion"),
    [
        (["coordinator", "creat-task"], "plume coordinator", " (did you mean create-task?)"),
        (["coordinator", "get-modle"], "plume coordinator", " (did you mean get-model?)"),
        (["simm"], "plume", " (did you mean sim?)"),
        (["exprt"], "plume", " (did you mean export?)"),
        (["coordinator", "zzz"], "plume coordinator", None),  # nothing close: no suggestion
    ],
)
def test_a_mistyped_subcommand_gets_a_suggestion(
    argv: list[str], prog: str, suggestion: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    with pytest.raises(SystemExit) as exited:
        main(argv)
    line = _one_error_line(capsys.readouterr().err, prog)
    # Assert: a usage error, the choices listed, and the suggestion at the end
    assert exited.value.code == 2
    assert f"invalid choice: '{argv[-1]}' (choose from " in line
    if suggestion is None:
        assert "did you mean" not in line
    else:
        assert line.endswith(suggestion)


def test_an_option_value_gets_no_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    # --bits 3 is close to 32 by spelling, not by meaning: values are left as they were
    with pytest.raises(SystemExit):
        main(["sim", "--bits", "3"])
    assert "did you mean" not in capsys.readouterr().err
