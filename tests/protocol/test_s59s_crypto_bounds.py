"""Bounds in protocol/secagg/_crypto.py that a mutation hunt (helper s59s) could move without any
test noticing: the canonical-key check at exactly u = 2^255 - 19, the ciphertext-length check
in `decrypt` (and the device refusal it gives for a relayed ciphertext too short to hold a
nonce), and `public_key_of`'s named error for a key of the wrong length (the server calls it on
every reconstructed mask key)."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.secagg import (
    DecryptionFailed,
    KeyAgreementFailed,
    ShareDelivery,
    Stage,
    WrongAddress,
    check_public_key,
    decrypt,
    encrypt,
    generate_keypair,
    public_key_of,
    share_associated_data,
)

from .test_s49_secagg_refusals import _Round

P = (1 << 255) - 19
AD = share_associated_data(bytes(32), 1, 2, 3)


def test_u_equal_to_p_is_not_canonical_and_p_minus_one_is() -> None:
    # u = p is the point u = 0 written without reduction: the first non-canonical value
    with pytest.raises(KeyAgreementFailed, match="not canonical"):
        check_public_key(P.to_bytes(32, "little"))
    check_public_key((P - 1).to_bytes(32, "little"))  # the largest canonical u


@pytest.mark.parametrize("size", [0, 7, 27])
def test_a_blob_shorter_than_nonce_and_tag_is_a_decryption_failure(size: int) -> None:
    # Without the length check a blob under 8 bytes reached AESGCM as a too-short nonce and
    # raised ValueError, which no caller catches
    with pytest.raises(DecryptionFailed, match=f"ciphertext of {size} bytes is shorter"):
        decrypt(bytes(32), bytes(size), AD)


def test_a_blob_of_exactly_nonce_and_tag_decrypts_to_the_empty_plaintext() -> None:
    key = bytes(range(32))
    blob = encrypt(key, b"", AD)
    assert len(blob) == 12 + 16
    assert decrypt(key, blob, AD) == b""


@pytest.mark.parametrize("size", [0, 5])
def test_a_device_refuses_a_relayed_ciphertext_too_short_for_a_nonce(size: int) -> None:
    # Prepare: an honest round up to the share deliveries
    r = _Round()
    r.advertise()
    r.share_keys()
    d = r.deliveries[0]
    (src, _), *rest = d.ciphertexts
    hostile = ShareDelivery(d.round_id, ((src, bytes(size)), *rest))
    client = r.clients[0]
    # Execute / Assert: the typed refusal of any undecryptable bundle, and no stage change
    with pytest.raises(WrongAddress, match=f"ciphertext labelled {src} -> 0 does not decrypt"):
        client.masked_input(hostile, np.zeros(r.p.vector_len, np.uint64))
    assert client.stage == Stage.MASKED_INPUT


@pytest.mark.parametrize("size", [0, 31, 33])
def test_public_key_of_a_private_key_of_the_wrong_length_is_a_key_agreement_failure(
    size: int,
) -> None:
    with pytest.raises(KeyAgreementFailed, match=f"private key of {size} bytes, expected 32"):
        public_key_of(bytes(size))
    sk, pk = generate_keypair()
    assert public_key_of(sk) == pk
