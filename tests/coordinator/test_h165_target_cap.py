"""A correctly signed request whose target is longer than the signing format's cap (2,048
characters) is refused with a detail that names the cap.

Before: the detail was "request target must be printable ASCII starting with '/'", which is
true of the refused target and sent the developer looking for a bad character.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from protocol import auth
from protocol.names import Reason

from .test_service_hardening import _refused, _register
from .test_service_support import task_server

NONCE = "00112233445566778899aabbccddeeff"


def _hand_signed(key: bytes, target: str) -> dict[str, str]:
    """Signature headers for a GET of `target`, the message built by hand as the format says
    (`auth.signing_message` would refuse the long target before signing it)."""
    device = auth.device_id_for(auth.public_key_bytes(key))
    ts = str(int(time.time() * 1000))
    message = b"\n".join(
        [
            auth.SIGNATURE_VERSION,
            b"GET",
            target.encode(),
            device.encode(),
            b"0",
            auth.body_sha256(b"").encode(),
            ts.encode(),
            NONCE.encode(),
        ]
    )
    return {
        "x-plume-device": device,
        "x-plume-round": "0",
        "x-plume-timestamp": ts,
        "x-plume-nonce": NONCE,
        "x-plume-signature": auth.encode_signature(auth.sign(key, message)),
    }


def test_a_signed_target_over_the_cap_is_refused_naming_the_cap(tmp_path: Path) -> None:
    # Prepare: a registered device; a 3,000-character target signed by hand
    key = auth.generate_private_key()
    target = "/v1/tasks/1/model?x=" + "a" * (3000 - len("/v1/tasks/1/model?x="))
    headers = _hand_signed(key, target)
    with task_server(tmp_path) as http:
        assert _register(http, key).status_code == 200
        # Execute
        r = http.get(target, headers=headers)
    # Assert: 401 bad_signature as before, but the detail gives the length and the cap
    body = _refused(r, 401, Reason.BAD_SIGNATURE)
    assert "printable" not in body["detail"]
    assert "3,000 characters" in body["detail"] and "2,048" in body["detail"], body


def test_signing_names_the_cap_and_still_names_a_bad_character() -> None:
    key = auth.generate_private_key()

    def sign(target: str) -> dict[str, str]:
        return auth.sign_request(
            key, method="GET", target=target, round_id=0, body=b"", timestamp_ms=1
        )

    # A target of exactly the cap signs; one character more is refused naming the cap
    sign("/" + "a" * 2047)
    with pytest.raises(auth.AuthError, match=r"2,049 characters.*2,048"):
        sign("/" + "a" * 2048)
    # A short target out of form keeps its own message
    for bad in ("/a b", "v1/checkin", "/é"):
        with pytest.raises(auth.AuthError, match="printable ASCII"):
            sign(bad)
