"""Tests for protocol.auth: signing layout, verification, tampering and malformed fields."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import auth
from protocol.names import Header

# A fixed key so the golden bytes below never change (RFC 8032 test vector 1's secret).
KEY = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")


def _message(**over: object) -> bytes:
    fields: dict[str, object] = {
        "method": "POST",
        "target": "/v1/rounds/3/updates?examples=40",
        "device_id": auth.device_id_for(auth.public_key_bytes(KEY)),
        "round_id": 3,
        "body_hash": auth.body_sha256(b"frame"),
        "timestamp_ms": 1_700_000_000_000,
        "nonce": "00112233445566778899aabbccddeeff",
    }
    fields.update(over)
    return auth.signing_message(**fields)  # type: ignore[arg-type]


def test_signing_message_golden_layout() -> None:
    # Prepare
    pub = auth.public_key_bytes(KEY)
    device = hashlib.sha256(pub).digest()[:16].hex()
    # Execute
    msg = _message()
    # Assert
    assert pub.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert msg == (
        b"PLUME-SIG-V1\nPOST\n/v1/rounds/3/updates?examples=40\n"
        + device.encode()
        + b"\n3\n"
        + hashlib.sha256(b"frame").hexdigest().encode()
        + b"\n1700000000000\n00112233445566778899aabbccddeeff"
    )


def test_sign_verify_roundtrip_and_deterministic() -> None:
    msg = _message()
    sig = auth.sign(KEY, msg)
    assert len(sig) == 64
    assert auth.sign(KEY, msg) == sig  # Ed25519 is deterministic
    assert auth.verify(auth.public_key_bytes(KEY), msg, sig)


@pytest.mark.parametrize(
    "field,value",
    [
        ("method", "PUT"),
        ("target", "/v1/rounds/4/updates?examples=40"),
        ("target", "/v1/rounds/3/updates?examples=41"),
        ("round_id", 4),
        ("body_hash", auth.body_sha256(b"frame!")),
        ("timestamp_ms", 1_700_000_000_001),
        ("nonce", "00112233445566778899aabbccddeefe"),
    ],
)
def test_any_tampered_field_fails(field: str, value: object) -> None:
    sig = auth.sign(KEY, _message())
    assert not auth.verify(auth.public_key_bytes(KEY), _message(**{field: value}), sig)


def test_foreign_key_fails() -> None:
    other = auth.generate_private_key()
    sig = auth.sign(other, _message())
    assert not auth.verify(auth.public_key_bytes(KEY), _message(), sig)


@pytest.mark.parametrize(
    "field,value",
    [
        ("method", "post"),
        ("method", "PO ST"),
        ("target", "v1/no-slash"),
        ("target", "/with space"),
        ("target", "/line\nbreak"),
        ("device_id", "XYZ"),
        ("round_id", -1),
        ("body_hash", "abc"),
        ("timestamp_ms", -5),
        ("nonce", "short"),
        ("nonce", "0011223344556677\n8899"),
    ],
)
def test_malformed_fields_raise(field: str, value: object) -> None:
    with pytest.raises(auth.AuthError):
        _message(**{field: value})


def test_bad_keys_and_signatures() -> None:
    with pytest.raises(auth.AuthError):
        auth.public_key_bytes(b"short")
    with pytest.raises(auth.AuthError):
        auth.device_id_for(b"\x00" * 31)
    assert not auth.verify(b"\x00" * 31, b"m", b"\x00" * 64)
    assert not auth.verify(auth.public_key_bytes(KEY), b"m", b"\x00" * 63)
    with pytest.raises(auth.AuthError):
        auth.decode_signature("not-base64!")
    with pytest.raises(auth.AuthError):
        auth.decode_signature("A" * 85)


def test_sign_request_headers_parse_back() -> None:
    # Prepare
    headers = auth.sign_request(
        KEY, method="GET", target="/v1/rounds/7", round_id=7, body=b"", timestamp_ms=5
    )
    # Execute
    fields = auth.fields_from_headers({str(k): v for k, v in headers.items()})
    msg = auth.signing_message(
        method="GET",
        target="/v1/rounds/7",
        device_id=fields.device_id,
        round_id=fields.round_id,
        body_hash=auth.body_sha256(b""),
        timestamp_ms=fields.timestamp_ms,
        nonce=fields.nonce,
    )
    # Assert
    assert fields.round_id == 7 and fields.timestamp_ms == 5
    assert auth.verify(auth.public_key_bytes(KEY), msg, fields.signature)


def test_fields_from_headers_rejects_missing_and_malformed() -> None:
    good = {
        str(k): v
        for k, v in auth.sign_request(
            KEY, method="GET", target="/", round_id=0, body=b"", timestamp_ms=1
        ).items()
    }
    for h in (Header.DEVICE, Header.TIMESTAMP, Header.NONCE, Header.SIGNATURE):
        partial = dict(good)
        del partial[h]
        with pytest.raises(auth.AuthError, match="missing"):
            auth.fields_from_headers(partial)
    for h, bad in ((Header.ROUND, "-1"), (Header.TIMESTAMP, "1.5"), (Header.NONCE, "zz" * 10)):
        with pytest.raises(auth.AuthError):
            auth.fields_from_headers({**good, h: bad})


@settings(max_examples=40, deadline=None)
@given(
    body=st.binary(max_size=256),
    round_id=st.integers(0, 2**40),
    ts=st.integers(0, 2**50),
    flip=st.integers(0, 63 * 8),
)
def test_property_roundtrip_and_bit_flip(body: bytes, round_id: int, ts: int, flip: int) -> None:
    # Prepare
    msg = _message(body_hash=auth.body_sha256(body), round_id=round_id, timestamp_ms=ts)
    sig = auth.sign(KEY, msg)
    pub = auth.public_key_bytes(KEY)
    # Execute
    flipped = bytearray(sig)
    flipped[flip // 8] ^= 1 << (flip % 8)
    # Assert
    assert auth.verify(pub, msg, sig)
    assert auth.decode_signature(auth.encode_signature(sig)) == sig
    assert not auth.verify(pub, msg, bytes(flipped))
