"""`plume coordinator serve --head-timeout SECONDS` and `--send-timeout SECONDS` (and
`head-timeout` / `send-timeout` in a --config file) reach the server's request-head and send
timers (befdf3c added `serve(head_timeout_s=)`, default 30 s, with no way for an operator to
change it; b12c063 `serve(send_timeout_s=)`, default 60 s); a value a timer cannot run with is
refused in one line naming the flag or the file and key, before the database is opened."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.service import ServiceConfig
from coordinator.service.server import HEAD_TIMEOUT_S, SEND_TIMEOUT_S

from .test_h113_serve_config import (  # noqa: F401 (served: fixture)
    _config,
    _config_refused,
    _serve,
    served,
)

# (flag, serve()'s keyword, its default, what the refusal says the timer is for)
TIMERS = [
    ("head-timeout", "head_timeout_s", HEAD_TIMEOUT_S, "a request's whole head must arrive in it"),
    ("send-timeout", "send_timeout_s", SEND_TIMEOUT_S, "a client reads its answer within it"),
]
timers = pytest.mark.parametrize(("flag", "key", "default", "why"), TIMERS)


@timers
@pytest.mark.parametrize(("value", "want"), [(None, None), ("5", 5.0), ("0", 0.0)])
def test_the_flag_reaches_serve(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
    flag: str,
    key: str,
    default: float,
    why: str,
    value: str | None,
    want: float | None,
) -> None:
    flags = [] if value is None else [f"--{flag}", value]
    assert _serve("--db", str(tmp_path / "x.db"), *flags) == 0
    assert served[-1][3][key] == (default if want is None else want)


@timers
@pytest.mark.parametrize("value", ["0.5", "-1", "nan", "inf"])
def test_a_value_the_timer_cannot_run_with_is_refused(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    flag: str,
    key: str,
    default: float,
    why: str,
    value: str,
) -> None:
    code = _serve("--db", str(tmp_path / "x.db"), f"--{flag}", value)
    err = capsys.readouterr().err.strip().splitlines()
    assert (code, served) == (2, [])
    assert err == [
        f"plume coordinator serve: error: --{flag} must be 0 (no limit) or at least 1 "
        f"second: {why}, got {float(value)}"
    ]
    assert not (tmp_path / "x.db").exists()


@timers
def test_the_config_file_key(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    flag: str,
    key: str,
    default: float,
    why: str,
) -> None:
    line = _config_refused(capsys, served, _config(tmp_path, f"{flag} = 0.5\n"))
    assert line.endswith(f"{flag} = 0.5: must be 0 (no limit) or at least 1 second: {why}")
    conf = _config(tmp_path, f"{flag} = 12\n")
    assert _serve("--db", str(tmp_path / "y.db"), "--config", str(conf)) == 0
    assert served[-1][3][key] == 12.0
