"""Rates the service divides by are bounded, so every wait it answers is a finite number.

Before: `max_checkin_rate` 5e-324 passed "finite > 0", the pacing wait len(pool) / rate was
infinite and every check-in of a waiting device answered 500 (JSON has no infinity); a
`register_rate_per_s` of 5e-324 made the second registration from an address a 500
(math.ceil of an infinite wait), and a `register_burst` past float's range failed create_app
with an OverflowError."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from coordinator.service import ServiceConfig
from coordinator.service.auth import MAX_REGISTER_BURST, MIN_REGISTER_RATE, RateLimiter
from coordinator.service.rounds import MIN_CHECKIN_RATE, Coordinator
from coordinator.service.store import Store
from protocol.messages import MAX_RETRY_AFTER_S

from .test_restart_midround import Clock
from .test_service_support import task_config


@pytest.mark.parametrize("rate", [5e-324, 1e-300, MIN_CHECKIN_RATE / 2])
def test_a_check_in_rate_below_the_minimum_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="max_checkin_rate must be at least"):
        ServiceConfig(max_checkin_rate=rate)


@pytest.mark.parametrize("rate", [5e-324, 1e-300, MIN_REGISTER_RATE / 2])
def test_a_registration_rate_between_zero_and_the_minimum_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="register_rate_per_s"):
        ServiceConfig(register_rate_per_s=rate)
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(rate, 1)


def test_a_burst_past_the_maximum_is_refused() -> None:
    with pytest.raises(ValueError, match="register_burst"):
        ServiceConfig(register_burst=10**400)
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(1.0, MAX_REGISTER_BURST + 1)


def test_the_edges_are_accepted() -> None:
    ServiceConfig(max_checkin_rate=MIN_CHECKIN_RATE, pool_ttl_s=1e300)
    ServiceConfig(register_rate_per_s=0.0)
    ServiceConfig(register_rate_per_s=MIN_REGISTER_RATE, register_burst=MAX_REGISTER_BURST)


def test_the_slowest_limiter_answers_a_finite_retry_after() -> None:
    now = [0.0]
    limiter = RateLimiter(MIN_REGISTER_RATE, 1, clock=lambda: now[0])
    assert limiter.admit("a") == 0
    wait = limiter.admit("a")
    assert 1 <= wait <= math.ceil(1 / MIN_REGISTER_RATE)


def test_a_paced_check_in_at_the_slowest_rate_is_a_finite_bounded_wait(tmp_path: Path) -> None:
    # Prepare: a task waiting for 800 devices; 700 in its pool, paced at the slowest rate
    from compression import encode_snapshot

    from .test_restart_midround import SPEC
    from .test_service_support import initial_params

    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), max_checkin_rate=MIN_CHECKIN_RATE)
    coord = Coordinator(Store(cfg.db_path), cfg, clock=Clock())
    coord.restore()
    task_id = coord.create_task(task_config(clients_per_round=800, min_reports=1))
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    # Execute
    answers = [coord.check_in(f"{i:032x}") for i in range(700)]
    # Assert: the pace is the pool over the rate (40 devices: 40,000 s), but never more than
    # MAX_RETRY_AFTER_S (700 devices would be 700,000 s, past a week)
    assert answers[39].retry_after_s == pytest.approx(40 / MIN_CHECKIN_RATE)
    assert answers[-1].retry_after_s == MAX_RETRY_AFTER_S


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--max-checkin-rate", "5e-324"], "--max-checkin-rate must be at least 0.001"),
        (["--register-rate", "1e-300"], "--register-rate must be 0 (unlimited) or at least"),
        (["--register-burst", "1000001"], "--register-burst at most 1,000,000"),
    ],
)
def test_serve_refuses_the_flags_in_one_line_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], named: str
) -> None:
    from coordinator.cli import main

    code = main(["coordinator", "serve", "--db", str(tmp_path / "x.db"), *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert named in err and "Traceback" not in err
    assert not (tmp_path / "x.db").exists()


def test_the_flag_bounds_are_the_config_bounds() -> None:
    assert (MIN_CHECKIN_RATE, MIN_REGISTER_RATE, MAX_REGISTER_BURST) == (1e-3, 1e-6, 1_000_000)


@pytest.mark.parametrize("tick", [5e-324, 1e-9, 9.9e-4])
def test_a_tick_that_would_spin_the_event_loop_is_refused(tick: float) -> None:
    # Zero was refused (a busy loop); 5e-324 passed "> 0" and spun it just the same
    with pytest.raises(ValueError, match="tick_s must be at least 0.001"):
        ServiceConfig(tick_s=tick)
    ServiceConfig(tick_s=1e-3)
