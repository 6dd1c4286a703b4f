"""A refused `admin-token` in a `serve --config` file is named by its file and key, never shown
(stop 57, audit F). docs/operations.md: the token is "Printable ASCII without spaces (...;
`serve` and the admin commands refuse anything else, naming the flag, not the token)". From
the command line and `PLUME_ADMIN_TOKEN` the line named the flag alone; from the file it
read `--config FILE: admin-token = 's3cr et': must be printable ASCII ...`, the token in
the journal of every start that refused it. Now the line names the file and the key, and the
doc says so ("naming the flag, or the `--config` file and key, not the token")."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.cli import main

PROSE = " ".join(
    (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text().split()
)

SECRET = "Zq7-secret-part"


def _serve(monkeypatch: pytest.MonkeyPatch, *flags: str) -> int:
    import coordinator.service as service

    monkeypatch.setattr(service, "serve", lambda *a, **kw: pytest.fail("served"))
    monkeypatch.delenv("PLUME_ADMIN_TOKEN", raising=False)
    try:
        return main(["coordinator", "serve", *flags])
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    "value",
    [
        f'"{SECRET} with a space"',  # printable ASCII, but spaces
        f'"{SECRET}\\u00e9"',  # not ASCII
        f'"{SECRET}\\t"',  # a control character
        f"'''{SECRET}\nsecond line'''",  # a line break
    ],
)
def test_a_refused_token_in_the_file_is_named_not_shown(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    value: str,
) -> None:
    assert "naming the flag, or the `--config` file and key, not the token" in PROSE
    conf = tmp_path / "coordinator.toml"
    conf.write_text(f"admin-token = {value}\n")
    conf.chmod(0o600)
    # Execute
    code = _serve(monkeypatch, "--config", str(conf))
    err = capsys.readouterr().err
    # Assert: one line naming the file and the key, and no part of the token
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"plume coordinator serve: error: --config {conf}: admin-token")
    assert "must be printable ASCII without spaces" in lines[0], lines[0]
    assert "secret" not in err, err


def test_the_flag_and_the_variable_are_not_shown_either(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # as before: the flags' line, no token
    assert _serve(monkeypatch, "--admin-token", f"{SECRET} x") == 2
    err = capsys.readouterr().err
    assert "--admin-token (or PLUME_ADMIN_TOKEN) must be printable ASCII" in err
    assert "secret" not in err


def test_other_keys_still_show_their_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the doc's example line: `port = 70000: a TCP port is 0-65535, got 70000`
    conf = tmp_path / "coordinator.toml"
    conf.write_text("port = 70000\n")
    conf.chmod(0o600)
    assert _serve(monkeypatch, "--config", str(conf)) == 2
    err = capsys.readouterr().err
    assert f"--config {conf}: port = 70000: a TCP port is 0-65535, got 70000" in err, err
