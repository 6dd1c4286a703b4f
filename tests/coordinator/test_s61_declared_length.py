"""Every route that refuses an oversized body from its declared `Content-Length` reads that
header with `coordinator.service.wire.declared_length`.

Four places compared the header with a cap by `value.isdigit() and int(value) > cap`: the wire
middleware (fixed first by helper s61b), the signed-body reader (`RequestVerifier`), the admin
model upload and the capped-body reader of app.py, and the secure stages' reader. `str.isdigit`
takes digits such as "²" that `int` refuses, and `int` refuses more than 4,300 digits: either
was a 500 `internal_error`, not the 413 (or, for a value that is no length, the streamed cap)
the docs promise. h11, uvicorn's parser, passes neither on; another server, or the app run
through ASGI, may, so these tests go through ASGI."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from compression import encode_snapshot
from coordinator.service import ServiceConfig, Store
from coordinator.service._secagg_routes import secagg_router
from coordinator.service.app import create_app
from coordinator.service.auth import RequestVerifier
from coordinator.service.errors import ApiError
from coordinator.service.wire import declared_length
from protocol.messages import to_json
from protocol.names import Header, Reason
from protocol.secagg import Stage

from .test_s61a_verifier_edges import _binary, _device, _parts, store  # noqa: F401
from .test_s61d_secagg_registry_refusals import RID, _Round, _stage_url
from .test_service_support import ADMIN, SPEC, initial_params, task_config

CAP = 1000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("abc", None),
        ("12a", None),
        ("-5", None),
        ("²", None),  # str.isdigit takes it, int refuses it
        ("١٢", None),  # Arabic-Indic digits: int would take them, HTTP does not
        (b"\xb2", None),
        ("0", 0),
        ("1000", 1000),
        ("1001", 1001),
        (b"999", 999),
        ("0" * 5000 + "7", 7),  # leading zeros: the value counts, not the length
        ("0" * 5000, 0),
        ("9" * 4301, CAP + 1),  # past int's digit limit: above the cap, by its length
        ("1" + "0" * 4, CAP + 1),
    ],
)
def test_declared_length(value: str | bytes | None, expected: int | None) -> None:
    assert declared_length(value, CAP) == expected


def test_a_value_of_the_caps_width_is_compared_by_value() -> None:
    assert declared_length("9999", 9999) == 9999
    assert declared_length("9999", 1000) == 9999  # as many digits as no longer than the cap's
    assert declared_length("10000", 9999) == 10000  # one more digit: cap + 1


def _put_model(tmp_path: Path, declared: str) -> httpx.Response:
    """Create a task through ASGI, then PUT its initial model with `Content-Length: declared`
    whatever the body's size (ASGI passes the header as given)."""
    app = create_app(ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN))
    admin = {"authorization": f"Bearer {ADMIN}"}

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://plume") as client:
            made = await client.post("/v1/admin/tasks", json=to_json(task_config()), headers=admin)
            assert made.status_code == 201, made.text
            task_id = int(made.json()["task_id"])
            snap = encode_snapshot(initial_params(), SPEC, "fp32")
            headers = [
                *admin.items(),
                ("content-type", "application/octet-stream"),
                ("content-length", declared.replace("SIZE", str(len(snap))).encode("latin-1")),
            ]
            return await client.put(
                f"/v1/admin/tasks/{task_id}/model", content=snap, headers=headers
            )

    return asyncio.run(run())


def test_a_model_upload_declaring_past_ints_digit_limit_is_413(tmp_path: Path) -> None:
    got = _put_model(tmp_path, "9" * 4301)  # was 500 internal_error
    assert got.status_code == 413, got.text
    assert got.json()["reason"] == Reason.TOO_LARGE


@pytest.mark.parametrize("declared", ["0" * 5000 + "SIZE", "²"], ids=["zero-padded", "superscript"])
def test_a_model_upload_whose_length_int_refused_is_taken(tmp_path: Path, declared: str) -> None:
    # Zero-padded, the value is the body's true size; "²" is no length, so the body is held to
    # the cap as it streams. Both were 500 internal_error.
    got = _put_model(tmp_path, declared)
    assert got.status_code == 200, got.text


def test_a_signed_upload_declaring_past_ints_digit_limit_is_413(store: Store) -> None:  # noqa: F811
    verifier = RequestVerifier(store, 300.0)
    key = _device(store)
    body = bytes(range(10))
    headers = {**_binary(key, body), Header.CONTENT_LENGTH: "9" * 4301}  # was ValueError: a 500

    async def read() -> object:
        return await verifier.read_signed_body(
            method="POST",
            target="/v1/rounds/3/updates",
            headers=headers,
            chunks=_parts(body),
            cap=10,
            what="update frame",
        )

    with pytest.raises(ApiError) as caught:
        asyncio.run(read())
    assert (caught.value.status, str(caught.value.reason)) == (413, "too_large")


def _post_stage(declared: str, body_of: str) -> tuple[httpx.Response, int]:
    """POST a secure round's key advertisement through ASGI with `Content-Length: declared`:
    a real advertisement (`body_of="real"`) or cap + 1 zero bytes ("over"); the answer and the
    number of advertisements the stage then holds."""
    r = _Round()
    app = FastAPI()
    app.include_router(secagg_router(r.reg, retry_after_s=0.01))
    dev = r.devs[0]
    cap = r.reg.upload_cap(RID, Stage.ADVERTISE_KEYS)
    body = r.sessions[dev].advertise() if body_of == "real" else b"\x00" * (cap + 1)

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://plume") as client:
            headers = [("x-plume-device", dev), ("content-length", declared.encode("latin-1"))]
            return await client.post(
                _stage_url(Stage.ADVERTISE_KEYS), content=body, headers=headers
            )

    got = asyncio.run(run())
    return got, r.reg.stage_counts(RID)[Stage.ADVERTISE_KEYS]


def test_a_secure_upload_declaring_past_ints_digit_limit_is_413_and_not_echoed() -> None:
    got, held = _post_stage("9" * 4301, "over")  # was 500
    assert got.status_code == 413, got.text
    assert got.json()["reason"] == "too_large"
    cap = _Round().reg.upload_cap(RID, Stage.ADVERTISE_KEYS)
    assert got.json()["detail"] == f"upload declares more bytes, the cap is {cap}"
    assert held == 0


def test_a_secure_upload_whose_length_is_no_ascii_number_is_read_by_its_size() -> None:
    got, held = _post_stage("²", "real")  # was 500
    assert got.status_code == 204, got.text
    assert held == 1
    over, held = _post_stage("²", "over")  # held to the cap as it streams
    assert over.status_code == 413 and held == 0
