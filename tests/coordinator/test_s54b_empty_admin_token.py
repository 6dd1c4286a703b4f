"""`PLUME_ADMIN_TOKEN=""` (an env file's `PLUME_ADMIN_TOKEN=`) turns the admin API off as an
unset variable does: serve takes the empty token, and every admin request is refused 403
"disabled" (an empty token would otherwise match `Authorization: Bearer ` with nothing after
it). `serve --help` said only "unset disables it" while docs/operations.md said "unset or
empty"; both now say unset or empty, and serve's note names the empty variable rather than
saying there is none."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main
from coordinator.service import ServiceConfig
from coordinator.service.auth import check_admin_token
from coordinator.service.errors import ApiError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[ServiceConfig]:
    import coordinator.service as service

    seen: list[ServiceConfig] = []
    monkeypatch.setattr(service, "serve", lambda config, *a, **kw: seen.append(config))
    return seen


def test_an_empty_variable_turns_the_admin_api_off_and_the_note_says_it_is_empty(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    recorded: list[ServiceConfig],
) -> None:
    # Prepare: the variable set, empty
    monkeypatch.setenv("PLUME_ADMIN_TOKEN", "")
    # Execute
    code = main(["coordinator", "serve", "--db", str(tmp_path / "x.db")])
    # Assert: served with the empty token, which refuses every admin request as disabled
    assert code == 0 and recorded[0].admin_token == ""
    for header in (None, "Bearer ", "Bearer anything"):
        with pytest.raises(ApiError) as caught:
            check_admin_token(recorded[0].admin_token, header)
        assert caught.value.status == 403 and "disabled" in str(caught.value.detail)
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert len(notes) == 1, notes
    assert "PLUME_ADMIN_TOKEN is empty (and no --admin-token): the admin API" in notes[0]
    assert "nor PLUME_ADMIN_TOKEN" not in notes[0]


def test_serve_help_and_the_operations_guide_say_unset_or_empty_disables_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["coordinator", "serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default $PLUME_ADMIN_TOKEN; unset or empty disables it: 403)" in help_text
    guide = (ROOT / "docs" / "operations.md").read_text()
    assert "bearer token of the admin API; unset or empty disables it (403)" in guide
