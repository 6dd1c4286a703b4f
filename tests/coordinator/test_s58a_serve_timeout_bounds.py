"""An upper bound for `plume coordinator serve`'s connection timeouts: --head-timeout,
--body-timeout and --send-timeout took any finite number (1e300). asyncio's timers take such a
delay, so nothing crashed and it meant no limit; but the body timeout is also the pace an
upload keeps its room in --upload-buffer-mb by (`auth.BodyBudget`), so at 1e300 a sender that
sent one byte of a large upload held its whole declared length for good, where 0 (no limit)
keeps the default 120 s pace. Now each is 0 or 1 to 86,400 seconds (a day): above it serve
refuses the value in one line naming the flag (or the --config file and key) and the bound,
and `ServiceConfig` refuses such a `body_timeout_s`."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.service import ServiceConfig
from coordinator.service.auth import BodyBudget
from coordinator.service.rounds import MAX_BODY_TIMEOUT_S

from .test_h113_serve_config import (  # noqa: F401 (served: fixture)
    _config,
    _config_refused,
    served,
)
from .test_service_support import serve_cli

FLAGS = ["--head-timeout", "--body-timeout", "--send-timeout"]
WHY = "must be at most 86400 seconds (a day); 0 turns it off"


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("value", ["1e300", "86400.5", "1.7976931348623157e308"])
def test_serve_refuses_a_timeout_above_a_day_in_one_line_naming_the_flag(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    value: str,
) -> None:
    # Prepare: serve replaced by a recorder (before: it was called with the value)
    run, seen = serve_cli(monkeypatch)
    # Execute
    code = run("--db", str(tmp_path / "x.db"), flag, value)
    # Assert: status 2, one line naming the flag, the bound and the value; nothing started
    err = capsys.readouterr().err.strip().splitlines()
    assert (code, seen) == (2, [])
    assert err == [f"plume coordinator serve: error: {flag} {WHY}, got {float(value)}"], err


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("value", ["0", "1", "86400"])
def test_serve_takes_zero_and_one_to_a_day(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    value: str,
) -> None:
    run, seen = serve_cli(monkeypatch)
    assert run("--db", str(tmp_path / "x.db"), flag, value) == 0, capsys.readouterr().err
    assert len(seen) == 1
    if flag == "--body-timeout":
        assert seen[0].body_timeout_s == float(value)


@pytest.mark.parametrize("key", ["head-timeout", "body-timeout", "send-timeout"])
def test_a_timeout_above_a_day_from_the_config_file_names_the_file_and_key(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    key: str,
) -> None:
    conf = _config(tmp_path, f'db = "{tmp_path / "x.db"}"\n{key} = 1e300\n')
    line = _config_refused(capsys, served, conf)
    assert line == f"plume coordinator serve: error: --config {conf}: {key} = 1e+300: {WHY}", line


def test_help_gives_the_range(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = serve_cli(monkeypatch)
    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit):
        run("--help")
    text = " ".join(capsys.readouterr().out.split())
    for flag in FLAGS:
        after = text[text.rindex(flag + " SECONDS") :]
        assert "0 = no limit, else 1 to 86400" in after[:900], (flag, after[:900])


def test_service_config_refuses_a_body_timeout_above_a_day() -> None:
    assert MAX_BODY_TIMEOUT_S == 86_400.0
    with pytest.raises(ValueError, match=r"body_timeout_s must be at most 86400 s \(a day"):
        ServiceConfig(body_timeout_s=1e300)
    ServiceConfig(body_timeout_s=86_400.0)


def test_why_a_huge_body_timeout_misbehaved() -> None:
    # The pace a body keeps its room by is the body timeout: a body of 1.5 MB declared sent one
    # byte and stalled; 10 s later another 1.5 MB body asks for room in a 2 MB buffer. At 1e300
    # the stalled one is not behind its pace (due back after 6.7e293 s): the new one waits. At
    # a day (or 0's default 120 s pace) it is behind (due after 0.06 s) and gives its room back.
    for pace, admitted in ((1e300, None), (MAX_BODY_TIMEOUT_S, True), (120.0, True)):
        now = [0.0]
        budget = BodyBudget(2_000_000, pace_s=pace, clock=lambda now=now: now[0])
        assert budget.arrive(budget.open(1_500_000), 1) is True
        now[0] = 10.0
        assert budget.arrive(budget.open(1_500_000), 1) is admitted, pace
        assert budget.fell_behind == (admitted is True)
