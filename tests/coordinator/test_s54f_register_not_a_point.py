"""A registration's `public_key` whose 32 bytes encode no point of Ed25519 is 400 `malformed`,
"public_key is not an Ed25519 key: ...", as docs/http-api.md's errors table gives it
(helper-54f's audit). Before, the route's check (`Ed25519PublicKey.from_public_bytes`, which
takes any 32 bytes) let such a key through, and the request was refused 401 `bad_signature`
when its signature was checked (no signature verifies under it), telling the client its
signing was wrong rather than its key.

The point test (`coordinator.service.auth._on_curve`) is checked with hypothesis against
Euler's criterion (a different computation: x^2 = (y^2 - 1) / (d y^2 + 1) is a square mod p),
and end to end against a loopback coordinator.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.auth import _on_curve, registered_key
from coordinator.service.errors import ApiError

P = 2**255 - 19
D = -121665 * pow(121666, -1, P) % P


def euler_on_curve(raw: bytes) -> bool:
    """RFC 8032's decoding, steps 1 to 3, by Euler's criterion (y taken mod p)."""
    y = (int.from_bytes(raw, "little") & ((1 << 255) - 1)) % P
    x2 = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
    return x2 == 0 or pow(x2, (P - 1) // 2, P) == 1


def spelled(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# The first y (a small integer) that is no point: its 32 bytes are no Ed25519 key.
NOT_A_POINT = next(
    y.to_bytes(32, "little") for y in range(2, 100) if not euler_on_curve(y.to_bytes(32, "little"))
)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_on_curve_agrees_with_eulers_criterion(raw: bytes) -> None:
    assert _on_curve(raw) == euler_on_curve(raw)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_every_real_key_is_on_the_curve(seed: bytes) -> None:
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    assert _on_curve(public)
    assert registered_key(spelled(public)) == public


def test_registered_key_refuses_a_string_that_is_no_point() -> None:
    # Execute
    with pytest.raises(ApiError) as refused:
        registered_key(spelled(NOT_A_POINT))

    # Assert
    assert (refused.value.status, str(refused.value.reason)) == (400, "malformed")
    assert refused.value.detail.startswith("public_key is not an Ed25519 key")


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("point")
    with ServerThread(ServiceConfig(db_path=str(root / "plume.db"))) as url:
        yield url


def _register(url: str, public: bytes, sign: Ed25519PrivateKey | None) -> httpx.Response:
    """A registration of `public`, its headers naming the id derived from it; signed with
    `sign` over the doc's message, or carrying a signature of valid form no key made."""
    body = json.dumps({"public_key": spelled(public)}).encode()
    device = hashlib.sha256(public).digest()[:16].hex()
    ts, nonce = str(int(time.time() * 1000)), secrets.token_hex(16)
    message = "\n".join(
        [
            "PLUME-SIG-V1",
            "POST",
            "/v1/devices",
            device,
            "0",
            hashlib.sha256(body).hexdigest(),
            ts,
            nonce,
        ]
    ).encode()
    sig = spelled(sign.sign(message)) if sign is not None else "A" * 86
    headers = {
        "content-type": "application/json",
        "x-plume-device": device,
        "x-plume-round": "0",
        "x-plume-timestamp": ts,
        "x-plume-nonce": nonce,
        "x-plume-signature": sig,
    }
    return httpx.post(url + "/v1/devices", content=body, headers=headers)


def _devices(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    (line,) = [x for x in text.splitlines() if x.startswith("plume_registered_devices ")]
    return float(line.split()[1])


def test_a_key_that_is_no_point_is_400_malformed(url: str) -> None:
    # Prepare
    before = _devices(url)

    # Execute
    r = _register(url, NOT_A_POINT, None)

    # Assert: refused for its key (it was 401 bad_signature), and not stored
    assert r.status_code == 400, r.text
    assert r.json()["reason"] == "malformed"
    assert r.json()["detail"].startswith("public_key is not an Ed25519 key: ")
    assert _devices(url) == before


def test_small_order_and_real_keys_answer_as_before(url: str) -> None:
    # a point of small order (the identity) is still named as such
    r = _register(url, (1).to_bytes(32, "little"), None)
    assert r.status_code == 400
    assert r.json()["detail"].startswith("public_key is a point of small order")
    # a real key registers
    key = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
    ok = _register(url, key.public_key().public_bytes_raw(), key)
    assert ok.status_code == 200, ok.text
    assert ok.json()["created"] is True
