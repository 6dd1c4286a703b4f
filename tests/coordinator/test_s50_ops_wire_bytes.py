"""Control traffic counts every request body byte the coordinator took off the connection
(s50 ops review, finding 1).

Before, a body the app did not read but the wire middleware took from the server as an answer
started (`client_gone`, which looks for a close) was not counted, though it was gone from the
connection: the whole body had arrived, so the connection was kept for the next request. A
pipelined `POST /nosuch` with a 20,000-byte body and a `GET /healthz` counted 142 bytes up
where the client sent 20,142, and so did a 405 and an unsigned upload's 401. A 413 decided from
`Content-Length` (and a 400 for both framings) counted the head alone, whatever part of the
body the server already held. Now each body byte taken from the server counts, whichever path
took it, as docs/operations.md ("What the ledger counts") and docs/http-api.md say.

A real coordinator on loopback and raw sockets; each request's head and the part of its body
sent with it go in one write of at most 20 KB (one loopback segment: they arrive together, so
what the coordinator holds when it answers is known). Bytes are read from
`plume_control_wire_bytes_by_route_total`, by route, so the /metrics scrapes do not count in.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import httpx
import pytest

from .test_service_support import task_server

BODY = 20_000  # below the JSON cap, one loopback segment with its head
_BY_ROUTE = re.compile(
    r'^plume_control_wire_bytes_by_route_total\{direction="up",route="([^"]*)"\} (\S+)$', re.M
)


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with task_server(tmp_path_factory.mktemp("s50wire")) as client:
        yield client


def _up_by_route(http: httpx.Client) -> dict[str, float]:
    text = http.get("/metrics").text
    return {route: float(value) for route, value in _BY_ROUTE.findall(text)}


def _grown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The routes whose bytes up grew, and by how much (the scrapes' own route left out)."""
    grown = {r: v - before.get(r, 0.0) for r, v in after.items() if r != "/metrics"}
    return {r: v for r, v in grown.items() if v}


def _exchange(http: httpx.Client, data: bytes) -> bytes:
    """`data` sent in one write; everything the coordinator answers until it closes."""
    host, port = http.base_url.host, int(http.base_url.port or 80)
    got = b""
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(data)
        while chunk := s.recv(65536):
            got += chunk
    return got


def _request(method: str, target: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "host: x", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


HEALTHZ = _request("GET", "/healthz", {"connection": "close"})
UPLOAD = "/v1/rounds/{round_id}/updates"
CASES = {
    # (method, target, content type, status, its route's label)
    "404": ("POST", "/nosuch", "application/json", 404, "unmatched"),
    "405": ("POST", "/healthz", "application/json", 405, "/healthz"),
    "401 unsigned upload": (
        "POST",
        "/v1/rounds/1/updates",
        "application/octet-stream",
        401,
        UPLOAD,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_refused_body_read_with_its_request_counts_and_the_next_request_follows(
    http: httpx.Client, case: str
) -> None:
    # Prepare: a request the app answers without reading its body, and a second one behind it
    method, target, content_type, status, route = CASES[case]
    body = b"a" * BODY
    first = _request(
        method, target, {"content-type": content_type, "content-length": str(BODY)}, body
    )
    before = _up_by_route(http)
    # Execute: both in one write (pipelined)
    got = _exchange(http, first + HEALTHZ)
    # Assert: both answered on the one connection: the refused body was read to its end ...
    statuses = [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", got)]
    assert statuses == [status, 200], got[:400]
    # ... and every byte sent is counted: the refused request's head and body under its route
    # (before: its head alone, 20,000 bytes short), the health check's under its own
    grown = _grown(before, _up_by_route(http))
    expected = {route: float(len(first)), "/healthz": float(len(HEALTHZ))}
    if route == "/healthz":
        expected = {route: float(len(first) + len(HEALTHZ))}
    assert grown == expected


PART = b"p" * 1000  # part of a body, sent with its head


@pytest.mark.parametrize(
    ("case", "headers", "part", "counted_body"),
    [
        ("413 from Content-Length", {"content-length": str(10**9)}, PART, len(PART)),
        (
            "400 both framings",
            {"content-length": "5", "transfer-encoding": "chunked"},
            b"3e8\r\n" + PART + b"\r\n",  # a chunk of the 1,000 bytes; the body does not end
            len(PART),  # de-chunked: the chunk's size line is not counted
        ),
    ],
)
def test_a_refusal_before_the_app_counts_the_part_of_the_body_that_arrived_with_it(
    http: httpx.Client, case: str, headers: dict[str, str], part: bytes, counted_body: int
) -> None:
    # Prepare: a head refused as it stands, and the first part of its body in the same write
    head = _request("POST", "/v1/checkin", {"content-type": "application/json", **headers})
    before = _up_by_route(http)
    # Execute
    got = _exchange(http, head + part)
    # Assert: refused, the connection closed after the answer (the rest is not read) ...
    status = int(case.split()[0])
    assert got.startswith(f"HTTP/1.1 {status} ".encode()), got[:300]
    assert b"connection: close" in got.lower()
    # ... and the part of the body the coordinator held when it answered is counted with the
    # head, under the route the path names (before: the head alone, under `unmatched`)
    assert _grown(before, _up_by_route(http)) == {"/v1/checkin": float(len(head) + counted_body)}
