"""Lower bounds of `ServiceConfig`'s durations that a tiny positive value passed: a
`signature_window_s` of 1e-9 answered every signed request 401 stale_timestamp (a request is
checked once its body has arrived), a `pool_ttl_s` of 1e-6 (or one not above `poll_s`) emptied
the selection pool between check-ins so no cohort formed, and a `body_timeout_s` of 1e-6
answered every upload 408; `plume coordinator serve` started regardless. Now `ServiceConfig`
refuses them naming the field, its minimum and why, and serve refuses them in one line naming
the flag (or the --config file and key)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.service import ServiceConfig
from coordinator.service.rounds import MIN_BODY_TIMEOUT_S, MIN_POOL_TTL_S, MIN_SIGNATURE_WINDOW_S

from .test_h113_serve_config import (  # noqa: F401 (served: fixture)
    _config,
    _config_refused,
    served,
)
from .test_service_support import serve_cli

TOO_SMALL = [
    ("signature_window_s", 1e-9, "signature_window_s must be at least 1 s"),
    ("signature_window_s", 0.999, "signature_window_s must be at least 1 s"),
    ("pool_ttl_s", 1e-6, "pool_ttl_s must be at least 1 s"),
    ("pool_ttl_s", 0.999, "pool_ttl_s must be at least 1 s"),
    ("body_timeout_s", 1e-6, r"body_timeout_s must be 0 \(no limit\) or at least 1 s"),
    ("body_timeout_s", 0.999, r"body_timeout_s must be 0 \(no limit\) or at least 1 s"),
]


@pytest.mark.parametrize(("field", "value", "words"), TOO_SMALL)
def test_a_tiny_duration_is_refused_naming_the_field_and_its_minimum(
    field: str, value: float, words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        ServiceConfig(**{field: value})  # type: ignore[arg-type]


def test_the_minimums_themselves_are_accepted() -> None:
    assert MIN_SIGNATURE_WINDOW_S == MIN_POOL_TTL_S == MIN_BODY_TIMEOUT_S == 1.0
    ServiceConfig(signature_window_s=1, pool_ttl_s=1, body_timeout_s=1)
    ServiceConfig(body_timeout_s=0)  # no limit, as before
    ServiceConfig(poll_s=0.02, pool_ttl_s=1)  # the tests' short poll


@pytest.mark.parametrize(("ttl", "poll"), [(5.0, 5.0), (5.0, 30.0), (60.0, 60.0)])
def test_a_pool_ttl_not_above_the_poll_interval_is_refused(ttl: float, poll: float) -> None:
    with pytest.raises(ValueError, match=r"pool_ttl_s \(.*\) must be more than poll_s"):
        ServiceConfig(pool_ttl_s=ttl, poll_s=poll)
    ServiceConfig(pool_ttl_s=poll + 1, poll_s=poll)


FLAGS = [
    (["--signature-window", "1e-9"], "--signature-window must be at least 1 second"),
    (["--pool-ttl", "1e-6"], "--pool-ttl must be at least 1 second"),
    (["--pool-ttl", "0.5"], "--pool-ttl must be at least 1 second"),
    (["--pool-ttl", "2", "--poll", "3"], "--pool-ttl 2 must be more than --poll (3 s)"),
    (["--body-timeout", "1e-6"], "--body-timeout must be 0 (no limit) or at least 1 second"),
]


@pytest.mark.parametrize(("flags", "words"), FLAGS, ids=[" ".join(f) for f, _ in FLAGS])
def test_serve_refuses_a_tiny_duration_in_one_line_naming_the_flag(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    words: str,
) -> None:
    # Prepare: serve replaced by a recorder (before: it was called with the tiny value)
    run, seen = serve_cli(monkeypatch)
    # Execute
    code = run("--db", str(tmp_path / "x.db"), *flags)
    # Assert: status 2, one line, the service never started
    err = capsys.readouterr().err.strip().splitlines()
    assert (code, seen) == (2, [])
    assert len(err) == 1, err
    assert err[0].startswith(f"plume coordinator serve: error: {words}"), err[0]


def test_serve_accepts_the_minimums(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run, seen = serve_cli(monkeypatch)
    flags = ["--signature-window", "1", "--pool-ttl", "1", "--body-timeout", "1"]
    assert run("--db", str(tmp_path / "x.db"), *flags) == 0, capsys.readouterr().err
    config = seen[-1]
    assert (config.signature_window_s, config.pool_ttl_s, config.body_timeout_s) == (1, 1, 1)


FILE_CASES = [
    ("signature-window = 0.5", "signature-window = 0.5: must be at least 1 second"),
    ("pool-ttl = 0.5", "pool-ttl = 0.5: must be at least 1 second"),
    ("pool-ttl = 2\npoll = 3", "pool-ttl = 2: must be more than the poll interval (3 s)"),
    ("body-timeout = 0.5", "body-timeout = 0.5: must be 0 (no limit) or at least 1 second"),
]


@pytest.mark.parametrize(("text", "words"), FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_a_tiny_duration_from_the_config_file_names_the_file_and_key(
    tmp_path: Path,
    served: list[tuple[ServiceConfig, str, int, dict]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    text: str,
    words: str,
) -> None:
    conf = _config(tmp_path, f'db = "{tmp_path / "x.db"}"\n{text}\n')
    line = _config_refused(capsys, served, conf)
    assert line.startswith(f"plume coordinator serve: error: --config {conf}: {words}"), line
