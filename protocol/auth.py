"""Ed25519 request signing as stateless byte functions (the layout is in docs/http-api.md).

Every device request is signed over one ASCII message, eight lines joined by `\\n`:

    PLUME-SIG-V1
    <METHOD>                      upper case, e.g. POST
    <target>                      raw path plus `?query` exactly as sent, e.g. /v1/rounds/3/updates?train_loss=0.73
                                  (an empty query is none: `/x?` is signed as `/x`)
    <device id>                   32 lower-case hex digits: SHA-256(public key)[:16]
    <round>                       decimal round id, 0 when the request is not about a round
    <body sha256>                 64 lower-case hex digits of SHA-256 of the body bytes (empty body too)
    <timestamp>                   decimal Unix time in milliseconds
    <nonce>                       16 to 64 lower-case hex digits, fresh per request

The signature is the 64-byte Ed25519 signature of those bytes, sent base64url without padding.
No field may contain a newline, so the message parses back one way only. Headers are canonical
too, so one signed request has one header text: round and timestamp are decimal without leading
zeros (and below 2^63), and the signature's last base64url character has its 4 spare bits
zero.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import operator
import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .names import Header

__all__ = [
    "small_order",
    "SIGNATURE_VERSION",
    "MAX_TARGET_CHARS",
    "AuthError",
    "SignedFields",
    "generate_private_key",
    "public_key_bytes",
    "device_id_for",
    "body_sha256",
    "new_nonce",
    "signing_message",
    "sign",
    "verify",
    "encode_signature",
    "decode_signature",
    "sign_request",
    "fields_from_headers",
]

SIGNATURE_VERSION = b"PLUME-SIG-V1"
PRIVATE_KEY_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64

_METHOD = re.compile(r"[A-Z]{1,16}")
# A request target is printable ASCII without spaces (RFC 9112 origin-form), capped in length.
MAX_TARGET_CHARS = 2048
_TARGET = re.compile(r"/[\x21-\x7e]*")
_DEVICE = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NONCE = re.compile(r"[0-9a-f]{16,64}")
# Canonical decimal only: the message signs str(int(header)), so "007" would verify as "7".
_DIGITS = re.compile(r"0|[1-9][0-9]{0,18}")


class AuthError(ValueError):
    """A signature field or key is malformed (not merely a signature that fails to verify)."""


@dataclass(frozen=True, slots=True)
class SignedFields:
    """The header fields of a signed request, parsed and checked for form."""

    device_id: str
    round_id: int
    timestamp_ms: int
    nonce: str
    signature: bytes


def generate_private_key() -> bytes:
    """A new Ed25519 private key: 32 raw bytes from the OS CSPRNG."""
    return Ed25519PrivateKey.generate().private_bytes_raw()


def _key_bytes(key: object, size: int, what: str) -> bytes:
    """`key` as immutable bytes of exactly `size`, else `AuthError` (never a TypeError)."""
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise AuthError(f"{what} must be bytes, got {type(key).__name__}")
    raw = bytes(key)
    if len(raw) != size:
        raise AuthError(f"{what} must be {size} bytes")
    return raw


def _private(private_key: bytes) -> Ed25519PrivateKey:
    return _private_cached(_key_bytes(private_key, PRIVATE_KEY_BYTES, "Ed25519 private key"))


def _public(public_key: bytes) -> Ed25519PublicKey:
    return _public_cached(_key_bytes(public_key, PUBLIC_KEY_BYTES, "Ed25519 public key"))


@functools.lru_cache(maxsize=1024)
def _private_cached(private_key: bytes) -> Ed25519PrivateKey:
    # Cached: loading a key costs as much as a signature, and a device signs every request.
    if len(private_key) != PRIVATE_KEY_BYTES:
        raise AuthError(f"Ed25519 private key must be {PRIVATE_KEY_BYTES} bytes")
    return Ed25519PrivateKey.from_private_bytes(private_key)


# Ed25519's field prime, curve constant d = -121665 / 121666 and a square root of -1 (RFC 8032).
_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _edwards_add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """a + b on Ed25519 (-x^2 + y^2 = 1 + d x^2 y^2), affine: the formulas are complete (d is
    not a square mod p), so no case needs its own branch."""
    (x1, y1), (x2, y2) = a, b
    t = _D * x1 * x2 * y1 * y2 % _P
    x3 = (x1 * y2 + y1 * x2) * pow(1 + t, -1, _P) % _P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, -1, _P) % _P
    return x3, y3


def small_order(public_key: bytes) -> bool:
    """Whether the 32 bytes encode a point of order 1, 2, 4 or 8 (in any encoding: either sign
    bit, y reduced mod p). Such a "public key" has no secret key, and a signature (R, S) =
    (identity, 0) verifies under the identity point for every message (helper-340 registered
    one and signed check-ins with it: anyone could act as that device). False for a string
    that is no point at all (its signatures never verify)."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        return False
    y = int.from_bytes(public_key, "little") & ((1 << 255) - 1)
    y %= _P
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    if v * x * x % _P != u:
        x = x * _SQRT_M1 % _P
        if v * x * x % _P != u:
            return False  # no x: not a point
    q = (x, y)
    for _ in range(3):  # 8 Q
        q = _edwards_add(q, q)
    return q == (0, 1)


@functools.lru_cache(maxsize=65536)
def _public_cached(public_key: bytes) -> Ed25519PublicKey:
    # Cached per registered device: the coordinator verifies each device's requests repeatedly.
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise AuthError(f"Ed25519 public key must be {PUBLIC_KEY_BYTES} bytes")
    if small_order(public_key):
        raise AuthError("the public key is a point of small order: it has no secret key")
    try:
        return Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError as exc:
        raise AuthError(f"invalid Ed25519 public key: {exc}") from exc


def public_key_bytes(private_key: bytes) -> bytes:
    """The 32-byte raw public key of a raw private key."""
    return _private(private_key).public_key().public_bytes_raw()


def device_id_for(public_key: bytes) -> str:
    """A device's id: the first 16 bytes of SHA-256(public key), as 32 hex digits.

    Deriving the id from the key means nobody can register an id for a key they do not hold.
    """
    raw = _key_bytes(public_key, PUBLIC_KEY_BYTES, "Ed25519 public key")
    return hashlib.sha256(raw).digest()[:16].hex()


def _device_of(private_key: bytes) -> str:
    return _device_of_cached(_key_bytes(private_key, PRIVATE_KEY_BYTES, "Ed25519 private key"))


@functools.lru_cache(maxsize=1024)
def _device_of_cached(private_key: bytes) -> str:
    return device_id_for(public_key_bytes(private_key))


def _integer(value: object, what: str) -> int:
    # bool and float would print as "True" / "3.0" into the message: not decimal integers.
    if isinstance(value, bool):
        raise AuthError(f"{what} must be an integer, got a bool")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise AuthError(f"{what} must be an integer, got {type(value).__name__}") from None
    if not 0 <= number < 2**63:
        raise AuthError(f"{what} out of range")
    return number


def body_sha256(body: bytes) -> str:
    """64 lower-case hex digits of SHA-256(body)."""
    return hashlib.sha256(body).hexdigest()


def new_nonce() -> str:
    """128 random bits as 32 hex digits."""
    return os.urandom(16).hex()


def signing_message(
    *,
    method: str,
    target: str,
    device_id: str,
    round_id: int,
    body_hash: str,
    timestamp_ms: int,
    nonce: str,
) -> bytes:
    """The exact bytes that get signed. Raises `AuthError` if any field is out of its form."""
    if not _METHOD.fullmatch(method):
        raise AuthError(f"method must be upper-case letters, got {method!r}")
    if len(target) > MAX_TARGET_CHARS:
        raise AuthError(
            f"request target is {len(target):,} characters, above the signing format's cap of "
            f"{MAX_TARGET_CHARS:,} (path and query): send a shorter query"
        )
    if not _TARGET.fullmatch(target):
        raise AuthError("request target must be printable ASCII starting with '/'")
    if not _DEVICE.fullmatch(device_id):
        raise AuthError("device id must be 32 lower-case hex digits")
    round_id = _integer(round_id, "round id")
    if not _HEX64.fullmatch(body_hash):
        raise AuthError("body hash must be 64 lower-case hex digits")
    timestamp_ms = _integer(timestamp_ms, "timestamp")
    if not _NONCE.fullmatch(nonce):
        raise AuthError("nonce must be 16 to 64 lower-case hex digits")
    lines = [
        SIGNATURE_VERSION,
        method.encode(),
        target.encode(),
        device_id.encode(),
        str(round_id).encode(),
        body_hash.encode(),
        str(timestamp_ms).encode(),
        nonce.encode(),
    ]
    return b"\n".join(lines)


def sign(private_key: bytes, message: bytes) -> bytes:
    """64-byte Ed25519 signature of `message`."""
    return _private(private_key).sign(message)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True iff `signature` is a valid Ed25519 signature of `message` under `public_key`."""
    if not isinstance(signature, (bytes, bytearray, memoryview)):
        return False
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        _public(public_key).verify(signature, message)
    except (InvalidSignature, AuthError):
        return False
    return True


def encode_signature(signature: bytes) -> str:
    """base64url without padding (86 characters for 64 bytes)."""
    return base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


def decode_signature(text: str) -> bytes:
    """Inverse of `encode_signature`; raises `AuthError` unless it yields exactly 64 bytes."""
    if len(text) != 86 or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise AuthError("signature must be 86 base64url characters")
    try:
        raw = base64.urlsafe_b64decode(text + "==")
    except (binascii.Error, ValueError) as exc:
        raise AuthError("signature is not base64url") from exc
    if len(raw) != SIGNATURE_BYTES:
        raise AuthError("signature must decode to 64 bytes")
    # 86 characters carry 516 bits for 512: the last character's 4 spare bits must be zero,
    # else 16 different header texts would stand for one signature.
    if encode_signature(raw) != text:
        raise AuthError("signature is not canonical base64url (spare bits set)")
    return raw


def sign_request(
    private_key: bytes,
    *,
    method: str,
    target: str,
    round_id: int,
    body: bytes,
    timestamp_ms: int,
    nonce: str | None = None,
) -> dict[str, str]:
    """The signature headers for one request (device id, round, timestamp, nonce, signature)."""
    device_id = _device_of(private_key)
    nonce = new_nonce() if nonce is None else nonce
    message = signing_message(
        method=method,
        target=target,
        device_id=device_id,
        round_id=round_id,
        body_hash=body_sha256(body),
        timestamp_ms=timestamp_ms,
        nonce=nonce,
    )
    return {
        Header.DEVICE: device_id,
        Header.ROUND: str(round_id),
        Header.TIMESTAMP: str(timestamp_ms),
        Header.NONCE: nonce,
        Header.SIGNATURE: encode_signature(sign(private_key, message)),
    }


def fields_from_headers(get: dict[str, str]) -> SignedFields:
    """Parse the signature headers (lower-case keys). Raises `AuthError` naming what is wrong."""
    missing = [
        h for h in (Header.DEVICE, Header.TIMESTAMP, Header.NONCE, Header.SIGNATURE) if h not in get
    ]
    if missing:
        raise AuthError("missing signature header(s): " + ", ".join(missing))
    device_id = get[Header.DEVICE]
    if not _DEVICE.fullmatch(device_id):
        raise AuthError("device id must be 32 lower-case hex digits")
    round_text = get.get(Header.ROUND, "0")
    ts_text = get[Header.TIMESTAMP]
    # 19 digits reach past 2^63 - 1: refused here with the other malformed headers (`unsigned`),
    # not later by `signing_message` as if the signature were wrong.
    if not _DIGITS.fullmatch(round_text) or int(round_text) >= 2**63:
        raise AuthError("round header must be a decimal integer in [0, 2^63)")
    if not _DIGITS.fullmatch(ts_text) or int(ts_text) >= 2**63:
        raise AuthError("timestamp header must be decimal milliseconds in [0, 2^63)")
    nonce = get[Header.NONCE]
    if not _NONCE.fullmatch(nonce):
        raise AuthError("nonce must be 16 to 64 lower-case hex digits")
    return SignedFields(
        device_id=device_id,
        round_id=int(round_text),
        timestamp_ms=int(ts_text),
        nonce=nonce,
        signature=decode_signature(get[Header.SIGNATURE]),
    )
