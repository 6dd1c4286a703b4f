"""The `route` label is the template of the route a request's method and path match, also for
requests answered before or outside the app's own routing (s50 ops review, finding 3).

Before, `plume_http_requests_total` and `plume_control_wire_bytes_by_route_total` labelled
`unmatched` the requests that did match a route: FastAPI's own pages (`/openapi.json`, `/docs`,
`/docs/oauth2-redirect`, `/redoc`, for which the router names no route in the scope) and the
wire middleware's refusals from the head alone (400 for both framings, 413 from
`Content-Length`), answered before routing. docs/operations.md says `route` is the route
template, `unmatched` for no route. Now such a request's route is matched as the router
matches it; the label is still a template (a round id in the path is not in it), and a path
no route has is still `unmatched`.

A real coordinator on loopback; raw sockets for the refused heads.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import httpx
import pytest

from .test_service_support import task_server

_REQUESTS = re.compile(r'^plume_http_requests_total\{route="([^"]*)",status="(\d+)"\} (\S+)$', re.M)


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with task_server(tmp_path_factory.mktemp("s50route")) as client:
        yield client


def _requests(http: httpx.Client) -> dict[tuple[str, str], float]:
    text = http.get("/metrics").text
    return {(route, status): float(n) for route, status, n in _REQUESTS.findall(text)}


def _grown(
    http: httpx.Client, before: dict[tuple[str, str], float]
) -> dict[tuple[str, str], float]:
    after = _requests(http)
    grown = {k: v - before.get(k, 0.0) for k, v in after.items() if k[0] != "/metrics"}
    return {k: v for k, v in grown.items() if v}


def _raw(http: httpx.Client, data: bytes) -> bytes:
    host, port = http.base_url.host, int(http.base_url.port or 80)
    got = b""
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(data)
        while chunk := s.recv(65536):
            got += chunk
    return got


@pytest.mark.parametrize("page", ["/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"])
def test_fastapis_own_pages_are_labelled_by_their_path(http: httpx.Client, page: str) -> None:
    before = _requests(http)
    assert http.get(page).status_code == 200
    assert _grown(http, before) == {(page, "200"): 1.0}


RAW = {
    "413 from Content-Length": (
        b"POST /v1/rounds/123456/bandwidth HTTP/1.1\r\nhost: x\r\n"
        b"content-length: 1000000000\r\nconnection: close\r\n\r\n",
        ("/v1/rounds/{round_id}/bandwidth", "413"),  # a GET route: the POST is refused anyway
    ),
    "400 both framings": (
        b"POST /v1/checkin HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n"
        b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n0\r\n\r\n",
        ("/v1/checkin", "400"),
    ),
    "405": (
        b"DELETE /v1/admin/tasks/77 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        ("/v1/admin/tasks/{task_id}", "405"),
    ),
    "404": (
        b"GET /v1/rounds/1/nosuch HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        ("unmatched", "404"),
    ),
    "404, an escaped path": (
        b"GET /%6detrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        ("unmatched", "404"),
    ),
}


@pytest.mark.parametrize("case", list(RAW))
def test_a_request_answered_before_routing_is_labelled_by_the_route_it_matches(
    http: httpx.Client, case: str
) -> None:
    # Prepare
    data, label = RAW[case]
    before = _requests(http)
    # Execute
    got = _raw(http, data)
    # Assert: its status, counted once under the route's template (never the path as sent:
    # no round or task id in the label), `unmatched` only where no route has the path
    assert got.startswith(f"HTTP/1.1 {label[1]} ".encode()), got[:200]
    assert _grown(http, before) == {label: 1.0}
