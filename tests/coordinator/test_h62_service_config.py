"""`ServiceConfig` refuses, naming the field, every number it cannot run with. Before, only
pool_ttl_s, max_checkin_rate and keep_frames_rounds were checked: a NaN poll_s made every
check-in answer a 500 (JSON has no NaN), a negative one an answer the SDK refuses as
`bad_response`, a NaN signature window failed inside create_app with "cannot convert float
NaN to integer", and a zero tick_s spun the event loop."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from coordinator.service import ServiceConfig

from .test_restart_midround import Clock
from .test_service_support import task_config

BAD = [
    ("signature_window_s", math.nan),
    ("signature_window_s", 0.0),
    ("signature_window_s", math.inf),
    ("tick_s", 0.0),
    ("tick_s", -1.0),
    ("poll_s", math.nan),
    ("poll_s", -0.25),
    ("idle_retry_s", math.inf),
    ("idle_retry_s", 0),
    ("register_rate_per_s", -1.0),
    ("register_rate_per_s", math.nan),
    ("body_timeout_s", -1.0),
    ("body_timeout_s", math.nan),
    ("json_body_cap", 0),
    ("json_body_cap", 1.5),
    ("json_body_cap", True),
    ("register_burst", 0),
    ("register_burst", "20"),
    ("poll_s", True),
]


@pytest.mark.parametrize(("field", "value"), BAD)
def test_a_value_the_service_cannot_run_with_is_refused_naming_its_field(
    field: str, value: object
) -> None:
    with pytest.raises(ValueError, match=field):
        ServiceConfig(**{field: value})  # type: ignore[arg-type]


def test_the_defaults_and_the_documented_edges_are_accepted() -> None:
    ServiceConfig()
    ServiceConfig(register_rate_per_s=0.0, body_timeout_s=0.0, json_body_cap=1, tick_s=1e-3)
    ServiceConfig(poll_s=1, idle_retry_s=30, signature_window_s=300)  # ints are numbers


def test_every_check_in_answer_is_json_with_the_configured_numbers(tmp_path: Path) -> None:
    # A check-in's retry_after_s comes from poll_s / idle_retry_s: with what the config
    # accepts, it is always a finite number >= 0 (what the SDK's check_check_in requires).
    from compression import encode_snapshot
    from coordinator.service.rounds import Coordinator
    from coordinator.service.store import Store

    from .test_restart_midround import SPEC
    from .test_service_support import initial_params

    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), poll_s=0.5, idle_retry_s=7)
    coord = Coordinator(Store(cfg.db_path), cfg, clock=Clock())
    coord.restore()
    idle = coord.check_in("a" * 32)
    task_id = coord.create_task(task_config(clients_per_round=3))
    coord.set_initial_model(task_id, encode_snapshot(initial_params(), SPEC, "fp32"))
    waiting = coord.check_in("a" * 32)
    assert idle.retry_after_s == 7 and waiting.retry_after_s == 0.5
    assert all(math.isfinite(a.retry_after_s) for a in (idle, waiting))


SKEWED = ["--signature-window", "1e306"]


def test_a_signature_window_past_a_day_is_refused() -> None:
    # 1e306 s overflowed int(window * 1000) in create_app (OverflowError)
    ServiceConfig(signature_window_s=86_400)
    for value in (86_401.0, 1e306):
        with pytest.raises(ValueError, match="signature_window_s must be at most 86400"):
            ServiceConfig(signature_window_s=value)


def test_serve_refuses_a_signature_window_past_a_day_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: an OverflowError traceback out of `plume coordinator serve`
    from coordinator.cli import main

    expected = "--signature-window must be at most 86400 seconds"
    # Execute
    code = main(["coordinator", "serve", "--db", str(tmp_path / "x.db")] + SKEWED)
    # Assert: exit 2, one line naming it, nothing opened
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "x.db").exists()
