"""`GET /v1/tasks/{id}/model?have=` is bounded like the export's `version` and `base`
(helper-228's F7): `have=2^63` or `10^30` was answered 200 with a snapshot, while `version` and
`base` above 2^63 - 1 (SQLite's largest INTEGER, the largest version a task can hold) are 422
`validation`. Now `have` is refused the same way, in the same words. Through a real server on
loopback, signed by a registered device.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from protocol import auth
from protocol.names import Reason

from .test_service_hardening import _register
from .test_service_support import ADMIN, signed_headers, task_server


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with task_server(tmp_path_factory.mktemp("have")) as client:
        yield client


def _get(http: httpx.Client, key: bytes, query: str) -> httpx.Response:
    path = f"/v1/tasks/1/model?{query}"
    return http.get(path, headers=signed_headers(key, "GET", path, 0))


@pytest.mark.parametrize("have", [2**63, 10**30])
def test_have_above_the_largest_version_is_422_as_version_is(http: httpx.Client, have: int) -> None:
    # Prepare: a registered device; the export's answer to the same number, for its words
    key = auth.generate_private_key()
    assert _register(http, key).status_code == 200
    export = http.get(
        f"/v1/admin/tasks/1/model?version={have}", headers={"authorization": f"Bearer {ADMIN}"}
    )
    # Execute
    r = _get(http, key, f"have={have}")
    # Assert: refused, in the export's words with the parameter's name
    assert export.status_code == 422, export.text
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == Reason.VALIDATION
    assert r.json()["detail"] == export.json()["detail"].replace("query.version", "query.have")


def test_have_at_the_largest_version_is_still_answered(http: httpx.Client) -> None:
    key = auth.generate_private_key()
    assert _register(http, key).status_code == 200
    r = _get(http, key, f"have={2**63 - 1}")
    assert r.status_code != 422, r.text
    assert r.status_code < 500, r.text
