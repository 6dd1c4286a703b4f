"""A JSON body that is not valid JSON is 422 `validation` (docs/http-api.md, errors) with a
`detail` saying so and where: "body: not valid JSON: Expecting value at line 1, column 9
(character 8)". It was FastAPI's "body.8: JSON decode error", which named neither the problem
nor the line, and gave the offset as if it were a field of the body.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.service import ServerThread, ServiceConfig

ADMIN = "s54h-json"
HEADERS = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    root = tmp_path_factory.mktemp("jsondecode")
    with (
        ServerThread(ServiceConfig(db_path=str(root / "plume.db"), admin_token=ADMIN)) as url,
        httpx.Client(base_url=url, headers=HEADERS) as client,
    ):
        yield client


def _expected(body: bytes) -> str | None:
    """The detail for `body` as Python's parser reads it (bytes, as Starlette hands them
    over), or None when it is not a plain decode error (valid JSON, or one the parser refuses
    otherwise: the 400 `malformed` for an over-long integer or bad UTF-8)."""
    try:
        json.loads(body)
    except json.JSONDecodeError as e:
        return f"body: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} (character {e.pos})"
    except (ValueError, RecursionError):
        return None
    return None


def test_a_missing_value_is_named_with_its_line_and_column(http: httpx.Client) -> None:
    # Execute
    r = http.post("/v1/admin/tasks", content=b'{\n  "name": ,\n}')

    # Assert
    assert r.status_code == 422
    assert r.json() == {
        "reason": "validation",
        "detail": "body: not valid JSON: Expecting value at line 2, column 11 (character 12)",
    }


def test_an_object_with_a_trailing_comma(http: httpx.Client) -> None:
    # Execute
    r = http.post("/v1/admin/tasks", content=b'{"name": "t",}')

    # Assert
    assert r.status_code == 422
    assert r.json()["detail"] == (
        "body: not valid JSON: Expecting property name enclosed in double quotes at line 1, "
        "column 14 (character 13)"
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=30).filter(lambda t: t.strip() != ""))
def test_any_invalid_json_names_python_parsers_position(http: httpx.Client, text: str) -> None:
    # Prepare
    body = text.encode()
    expected = _expected(body)

    # Execute
    r = http.post("/v1/admin/tasks", content=body)

    # Assert
    if expected is not None:
        assert r.status_code == 422, r.text
        assert r.json() == {"reason": "validation", "detail": expected}
    else:
        assert "JSON decode error" not in r.text
