"""A 405's `Allow` header lists every method the path takes (docs/http-api.md, errors: "a
known path with another method (the `Allow` header lists the right ones)"; RFC 9110 section
15.5.6). Starlette's router listed the methods of the first route with the path only, so
`DELETE /v1/admin/tasks` was told `allow: POST` though the path also takes GET (helper-54f's
audit). The three paths with two routes each are checked, and single-route paths stay as they
were.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("allow")
    with ServerThread(ServiceConfig(db_path=str(root / "plume.db"), admin_token="t")) as url:
        yield url


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/admin/tasks", "GET, POST"),
        ("PATCH", "/v1/admin/tasks/1/model", "GET, PUT"),
        ("DELETE", "/v1/secure/rounds/1/stages/share-keys", "GET, POST"),
        ("PUT", "/v1/rounds/1/updates", "POST"),
        ("POST", "/metrics", "GET, HEAD"),  # HEAD on the health routes: test_s54h_head_health
        ("POST", "/v1/tasks/1/model", "GET"),
    ],
)
def test_405_allow_lists_every_method_of_the_path(
    url: str, method: str, path: str, allow: str
) -> None:
    # Execute
    r = httpx.request(method, url + path)

    # Assert
    assert r.status_code == 405, r.text
    assert r.json()["reason"] == "method_not_allowed"
    assert r.headers.get_list("allow") == [allow]
