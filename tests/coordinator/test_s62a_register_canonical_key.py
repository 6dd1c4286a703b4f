"""A registration's `public_key` must be the canonical encoding of its point (RFC 8032, section
5.1.3): decoding fails when y (the low 255 bits) is at or above p = 2^255 - 19 (step 1), and
when x = 0 while the sign bit (bit 255) is 1 (step 4). Both are 400 `malformed` naming the
rule (helper s62a).

Before, the coordinator took y modulo p (`_on_curve`, `protocol.auth.small_order`), so
`y + p` (for y < 19) and `(x = 0, sign 1)` passed its key checks as second spellings of a
point: one of large order (y = p + 3) went on to the signature check, 401 `bad_signature`,
and the non-canonical spellings of the identity were named as small order.
cryptography's `Ed25519PublicKey.from_public_bytes` takes all of them, and its `verify`
(OpenSSL) decodes them as RFC 8032 forbids: the forged signature (R = identity, S = 0)
verifies under `y = p + 1` and under `y = 1` with the sign bit set, as under the identity's
canonical bytes.

The key check is compared with hypothesis against RFC 8032's own `recover_x` (section 6),
and end to end against a loopback coordinator: random 32-byte strings are refused 400 or,
canonical and on the curve, get as far as the signature (401 `bad_signature`), never a 5xx.
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
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.auth import registered_key
from coordinator.service.errors import ApiError
from protocol import auth

P = 2**255 - 19
D = -121665 * pow(121666, -1, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
SIGN = 1 << 255
# The signature (R = identity, S = 0): it verifies, for every message, under the identity.
IDENTITY_SIGNATURE = (1).to_bytes(32, "little") + bytes(32)

NOT_CANONICAL = "public_key is not canonical: its y (the low 255 bits) is at or above"
X_ZERO = "public_key is not canonical: x is 0 and its sign bit (bit 255) is set"


def recover_x(y: int, sign: int) -> int | None:
    """RFC 8032, section 6 (`recover_x`), but for None in place of an exception and x2
    reduced mod p, as section 5.1.3's step 2 computes it: the RFC's code leaves it a multiple
    of p for y = p - 1, so its `x2 == 0` misses that x is 0 there and it returns x = p for the
    sign bit 1, which step 4 refuses."""
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
    if x2 == 0:
        if sign:
            return None
        return 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P != 0:
        return None
    if (x & 1) != sign:
        x = P - x
    return x


def decodes(raw: bytes) -> bool:
    """Whether RFC 8032's decoding takes the 32 bytes."""
    n = int.from_bytes(raw, "little")
    return recover_x(n & (SIGN - 1), n >> 255) is not None


def spelled(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def encoding(y: int, sign: int = 0) -> bytes:
    return (y | sign << 255).to_bytes(32, "little")


# y = p + 3 (y = 3 unreduced): a point of large order (its y is no small-order point's), so
# only the encoding is wrong. y = p + 1 is the identity, y = 1 with the sign bit the identity
# too, y = p - 1 with the sign bit the point of order 2.
LARGE_UNREDUCED = encoding(P + 3)
IDENTITY_UNREDUCED = encoding(P + 1)
IDENTITY_SIGNED = encoding(1, 1)
ORDER_2_SIGNED = encoding(P - 1, 1)


def test_the_cases_are_what_they_say() -> None:
    # y = 3 is on the curve and not of small order; its unreduced spelling is another string
    assert decodes(encoding(3)) and not auth.small_order(encoding(3))
    assert not decodes(LARGE_UNREDUCED) and LARGE_UNREDUCED != encoding(3)
    for raw in (IDENTITY_UNREDUCED, IDENTITY_SIGNED, ORDER_2_SIGNED):
        assert not decodes(raw) and auth.small_order(raw)


@pytest.mark.parametrize("raw", [IDENTITY_UNREDUCED, IDENTITY_SIGNED])
def test_openssl_verifies_the_forged_signature_under_a_non_canonical_identity(raw: bytes) -> None:
    # Why the coordinator checks the encoding itself (its comment in `registered_key`):
    # cryptography takes these bytes, and OpenSSL verifies under them. A stricter release
    # fails here: that comment and this module's docstring then say so no longer.
    key = Ed25519PublicKey.from_public_bytes(raw)
    key.verify(IDENTITY_SIGNATURE, b"any message")  # raises InvalidSignature if refused


@pytest.mark.parametrize("sign", [0, 1])
@pytest.mark.parametrize("y", [P + 3, P + 1, P, 2**255 - 1])
def test_y_at_or_above_p_is_not_canonical(y: int, sign: int) -> None:
    # Kills `y >= _P` -> `y > _P` (y = p itself, the point y = 0 of order 4) and the raise
    # -> pass.
    with pytest.raises(ApiError) as refused:
        registered_key(spelled(encoding(y, sign)))
    assert (refused.value.status, str(refused.value.reason)) == (400, "malformed")
    assert refused.value.detail.startswith(NOT_CANONICAL), refused.value.detail


@pytest.mark.parametrize("raw", [IDENTITY_SIGNED, ORDER_2_SIGNED])
def test_x_zero_with_the_sign_bit_is_not_canonical(raw: bytes) -> None:
    with pytest.raises(ApiError) as refused:
        registered_key(spelled(raw))
    assert (refused.value.status, str(refused.value.reason)) == (400, "malformed")
    assert refused.value.detail.startswith(X_ZERO), refused.value.detail


def test_the_largest_canonical_y_and_a_negated_x_are_taken() -> None:
    # y = p - 1 (x = 0, sign 0) is the last y below p; y = 3 with either sign is a point.
    # Kills a y check at p - 1 (`y >= _P - 1`), and an x = 0 check that refuses any sign bit.
    assert registered_key(spelled(encoding(P - 1))) == encoding(P - 1)
    for sign in (0, 1):
        assert registered_key(spelled(encoding(3, sign))) == encoding(3, sign)


def _keys() -> st.SearchStrategy[bytes]:
    """32-byte strings: random ones (almost all canonical), and the rare kinds drawn on
    purpose: y at or above p, x = 0 with either sign, small y with either sign."""
    y_above = st.integers(P, SIGN - 1)
    y_small = st.integers(0, 40)
    y_x_zero = st.sampled_from([1, P - 1])
    return st.one_of(
        st.binary(min_size=32, max_size=32),
        st.builds(encoding, st.one_of(y_above, y_small, y_x_zero), st.integers(0, 1)),
    )


@settings(max_examples=400, deadline=None)
@given(_keys())
def test_registered_key_agrees_with_rfc_8032s_decoding(raw: bytes) -> None:
    try:
        taken = registered_key(spelled(raw))
    except ApiError as refused:
        assert (refused.status, str(refused.reason)) == (400, "malformed"), refused.detail
        assert not decodes(raw)
        return
    assert taken == raw
    assert decodes(raw)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_every_real_key_is_taken(seed: bytes) -> None:
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    assert registered_key(spelled(public)) == public


# -- against a loopback coordinator ----------------------------------------------------------


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    root = tmp_path_factory.mktemp("canonical")
    with ServerThread(ServiceConfig(db_path=str(root / "plume.db"))) as url:
        with httpx.Client(base_url=url) as client:
            yield client


def _register(http: httpx.Client, public: bytes, signature: bytes) -> httpx.Response:
    """A registration of `public`, its headers naming the id derived from those bytes and
    carrying `signature` (well formed; no key of ours made it)."""
    body = json.dumps({"public_key": spelled(public)}).encode()
    headers = {
        "content-type": "application/json",
        "x-plume-device": hashlib.sha256(public).digest()[:16].hex(),
        "x-plume-round": "0",
        "x-plume-timestamp": str(int(time.time() * 1000)),
        "x-plume-nonce": secrets.token_hex(16),
        "x-plume-signature": auth.encode_signature(signature),
    }
    return http.post("/v1/devices", content=body, headers=headers)


def _devices(http: httpx.Client) -> float:
    text = http.get("/metrics").text
    (line,) = [x for x in text.splitlines() if x.startswith("plume_registered_devices ")]
    return float(line.split()[1])


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (LARGE_UNREDUCED, NOT_CANONICAL),  # was 401 bad_signature
        (IDENTITY_UNREDUCED, NOT_CANONICAL),  # was 400, named as small order
        (IDENTITY_SIGNED, X_ZERO),  # was 400, named as small order
    ],
)
def test_a_non_canonical_key_is_400_malformed_naming_the_rule(
    http: httpx.Client, raw: bytes, detail: str
) -> None:
    # Prepare: signed with (identity, 0), which OpenSSL verifies under the identity's spellings
    devices = _devices(http)

    # Execute
    r = _register(http, raw, IDENTITY_SIGNATURE)

    # Assert: refused for its encoding, and not stored
    assert r.status_code == 400, r.text
    assert r.json()["reason"] == "malformed"
    assert r.json()["detail"].startswith(detail), r.json()["detail"]
    assert _devices(http) == devices


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(_keys())
def test_random_keys_are_refused_400_or_reach_the_signature_never_5xx(
    http: httpx.Client, raw: bytes
) -> None:
    # Execute: no key of ours signs, so no such registration can pass
    r = _register(http, raw, secrets.token_bytes(64))

    # Assert: a key check's 400, or a key canonical, on the curve and not of small order whose
    # signature is then checked (401)
    assert r.status_code in (400, 401), r.text
    if r.status_code == 400:
        assert r.json()["reason"] == "malformed", r.text
        assert not decodes(raw) or auth.small_order(raw), r.text
    else:
        assert r.json()["reason"] == "bad_signature", r.text
        assert decodes(raw) and not auth.small_order(raw), raw.hex()
