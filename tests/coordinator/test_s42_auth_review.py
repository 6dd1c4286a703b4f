"""Helper-340's review of authentication:

- A public key of small order (the identity point, `01 00..00`) registered with a forged
  signature (R = the identity, S = 0), and check-ins signed the same way were taken: no secret
  key belongs to such a key, so anyone could act as that device. Registration now refuses
  every point of order 1, 2, 4 or 8, in every encoding, and a stored one verifies nothing.
- An admin token ending in a space was served but matched no request (header values lose
  their surrounding spaces), and a non-ASCII one matched only its latin-1 bytes: serve and
  the admin commands now refuse a token that is not printable ASCII without spaces.
- `Authorization: bearer <token>` (the scheme in lower case) was 401; RFC 9110 makes the
  scheme's name case-insensitive.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.service import ServerThread, ServiceConfig
from protocol import auth
from protocol.auth import _P, _edwards_add, small_order

from ._restore import run
from .test_service_support import ADMIN

# Ed25519's prime group order (RFC 8032).
L = 2**252 + 27742317777372353535851937790883648493


def _decode(y: int) -> tuple[int, int] | None:
    """The point with this y and an x (either), or None: x^2 = (y^2 - 1) / (d y^2 + 1)."""
    d = -121665 * pow(121666, -1, _P) % _P
    x2 = (y * y - 1) * pow(d * y * y + 1, -1, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if x * x % _P != x2:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    return (x, y) if x * x % _P == x2 else None


def _times(k: int, q: tuple[int, int]) -> tuple[int, int]:
    out, add = (0, 1), q
    while k:
        if k & 1:
            out = _edwards_add(out, add)
        add = _edwards_add(add, add)
        k >>= 1
    return out


def _torsion() -> list[tuple[int, int]]:
    """The 8 points of order dividing 8, as the multiples of a point of order 8 found by
    clearing the prime-order part (times L) of points on the curve."""
    for y in range(2, 200):
        q = _decode(y)
        if q is None:
            continue
        t = _times(L, q)
        if _times(4, t) != (0, 1):  # order 8 exactly
            return [_times(k, t) for k in range(8)]
    raise AssertionError("no point of order 8 found")


def _encodings(point: tuple[int, int]) -> list[bytes]:
    x, y = point
    out = []
    for sign in (0, 1):
        for yy in (y, y + _P):
            if yy < 2**255:
                out.append((yy | sign << 255).to_bytes(32, "little"))
    return out


def test_every_encoding_of_every_small_order_point_is_small_order() -> None:
    points = _torsion()
    assert len(set(points)) == 8 and (0, 1) in points
    encodings = [e for p in points for e in _encodings(p)]
    assert bytes([1]) + bytes(31) in encodings  # the reviewer's key
    assert all(small_order(e) for e in encodings)


def test_real_keys_and_mixed_order_points_are_not_small_order() -> None:
    keys = [Ed25519PrivateKey.generate().public_key().public_bytes_raw() for _ in range(50)]
    assert not any(small_order(k) for k in keys)
    # A real key's point plus one of order 8 has large order too (its owner holds the secret)
    base = _decode(int.from_bytes(keys[0], "little") & ((1 << 255) - 1))
    assert base is not None
    mixed = _edwards_add(base, _torsion()[1])
    assert not any(small_order(e) for e in _encodings(mixed))
    assert not small_order(b"\x02" * 31)  # not 32 bytes


def _forged_headers(key: bytes) -> dict[str, str]:
    return {
        "x-plume-device": auth.device_id_for(key),
        "x-plume-round": "0",
        "x-plume-timestamp": str(int(time.time() * 1000)),
        "x-plume-nonce": os.urandom(16).hex(),
        "x-plume-signature": auth.encode_signature(bytes([1]) + bytes(31) + bytes(32)),
        "content-type": "application/json",
    }


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    with ServerThread(ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token=ADMIN)) as url:
        yield url


def test_a_small_order_key_cannot_register_with_a_forged_signature(served: str) -> None:
    # Prepare: the identity point as the key, signed with R = identity, S = 0
    key = bytes([1]) + bytes(31)
    body = json.dumps({"public_key": base64.urlsafe_b64encode(key).rstrip(b"=").decode()})
    # Execute
    r = httpx.post(served + "/v1/devices", content=body, headers=_forged_headers(key))
    check_in = httpx.post(
        served + "/v1/checkin", content=b'{"task_id": 1}', headers=_forged_headers(key)
    )
    # Assert: refused, with the reason; the device was not stored, so its check-in is 401
    assert r.status_code == 400, r.text
    assert r.json()["reason"] == "malformed"
    assert "public_key is a point of small order" in r.json()["detail"]
    assert check_in.status_code == 401, check_in.text


def test_a_stored_small_order_key_verifies_nothing() -> None:
    with pytest.raises(auth.AuthError, match="small order"):
        auth._public_cached(bytes([1]) + bytes(31))


@pytest.mark.parametrize("token", ["s3cret ", " s3cret", "p\u00e4ssw\u00f6rt", "two words"])
def test_serve_and_the_admin_commands_refuse_a_token_a_header_cannot_carry(
    token: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PLUME_ADMIN_TOKEN", token)
    serve = run("serve", "--db", str(tmp_path / "p.db"), "--port", "0")
    err_serve = capsys.readouterr().err
    status = run("status", "--url", "http://127.0.0.1:1")
    err_status = capsys.readouterr().err
    says = "--admin-token (or PLUME_ADMIN_TOKEN) must be printable ASCII without spaces"
    assert (serve, status) == (2, 1)
    assert says in err_serve and says in err_status
    assert token not in err_serve + err_status  # a secret is not echoed
    assert not (tmp_path / "p.db").exists()
    with pytest.raises(ValueError, match="admin_token must be printable ASCII"):
        ServiceConfig(admin_token=token)


def test_the_bearer_scheme_is_case_insensitive(served: str) -> None:
    for scheme in ("Bearer", "bearer", "BEARER"):
        r = httpx.get(served + "/v1/admin/tasks", headers={"authorization": f"{scheme} {ADMIN}"})
        assert r.status_code == 200, (scheme, r.text)
    r = httpx.get(served + "/v1/admin/tasks", headers={"authorization": f"Basic {ADMIN}"})
    assert r.status_code == 401
