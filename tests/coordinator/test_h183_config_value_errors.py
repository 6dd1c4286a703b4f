"""A --config file's value that serve's later checks refuse is named by the file and its key.

`_apply_config` checks each value as its flag's type does; the checks that come after
(`_serve_usage_error`: --poll, --signature-window, --body-timeout, --register-rate/-burst,
--max-checkin-rate, --host, the TLS files, --db's folder) named the flag only: `poll = nan` in
the file gave "--poll must be a positive number of seconds, got nan", naming neither the file
nor the key, though docs/operations.md promises "one line naming the file and the key"."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.service import ServiceConfig

from .test_h113_serve_config import (  # noqa: F401 (served: fixture)
    _config,
    _config_refused,
    _serve,
    served,
)

CASES = [
    ("poll = nan", "poll = nan: must be a positive number of seconds"),
    ("poll = -1", "poll = -1: must be a positive number of seconds"),
    ("signature-window = 0", "signature-window = 0: must be a positive number of seconds"),
    ("signature_window = 100000", "signature_window = 100000: must be at most 86400 seconds"),
    ("body-timeout = -1", "body-timeout = -1: must be a number of seconds >= 0"),
    ("body-timeout = inf", "body-timeout = inf: must be a number of seconds >= 0"),
    ("register-rate = -1", "register-rate = -1: must be a number >= 0"),
    ("register-rate = nan", "register-rate = nan: must be a number >= 0"),
    ("register-rate = 1e-9", "register-rate = 1e-09: must be 0 (unlimited) or at least 1e-06"),
    ("register-burst = 0", "register-burst = 0: must be >= 1"),
    ("register_burst = 2000000", "register_burst = 2000000: must be at most 1,000,000"),
    ("max-checkin-rate = 0.0001", "max-checkin-rate = 0.0001: must be at least 0.001 per second"),
    ('host = "999.1.1.1"', "host = '999.1.1.1': is not an IPv4 address"),
    ('db = "."', "db = '.': is a folder"),
    ('db = "nowhere/x.db"', "db = 'nowhere/x.db': its folder does not exist"),
    ('tls-cert = "c.pem"\ntls-key = "k.pem"', "tls-cert = 'c.pem': no such file"),
]


@pytest.mark.parametrize(("text", "words"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_value_from_the_file_is_one_line_naming_the_file_and_key(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    text: str,
    words: str,
) -> None:
    # Prepare
    db = "" if text.startswith("db") else f'db = "{tmp_path / "x.db"}"\n'
    conf = _config(tmp_path, f"{db}{text}\n")
    # Execute / Assert
    line = _config_refused(capsys, served, conf)
    assert line.startswith(f"plume coordinator serve: error: --config {conf}: {words}"), line
    assert "--" not in line.split(f"--config {conf}", 1)[1], line  # no flag named


def test_the_same_value_on_the_command_line_still_names_the_flag(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare: the file's poll is fine; the command line's, which wins, is not
    conf = _config(tmp_path, f'db = "{tmp_path / "x.db"}"\npoll = 1\n')
    # Execute
    code = _serve("--config", str(conf), "--poll", "nan")
    # Assert
    err = capsys.readouterr().err
    assert code == 2 and served == []
    assert "error: --poll must be a positive number of seconds, got nan" in err


def test_a_bad_file_value_the_command_line_overrides_is_not_reported(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
) -> None:
    conf = _config(tmp_path, f'db = "{tmp_path / "x.db"}"\npoll = nan\n')
    assert _serve("--config", str(conf), "--poll", "2") == 0
    assert served[0][0].poll_s == 2.0


def test_a_tls_file_the_file_names_is_shown_as_written_and_as_looked_for(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare: a relative path in the file is relative to the file's folder
    (tmp_path / "c.pem").write_text("x")
    conf = _config(tmp_path, f'db = "{tmp_path / "x.db"}"\ntls-cert = "c.pem"\ntls-key = "k.pem"\n')
    # Execute
    code = _serve("--config", str(conf))
    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert f"--config {conf}: tls-key = 'k.pem': no such file ({tmp_path / 'k.pem'})" in err
