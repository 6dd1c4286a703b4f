"""`protocol.auth` at its edges (helper s61a's mutation hunt): the range of round and
timestamp, which the message and the headers both cap below 2^63; a device id header out of
form; the nonce the SDK makes; `small_order` of 32 bytes that are no point.

Each test names the mutation of protocol/auth.py it kills (a survivor of the hunt).
"""

from __future__ import annotations

import re

import pytest

from protocol import auth
from protocol.names import Header

KEY = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
TOP = 2**63 - 1  # the largest round id and timestamp (SQLite's largest INTEGER)


def _message(**over: object) -> bytes:
    fields: dict[str, object] = {
        "method": "GET",
        "target": "/v1/rounds/3",
        "device_id": auth.device_id_for(auth.public_key_bytes(KEY)),
        "round_id": 3,
        "body_hash": auth.body_sha256(b""),
        "timestamp_ms": 1_700_000_000_000,
        "nonce": "00112233445566778899aabbccddeeff",
    }
    fields.update(over)
    return auth.signing_message(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["round_id", "timestamp_ms"])
def test_the_signed_message_takes_2_63_minus_1_and_refuses_2_63(field: str) -> None:
    # Kills protocol/auth.py:202 (`_integer`) `number < 2**63` -> `<=`, 2**63 -> 3**63 and
    # 2**63 -> 2**64: each let 2^63 be signed, a value no header may carry.
    assert (
        _message(**{field: TOP}).split(b"\n")[4 if field == "round_id" else 6] == str(TOP).encode()
    )
    with pytest.raises(auth.AuthError, match="out of range"):
        _message(**{field: 2**63})


def _headers(**over: str) -> dict[str, str]:
    signed = auth.sign_request(
        KEY, method="GET", target="/v1/rounds/3", round_id=3, body=b"", timestamp_ms=1
    )
    return {**{str(k): v for k, v in signed.items()}, **over}


def test_a_timestamp_header_of_2_63_minus_1_parses() -> None:
    # Kills protocol/auth.py:345 `int(ts_text) >= 2**63` -> `>= 2**62`, which refused the top
    # half of the documented range (the round header's own edge is in
    # tests/coordinator/test_h234_signed_header_range.py).
    fields = auth.fields_from_headers(_headers(**{Header.TIMESTAMP: str(TOP)}))
    assert fields.timestamp_ms == TOP


@pytest.mark.parametrize(
    "device",
    ["A" * 32, "a" * 31, "a" * 33, "g" * 32, " " + "a" * 31],
    ids=["upper", "short", "long", "not-hex", "space"],
)
def test_a_device_header_out_of_form_is_refused_with_the_headers(device: str) -> None:
    # Kills protocol/auth.py:337 (the device id's form check dropped): the coordinator then
    # looked the id up and answered 401 `unregistered`, where docs/http-api.md gives a
    # malformed signature header 401 `unsigned`.
    with pytest.raises(auth.AuthError, match="device id must be 32 lower-case hex digits"):
        auth.fields_from_headers(_headers(**{Header.DEVICE: device}))


def test_the_sdk_nonce_is_128_random_bits_in_32_hex_digits() -> None:
    # docs/http-api.md: "the SDK uses 128 random bits". Kills protocol/auth.py:214
    # `os.urandom(16)` -> 15 or 17 bytes.
    nonces = {auth.new_nonce() for _ in range(8)}
    assert len(nonces) == 8
    assert all(re.fullmatch(r"[0-9a-f]{32}", n) for n in nonces), nonces


def test_32_bytes_that_are_no_point_are_not_small_order() -> None:
    # `small_order`'s docstring: False for a string that is no point at all. y = 2 has no x
    # on Ed25519 (the coordinator refuses it as no point, 400 `malformed`, not as small order).
    # Kills protocol/auth.py:151 `return False` -> `return True`.
    no_point = (2).to_bytes(32, "little")
    assert not auth.small_order(no_point)
    assert not auth.small_order(no_point[:31] + b"\x80")  # its sign bit set
