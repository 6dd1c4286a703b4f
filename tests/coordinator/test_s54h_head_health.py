"""HEAD on the health and metrics routes answers as GET does without the body (RFC 9110
section 9.3.2: the same status and headers); load balancers and uptime checkers send it. It was
405 `allow: GET` (FastAPI's routes take only the methods they name). Other GET routes still
answer HEAD with 405 (docs/http-api.md, routes; docs/operations.md, health checks): a model
download's HEAD would have to count a download and spend a snapshot token, or not, and GET's
headers could not be promised then. Raw sockets: no body byte follows a HEAD's head (the next
answer on the connection starts right after it).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("head")
    with ServerThread(ServiceConfig(db_path=str(root / "plume.db"), admin_token="t")) as url:
        yield url


def _heads(url: str, requests: list[str]) -> list[dict[str, str]]:
    """Send `requests` (method and path) on one connection, in one write; each answer's status
    and headers. A HEAD's answer has no body; a GET's is skipped by its Content-Length."""
    host, port = url.removeprefix("http://").split(":")
    raw = "".join(f"{r} HTTP/1.1\r\nHost: x\r\n\r\n" for r in requests).encode()
    out: list[dict[str, str]] = []
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(raw)
        data = b""
        for r in requests:
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, _, data = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            fields = {"status": lines[0].split(" ")[1]}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
            out.append(fields)
            if r.startswith("GET"):
                length = int(fields["content-length"])
                while len(data) < length:
                    data += s.recv(65536)
                data = data[length:]
    return out


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_head_answers_as_get_without_the_body(url: str, path: str) -> None:
    # Execute: HEAD, then GET on the same connection (a body after the HEAD's head would be
    # read as the GET's status line)
    head, get = _heads(url, [f"HEAD {path}", f"GET {path}"])

    # Assert
    assert head["status"] == get["status"] == "200", (head, get)
    assert head["content-type"] == get["content-type"]
    if path != "/metrics":  # the metrics' counters moved between the two
        assert head["content-length"] == get["content-length"]


def test_405_allow_names_head_on_those_routes_only(url: str) -> None:
    # Execute
    health = httpx.post(url + "/healthz")
    model = httpx.head(url + "/v1/tasks/1/model")
    rounds = httpx.head(url + "/v1/admin/tasks")

    # Assert
    assert health.status_code == 405
    assert health.headers.get_list("allow") == ["GET, HEAD"]
    assert model.status_code == 405
    assert model.headers.get_list("allow") == ["GET"]
    assert rounds.status_code == 405
    assert rounds.headers.get_list("allow") == ["GET, POST"]


def test_openapi_lists_get_only(url: str) -> None:
    # Execute
    paths = httpx.get(url + "/openapi.json").json()["paths"]

    # Assert
    for path in ("/healthz", "/readyz", "/metrics"):
        assert set(paths[path]) == {"get"}, paths[path]
