"""What docs/http-api.md says of requests the routes never see as they were meant:

- a JSON body that is not valid UTF-8, or that holds an integer of more than 4,300 digits
  (Python's limit on int parsing), is 400 `malformed` like one nested too deeply (JSON that is
  merely invalid is 422 `validation`, `test_h62_http_contract`);
- a request uvicorn's HTTP parser (h11) refuses (two Content-Lengths, a bad chunk size, a
  request head still incomplete past h11's 16 KiB, TLS bytes on a plain port) is a plain-text 400 "Invalid HTTP
  request received.", not the JSON error body: the app never runs;
- FastAPI's /docs, /docs/oauth2-redirect, /redoc and /openapi.json are served.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlparse

import httpx
import pytest

from protocol import auth
from protocol.names import Reason

from .test_service_hardening import _refused, _register, _signed
from .test_service_support import ADMIN, task_server

JSON = "application/json"


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with task_server(tmp_path_factory.mktemp("transport")) as client:
        yield client


def _raw(http: httpx.Client, data: bytes) -> bytes:
    """Send `data` on a new connection; everything read until the server closes it."""
    u = urlparse(str(http.base_url))
    got = b""
    with socket.create_connection((u.hostname or "127.0.0.1", u.port or 80), timeout=10) as s:
        s.sendall(data)
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:  # closed with our bytes unread: what came is all
                break
            if not chunk:
                break
            got += chunk
    return got


@pytest.mark.parametrize(
    "body",
    [
        b'{"task_id": "\xff"}',  # not UTF-8
        b'{"task_id": 1' + b"0" * 4300 + b"}",  # 4,301 digits
    ],
    ids=["not-utf8", "int-4301-digits"],
)
def test_a_body_json_cannot_read_as_text_or_numbers_is_400_malformed(
    http: httpx.Client, body: bytes
) -> None:
    # Prepare: a registered device; the admin token
    key = auth.generate_private_key()
    assert _register(http, key).status_code == 200
    signed = {**_signed(key, "POST", "/v1/checkin", 0, body), "content-type": JSON}
    admin = {"authorization": f"Bearer {ADMIN}", "content-type": JSON}
    # Execute
    checkin = http.post("/v1/checkin", content=body, headers=signed)
    create = http.post("/v1/admin/tasks", content=body, headers=admin)
    # Assert
    _refused(checkin, 400, Reason.MALFORMED)
    _refused(create, 400, Reason.MALFORMED)


def test_an_integer_of_4300_digits_parses_and_is_refused_by_the_schema(http: httpx.Client) -> None:
    key = auth.generate_private_key()
    assert _register(http, key).status_code == 200
    body = b'{"task_id": 1' + b"0" * 4299 + b"}"
    signed = {**_signed(key, "POST", "/v1/checkin", 0, body), "content-type": JSON}
    _refused(http.post("/v1/checkin", content=body, headers=signed), 422, Reason.VALIDATION)


HEAD = b"POST /v1/checkin HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
UNPARSED = {
    "two-content-lengths": HEAD + b"Content-Length: 2\r\nContent-Length: 9\r\n\r\n{}",
    "negative-content-length": HEAD + b"Content-Length: -5\r\n\r\n{}",
    "signed-content-length": HEAD + b"Content-Length: +2\r\n\r\n{}",
    "bad-chunk-size": HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    # 32 KiB of one header, never ended: past h11's 16 KiB on an incomplete head (a larger
    # head that arrives whole in one read can pass; this one cannot)
    "32-KiB-unfinished-head": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * (32 << 10),
    "tls-client-hello": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40,
}


@pytest.mark.parametrize("data", list(UNPARSED.values()), ids=list(UNPARSED))
def test_what_the_http_parser_refuses_is_a_plain_text_400(http: httpx.Client, data: bytes) -> None:
    # Execute
    got = _raw(http, data)
    # Assert: uvicorn's own answer, before the app: plain text, no JSON reason
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), got[:200]
    assert b"content-type: text/plain" in head.lower()
    assert b"Invalid HTTP request received." in body
    # and the coordinator still answers
    assert http.get("/healthz").status_code == 200


@pytest.mark.parametrize("path", ["/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"])
def test_fastapi_documentation_routes_are_served(http: httpx.Client, path: str) -> None:
    r = http.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(
        "application/json" if path.endswith(".json") else "text/html"
    )


def test_the_raw_helper_reads_a_normal_answer(http: httpx.Client) -> None:
    # Control for `_raw`: a well-formed request gets the app's JSON
    got = _raw(http, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200 ") and b'"ok":true' in got
