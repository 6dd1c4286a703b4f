"""Route checks the s25/http review found loose, on a loopback coordinator:

- finding 4: an upload without a valid `Idempotency-Key` was refused (400) after its signature
  was verified and its nonce spent, so the same signed request could not be sent again with the
  header added (401 replayed_nonce). The key is now checked before the body is read.
- finding 7: the 422 for a secure stage name that is not one listed `done` and `aborted` among
  the allowed values, which the route then refused; it lists the four upload stages only.
- finding 9: the model download, the bandwidth report and the model export ignored unknown
  query keys (`?hav=3` answered a full snapshot) and took the last of a repeated one; they
  refuse both with 422 `validation` naming the key, as `GET /v1/admin/tasks/{id}/rounds` does
  (after authentication, as FastAPI's own check of a query value), before any model is sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from protocol import auth
from protocol.names import Reason

from .test_service_hardening import _assigned, _refused, _register, _signed
from .test_service_support import ADMIN, task_server

OCTET = "application/octet-stream"
ADMIN_AUTH = {"authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with task_server(tmp_path_factory.mktemp("routes")) as client:
        yield client


# -- finding 4 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "", "k" * 129, "no spaces"])
def test_an_upload_without_a_valid_idempotency_key_spends_no_nonce(
    http: httpx.Client, tmp_path: Path, key: str | None
) -> None:
    # Prepare: a device assigned to a round, its frame, one signed upload request
    _, a, assignment, frame = _assigned(http, tmp_path)
    rid = assignment.round_id
    target = f"/v1/rounds/{rid}/updates"
    signed = {**_signed(a._core.key, "POST", target, rid, frame), "content-type": OCTET}
    bad = signed if key is None else {**signed, "idempotency-key": key}
    # Execute: the request without a valid key, then the same signed request with one
    refused = http.post(target, content=frame, headers=bad)
    fixed = http.post(target, content=frame, headers={**signed, "idempotency-key": "k-1"})
    # Assert: 400 naming the header, then accepted (not 401 replayed_nonce)
    assert "Idempotency-Key" in _refused(refused, 400, Reason.MALFORMED)["detail"]
    assert fixed.status_code == 200, fixed.text
    assert fixed.json()["accepted"] is True


# -- finding 7 ---------------------------------------------------------------------------------

STAGES = ("advertise-keys", "share-keys", "masked-input", "unmask")


@pytest.mark.parametrize("stage", ["bogus", "done", "aborted"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_stage_that_is_not_an_upload_stage_is_422_listing_the_four(
    http: httpx.Client, stage: str, method: str
) -> None:
    key = auth.generate_private_key()
    assert _register(http, key).status_code == 200
    target = f"/v1/secure/rounds/1/stages/{stage}"
    headers = {**_signed(key, method, target, 1, b""), "content-type": OCTET}
    r = http.request(method, target, headers=headers)
    detail = _refused(r, 422, Reason.VALIDATION)["detail"]
    assert all(f"'{s}'" in detail for s in STAGES), detail
    assert "done" not in detail and "aborted" not in detail, detail


def test_the_openapi_spec_lists_the_four_upload_stages(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    for method in ("get", "post"):
        params = spec["paths"]["/v1/secure/rounds/{round_id}/stages/{stage}"][method]["parameters"]
        (stage,) = [p for p in params if p["name"] == "stage"]
        schema = stage["schema"]
        enum = schema.get("enum") or spec["components"]["schemas"][
            schema["$ref"].rsplit("/", 1)[1]
        ].get("enum")
        assert sorted(enum) == sorted(STAGES), schema


# -- finding 9 ---------------------------------------------------------------------------------


def _device_get(http: httpx.Client, key: bytes, target: str) -> httpx.Response:
    return http.get(target, headers=_signed(key, "GET", target, 0, b""))


@pytest.mark.parametrize(
    ("query", "named", "why"),
    [
        ("hav=3", "hav", "unknown parameter"),
        ("have=0&have=1", "have", "given 2 times"),
        ("format=auto&format=delta", "format", "given 2 times"),
        ("dtype=fp32&dtype=fp16", "dtype", "given 2 times"),
    ],
)
def test_the_model_download_refuses_unknown_and_repeated_keys(
    http: httpx.Client, query: str, named: str, why: str
) -> None:
    key = auth.generate_private_key()
    assert _register(http, key).status_code == 200
    r = _device_get(http, key, f"/v1/tasks/1/model?{query}")
    detail = _refused(r, 422, Reason.VALIDATION)["detail"]
    assert detail.startswith(f"query.{named}: ") and why in detail, detail
    unknown = _device_get(http, key, "/v1/tasks/1/model?x=1")
    assert "this route takes have, format and dtype" in unknown.json()["detail"], unknown.text


def test_the_model_download_still_takes_its_own_keys(http: httpx.Client) -> None:
    key = auth.generate_private_key()
    assert _register(http, key).status_code == 200
    r = _device_get(http, key, "/v1/tasks/1/model?have=0&format=snapshot&dtype=fp32")
    assert r.status_code == 200, r.text


def test_the_query_is_checked_after_authentication(http: httpx.Client) -> None:
    # As FastAPI's check of a query value: an unsigned request is 401 whatever its query
    unsigned = http.get("/v1/tasks/1/model?hav=3")
    assert unsigned.status_code == 401, unsigned.text
    no_token = http.get("/v1/admin/tasks/1/model?verison=1")
    assert no_token.status_code == 401, no_token.text


@pytest.mark.parametrize(
    ("query", "named", "why"),
    [
        ("fromat=csv", "fromat", "unknown parameter; this route takes format"),
        ("format=csv&format=json", "format", "given 2 times"),
    ],
)
def test_the_bandwidth_report_refuses_unknown_and_repeated_keys(
    http: httpx.Client, query: str, named: str, why: str
) -> None:
    key = auth.generate_private_key()
    assert _register(http, key).status_code == 200
    target = f"/v1/rounds/1/bandwidth?{query}"
    for r in (
        _device_get(http, key, target),
        http.get(target, headers=ADMIN_AUTH),
    ):
        detail = _refused(r, 422, Reason.VALIDATION)["detail"]
        assert detail.startswith(f"query.{named}: ") and why in detail, detail
    assert http.get("/v1/rounds/1/bandwidth?format=csv", headers=ADMIN_AUTH).status_code == 200


@pytest.mark.parametrize(
    ("query", "named", "why"),
    [
        ("verison=0", "verison", "unknown parameter; this route takes version and base"),
        ("version=0&version=1", "version", "given 2 times"),
        ("version=1&base=0&base=0", "base", "given 2 times"),
    ],
)
def test_the_model_export_refuses_unknown_and_repeated_keys(
    http: httpx.Client, query: str, named: str, why: str
) -> None:
    r = http.get(f"/v1/admin/tasks/1/model?{query}", headers=ADMIN_AUTH)
    detail = _refused(r, 422, Reason.VALIDATION)["detail"]
    assert detail.startswith(f"query.{named}: ") and why in detail, detail
    assert http.get("/v1/admin/tasks/1/model?version=0", headers=ADMIN_AUTH).status_code == 200


def test_a_long_unknown_key_is_cut_in_the_detail(http: httpx.Client) -> None:
    r = http.get("/v1/admin/tasks/1/model?" + "k" * 500 + "=1", headers=ADMIN_AUTH)
    detail = _refused(r, 422, Reason.VALIDATION)["detail"]
    assert detail.startswith("query." + "k" * 64 + "...: unknown parameter"), detail
