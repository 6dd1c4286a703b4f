"""`plume coordinator serve --send-timeout SECONDS` (and `send-timeout` in a --config file)
reaches the server's send timer (`serve(send_timeout_s=)`, default 60 s); a value the timer
cannot run with is refused in one line naming the flag or the file and key, before the
database is opened. As test_s23_head_timeout_flag does for --head-timeout."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.server import SEND_TIMEOUT_S

from .test_h113_serve_config import (  # noqa: F401 (served: fixture)
    _config,
    _config_refused,
    _serve,
    served,
)


@pytest.mark.parametrize(("flags", "want"), [([], SEND_TIMEOUT_S), (["--send-timeout", "5"], 5.0),
                                             (["--send-timeout", "0"], 0.0)])  # fmt: skip
def test_the_flag_reaches_serve(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
    flags: list[str],
    want: float,
) -> None:
    assert _serve("--db", str(tmp_path / "x.db"), *flags) == 0
    assert served[-1][3]["send_timeout_s"] == want


@pytest.mark.parametrize("value", ["0.5", "-1", "nan", "inf"])
def test_a_value_the_timer_cannot_run_with_is_refused(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    value: str,
) -> None:
    code = _serve("--db", str(tmp_path / "x.db"), "--send-timeout", value)
    err = capsys.readouterr().err.strip().splitlines()
    assert (code, served) == (2, [])
    assert err == [
        "plume coordinator serve: error: --send-timeout must be 0 (no limit) or at least 1 "
        f"second: a client reads its answer within it, got {float(value)}"
    ]
    assert not (tmp_path / "x.db").exists()


def test_the_config_file_key(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = _config_refused(capsys, served, _config(tmp_path, "send-timeout = 0.5\n"))
    assert line.endswith("send-timeout = 0.5: must be 0 (no limit) or at least 1 second: a "
                         "client reads its answer within it")  # fmt: skip
    conf = _config(tmp_path, "send-timeout = 12\n")
    assert _serve("--db", str(tmp_path / "y.db"), "--config", str(conf)) == 0
    assert served[-1][3]["send_timeout_s"] == 12.0


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), True])
def test_the_library_refuses_what_the_timer_cannot_run_with(tmp_path: Path, value: float) -> None:
    cfg = ServiceConfig(db_path=str(tmp_path / "x.db"))
    with pytest.raises(ValueError, match="send_timeout_s must be 0 \\(no limit\\) or a positive"):
        ServerThread(cfg, send_timeout_s=value)
    assert not (tmp_path / "x.db").exists()
