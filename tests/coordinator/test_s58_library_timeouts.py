"""`serve(...)` and `ServerThread(...)` bound the head and send timeouts as `plume serve` does:
0 (no limit), else up to a day (MAX_BODY_TIMEOUT_S). Before, the library took 1e300, which the
CLI refused since 8c9e979e (docs/operations.md's flag table states the bound for both)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.rounds import MAX_BODY_TIMEOUT_S
from coordinator.service.server import _check_head_timeout, _check_send_timeout


@pytest.mark.parametrize("value", [MAX_BODY_TIMEOUT_S + 1, 1e300, 10**30])
@pytest.mark.parametrize("check", [_check_head_timeout, _check_send_timeout])
def test_a_timeout_past_a_day_is_refused_naming_the_bound(check: object, value: float) -> None:
    with pytest.raises(ValueError, match=r"up to 86400 \(a day\)"):
        check(value)  # type: ignore[operator]


@pytest.mark.parametrize("value", [0, 0.5, 1, MAX_BODY_TIMEOUT_S])
def test_zero_and_up_to_a_day_are_taken(value: float) -> None:
    assert _check_head_timeout(value) == _check_send_timeout(value) == float(value)


@pytest.mark.parametrize("field", ["head_timeout_s", "send_timeout_s"])
def test_server_thread_refuses_a_timeout_past_a_day_before_it_starts(
    tmp_path: Path, field: str
) -> None:
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"))
    with pytest.raises(ValueError, match=field):
        ServerThread(cfg, **{field: 1e300})
    assert not (tmp_path / "plume.db").exists()  # refused before the store was opened
