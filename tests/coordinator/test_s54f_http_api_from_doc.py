"""docs/http-api.md read as a device-client author in another language would read it
(helper-54f's audit): every endpoint the doc lists, driven with raw httpx requests built from
the doc alone (paths, methods, headers, the signing format, body encodings, content types,
query keys), against a real coordinator on loopback. Success paths check the documented
status and answer fields (exact values where the doc gives them); errors check status,
`reason` and the `detail` text the doc quotes.

The request signing here is written from the doc's "Signing" section, not imported from
`protocol.auth`, so a drift between the two is caught. Update frames and snapshots are the
`compression` module's, as the doc says they are (it does not spell their bytes).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from compression import CodecConfig, ModelSpec, UpdateCodec, encode_snapshot
from coordinator.service import ServerThread, ServiceConfig
from protocol.messages import apply_delta
from protocol.secagg import SecAggClient, SecurePlan
from protocol.secagg import model_digest as secagg_model_digest

ADMIN = "s54f-admin-token"
SPEC = [{"name": "w", "shape": [10, 16]}, {"name": "b", "shape": [10]}]
D = 170
MODEL_SPEC = ModelSpec.from_shapes([("w", (10, 16)), ("b", (10,))])
SNAPSHOTS_PER_VERSION = 3
# The doc's error-body shape: exactly these two keys (a 425 adds retry_after_s).
ERROR_KEYS = ["reason", "detail"]
IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{4} \d\d:\d\d:\d\d GMT"
)


# -- a device, from the doc's "Signing" section ----------------------------------------------


class Device:
    """An Ed25519 key and the five signature headers, built from the doc's table."""

    def __init__(self, seed: int) -> None:
        self.key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"s54f%d" % seed).digest())
        self.public = self.key.public_key().public_bytes_raw()
        # "the first 16 bytes of SHA-256(public key), 32 lower-case hex digits"
        self.device_id = hashlib.sha256(self.public).digest()[:16].hex()
        # "the key's 32 bytes in base64url without padding, exactly 43 characters"
        self.public_b64 = base64.urlsafe_b64encode(self.public).rstrip(b"=").decode()

    def headers(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        round_id: int | None = 0,
        *,
        timestamp_ms: int | None = None,
        nonce: str | None = None,
    ) -> dict[str, str]:
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        nonce = secrets.token_hex(16) if nonce is None else nonce
        signed_round = 0 if round_id is None else round_id
        message = "\n".join(
            [
                "PLUME-SIG-V1",
                method,
                target,
                self.device_id,
                str(signed_round),
                hashlib.sha256(body).hexdigest(),
                str(ts),
                nonce,
            ]
        ).encode("ascii")
        sig = base64.urlsafe_b64encode(self.key.sign(message)).rstrip(b"=").decode()
        out = {
            "x-plume-device": self.device_id,
            "x-plume-timestamp": str(ts),
            "x-plume-nonce": nonce,
            "x-plume-signature": sig,
        }
        if round_id is not None:  # "the one header that may be left out, which signs as 0"
            out["x-plume-round"] = str(round_id)
        return out


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode()


def register(http: httpx.Client, dev: Device) -> httpx.Response:
    body = _json({"public_key": dev.public_b64})
    headers = dev.headers("POST", "/v1/devices", body)
    return http.post(
        "/v1/devices", content=body, headers={**headers, "content-type": "application/json"}
    )


def check_in(http: httpx.Client, dev: Device, payload: object) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else _json(payload)
    headers = dev.headers("POST", "/v1/checkin", body)
    return http.post(
        "/v1/checkin", content=body, headers={**headers, "content-type": "application/json"}
    )


def signed_get(
    http: httpx.Client, dev: Device, target: str, round_id: int | None = 0
) -> httpx.Response:
    return http.get(target, headers=dev.headers("GET", target, b"", round_id))


def upload(
    http: httpx.Client,
    dev: Device,
    round_id: int,
    frame: bytes,
    key: str | None,
    *,
    query: str = "",
    signed_round: int | None = None,
    nonce: str | None = None,
    content_type: str | None = "application/octet-stream",
) -> httpx.Response:
    target = f"/v1/rounds/{round_id}/updates" + query
    headers = dev.headers(
        "POST", target, frame, round_id if signed_round is None else signed_round, nonce=nonce
    )
    if content_type is not None:
        headers["content-type"] = content_type
    if key is not None:
        headers["idempotency-key"] = key
    return http.post(target, content=frame, headers=headers)


def refused(r: httpx.Response, status: int, reason: str, detail: str | None = None) -> str:
    """Assert the doc's error body: `{"reason": ..., "detail": ...}`; returns the detail."""
    assert r.status_code == status, (r.status_code, r.text)
    # "its HTTP `Date` header in IMF-fixdate form ..., which the coordinator sends on every
    # answer"
    assert IMF_FIXDATE.fullmatch(r.headers["date"]), r.headers.get("date")
    body = r.json()
    assert list(body) == ERROR_KEYS, body
    assert body["reason"] == reason, body
    assert isinstance(body["detail"], str) and body["detail"], body
    if detail is not None:
        assert detail in body["detail"], body
    return str(body["detail"])


ADMIN_H = {"authorization": f"Bearer {ADMIN}"}


def task_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "s54f",
        "model_name": "softmax",
        "spec": SPEC,
        "rounds": 1,
        "clients_per_round": 1,
        "over_selection": 1.0,
        "deadline_s": 30.0,
        "min_reports": 1,
        "selection_timeout_s": 0.2,
        "codec": {"topk": 0.25, "bits": 8},
        "retry_after_s": 0.2,
    }
    body.update(over)
    return body


def initial() -> np.ndarray:
    return np.random.default_rng(0).normal(0, 0.1, D).astype(np.float32)


def create_task(http: httpx.Client, body: dict[str, Any], *, model: bool = True) -> int:
    r = http.post(
        "/v1/admin/tasks",
        content=_json(body),
        headers={**ADMIN_H, "content-type": "application/json"},
    )
    assert r.status_code == 201, r.text
    answer = r.json()
    assert list(answer) == ["task_id", "state", "warnings"]
    assert answer["state"] == "awaiting_model" and answer["warnings"] == []
    task_id = int(answer["task_id"])
    if model:
        put = http.put(
            f"/v1/admin/tasks/{task_id}/model",
            content=encode_snapshot(initial(), MODEL_SPEC, dtype="fp32"),
            headers={**ADMIN_H, "content-type": "application/octet-stream"},
        )
        assert put.status_code == 200, put.text
        assert put.json()["state"] == "active"
    return task_id


def assignment(http: httpx.Client, dev: Device, task_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = check_in(http, dev, {"task_id": task_id})
        assert r.status_code == 200, r.text
        answer = r.json()
        if answer["action"] == "train":
            return answer
        time.sleep(min(0.1, answer["retry_after_s"]))
    raise AssertionError("no assignment")


def apply_chain(params: np.ndarray, chain: bytes) -> np.ndarray:
    """The doc's delta-chain body: "PLCH", u8 version 1, u8 reserved 0, u16 count, count x u32
    frame lengths, then the frames, little-endian; each frame applied with `apply_delta`."""
    assert chain[:4] == b"PLCH" and chain[4:6] == b"\x01\x00"
    (count,) = struct.unpack_from("<H", chain, 6)
    lengths = struct.unpack_from(f"<{count}I", chain, 8)
    at = 8 + 4 * count
    codec = UpdateCodec(MODEL_SPEC, CodecConfig(topk=1.0, bits=32))  # decodes any v1 frame
    for n in lengths:
        params = apply_delta(params, codec.decode_frame(chain[at : at + n]).update)
        at += n
    assert at == len(chain)
    return params


def frame_for(seed: int = 1, weight: float = 8.0) -> bytes:
    u = np.random.default_rng(seed).normal(0, 0.01, D).astype(np.float32)
    frame, _ = UpdateCodec(MODEL_SPEC, CodecConfig(topk=0.25, bits=8)).encode(
        u, np.random.default_rng(seed), weight=weight
    )
    return frame


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("s54f")
    cfg = ServiceConfig(
        db_path=str(root / "plume.db"),
        admin_token=ADMIN,
        snapshots_per_version=SNAPSHOTS_PER_VERSION,
    )
    with ServerThread(cfg) as url:
        yield url


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=20) as client:
        yield client


_seeds = iter(range(1, 10_000))


@pytest.fixture
def dev(http: httpx.Client) -> Device:
    d = Device(next(_seeds))
    r = register(http, d)
    assert r.status_code == 200, r.text
    return d


# -- registration ------------------------------------------------------------------------


def test_register_answers_the_documented_fields(http: httpx.Client) -> None:
    d = Device(9001)
    r = register(http, d)
    assert r.status_code == 200, r.text
    body = r.json()
    # `{"device_id": "<32 hex>", "created": true, "incarnation": "<32 hex>"}`
    assert list(body) == ["device_id", "created", "incarnation"]
    assert body["device_id"] == d.device_id
    assert body["created"] is True
    assert re.fullmatch(r"[0-9a-f]{32}", body["incarnation"])
    again = register(http, d)
    assert again.status_code == 200
    assert again.json() == {**body, "created": False}


@pytest.mark.parametrize(
    ("spelling", "detail"),
    [
        (lambda s: s + "=", "public_key holds '=': the key is sent without padding"),
        (lambda s: s[:20] + " " + s[20:], "public_key holds ' ', not a base64url character"),
        (
            lambda s: s + "A",
            "public_key must be 43 base64url characters (32 bytes, no padding), got 44",
        ),
    ],
)
def test_register_key_spelling_is_400_malformed(
    http: httpx.Client, spelling: Any, detail: str
) -> None:
    d = Device(9002)
    body = _json({"public_key": spelling(d.public_b64)})
    headers = {**d.headers("POST", "/v1/devices", body), "content-type": "application/json"}
    refused(http.post("/v1/devices", content=body, headers=headers), 400, "malformed", detail)


def test_register_small_order_point_is_400(http: httpx.Client) -> None:
    d = Device(9003)
    identity = base64.urlsafe_b64encode((1).to_bytes(32, "little")).rstrip(b"=").decode()
    body = _json({"public_key": identity})
    headers = {**d.headers("POST", "/v1/devices", body), "content-type": "application/json"}
    refused(
        http.post("/v1/devices", content=body, headers=headers),
        400,
        "malformed",
        "public_key is a point of small order",
    )


def test_register_refusals_from_headers(http: httpx.Client) -> None:
    d = Device(9004)
    body = _json({"public_key": d.public_b64})
    signed = d.headers("POST", "/v1/devices", body)
    # 415 first, whatever else is wrong; the nonce is not spent: the same request with the
    # right Content-Type then registers
    refused(http.post("/v1/devices", content=body, headers=signed), 415, "unsupported_media_type")
    refused(
        http.post("/v1/devices", content=body, headers={**signed, "content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    # a malformed key and no signature headers: 401 unsigned (not 400)
    refused(
        http.post(
            "/v1/devices",
            content=_json({"public_key": "x"}),
            headers={"content-type": "application/json"},
        ),
        401,
        "unsigned",
    )
    # "Case and parameters (`; charset=...`) do not matter"; application/<x>+json is taken
    ok = http.post(
        "/v1/devices",
        content=body,
        headers={**signed, "content-type": "Application/JSON; charset=utf-8"},
    )
    assert ok.status_code == 200, ok.text
    # signed with another key than the one it registers: bad_signature
    other = Device(9005)
    body2 = _json({"public_key": other.public_b64})
    refused(
        http.post(
            "/v1/devices",
            content=body2,
            headers={
                **d.headers("POST", "/v1/devices", body2),
                "content-type": "application/vnd.x+json",
            },
        ),
        401,
        "bad_signature",
    )


def test_register_rate_limit_and_admin_off(tmp_path: Path) -> None:
    # `--register-rate R --register-burst B`; a 415 spends none of the budget. And "without a
    # configured token the admin API answers 403".
    cfg = ServiceConfig(
        db_path=str(tmp_path / "rl.db"),
        register_rate_per_s=1e-6,
        register_burst=1,
        body_timeout_s=1.0,
    )
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        d1, d2 = Device(9101), Device(9102)
        body = _json({"public_key": d1.public_b64})
        refused(
            http.post("/v1/devices", content=body, headers=d1.headers("POST", "/v1/devices", body)),
            415,
            "unsupported_media_type",
        )
        assert register(http, d1).status_code == 200
        r = register(http, d2)
        refused(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1
        # the limit comes before the signature headers' form (429, not 401 unsigned)
        unsigned = http.post(
            "/v1/devices",
            content=_json({"public_key": d2.public_b64}),
            headers={"content-type": "application/json"},
        )
        refused(unsigned, 429, "rate_limited")
        # the device was not created
        refused(check_in(http, d2, {}), 401, "unregistered")
        refused(http.get("/v1/admin/tasks", headers=ADMIN_H), 403, "bad_admin_token")
        # 408 request_timeout: a body not in full within --body-timeout of its first read
        host, port = url.removeprefix("http://").split(":")
        signed = d1.headers("POST", "/v1/checkin", b"{}" + b" " * 8)
        lines = "".join(f"{k}: {v}\r\n" for k, v in signed.items())
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(
                f"POST /v1/checkin HTTP/1.1\r\nHost: x\r\n{lines}Content-Type: "
                "application/json\r\nContent-Length: 10\r\n\r\n{}".encode()
            )
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, payload = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head.lower()
        assert json.loads(payload) == {
            "reason": "request_timeout",
            "detail": "request body not complete within 1 s",
        }


# -- signing -----------------------------------------------------------------------------


def test_signed_check_in_refusals(http: httpx.Client, dev: Device) -> None:
    body = _json({})
    ct = {"content-type": "application/json"}

    def post(headers: dict[str, str]) -> httpx.Response:
        return http.post("/v1/checkin", content=body, headers={**headers, **ct})

    refused(post({}), 401, "unsigned")
    # the 415 comes before the signature headers' form
    refused(http.post("/v1/checkin", content=body), 415, "unsupported_media_type")
    # a timestamp with a leading zero is not canonical: the header is named
    h = dev.headers("POST", "/v1/checkin", body)
    refused(
        post({**h, "x-plume-timestamp": "0" + h["x-plume-timestamp"]}), 401, "unsigned", "timestamp"
    )
    # round of 2^63
    refused(
        post({**dev.headers("POST", "/v1/checkin", body), "x-plume-round": str(2**63)}),
        401,
        "unsigned",
    )
    # a nonce of 15 hex digits
    refused(post(dev.headers("POST", "/v1/checkin", body, nonce="0" * 15)), 401, "unsigned")
    # the signature's last character with a spare bit set ("one of A, Q, g, w")
    h = dev.headers("POST", "/v1/checkin", body)
    last = h["x-plume-signature"][-1]
    assert last in "AQgw"
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare = alphabet[alphabet.index(last) + 1]
    refused(post({**h, "x-plume-signature": h["x-plume-signature"][:-1] + spare}), 401, "unsigned")
    refused(post(dev.headers("POST", "/v1/checkin", body, nonce="a" * 65)), 401, "unsigned")
    refused(post(dev.headers("POST", "/v1/checkin", body, nonce="A" * 32)), 401, "unsigned")
    h = dev.headers("POST", "/v1/checkin", body)
    refused(post({**h, "x-plume-device": h["x-plume-device"].upper()}), 401, "unsigned")
    refused(post({**h, "x-plume-signature": h["x-plume-signature"][:85]}), 401, "unsigned")
    refused(post({**h, "x-plume-round": "07"}), 401, "unsigned", "round")
    refused(post(Device(9201).headers("POST", "/v1/checkin", body)), 401, "unregistered")
    ahead = int(time.time() * 1000) + 301_000
    h = dev.headers("POST", "/v1/checkin", body, timestamp_ms=ahead)
    refused(post(h), 401, "stale_timestamp")
    old = int(time.time() * 1000) - 301_000
    refused(
        post(dev.headers("POST", "/v1/checkin", body, timestamp_ms=old)), 401, "stale_timestamp"
    )
    # tampered: signed over another body
    refused(post(dev.headers("POST", "/v1/checkin", b"{ }")), 401, "bad_signature")
    # signed for another method or target
    refused(post(dev.headers("PUT", "/v1/checkin", body)), 401, "bad_signature")
    # replayed: the same signed request twice
    h = dev.headers("POST", "/v1/checkin", body)
    assert post(h).status_code == 200
    refused(post(h), 401, "replayed_nonce")
    # ... also over another body: "this device already used this nonce"
    other = _json({"task_id": None})
    h2 = dev.headers("POST", "/v1/checkin", other, nonce=h["x-plume-nonce"])
    r = http.post("/v1/checkin", content=other, headers={**h2, **ct})
    refused(r, 401, "replayed_nonce")
    # another device may use the same nonce
    twin = Device(next(_seeds))
    assert register(http, twin).status_code == 200
    h3 = twin.headers("POST", "/v1/checkin", body, nonce=h["x-plume-nonce"])
    assert post(h3).status_code == 200
    # x-plume-round left out signs as 0
    ok = post(dev.headers("POST", "/v1/checkin", body, round_id=None))
    assert ok.status_code == 200, ok.text


def test_target_over_2048_characters_is_bad_signature(http: httpx.Client, dev: Device) -> None:
    target = "/v1/rounds/1?pad=" + "a" * 2100
    # The doc's signing format cannot sign it: sign its message anyway, as a port that does
    # not check the cap would, and read the refusal.
    r = http.get(target, headers=dev.headers("GET", target))
    detail = refused(r, 401, "bad_signature")
    assert "2,048" in detail and f"{len(target):,}" in detail


# -- check-in ------------------------------------------------------------------------------


def test_check_in_idle_and_field_validation(http: httpx.Client, dev: Device) -> None:
    r = check_in(http, dev, {"task_id": 999_999})
    refused(r, 404, "unknown_task", "no task 999999")
    for field, value in [
        ("task_id", True),
        ("task_id", "1"),
        ("task_id", 1.0),
        ("task_id", 0),
        ("task_id", 2**63),
        ("awaiting_round", "7"),
        ("awaiting_round", 0),
        ("max_model_bytes", 3),
        ("max_model_bytes", 1e3),
        ("features", "error_feedback_off"),
        ("features", ["Bad"]),
        ("model_names", []),
    ]:
        detail = refused(check_in(http, dev, {field: value}), 422, "validation")
        assert field in detail, (field, value, detail)
    detail = refused(check_in(http, dev, {"model_layouts": ["ABC"]}), 422, "validation")
    assert detail == (
        "body: Value error, $.model_layouts[0] = 'ABC' is not a layout fingerprint (16 "
        "lower-case hex digits, compression.ModelSpec.fingerprint)"
    )
    # an out-of-range id is echoed, cut after its first 80 characters with `...`
    big = int("9" * 100)
    detail = refused(check_in(http, dev, {"task_id": big}), 422, "validation")
    assert "9" * 80 + "..." in detail and "9" * 81 not in detail


def test_json_body_limits(http: httpx.Client, dev: Device) -> None:
    # 400 malformed "There was an error parsing the body": nesting, bad UTF-8, 4,301 digits
    for raw in [
        b"[" * 5000,
        b'{"task_id": 1, "x": "\xff"}',
        b'{"task_id": ' + b"1" * 4301 + b"}",
    ]:
        refused(check_in(http, dev, raw), 400, "malformed", "There was an error parsing the body")
    # 4,300 digits parse, and the field's range refuses them
    refused(check_in(http, dev, b'{"task_id": ' + b"1" * 4300 + b"}"), 422, "validation", "task_id")
    # an unpaired surrogate escape
    refused(
        check_in(http, dev, b'{"x": "\\ud800"}'),
        422,
        "validation",
        "a JSON string holds an unpaired UTF-16 surrogate escape",
    )
    # a pair is one character and is taken
    assert check_in(http, dev, b'{"x": "\\ud83d\\ude00"}').status_code == 200
    # merely invalid JSON: 422
    refused(check_in(http, dev, b"{"), 422, "validation")
    # 64 KiB at most (65,536 bytes)
    exact = b'{"x": "' + b"a" * (65_536 - 9) + b'"}'
    assert len(exact) == 65_536
    assert check_in(http, dev, exact).status_code == 200
    over = exact[:-2] + b'a"}'
    refused(check_in(http, dev, over), 413, "too_large")


def test_plain_round_from_check_in_to_commit(http: httpx.Client, dev: Device) -> None:
    task_id = create_task(http, task_body())
    answer = assignment(http, dev, task_id)
    # the doc's train answer: keys in this order, detail "", the incarnation last
    assert list(answer) == ["action", "retry_after_s", "assignment", "detail", "incarnation"]
    assert answer["retry_after_s"] == 0.0 and answer["detail"] == ""
    assert re.fullmatch(r"[0-9a-f]{32}", answer["incarnation"])
    a = answer["assignment"]
    round_id = a["round_id"]
    assert list(a) == [
        "task_id", "round_id", "base_version", "model_name", "spec", "codec", "training",
        "deadline_unix", "model_path", "upload_path", "max_upload_bytes", "seed", "secure",
        "report_loss",
    ]  # fmt: skip
    assert a["task_id"] == task_id and a["base_version"] == 0 and a["model_name"] == "softmax"
    assert a["spec"] == SPEC and a["secure"] is False and a["report_loss"] is True
    assert a["model_path"] == f"/v1/tasks/{task_id}/model"
    assert a["upload_path"] == f"/v1/rounds/{round_id}/updates"
    assert a["training"] == {"local_epochs": 1, "batch_size": 32, "lr": 0.05}
    assert isinstance(a["max_upload_bytes"], int) and isinstance(a["deadline_unix"], float)

    # -- the model download: an fp32 snapshot with the documented headers
    m = signed_get(http, dev, a["model_path"], round_id)
    assert m.status_code == 200, m.text
    assert m.headers["content-type"] == "application/octet-stream"
    assert m.headers["x-plume-model-version"] == "0"
    assert m.headers["x-plume-model-encoding"] == "snapshot"
    assert m.headers["x-plume-model-exact"] == "1"
    digest = hashlib.sha256(initial().astype("<f4").tobytes()).hexdigest()
    assert m.headers["x-plume-model-digest"] == digest
    assert m.headers["x-plume-ledger-round"] == str(round_id)
    # have= the version held: the 8-byte empty chain, "PLCH", 1, 0, u16 0
    empty = signed_get(http, dev, a["model_path"] + "?have=0", round_id)
    assert empty.status_code == 200
    assert empty.content == b"PLCH\x01\x00\x00\x00"
    assert empty.headers["x-plume-model-encoding"] == "delta-chain"
    half = signed_get(http, dev, a["model_path"] + "?format=snapshot&dtype=fp16", round_id)
    assert half.status_code == 200 and half.headers["x-plume-model-exact"] == "0"
    assert half.headers["x-plume-model-digest"] == digest

    # -- the upload: refusals first, none of which takes it. The 415, the 400 for the
    # Idempotency-Key and the query's 422 are decided before the signature is verified, so
    # they do not spend the nonce: the accepted upload below reuses it.
    frame = frame_for()
    nonce = secrets.token_hex(32)  # 64 hex digits, the most the doc allows
    key = "K" * 100 + "az09_.:-" + "z" * 20  # 128 of [A-Za-z0-9_.:-]
    loss = "?train_loss=0.6931"
    refused(upload(http, dev, round_id, frame, None, nonce=nonce, query=loss), 400, "malformed")
    for bad_key in ("bad key!", "", key + "z"):
        refused(upload(http, dev, round_id, frame, bad_key, nonce=nonce), 400, "malformed")
    for query, detail in [
        ("?train_loss=nan", "query.train_loss = 'nan' is not a decimal number"),
        ("?train_loss=-1", "query.train_loss = '-1' is not a decimal number"),
        ("?train_loss=2e6", "is above the largest loss taken, 1e+06"),
        ("?train_loss=", "query.train_loss"),
        ("?loss=1", "query.loss"),
        ("?train_loss=1&train_loss=1", "query.train_loss: given 2 times; give it once"),
    ]:
        r = upload(http, dev, round_id, frame, key, nonce=nonce, query=query)
        refused(r, 422, "validation", detail)
    refused(
        upload(http, dev, round_id, frame, key, nonce=nonce, query=loss, content_type=None),
        415,
        "unsupported_media_type",
    )
    # the body is capped at max_upload_bytes from Content-Length; the connection closes
    big = upload(http, dev, round_id, b"\0" * (a["max_upload_bytes"] + 1), "k-big")
    refused(big, 413, "too_large", f"above the {a['max_upload_bytes']}-byte cap")
    assert big.headers["connection"] == "close"
    refused(
        upload(http, dev, round_id, frame, key, signed_round=round_id + 1000),
        403,
        "round_mismatch",
    )
    # refused after its signature was checked, under the key the accepted upload uses: "a
    # refused request never changes the coordinator's state", so the key stays free
    refused(upload(http, dev, round_id, b"not a frame", key), 422, "bad_frame")
    outsider = Device(next(_seeds))
    assert register(http, outsider).status_code == 200
    refused(upload(http, outsider, round_id, frame, "k1"), 403, "not_selected")
    refused(upload(http, dev, 999_999, frame, "k1"), 404, "unknown_round")
    # order: the 401s come before the Idempotency-Key's 400
    unsigned = http.post(
        f"/v1/rounds/{round_id}/updates",
        content=frame,
        headers={"content-type": "application/octet-stream"},
    )
    refused(unsigned, 401, "unsigned")
    refused(upload(http, Device(9301), round_id, frame, None), 401, "unregistered")
    # the nonce was not spent by the refusals above: the upload with it is taken (the
    # media type's case and parameters do not matter)
    r = upload(
        http,
        dev,
        round_id,
        frame,
        key,
        nonce=nonce,
        query=loss,
        content_type="Application/Octet-Stream; x=y",
    )
    assert r.status_code == 200, r.text
    receipt = r.json()
    assert receipt == {
        "round_id": round_id,
        "device_id": dev.device_id,
        "accepted": True,
        "duplicate": False,
        "payload_bytes": len(frame),
        "reports": 1,
    }
    assert list(receipt) == [
        "round_id",
        "device_id",
        "accepted",
        "duplicate",
        "payload_bytes",
        "reports",
    ]
    # re-sent with the same idempotency key (no loss this time): the receipt, duplicate
    again = upload(http, dev, round_id, frame, key)
    assert again.status_code == 200 and again.json() == {**receipt, "duplicate": True}
    # the same key with other bytes
    refused(upload(http, dev, round_id, frame_for(5), key), 409, "duplicate_upload")

    # -- the round commits (one report is the cohort); status and ledger
    deadline = time.monotonic() + 15
    while True:
        status = signed_get(http, dev, f"/v1/rounds/{round_id}", round_id)
        assert status.status_code == 200, status.text
        if status.json()["state"] == "committed":
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    st = status.json()
    assert list(st) == [
        "round_id", "task_id", "seq", "state", "base_version", "selected", "target",
        "min_reports", "reports", "opened_unix", "deadline_unix", "closed_unix",
        "version_after", "measurements",
    ]  # fmt: skip
    assert st["version_after"] == 1 and st["reports"] == 1
    # the loss the accepted upload carried (the duplicate kept the first one's)
    ms = st["measurements"]
    assert (ms["train_loss_median"], ms["train_loss_mean"], ms["train_loss_reports"]) == (
        0.6931,
        0.6931,
        1,
    )
    admin_st = http.get(f"/v1/rounds/{round_id}", headers=ADMIN_H)
    assert admin_st.status_code == 200 and admin_st.json()["state"] == "committed"
    # the result route answers the same RoundStatus for a plain round (doc: secure's)
    # and a model of version 1 is served
    m1 = signed_get(http, dev, f"/v1/tasks/{task_id}/model?have=0")
    assert m1.status_code == 200 and m1.headers["x-plume-model-version"] == "1"
    assert m1.headers["x-plume-model-encoding"] == "delta-chain"
    # the chain applied to version 0 is the model whose digest the header gives
    v1 = apply_chain(initial(), m1.content)
    assert (
        hashlib.sha256(v1.astype("<f4").tobytes()).hexdigest() == m1.headers["x-plume-model-digest"]
    )
    # the admin's export of version 1 (snapshot), and its chain from version 0
    ex = http.get(f"/v1/admin/tasks/{task_id}/model?version=1", headers=ADMIN_H)
    assert ex.status_code == 200
    assert ex.headers["x-plume-model-digest"] == m1.headers["x-plume-model-digest"]
    ch = http.get(f"/v1/admin/tasks/{task_id}/model?version=1&base=0", headers=ADMIN_H)
    assert ch.status_code == 200 and ch.content == m1.content
    assert ch.headers["x-plume-model-base-version"] == "0"
    assert ch.headers["x-plume-model-base-digest"] == digest
    refused(
        http.get(f"/v1/admin/tasks/{task_id}/model?version=0&base=1", headers=ADMIN_H),
        422,
        "validation",
    )
    # the rounds listing, paged
    page = http.get(f"/v1/admin/tasks/{task_id}/rounds?last=1", headers=ADMIN_H).json()
    assert [r["round_id"] for r in page] == [round_id] and page[0] == admin_st.json()
    empty_page = f"/v1/admin/tasks/{task_id}/rounds?last=2&before={round_id}"
    assert http.get(empty_page, headers=ADMIN_H).json() == []

    bw = signed_get(http, dev, f"/v1/rounds/{round_id}/bandwidth", round_id)
    assert bw.status_code == 200, bw.text
    report = bw.json()
    assert {r["device_id"] for r in report["rows"]} == {dev.device_id}
    for r in report["rows"]:
        assert set(r) >= {"payload_bytes", "wire_bytes", "dense_bytes", "requests", "direction"}
    totals = report["totals"]
    for k in ("up", "down"):
        for f in ("payload_bytes", "wire_bytes", "dense_bytes", "requests"):
            assert isinstance(totals[f"{k}_{f}"], int)
    assert totals["up_accepted_payload_bytes"] == len(frame)
    assert totals["up_accepted_updates"] == 1
    csv = http.get(f"/v1/rounds/{round_id}/bandwidth?format=csv", headers=ADMIN_H)
    assert csv.status_code == 200
    assert csv.text.splitlines()[0] == (
        "round_id,device_id,direction,payload_bytes,wire_bytes,dense_bytes,requests"
    )
    refused(
        http.get(f"/v1/rounds/{round_id}/bandwidth?fromat=csv", headers=ADMIN_H),
        422,
        "validation",
        "query.fromat: unknown parameter",
    )
    refused(
        http.get(f"/v1/rounds/{round_id}/bandwidth?format=csv&format=json", headers=ADMIN_H),
        422,
        "validation",
        "query.format: given 2 times; give it once",
    )

    # -- what became of the upload: awaiting_round
    out = check_in(http, dev, {"task_id": task_id, "awaiting_round": round_id})
    assert out.status_code == 200
    ans = out.json()
    assert ans["round_outcome"] == "committed"
    assert list(ans)[-2:] == ["round_outcome", "incarnation"]
    # the task ran its one round: `end`, with the doc's exact detail and idle_retry_s
    assert ans["action"] == "end"
    assert ans["retry_after_s"] == 30.0 and ans["assignment"] is None
    assert ans["detail"] == f"task {task_id} is done: it runs no more rounds"
    unknown = check_in(http, dev, {"awaiting_round": 999_999}).json()
    assert unknown["round_outcome"] == "unknown"
    # another upload of the device to the round, under another key: the round has its one,
    # and the doc's `duplicate_upload` (not `round_closed`) names it
    refused(
        upload(http, dev, round_id, frame_for(2), "k2"),
        409,
        "duplicate_upload",
        f"device already reported in round {round_id}",
    )


# -- model download queries --------------------------------------------------------------


def test_model_download_query_refusals_and_snapshot_limit(http: httpx.Client, dev: Device) -> None:
    task_id = create_task(http, task_body(clients_per_round=5, selection_timeout_s=60.0))
    path = f"/v1/tasks/{task_id}/model"
    cases = [
        ("?hav=3", "query.hav: unknown parameter; this route takes have, format and dtype"),
        ("?have=0&have=1", "query.have: given 2 times; give it once"),
        (
            "?have=1_0",
            "query.have: a number in the query is decimal digits with no sign, space, point or "
            "leading zero (got '1_0')",
        ),
        (
            "?have=9223372036854775808",
            "query.have: Input should be less than or equal to 9223372036854775807",
        ),
        ("?format=zip", "query.format"),
        ("?dtype=fp64", "query.dtype"),
    ]
    for query, detail in cases:
        refused(signed_get(http, dev, path + query), 422, "validation", detail)
    refused(signed_get(http, dev, "/v1/tasks/999999/model"), 404, "unknown_task")
    # format=delta from a version with no chain to the current one: 409 unknown_version;
    # format=auto answers the snapshot instead (a chain is never limited, so do that first)
    refused(signed_get(http, dev, path + "?have=5&format=delta"), 409, "unknown_version")
    # snapshots_per_version: the (N+1)th snapshot of the version within the hour is 429
    for _ in range(SNAPSHOTS_PER_VERSION):
        assert signed_get(http, dev, path).status_code == 200
    r = signed_get(http, dev, path + "?format=snapshot&dtype=fp16")
    refused(r, 429, "rate_limited", "have=")
    assert 1 <= int(r.headers["retry-after"]) <= 3600
    # a delta chain is never limited
    assert signed_get(http, dev, path + "?have=0").status_code == 200


# -- admin -------------------------------------------------------------------------------


def test_admin_refusals_and_task_lifecycle(http: httpx.Client) -> None:
    ct = {"content-type": "application/json"}
    body = _json(task_body())
    refused(http.post("/v1/admin/tasks", content=body, headers=ct), 401, "bad_admin_token")
    refused(
        http.post("/v1/admin/tasks", content=body, headers={**ct, "authorization": "Bearer nope"}),
        403,
        "bad_admin_token",
    )
    refused(
        http.post("/v1/admin/tasks", content=body, headers=ADMIN_H), 415, "unsupported_media_type"
    )
    # the 415 comes before the admin token
    refused(http.post("/v1/admin/tasks", content=body), 415, "unsupported_media_type")
    refused(
        http.post(
            "/v1/admin/tasks",
            content=_json(task_body(aggregater="median")),
            headers={**ADMIN_H, **ct},
        ),
        422,
        "validation",
        "unknown task config key: aggregater (did you mean aggregator?)",
    )
    # the scheme's name in any case
    r = http.post(
        "/v1/admin/tasks", content=body, headers={**ct, "authorization": f"bEARER {ADMIN}"}
    )
    assert r.status_code == 201, r.text
    task_id = r.json()["task_id"]

    st = http.get(f"/v1/admin/tasks/{task_id}", headers=ADMIN_H).json()
    assert list(st) == [
        "task_id", "state", "version", "rounds_closed", "rounds_committed", "current_round",
        "model_digest", "config", "refused", "pool", "pool_needed",
    ]  # fmt: skip
    assert st["state"] == "awaiting_model" and st["refused"] is None
    refused(http.get(f"/v1/admin/tasks/{task_id}/model", headers=ADMIN_H), 409, "invalid_state")
    snap = encode_snapshot(initial(), MODEL_SPEC, dtype="fp32")
    put_h = {**ADMIN_H, "content-type": "application/octet-stream"}
    refused(
        http.put(f"/v1/admin/tasks/{task_id}/model", content=snap, headers=ADMIN_H),
        415,
        "unsupported_media_type",
    )
    put = http.put(f"/v1/admin/tasks/{task_id}/model", content=snap, headers=put_h)
    assert put.status_code == 200 and put.json()["state"] == "active"
    refused(
        http.put(f"/v1/admin/tasks/{task_id}/model", content=snap, headers=put_h),
        409,
        "invalid_state",
    )
    refused(
        http.put("/v1/admin/tasks/999999/model", content=snap, headers=put_h), 404, "unknown_task"
    )
    listing = http.get("/v1/admin/tasks", headers=ADMIN_H).json()
    assert task_id in [t["task_id"] for t in listing]

    # export: the fp32 snapshot with the documented headers
    ex = http.get(f"/v1/admin/tasks/{task_id}/model", headers=ADMIN_H)
    assert ex.status_code == 200
    assert ex.headers["x-plume-model-version"] == "0"
    assert ex.headers["x-plume-model-encoding"] == "snapshot"
    assert ex.headers["x-plume-model-exact"] == "1"
    status = http.get(f"/v1/admin/tasks/{task_id}", headers=ADMIN_H).json()
    assert ex.headers["x-plume-model-digest"] == status["model_digest"]
    chain = http.get(f"/v1/admin/tasks/{task_id}/model?version=0&base=0", headers=ADMIN_H)
    assert chain.status_code == 200 and chain.content == b"PLCH\x01\x00\x00\x00"
    assert chain.headers["x-plume-model-encoding"] == "delta-chain"
    assert chain.headers["x-plume-model-base-version"] == "0"
    assert chain.headers["x-plume-model-base-digest"] == status["model_digest"]
    refused(
        http.get(f"/v1/admin/tasks/{task_id}/model?version=9", headers=ADMIN_H),
        404,
        "unknown_version",
    )
    refused(
        http.get(f"/v1/admin/tasks/{task_id}/model?version=0&version=1", headers=ADMIN_H),
        422,
        "validation",
        "query.version: given 2 times; give it once",
    )
    refused(http.get("/v1/admin/tasks/999999/model", headers=ADMIN_H), 404, "unknown_task")

    # rounds listing
    assert http.get(f"/v1/admin/tasks/{task_id}/rounds", headers=ADMIN_H).json() == []
    for query, detail in [
        ("?last=0", "query.last: Input should be greater than or equal to 1"),
        ("?last=100001", "query.last: Input should be less than or equal to 100000"),
        ("?lats=2", "query.lats: unknown parameter; this route takes last and before"),
        ("?last=5&last=1", "query.last: given 2 times; give it once"),
    ]:
        r = http.get(f"/v1/admin/tasks/{task_id}/rounds{query}", headers=ADMIN_H)
        assert r.json() == {"reason": "validation", "detail": detail}, (query, r.text)
    refused(
        http.get(f"/v1/admin/tasks/{task_id}/rounds?before=999999", headers=ADMIN_H),
        404,
        "unknown_round",
        f"round 999999 is not one of task {task_id}'s rounds",
    )
    refused(http.get("/v1/admin/tasks/999999/rounds", headers=ADMIN_H), 404, "unknown_task")

    # pause / resume / stop
    p = http.post(f"/v1/admin/tasks/{task_id}/pause", headers=ADMIN_H)
    assert p.status_code == 200 and p.json()["state"] == "paused"
    assert (
        http.post(f"/v1/admin/tasks/{task_id}/pause", headers=ADMIN_H).json()["state"] == "paused"
    )
    assert (
        http.post(f"/v1/admin/tasks/{task_id}/resume", headers=ADMIN_H).json()["state"] == "active"
    )
    s = http.post(f"/v1/admin/tasks/{task_id}/stop", headers=ADMIN_H)
    assert s.status_code == 200 and s.json()["state"] == "stopped"
    assert (
        http.post(f"/v1/admin/tasks/{task_id}/stop", headers=ADMIN_H).json()["state"] == "stopped"
    )
    refused(
        http.post(f"/v1/admin/tasks/{task_id}/resume", headers=ADMIN_H),
        409,
        "task_refused",
        f"task {task_id} was stopped by the operator; it runs no more rounds",
    )
    refused(http.post("/v1/admin/tasks/999999/stop", headers=ADMIN_H), 404, "unknown_task")
    # its model stays readable, and a device naming it is told `end`
    assert http.get(f"/v1/admin/tasks/{task_id}/model", headers=ADMIN_H).status_code == 200
    d = Device(next(_seeds))
    assert register(http, d).status_code == 200
    end = check_in(http, d, {"task_id": task_id}).json()
    assert end == {
        "action": "end",
        "retry_after_s": 30.0,
        "assignment": None,
        "detail": f"task {task_id} was stopped by the operator; it runs no more rounds",
    }


def test_check_in_declarations_refuse_a_named_task(http: httpx.Client, dev: Device) -> None:
    off = create_task(http, task_body(codec={"topk": 0.25, "bits": 8, "error_feedback": False}))
    detail = refused(check_in(http, dev, {"task_id": off}), 409, "sdk_unsupported")
    assert detail.startswith(
        f"task {off} needs feature error_feedback_off, which this device's SDK did not declare"
    )
    plain = create_task(http, task_body(clients_per_round=5, selection_timeout_s=60.0))
    refused(
        check_in(http, dev, {"task_id": plain, "max_model_bytes": 100}),
        409,
        "model_too_large",
        "680 bytes",
    )
    refused(
        check_in(http, dev, {"task_id": plain, "model_layouts": ["0123456789abcdef"]}),
        409,
        "model_layout_mismatch",
    )
    refused(
        check_in(http, dev, {"task_id": plain, "model_names": ["other"]}),
        409,
        "model_layout_mismatch",
        f'task {plain}\'s model "softmax" is not one of the model_names',
    )
    # a model exactly at the limit is given (the device joins the pool: a wait)
    w = check_in(http, dev, {"task_id": plain, "max_model_bytes": 680}).json()
    assert w == {"action": "wait", "retry_after_s": w["retry_after_s"], "assignment": None,
                 "detail": "not selected yet"}  # fmt: skip


# -- secure rounds -----------------------------------------------------------------------


def test_secure_round_endpoints(http: httpx.Client) -> None:
    body = task_body(
        clients_per_round=3,
        deadline_s=60.0,
        selection_timeout_s=60.0,
        secure={"coord_fraction": 0.1, "stage_timeout_s": 30},
    )
    task_id = create_task(http, body)
    devs = [Device(next(_seeds)) for _ in range(3)]
    for d in devs:
        assert register(http, d).status_code == 200
        check_in(http, d, {"task_id": task_id})
    answers = [assignment(http, d, task_id) for d in devs]
    a = answers[0]["assignment"]
    round_id = a["round_id"]
    assert a["secure"] is True
    assert "report_loss" not in a  # a secure task leaves the key out
    assert a["upload_path"] == f"/v1/secure/rounds/{round_id}/setup"
    d = devs[0]
    setup = signed_get(http, d, a["upload_path"], round_id)
    assert setup.status_code == 200, setup.text
    assert setup.headers["content-type"] == "application/octet-stream"
    assert re.fullmatch(r"[0-9a-f]{64}", setup.headers["x-plume-secagg-digest"])
    assert setup.headers["x-plume-secagg-node"].isdigit()
    assert setup.headers["x-plume-model-version"] == "0"
    refused(signed_get(http, d, a["upload_path"], round_id + 1), 403, "round_mismatch")

    stages = f"/v1/secure/rounds/{round_id}/stages"
    # the download that follows an open stage: 425, retry_after_s the --poll, Retry-After 1
    r = signed_get(http, d, f"{stages}/advertise-keys", round_id)
    assert r.status_code == 425, r.text
    assert r.json() == {
        "reason": "invalid_state",
        "detail": "stage advertise-keys is still open",
        "retry_after_s": 0.25,
    }
    assert r.headers["retry-after"] == "1"
    detail = refused(signed_get(http, d, f"{stages}/done", round_id), 422, "validation")
    assert detail == (
        "path.stage: Input should be 'advertise-keys', 'share-keys', 'masked-input' or 'unmask'"
    )
    refused(signed_get(http, d, f"{stages}/unmask", round_id), 422, "validation")

    def post(stage: str, data: bytes, signed_round: int = round_id) -> httpx.Response:
        target = f"{stages}/{stage}"
        headers = {
            **d.headers("POST", target, data, signed_round),
            "content-type": "application/octet-stream",
        }
        return http.post(target, content=data, headers=headers)

    refused(post("advertise-keys", b"x" * 10, round_id + 1), 403, "round_mismatch")
    refused(
        post("share-keys", b"x" * 10),
        409,
        "invalid_state",
        "WrongStage: stage share-keys is not open",
    )
    detail = refused(post("advertise-keys", b"x" * 10), 422, "bad_frame")
    assert detail.startswith("MalformedMessage")
    # capped from the plan before it is read: 132 bytes for advertise-keys
    refused(post("advertise-keys", b"x" * 132), 422, "bad_frame")
    refused(post("advertise-keys", b"x" * 133), 413, "too_large")
    outsider = Device(next(_seeds))
    assert register(http, outsider).status_code == 200
    target = f"{stages}/advertise-keys"
    r = http.post(
        target,
        content=b"x",
        headers={
            **outsider.headers("POST", target, b"x", round_id),
            "content-type": "application/octet-stream",
        },
    )
    refused(r, 403, "not_selected")
    # every device advertises its keys: the receipt with its stage; the same bytes again are
    # `duplicate`, other bytes 409 duplicate_upload; once all have, the stage closes and its
    # download is the key directory
    sent = []
    for i, dv in enumerate(devs):
        got = setup if i == 0 else signed_get(http, dv, a["upload_path"], round_id)
        assert got.status_code == 200, got.text
        plan = SecurePlan.from_bytes(got.content, D)
        params = plan.protocol_params(secagg_model_digest(initial()))
        client = SecAggClient(
            params,
            int(got.headers["x-plume-secagg-node"]),
            bytes.fromhex(got.headers["x-plume-secagg-digest"]),
        )
        message = client.advertise().to_bytes()
        assert len(message) == 81  # "the message is 81"
        sent.append((dv, message, params, got))
    for i, (dv, message, params, got) in enumerate(sent):
        target = f"{stages}/advertise-keys"
        r = http.post(
            target,
            content=message,
            headers={
                **dv.headers("POST", target, message, round_id),
                "content-type": "application/octet-stream",
            },
        )
        assert r.status_code == 200, r.text
        assert r.json() == {
            "round_id": round_id,
            "device_id": dv.device_id,
            "accepted": True,
            "duplicate": False,
            "payload_bytes": 81,
            "reports": 0,
            "stage": "advertise-keys",
        }
        if i == 0:
            again = http.post(
                target,
                content=message,
                headers={
                    **dv.headers("POST", target, message, round_id),
                    "content-type": "application/octet-stream",
                },
            )
            assert again.status_code == 200 and again.json()["duplicate"] is True
            node = int(got.headers["x-plume-secagg-node"])
            other = SecAggClient(params, node, params.digest).advertise().to_bytes()
            r = http.post(
                target,
                content=other,
                headers={
                    **dv.headers("POST", target, other, round_id),
                    "content-type": "application/octet-stream",
                },
            )
            refused(r, 409, "duplicate_upload")
    deadline = time.monotonic() + 15
    while True:
        directory = signed_get(http, d, f"{stages}/advertise-keys", round_id)
        if directory.status_code != 425:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert directory.status_code == 200, directory.text
    assert directory.headers["content-type"] == "application/octet-stream"
    assert directory.content
    # a stage download of a device not in the round
    r = signed_get(http, outsider, f"{stages}/advertise-keys", round_id)
    refused(r, 403, "not_selected")
    # a plain upload to a secure round
    refused(upload(http, d, round_id, frame_for(), "k1"), 409, "invalid_state")
    res = signed_get(http, d, f"/v1/secure/rounds/{round_id}/result", round_id)
    assert res.status_code == 200 and res.json()["state"] == "open"
    assert res.json()["measurements"]["stage"] == "share-keys"
    assert http.get(f"/v1/secure/rounds/{round_id}/result", headers=ADMIN_H).status_code == 200
    refused(signed_get(http, d, "/v1/secure/rounds/999999/setup", 999999), 404, "unknown_round")
    # stop it so the server does not carry the round into the other tests
    assert http.post(f"/v1/admin/tasks/{task_id}/stop", headers=ADMIN_H).status_code == 200


# -- the rest: paths, methods, ops -------------------------------------------------------


def test_paths_methods_and_ids(http: httpx.Client, dev: Device) -> None:
    refused(
        http.post("/v1/devices/", content=b"{}", headers={"content-type": "application/json"}),
        404,
        "not_found",
    )
    refused(http.get("/%6detrics"), 404, "not_found")
    refused(http.get("/v1/admin%2Ftasks", headers=ADMIN_H), 404, "not_found")
    r = http.delete("/v1/admin/tasks", headers=ADMIN_H)
    refused(r, 405, "method_not_allowed")
    assert set(re.split(r",\s*", r.headers["allow"])) == {"GET", "POST"}
    for rid in ("+7", "07", "7.0", "%37", "-1", "1_0"):
        detail = refused(
            http.get(f"/v1/rounds/{rid}", headers=ADMIN_H),
            422,
            "validation",
            "an id in the path is decimal digits with no sign, space, point or leading zero",
        )
        assert rid in detail
    refused(http.get("/v1/rounds/9223372036854775808", headers=ADMIN_H), 422, "validation")
    refused(http.get("/v1/rounds/999999", headers=ADMIN_H), 404, "unknown_round")
    refused(signed_get(http, dev, "/v1/rounds/999999"), 404, "unknown_round")
    refused(http.get("/v1/rounds/1"), 401, "unsigned")


def test_both_framings_is_400(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v1/checkin HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in head.lower()
    assert json.loads(payload) == {
        "reason": "malformed",
        "detail": "a request with both Content-Length and Transfer-Encoding is refused (RFC "
        "9112 section 6.1): send one of them",
    }


def test_absolute_form_target_is_routed(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            f"GET HTTP://{host}:{port}/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]


def test_ops_endpoints(http: httpx.Client) -> None:
    h = http.get("/healthz")
    assert h.status_code == 200
    body = h.json()
    assert body["ok"] is True and body["journal_mode"] == "wal"
    assert isinstance(body["tasks"], int) and isinstance(body["tasks_refused"], int)
    assert set(body) == {"ok", "journal_mode", "tasks", "tasks_refused", "dp_all_tasks"}
    assert set(body["dp_all_tasks"]) <= {
        "epsilon", "delta", "tasks", "tasks_composed", "composed", "not_accounted",
        "epsilon_infinite", "not_running", "partial",
    }  # fmt: skip
    r = http.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {
        "ready": True,
        "store_writable": True,
        "store_error": None,
        "tasks_unloaded": 0,
    }
    m = http.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    assert "plume_control_wire_bytes_total" in m.text
    spec = http.get("/openapi.json").json()
    assert "/v1/checkin" in spec["paths"]
    # "the OpenAPI spec lists only them": the four stages
    stage_path = spec["paths"]["/v1/secure/rounds/{round_id}/stages/{stage}"]
    (param,) = [p for p in stage_path["post"]["parameters"] if p["name"] == "stage"]
    text = json.dumps(param)
    for stage in ("advertise-keys", "share-keys", "masked-input", "unmask"):
        assert stage in text
    assert "done" not in text and "aborted" not in text
    for page in ("/docs", "/docs/oauth2-redirect", "/redoc"):
        p = http.get(page)
        assert p.status_code == 200 and p.headers["content-type"].startswith("text/html"), page


def _raw(server: str, request: bytes) -> bytes:
    """One request on its own connection (closed by the client's `Connection: close` or the
    server); everything the server sent."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_dp_task_assignment_and_train_loss_refused(http: httpx.Client, dev: Device) -> None:
    task_id = create_task(http, task_body(aggregator="dp:clip=1,z=1+fedavg"))
    a = assignment(http, dev, task_id)["assignment"]
    # a task with a dp stage: "return_refused": false last, no report_loss
    assert list(a)[-1] == "return_refused" and a["return_refused"] is False
    assert "report_loss" not in a
    round_id = a["round_id"]
    frame = frame_for()
    refused(
        upload(http, dev, round_id, frame, "k1", query="?train_loss=0.5"),
        422,
        "train_loss_refused",
    )
    # the same update without the key (same idempotency key) is then accepted
    ok = upload(http, dev, round_id, frame, "k1")
    assert ok.status_code == 200 and ok.json()["duplicate"] is False


def test_fp16_download_of_a_model_beyond_fp16s_range(http: httpx.Client, dev: Device) -> None:
    r = http.post(
        "/v1/admin/tasks",
        content=_json(task_body(clients_per_round=5, selection_timeout_s=60.0)),
        headers={**ADMIN_H, "content-type": "application/json"},
    )
    task_id = r.json()["task_id"]
    big = initial()
    big[3] = 70_000.0  # |x| >= 65,520
    put = http.put(
        f"/v1/admin/tasks/{task_id}/model",
        content=encode_snapshot(big, MODEL_SPEC, dtype="fp32"),
        headers={**ADMIN_H, "content-type": "application/octet-stream"},
    )
    assert put.status_code == 200
    path = f"/v1/tasks/{task_id}/model"
    detail = refused(signed_get(http, dev, path + "?dtype=fp16"), 409, "invalid_state")
    assert detail.startswith(f"task {task_id}'s model (version 0) has a parameter beyond fp16's")
    assert detail.endswith("ask for dtype=fp32")
    assert signed_get(http, dev, path + "?dtype=fp32").status_code == 200


def test_an_empty_query_is_signed_as_none(server: str, dev: Device) -> None:
    # "/x? is signed as /x, as the server cannot tell them apart"
    signed = dev.headers("GET", "/v1/rounds/999999")
    lines = "".join(f"{k}: {v}\r\n" for k, v in signed.items())
    data = _raw(
        server,
        f"GET /v1/rounds/999999? HTTP/1.1\r\nHost: x\r\n{lines}Connection: close\r\n\r\n".encode(),
    )
    # past the signature: the round's 404
    assert data.startswith(b"HTTP/1.1 404 "), data[:300]
    assert b'"reason":"unknown_round"' in data


def test_expect_continue_gets_the_refusal(server: str) -> None:
    # the 415 instead of `100 Continue`, and the body is not waited for
    data = _raw(
        server,
        b"POST /v1/checkin HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 2\r\nExpect: 100-continue\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 415 "), data[:300]
    assert b"100 Continue" not in data


def test_check_in_features_are_lenient_to_unknown_names(http: httpx.Client, dev: Device) -> None:
    # a name the coordinator does not know is ignored, and so is a repeat
    features = ["error_feedback_off", "a_newer_feature", "error_feedback_off"]
    r = check_in(http, dev, {"features": features})
    assert r.status_code == 200, r.text
    for value in (["x"] * 33, ["a" * 65], [1]):
        refused(check_in(http, dev, {"features": value}), 422, "validation", "features")
    refused(check_in(http, dev, {"model_names": ["a" * 257]}), 422, "validation", "model_names")
    refused(check_in(http, dev, {"model_layouts": ["0123456789abcdef"] * 2}), 422, "validation")


def test_a_task_passed_over_names_why(tmp_path: Path) -> None:
    # With no other task running, a check-in naming no task is told `wait` for idle_retry_s
    # with the doc's detail (its own server: no other test's task may be running).
    cfg = ServiceConfig(db_path=str(tmp_path / "over.db"), admin_token=ADMIN)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        d = Device(9401)
        assert register(http, d).status_code == 200
        off = create_task(http, task_body(codec={"topk": 0.25, "bits": 8, "error_feedback": False}))
        w = check_in(http, d, {}).json()
        assert (w["action"], w["retry_after_s"], w["assignment"]) == ("wait", 30.0, None)
        assert w["detail"].startswith(
            f"no active task this device's SDK can run: task {off} needs feature error_feedback_off"
        )
        assert http.post(f"/v1/admin/tasks/{off}/stop", headers=ADMIN_H).status_code == 200
        plain = create_task(http, task_body())
        w = check_in(http, d, {"max_model_bytes": 100}).json()
        assert w["action"] == "wait" and w["retry_after_s"] == 30.0
        assert w["detail"] == (
            f"no active task this device can run: task {plain}'s model is 680 bytes (170 "
            "float32 parameters, as its spec declares), over the max_model_bytes=100 this "
            "device declared in its check-in"
        )
        w = check_in(http, d, {"model_layouts": ["0123456789abcdef"]}).json()
        fingerprint = MODEL_SPEC.fingerprint.hex()
        assert w["detail"].startswith(
            f'no active task this device can run: task {plain}\'s model "softmax" has layout '
            f"{fingerprint} (2 tensors, 170 parameters), not one of the model_layouts this "
            "device declared in its check-in ("
        )
        w = check_in(http, d, {"model_names": ["other"]}).json()
        assert w["detail"].startswith(
            f'no active task this device can run: task {plain}\'s model "softmax" is not one '
            'of the model_names this device declared in its check-in ("other")'
        )
        # a paused task is passed over silently
        assert http.post(f"/v1/admin/tasks/{plain}/pause", headers=ADMIN_H).status_code == 200
        w = check_in(http, d, {"max_model_bytes": 100}).json()
        assert w["detail"] == "no active task"
        # and a check-in naming a paused task is told to wait "no active task"
        w = check_in(http, d, {"task_id": plain}).json()
        assert (w["action"], w["detail"]) == ("wait", "no active task")
