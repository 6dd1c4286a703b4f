"""Refusals of out-of-range values echo them cut at 80 characters, and a JSON integer past
Python's 4,300-digit parsing limit is a 400 `malformed` body (docs/http-api.md, error table).

The gap (helper-215's review): `protocol.messages._in_range`, behind the check-in's `task_id`,
`awaiting_round` and `max_model_bytes` (and every integer of an assignment the SDK checks),
wrote the value out whole, so a 4,300-digit id came back as a 4,300-character 422 `detail`,
while the project's convention (coordinator/service/rounds.py `_shown`, check-in `features`)
cuts an echoed value at 80 characters. A codec field of an assignment (a string as long as the
coordinator's answer) was echoed whole too. The bodies here are built by hand: to the checks
directly, and to a real loopback coordinator.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import (
    SHOWN_CHARS,
    Assignment,
    CheckInResponse,
    CodecParams,
    MessageError,
    TensorShape,
    TrainingParams,
    check_assignment,
    check_awaiting_round,
    check_check_in,
    check_max_model_bytes,
    check_task_id,
)
from sdk.client import Client
from tests.coordinator.test_service_support import ADMIN, signed_headers

CHECKS: dict[str, Callable[[Any], int]] = {
    "task_id": check_task_id,
    "awaiting_round": check_awaiting_round,
    "max_model_bytes": check_max_model_bytes,
}
# Longest a refusal of one of them may be: its field's name, the cut value, the range.
MAX_DETAIL = 160


def _digits(sign: str, n: int) -> str:
    """A JSON integer of `n` digits: 1 then zeros, or -9s."""
    return "-" + "9" * n if sign == "-" else "1" + "0" * (n - 1)


def _refusal(check: Callable[[Any], int], text: str) -> str:
    with pytest.raises(MessageError) as info:
        check(json.loads(text))
    return str(info.value)


@pytest.mark.parametrize("field", list(CHECKS))
@pytest.mark.parametrize("sign", ["+", "-"])
@pytest.mark.parametrize("n", [400, 4300])
def test_a_long_integer_out_of_range_is_echoed_cut_at_80_characters(
    field: str, sign: str, n: int
) -> None:
    # Prepare: a JSON integer of n digits, as the coordinator's parser reads it
    text = _digits(sign, n)
    # Execute
    message = _refusal(CHECKS[field], text)
    # Assert: its first 80 characters then "...", the field and the range still named
    assert f"$.{field} = {text[:SHOWN_CHARS]}... is outside [" in message
    assert text[: SHOWN_CHARS + 1] not in message
    assert len(message) <= MAX_DETAIL


@pytest.mark.parametrize("field", list(CHECKS))
def test_an_integer_out_of_range_of_80_characters_is_echoed_whole(field: str) -> None:
    text = "1" + "0" * (SHOWN_CHARS - 1)
    message = _refusal(CHECKS[field], text)
    assert f"$.{field} = {text} is outside [" in message
    assert "..." not in message


def test_the_short_refusals_are_as_before() -> None:
    assert _refusal(check_task_id, "0") == "$.task_id = 0 is outside [1, 9223372036854775808)"
    assert _refusal(check_max_model_bytes, "3") == (
        "$.max_model_bytes = 3 is outside [4, 9223372036854775808)"
    )


def test_an_int_too_long_to_write_out_is_named_by_its_size() -> None:
    # Prepare: more than 4,300 digits, which only a caller's own int can have (str() refuses
    # it: writing it out would take quadratic time)
    value = 10**5000
    # Execute
    with pytest.raises(MessageError) as info:
        check_task_id(value)
    message = str(info.value)
    # Assert
    assert message == (
        f"$.task_id = an integer of {value.bit_length()} bits is outside [1, 9223372036854775808)"
    )


def _assignment(**over: Any) -> Assignment:
    fields: dict[str, Any] = {
        "task_id": 1, "round_id": 2, "base_version": 0, "model_name": "m",
        "spec": [TensorShape("w", [3])], "codec": CodecParams(),
        "training": TrainingParams(local_epochs=1, batch_size=8, lr=0.1),
        "deadline_unix": 1.0e9, "model_path": "/m", "upload_path": "/u",
        "max_upload_bytes": 1000, "seed": 7,
    }  # fmt: skip
    return Assignment(**{**fields, **over})


@pytest.mark.parametrize(
    "name", ["task_id", "round_id", "base_version", "seed", "max_upload_bytes"]
)
def test_an_assignments_long_integer_is_echoed_cut(name: str) -> None:
    # Prepare: a coordinator's answer with a 4,300-digit integer (what JSON parses)
    value = json.loads(_digits("+", 4300))
    answer = CheckInResponse("train", 0.0, _assignment(**{name: value}))
    # Execute
    with pytest.raises(MessageError) as info:
        check_check_in(answer)
    # Assert
    message = str(info.value)
    assert message.startswith(f"$.assignment.{name} = {'1' + '0' * (SHOWN_CHARS - 1)}... ")
    assert len(message) <= MAX_DETAIL


@pytest.mark.parametrize("name", ["local_epochs", "batch_size"])
def test_an_assignments_long_training_integer_is_echoed_cut(name: str) -> None:
    training = dataclasses.replace(
        TrainingParams(local_epochs=1, batch_size=8, lr=0.1), **{name: -(10**4299)}
    )
    with pytest.raises(MessageError) as info:
        check_assignment(_assignment(training=training))
    message = str(info.value)
    assert message.startswith(f"$.assignment.training.{name} = -1{'0' * (SHOWN_CHARS - 2)}... ")
    assert len(message) <= MAX_DETAIL


@pytest.mark.parametrize(
    ("field", "value", "prefix"),
    [
        ("index", "x" * 60_000, "index must be one of "),
        ("scope", "y" * 60_000, "scope must be one of "),
        ("topk_mode", "z" * 60_000, "topk_mode must be one of "),
        # compression writes a huge int short itself (s54b): nothing left to cut
        ("bits", 10**4000, "bits must be one of "),
        ("zstd_level", 10**4000, "zstd_level must be in [-7, 22], got "),
    ],
)
def test_an_assignments_long_codec_value_is_echoed_cut(field: str, value: Any, prefix: str) -> None:
    # Prepare: a codec field as long as a coordinator's answer may make it
    codec = dataclasses.replace(CodecParams(), **{field: value})
    # Execute
    with pytest.raises(MessageError) as info:
        check_assignment(_assignment(codec=codec))
    # Assert: compression's reason whole, the value's repr cut at 80 characters (an int:
    # written short by compression, 1e+4000)
    message = str(info.value)
    assert message.startswith(f"$.assignment.codec: {prefix}")
    shown = message.partition(", got ")[2]
    if isinstance(value, int):
        assert shown == "1e+4000"
    else:
        assert shown == repr(value)[:SHOWN_CHARS] + "..."


def test_a_short_codec_refusal_is_as_before() -> None:
    codec = dataclasses.replace(CodecParams(), bits=3)
    with pytest.raises(
        MessageError, match=r"^\$\.assignment\.codec: bits must be one of .*, got 3$"
    ):
        check_assignment(_assignment(codec=codec))


def test_a_non_finite_float_is_echoed_as_before() -> None:
    with pytest.raises(MessageError, match=r"^\$\.retry_after_s = -inf is not a non-negative"):
        check_check_in(CheckInResponse("wait", float("-inf")))
    with pytest.raises(MessageError, match=r"deadline_unix = nan is not a finite time$"):
        check_assignment(_assignment(deadline_unix=float("nan")))


# ---------------------------------------------------------------------------------------------
# A real loopback coordinator


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[tuple[httpx.Client, Client]]:
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        device = Client(url, str(tmp_path / "device"))
        device.register()
        try:
            yield http, device
        finally:
            device.close()


def _check_in(http: httpx.Client, device: Client, body: bytes) -> httpx.Response:
    headers = signed_headers(device._core.key, "POST", "/v1/checkin", 0, body)
    headers["content-type"] = "application/json"
    return http.post("/v1/checkin", content=body, headers=headers)


def test_the_coordinator_cuts_the_echo_and_refuses_an_integer_past_4300_digits(
    coordinator: tuple[httpx.Client, Client],
) -> None:
    http, device = coordinator
    for field in CHECKS:
        # Execute: 4,300 digits (parsed), and 4,301 (not parsed), each sign
        for sign in "+-":
            parsed = _digits(sign, 4300)
            r = _check_in(http, device, f'{{"{field}": {parsed}}}'.encode())
            # Assert: 422 naming the field, the value cut at 80 characters
            assert r.status_code == 422, r.text
            assert r.json()["reason"] == "validation"
            detail = r.json()["detail"]
            assert detail.startswith(f"$.{field} = {parsed[:SHOWN_CHARS]}... is outside ["), detail
            assert len(detail) <= MAX_DETAIL
            r = _check_in(http, device, f'{{"{field}": {_digits(sign, 4301)}}}'.encode())
            assert r.status_code == 400, r.text[:200]
            assert r.json() == {
                "reason": "malformed",
                "detail": "There was an error parsing the body",
            }
        # A float of as many digits parses (infinite) and is refused as not an integer
        r = _check_in(http, device, f'{{"{field}": 1{"0" * 5000}.0}}'.encode())
        assert r.status_code == 422, r.text[:200]
        assert r.json()["reason"] == "validation"
        assert len(r.text) < 400
