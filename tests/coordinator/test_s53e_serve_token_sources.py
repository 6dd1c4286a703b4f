"""`plume coordinator serve --config FILE` with an `admin-token` in the file while
PLUME_ADMIN_TOKEN holds another: the file wins (as documented), and serve now says so in a
note naming neither token. Before, the variable was passed over silently, so an operator who
changed the token in the variable alone (an EnvironmentFile) saw every admin command refused
403 with nothing in the log saying why (an operator's walkthrough, s53e)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main
from coordinator.service import ServiceConfig

from .test_h113_serve_config import _config, served  # noqa: F401 (served: fixture)

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _serve_notes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str
) -> tuple[int, list[str]]:
    conf = _config(tmp_path, 'db = "plume.db"\nadmin-token = "from-the-file"\n')
    code = main(["coordinator", "serve", "--config", str(conf), *flags])
    err = capsys.readouterr().err
    assert "from-the-file" not in err and "from-the-variable" not in err  # no token shown
    return code, [line for line in err.splitlines() if ": note: " in line]


def test_a_file_token_over_another_variable_token_is_said(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
) -> None:
    # Prepare
    monkeypatch.setenv("PLUME_ADMIN_TOKEN", "from-the-variable")
    # Execute
    code, notes = _serve_notes(tmp_path, capsys)
    # Assert: served with the file's token, and the note says the variable is overridden
    assert code == 0 and served[0][0].admin_token == "from-the-file"
    assert len(notes) == 1, notes
    said = "sets admin-token, which overrides PLUME_ADMIN_TOKEN (set to another token)"
    assert said in notes[0], notes
    assert "which overrides PLUME_ADMIN_TOKEN (set to another token)" in " ".join(
        DOC.read_text().split()
    )


@pytest.mark.parametrize(
    ("env", "flags"),
    [
        (None, ()),  # no variable
        ("from-the-file", ()),  # the same token
        ("from-the-variable", ("--admin-token", "on-the-command-line")),  # the flag wins
    ],
)
def test_no_note_when_nothing_is_passed_over(
    tmp_path: Path,
    env: str | None,
    flags: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
) -> None:
    if env is not None:
        monkeypatch.setenv("PLUME_ADMIN_TOKEN", env)
    code, notes = _serve_notes(tmp_path, capsys, *flags)
    assert code == 0 and notes == []
