"""`ServerThread(send_timeout_s=)` refuses a value the send timer cannot run with, before the
database is opened. The flag and config key (`--send-timeout`, `send-timeout`) are tested
with --head-timeout's in test_s23_head_timeout_flag.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.service import ServerThread, ServiceConfig


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), True])
def test_the_library_refuses_what_the_timer_cannot_run_with(tmp_path: Path, value: float) -> None:
    cfg = ServiceConfig(db_path=str(tmp_path / "x.db"))
    with pytest.raises(ValueError, match="send_timeout_s must be 0 \\(no limit\\) or a positive"):
        ServerThread(cfg, send_timeout_s=value)
    assert not (tmp_path / "x.db").exists()
