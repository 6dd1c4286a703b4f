"""A round or timestamp header of 2^63 or more is a malformed signature header, 401 `unsigned`
like the others (helper-228's F6): the header's form allowed 19 digits, and a round id above
2^63 - 1 failed later, when the signed message was built, and was answered 401 `bad_signature`
"round id out of range" (a timestamp that large, 401 `stale_timestamp`), while docs/http-api.md
files malformed signature headers under `unsigned`. Through a real server on loopback.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from protocol import auth
from protocol.names import Header, Reason

from .test_service_hardening import _register
from .test_service_support import signed_headers, task_server


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with task_server(tmp_path_factory.mktemp("hdr")) as client:
        yield client


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (Header.ROUND, str(2**63)),
        (Header.ROUND, "9" * 19),
        (Header.TIMESTAMP, str(2**63)),
        (Header.TIMESTAMP, "9" * 19),
    ],
)
def test_a_round_or_timestamp_of_2_63_or_more_is_unsigned(
    http: httpx.Client, header: str, value: str
) -> None:
    # Prepare: a registered device's otherwise well-formed signed request, one header too large
    key = auth.generate_private_key()
    assert _register(http, key).status_code == 200
    headers = {**signed_headers(key, "GET", "/v1/rounds/1", 0), header: value}
    # Execute
    r = http.get("/v1/rounds/1", headers=headers)
    # Assert: refused as a malformed header, naming it and the range
    assert r.status_code == 401, r.text
    assert r.json()["reason"] == Reason.UNSIGNED, r.text
    assert "in [0, 2^63)" in r.json()["detail"], r.text
    assert header.removeprefix("x-plume-") in r.json()["detail"], r.text


def test_the_largest_round_header_still_parses() -> None:
    ts = int(time.time() * 1000)
    headers = {
        str(k): v
        for k, v in auth.sign_request(
            auth.generate_private_key(),
            method="GET",
            target="/",
            round_id=2**63 - 1,
            body=b"",
            timestamp_ms=ts,
        ).items()
    }
    fields = auth.fields_from_headers(headers)
    assert fields.round_id == 2**63 - 1 and fields.timestamp_ms == ts
