"""Review of protocol.auth: one header text per signed value, and typed errors for bad keys."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import auth
from protocol.names import Header

# RFC 8032 test vector 1's secret: fixed so the signatures below are deterministic.
KEY = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _headers(**over: str) -> dict[str, str]:
    headers = auth.sign_request(
        KEY,
        method="POST",
        target="/v1/rounds/3/updates",
        round_id=3,
        body=b"frame",
        timestamp_ms=1_700_000_000_000,
        nonce="00112233445566778899aabbccddeeff",
    )
    headers.update(over)
    return {str(k): v for k, v in headers.items()}


@settings(max_examples=30, deadline=None)
@given(spare=st.integers(min_value=1, max_value=3))
def test_a_signature_with_spare_bits_set_is_refused(spare: int) -> None:
    # Prepare: the same 64 bytes, spelled with the last character's unused bits set
    text = _headers()[Header.SIGNATURE]
    other = text[:-1] + B64URL[B64URL.index(text[-1]) ^ spare]

    # Execute / Assert
    assert auth.decode_signature(text) == auth.fields_from_headers(_headers()).signature
    with pytest.raises(auth.AuthError, match="canonical"):
        auth.decode_signature(other)


@pytest.mark.parametrize("header", [Header.ROUND, Header.TIMESTAMP])
@pytest.mark.parametrize("text", ["03", "00", "0001700000000000"])
def test_decimal_headers_with_leading_zeros_are_refused(header: str, text: str) -> None:
    with pytest.raises(auth.AuthError, match="decimal"):
        auth.fields_from_headers(_headers(**{header: text}))


def test_canonical_decimal_headers_still_parse() -> None:
    fields = auth.fields_from_headers(_headers(**{Header.ROUND: "0"}))
    assert fields.round_id == 0
    assert fields.timestamp_ms == 1_700_000_000_000


@pytest.mark.parametrize("value", [True, 3.0, "3", None])
@pytest.mark.parametrize("field", ["round_id", "timestamp_ms"])
def test_non_integer_round_or_timestamp_cannot_be_signed(field: str, value: object) -> None:
    # A bool or float would print as "True" / "3.0" into the signed message.
    kwargs: dict[str, object] = {
        "method": "POST",
        "target": "/v1/x",
        "round_id": 1,
        "body": b"",
        "timestamp_ms": 1,
    }
    kwargs[field] = value
    with pytest.raises(auth.AuthError, match="integer"):
        auth.sign_request(KEY, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["k" * 32, 32, None, [0] * 32])
def test_keys_of_the_wrong_type_are_typed_errors(key: object) -> None:
    with pytest.raises(auth.AuthError, match="bytes"):
        auth.public_key_bytes(key)  # type: ignore[arg-type]
    with pytest.raises(auth.AuthError, match="bytes"):
        auth.device_id_for(key)  # type: ignore[arg-type]
    with pytest.raises(auth.AuthError, match="bytes"):
        auth.sign(key, b"m")  # type: ignore[arg-type]
    assert auth.verify(key, b"m", bytes(64)) is False  # type: ignore[arg-type]


def test_mutable_key_buffers_are_accepted_as_their_bytes() -> None:
    # Prepare
    public = auth.public_key_bytes(KEY)
    message = b"PLUME-SIG-V1\nm"

    # Execute
    signature = auth.sign(bytearray(KEY), message)  # type: ignore[arg-type]

    # Assert: same deterministic Ed25519 signature, verifiable under a bytearray key too
    assert signature == auth.sign(KEY, message)
    assert auth.verify(bytearray(public), message, signature)  # type: ignore[arg-type]
    assert auth.device_id_for(bytearray(public)) == auth.device_id_for(public)  # type: ignore[arg-type]


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_keys_of_the_wrong_length_are_typed_errors(length: int) -> None:
    with pytest.raises(auth.AuthError, match="32 bytes"):
        auth.public_key_bytes(b"\x01" * length)
    with pytest.raises(auth.AuthError, match="32 bytes"):
        auth.device_id_for(b"\x01" * length)
    assert auth.verify(b"\x01" * length, b"m", bytes(64)) is False


def test_a_signature_of_the_wrong_type_does_not_verify() -> None:
    public = auth.public_key_bytes(KEY)
    assert auth.verify(public, b"m", "s" * 64) is False  # type: ignore[arg-type]


def test_valid_requests_sign_exactly_as_before() -> None:
    # Golden headers from the code before this review (RFC 8032 key 1): the fixes only refuse
    # bad input, so an honest request's bytes must not change.
    assert _headers() == {
        "x-plume-device": "21fe31dfa154a261626bf854046fd227",
        "x-plume-round": "3",
        "x-plume-timestamp": "1700000000000",
        "x-plume-nonce": "00112233445566778899aabbccddeeff",
        "x-plume-signature": "p-Cc64bB_tUHGhFJG-CkkbUAQVHdtb-h7S2HLJJh6H-0u12Kvbug9mqcu_H4CFF2a5X9TzZWfLrYjEMKJ5ljBw",
    }
    fields = auth.fields_from_headers(_headers())
    assert (fields.round_id, fields.timestamp_ms) == (3, 1_700_000_000_000)
