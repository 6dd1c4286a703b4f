"""`plume coordinator serve --config FILE`: what helper 115's review found the file reading
differently from the flags: `~` only in `db`, TOML booleans refused for on/off flags, numbers
taken as strings for string options, and one option given twice (`admin_token` and
`admin-token`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from coordinator.service import ServiceConfig

from .test_h113_serve_config import (  # noqa: F401 (served: fixture)
    DOC,
    _config,
    _config_refused,
    _serve,
    served,
)


def test_a_tilde_in_every_path_of_the_file_is_the_home_folder(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: a certificate and key under $HOME (serve only checks that they are files)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "tls").mkdir()
    for name in ("cert.pem", "key.pem"):
        (tmp_path / "tls" / name).write_text("x")
    conf = _config(
        tmp_path, 'db = "~/x.db"\ntls-cert = "~/tls/cert.pem"\ntls_key = "~/tls/key.pem"\n'
    )
    # Execute: before, "~/tls/cert.pem" was taken relative to the file's folder: no such file
    code = _serve("--config", str(conf))
    # Assert
    assert code == 0
    ((config, _, _, kw),) = served
    assert config.db_path == str(tmp_path / "x.db")
    assert (kw["tls_cert"], kw["tls_key"]) == (
        str(tmp_path / "tls" / "cert.pem"),
        str(tmp_path / "tls" / "key.pem"),
    )


@pytest.mark.parametrize(("text", "on"), [("false", False), ("true", True), ('"off"', False)])
def test_an_on_off_key_takes_a_toml_boolean(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
    text: str,
    on: bool,
) -> None:
    conf = _config(tmp_path, f'db = "{tmp_path / "x.db"}"\naccess-log = {text}\n')
    assert _serve("--config", str(conf)) == 0
    assert served[0][3]["access_log"] is on


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("host = 0\n", "host = 0: give a string"),
        # The value is not shown: an unquoted number is still the user's secret (stop 57)
        ("admin-token = 1_000\n", "admin-token: give a string"),
        ("log-level = 1\n", "log-level = 1: give a string"),
        ("port = true\n", "port = true: give a string or a number"),
        (
            'admin_token = "a"\nadmin-token = "b"\n',
            "admin-token: given twice (admin_token and admin-token)",
        ),
    ],
)
def test_a_value_of_the_wrong_kind_or_a_key_given_twice_is_refused(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    text: str,
    words: str,
) -> None:
    # Before: host = 0 served every interface ("0"), a token of 1_000 became "1000", and the
    # second of two spellings silently won
    conf = _config(tmp_path, text)
    line = _config_refused(capsys, served, conf, "--db", str(tmp_path / "x.db"))
    assert words in line, line
    assert "1000" not in line or not text.startswith("admin-token"), line


def test_the_docs_give_the_config_file_one_mode_the_service_user_can_read(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    # docs/operations.md said both chmod 600 (root's alone: the unit's user cannot read it)
    # and root:plume 0640; the note said chmod 600
    text = DOC.read_text()
    assert "chmod 600 /etc/plume/coordinator.toml" not in text
    assert len(re.findall(r"chmod 640 /etc/plume/coordinator\.toml", text)) >= 1
    conf = _config(tmp_path, f'db = "{tmp_path / "x.db"}"\nadmin-token = "t"\n')
    conf.chmod(0o644)
    assert _serve("--config", str(conf)) == 0
    assert f"chmod o-r {conf}" in capsys.readouterr().err
