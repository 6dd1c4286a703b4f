"""A request carrying a header that holds one value (Content-Type, Content-Length,
Authorization, Date, the signature headers, Idempotency-Key) more than once is refused 400
`malformed`, naming the header, before the app runs: nothing is read, checked or stored, so no
nonce is spent (auditor's finding, s54j). Before, the JSON routes read the first Content-Type
and the signature check the last value of each signature header, so a request could be checked
by one value and acted on by another.

Through a real server on loopback, with raw bytes, since HTTP clients merge or refuse repeated
headers. h11 (the coordinator's HTTP parser) itself takes a Content-Length repeated with the
same value as one (RFC 9110 section 8.6), and refuses one repeated with another value with its
plain-text 400: such a request never reaches the app. Through ASGI, where it does reach it,
a repeated Content-Length is refused like the others."""

from __future__ import annotations

import asyncio
import json
import socket
import string
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.service import ServiceConfig
from coordinator.service.app import create_app
from protocol import auth
from protocol.names import Header, Reason

from .test_service_hardening import _register
from .test_service_support import ADMIN, signed_headers, task_server

BODY = b"{}"
# The headers a request carries once (docs/http-api.md, the 400 `malformed` row).
SINGLETON_HEADERS = [
    Header.CONTENT_TYPE,
    Header.CONTENT_LENGTH,
    Header.AUTHORIZATION,
    "date",
    Header.DEVICE,
    Header.TIMESTAMP,
    Header.NONCE,
    Header.ROUND,
    Header.SIGNATURE,
    Header.IDEMPOTENCY_KEY,
]


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with task_server(tmp_path_factory.mktemp("twice")) as client:
        yield client


@pytest.fixture(scope="module")
def key(http: httpx.Client) -> bytes:
    private = auth.generate_private_key()
    assert _register(http, private).status_code == 200
    return private


def _exchange(http: httpx.Client, headers: list[tuple[str, str]], body: bytes) -> tuple[int, bytes]:
    """POST /v1/checkin with exactly `headers` (and Host, Connection: close) and `body`, on a
    new connection: the answer's status and body."""
    u = urlparse(str(http.base_url))
    head = "POST /v1/checkin HTTP/1.1\r\nhost: plume\r\nconnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    got = b""
    with socket.create_connection((u.hostname or "127.0.0.1", u.port or 80), timeout=30) as s:
        s.sendall(head.encode("latin-1") + body)
        while chunk := s.recv(65536):
            got += chunk
    status_line, rest = got.split(b"\r\n", 1)
    return int(status_line.split()[1]), rest.split(b"\r\n\r\n", 1)[1]


def _check_in(key: bytes) -> list[tuple[str, str]]:
    """A valid signed check-in's headers, as sent (a new nonce each call)."""
    signed = signed_headers(key, "POST", "/v1/checkin", 0, BODY)
    return [
        (Header.CONTENT_TYPE, "application/json"),
        (Header.CONTENT_LENGTH, str(len(BODY))),
        *signed.items(),
    ]


# Values to repeat a header with: any visible ASCII (HTTP strips the spaces around a value).
_VALUE = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation, min_size=1)
# Content-Length is repeated through ASGI below: h11 merges or refuses it before the app.
_OVER_THE_WIRE = [h for h in SINGLETON_HEADERS if h != Header.CONTENT_LENGTH]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(_OVER_THE_WIRE),
    same=st.booleans(),
    other=_VALUE,
    first=st.booleans(),
    upper=st.booleans(),
)
def test_a_signed_request_with_a_header_repeated_is_malformed_and_changes_nothing(
    http: httpx.Client, key: bytes, name: str, same: bool, other: str, first: bool, upper: bool
) -> None:
    # Prepare: a valid signed check-in, one header given twice (the same value or another;
    # a header the request lacks, such as Date or Authorization, given twice)
    valid = _check_in(key)
    given_value = dict(valid).get(name, other)
    extra = given_value if same else other
    sent = valid if name in dict(valid) else [*valid, (name, given_value)]
    spelled = name.upper() if upper else name
    repeated = [(spelled, extra), *sent] if first else [*sent, (spelled, extra)]
    # Execute
    status, body = _exchange(http, repeated, BODY)
    # Assert: refused, naming the header and the count
    assert status == 400, body
    answer = json.loads(body)
    assert answer["reason"] == Reason.MALFORMED
    assert answer["detail"] == f"the {name} header is given 2 times; a request carries it once"
    # ... and nothing changed: the same signed request, each header once, is accepted (its
    # nonce was not spent; a spent one is 401 `replayed`)
    status, body = _exchange(http, valid, BODY)
    assert status == 200, body


def test_a_header_given_three_times_is_counted(http: httpx.Client, key: bytes) -> None:
    valid = _check_in(key)
    status, body = _exchange(http, [*valid, ("date", "x"), ("Date", "y"), ("DATE", "z")], BODY)
    assert status == 400 and json.loads(body)["detail"] == (
        "the date header is given 3 times; a request carries it once"
    )


def test_headers_given_once_and_others_repeated_still_pass(http: httpx.Client, key: bytes) -> None:
    # A Date and an Authorization given once, and a header that may repeat (Accept) twice
    valid = [*_check_in(key), ("date", "Sun, 06 Dec 2026 04:00:00 GMT"), ("authorization", "x")]
    status, body = _exchange(http, [*valid, ("accept", "*/*"), ("accept", "text/plain")], BODY)
    assert status == 200, body


def test_h11_merges_a_content_length_repeated_with_its_value(
    http: httpx.Client, key: bytes
) -> None:
    valid = _check_in(key)
    status, body = _exchange(http, [*valid, (Header.CONTENT_LENGTH, str(len(BODY)))], BODY)
    assert status == 200, body  # one value, taken once by h11 (RFC 9110 section 8.6)


def test_h11_refuses_a_content_length_repeated_with_another_value(
    http: httpx.Client, key: bytes
) -> None:
    status, body = _exchange(http, [*_check_in(key), (Header.CONTENT_LENGTH, "3")], BODY)
    assert status == 400 and not body.startswith(b"{")  # uvicorn's plain text, not the app's


@pytest.mark.parametrize("value", ["2", "3"])
def test_a_repeated_content_length_reaching_the_app_is_malformed(
    tmp_path: Path, value: str
) -> None:
    # Prepare: the app behind ASGI, where repeated headers arrive as sent
    app = create_app(ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN))
    headers = [
        (Header.CONTENT_TYPE, "application/json"),
        (Header.CONTENT_LENGTH, "2"),
        (Header.CONTENT_LENGTH, value),
    ]

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://plume") as client:
            return await client.post("/v1/devices", content=BODY, headers=headers)

    # Execute
    r = asyncio.run(post())
    # Assert
    assert r.status_code == 400 and r.json() == {
        "reason": "malformed",
        "detail": "the content-length header is given 2 times; a request carries it once",
    }
