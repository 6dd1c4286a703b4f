"""A refusal names a huge number short, and says what is wrong with it (helper-53c).

A spec number is parsed as a float and a whole one handed on as an int: `geomed:max_iter=1e308`
reached its check as int(1e308), and `POST /v1/admin/tasks` answered 422 with all 309 digits
of it; so did `cclip:iters=1e308`, `dp:...,sample=1e308`, `fedavg:uniform=1e308`, a task's
`codec.block` of 1e308 (compression's message, passed on by the service) and every aggregator
parameter check given a Python int that large. Now such a number is written with 6 significant
digits in exponent form (1e+308). `RobustLearningRate(theta=10**400)` said "must be > 0" of a
positive number (it is refused because a float cannot hold it), and `secure.upload_budget`
of 10**400 "must be an integer" of an integer: both now say what is wrong.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.aggregators import _backdoor, _clip, _dp, _mean, _robust, _server_opt
from coordinator.aggregators._base import short_digits, shown
from coordinator.engine import EngineConfig
from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import to_json

from .test_service_support import ADMIN, task_config

AUTH = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
LONG = re.compile(r"[0-9]{16,}")
B308 = int(1e308)  # what a spec's 1e308 is as a whole number: 309 digits


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    root: Path = tmp_path_factory.mktemp("s53c_huge")
    cfg = ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN)
    with ServerThread(cfg) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def _create(http: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return http.post("/v1/admin/tasks", content=json.dumps(body), headers=AUTH)


@pytest.mark.parametrize(
    ("spec", "detail"),
    [
        (
            "geomed:max_iter=1e308",
            "geomed: geometric median max_iter must be at most 1,000, got 1e+308",
        ),
        (
            "cclip:iters=1e308",
            "cclip: centered clipping iterations must be at most 100, got 1e+308",
        ),
        (
            "dp:clip=1,z=1,population=1000,sample=1e308+fedavg",
            "dp: need 1 <= sample_size <= population, got 1e+308/1000",
        ),
        ("fedavg:uniform=1e308", "fedavg's uniform is 0 or 1, got 1e+308"),
        (
            "trimmed_mean:0.1,support=1e308",
            "trimmed_mean's support is 0 or 1, got 1e+308",
        ),
    ],
)
def test_an_aggregator_spec_number_is_named_short(
    http: httpx.Client, spec: str, detail: str
) -> None:
    # Execute
    r = _create(http, to_json(task_config(clients_per_round=20, aggregator=spec)))
    # Assert
    assert r.status_code == 422, r.text
    assert r.json() == {"reason": "validation", "detail": detail}


@pytest.mark.parametrize(
    ("field", "value", "detail"),
    [
        ("block", B308, "block must be an int in [8, 1048576], got 1e+308"),
        ("zstd_level", -(10**400), "zstd_level must be in [-7, 22], got -1e+400"),
        ("bits", B308, "bits must be one of (1, 2, 4, 8, 16, 32), got 1e+308"),
    ],
)
def test_a_codec_number_is_named_short(
    http: httpx.Client, field: str, value: int, detail: str
) -> None:
    for side in ("codec", "downlink"):
        body = to_json(task_config())
        body[side][field] = value
        r = _create(http, body)
        assert r.status_code == 422, r.text
        assert r.json() == {"reason": "validation", "detail": detail}


def test_a_secure_integer_too_large_is_named_as_such(http: httpx.Client) -> None:
    body = to_json(task_config(clients_per_round=3))
    body["secure"] = {"upload_budget": 10**400}
    r = _create(http, body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == (
        "secure.upload_budget must be an integer in [-2**31, 2**31], got 1e+400"
    )


def test_rlr_theta_past_float_range_says_so() -> None:
    with pytest.raises(ValueError) as err:
        _robust.RobustLearningRate(theta=10**400)
    message = str(err.value)
    assert message.startswith("RLR theta 1e+400 is past a float's range (about 1.8e+308)")
    assert "> 0" not in message
    with pytest.raises(ValueError, match=r"^RLR theta must be > 0, got -1e\+400$"):
        _robust.RobustLearningRate(theta=-(10**400))


def _factories() -> list[tuple[type, str]]:
    """(class, field) of every dataclass of the aggregator modules that can be built with one
    field given (the others have defaults)."""
    out = []
    for module in (_robust, _clip, _dp, _mean, _backdoor, _server_opt):
        for cls in vars(module).values():
            if not (inspect.isclass(cls) and dataclasses.is_dataclass(cls)):
                continue
            if cls.__module__ != module.__name__:
                continue
            fields = dataclasses.fields(cls)
            required = [
                f
                for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            ]
            out += [(cls, f.name) for f in fields if not required or required == [f]]
    return out


FACTORIES = _factories()


@pytest.mark.parametrize(
    "value", [10**400, -(10**400), B308, -B308], ids=["1e400", "-1e400", "1e308", "-1e308"]
)
def test_no_aggregator_parameter_check_prints_a_huge_number_whole(value: int) -> None:
    # Every parameter of every aggregator stage, one at a time
    refused = 0
    for cls, name in FACTORIES:
        try:
            cls(**{name: value})
        except ValueError as exc:
            refused += 1
            assert not LONG.search(str(exc)), f"{cls.__name__}.{name}: {exc}"
    assert refused >= 14  # the checks ran: 14 to 34 of the parameters refuse each value


def test_engine_and_task_checks_name_a_huge_number_short() -> None:
    with pytest.raises(ValueError, match=r"got 1e\+400$"):
        EngineConfig(clients_per_round=1, server_lr=10**400)
    from coordinator.service.rounds import validate_task

    cfg = task_config()
    with pytest.raises(ValueError, match=r"^training.lr must be a finite number, got 1e\+400$"):
        validate_task(
            dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, lr=10**400))
        )
    with pytest.raises(ValueError, match=r"^deadline_s must be in \(0, 604800\]$"):
        validate_task(dataclasses.replace(cfg, deadline_s=10**400))  # was OverflowError


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (10**15 - 1, "999999999999999"),
        (10**15, "1e+15"),
        (123456789012345678, "1.23457e+17"),
        (B308, "1e+308"),
        (-(10**400), "-1e+400"),
        (2.5, "2.5"),
        (1e308, "1e+308"),
        (True, "True"),
    ],
)
def test_shown(value: object, text: str) -> None:
    assert shown(value) == text


def test_shown_past_the_int_to_text_limit() -> None:
    # Python refuses to write an int of more than 4,300 digits (ValueError): shown does not
    assert shown(10**5000) == "1e+5000"


def test_short_digits_leaves_ids_and_fractions() -> None:
    text = f"got {B308}, id a1234567890123456789, 0.12345678901234567890, 1234567890123456"
    assert short_digits(text) == (
        "got 1e+308, id a1234567890123456789, 0.12345678901234567890, 1.23457e+15"
    )


_SERVICE_NUMBERS = [
    f.name
    for f in dataclasses.fields(ServiceConfig)
    if f.name not in ("db_path", "admin_token") and not isinstance(f.default, bool)
]


@pytest.mark.parametrize("value", [10**400, -(10**400), B308], ids=["1e400", "-1e400", "1e308"])
def test_service_config_names_a_huge_number_short(tmp_path: Path, value: int) -> None:
    # Every numeric ServiceConfig field, one at a time: its ValueError (OverflowError before,
    # for a float field) with the number written short
    refused = 0
    for name in _SERVICE_NUMBERS:
        try:
            ServiceConfig(db_path=str(tmp_path / "p.db"), **{name: value})
        except ValueError as exc:
            refused += 1
            assert not LONG.search(str(exc)), f"{name}: {exc}"
            assert "1e+" in str(exc), f"{name}: {exc}"
    assert refused >= 3  # the checks ran


def test_serve_timeouts_name_a_huge_number_short() -> None:
    from coordinator.service.server import _check_head_timeout, _check_shutdown_grace

    with pytest.raises(ValueError, match=r"got 1e\+400$"):
        _check_head_timeout(10**400)  # was OverflowError
    with pytest.raises(ValueError, match=r"got -1e\+400$"):
        _check_shutdown_grace(-(10**400))
