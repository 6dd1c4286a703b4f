"""Stateless crypto byte functions: X25519 key agreement, HKDF-SHA256, AES-GCM with bound context.

Keys and secrets are raw `bytes` (32 for X25519 keys and derived keys). Nothing here keeps state;
the protocol layers above decide which key is used for what.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._errors import DecryptionFailed, KeyAgreementFailed

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "TAG_BYTES",
    "generate_keypair",
    "public_key_of",
    "check_public_key",
    "agree",
    "hkdf",
    "share_associated_data",
    "encrypt",
    "decrypt",
]

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_P25519 = (1 << 255) - 19


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as `(private: bytes[32], public: bytes[32])`."""
    sk = X25519PrivateKey.generate()
    return sk.private_bytes_raw(), sk.public_key().public_bytes_raw()


def public_key_of(private_key: bytes) -> bytes:
    """The 32-byte X25519 public key of a 32-byte private key."""
    if len(private_key) != KEY_BYTES:
        raise KeyAgreementFailed(f"private key of {len(private_key)} bytes, expected 32")
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


def check_public_key(key: bytes) -> None:
    """Refuse (`KeyAgreementFailed`) an X25519 public key not in canonical form.

    RFC 7748 ignores bit 255 and reads u modulo 2^255 - 19, so a key with bit 255 set, or with
    u >= 2^255 - 19, is another spelling of a canonical key's point: it agrees the same
    secrets yet passes a byte-for-byte duplicate check. Honest keys are canonical (X25519
    writes u < 2^255 - 19 with bit 255 clear); anything else is refused where keys arrive.
    """
    if len(key) != KEY_BYTES:
        raise KeyAgreementFailed(f"X25519 public key of {len(key)} bytes, expected 32")
    if int.from_bytes(key, "little") >= _P25519:  # bit 255 set is u >= 2^255 > p too
        raise KeyAgreementFailed(
            "X25519 public key is not canonical (bit 255 set or u >= 2^255 - 19): another "
            "encoding of some other key's point"
        )


def hkdf(secret: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 (no salt) of `secret` under the context label `info`."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def agree(private_key: bytes, peer_public: bytes, info: bytes) -> bytes:
    """X25519(private, peer) then HKDF-SHA256 with `info`: a 32-byte key both ends derive alike.

    `info` binds the key to its use and round (e.g. b"enc" + round digest), so a key derived for
    one purpose or one model/plan never equals another's.
    """
    if len(private_key) != KEY_BYTES or len(peer_public) != KEY_BYTES:
        raise KeyAgreementFailed("X25519 keys are 32 bytes")
    check_public_key(peer_public)
    try:
        shared = X25519PrivateKey.from_private_bytes(private_key).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    except ValueError as exc:  # low-order point: the all-zero shared secret
        raise KeyAgreementFailed(f"X25519 refused the peer key: {exc}") from exc
    return hkdf(shared, info)


def share_associated_data(
    round_digest: bytes, round_id: int, source: int, destination: int
) -> bytes:
    """The AES-GCM associated data binding a share bundle to (round, source, destination)."""
    return (
        b"plume-secagg-share-v1\0"
        + round_digest
        + struct.pack("<QII", round_id, source, destination)
    )


def encrypt(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM: `nonce[12] || ciphertext || tag[16]`, with a fresh random nonce."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def decrypt(key: bytes, blob: bytes, associated_data: bytes) -> bytes:
    """Inverse of `encrypt`; `DecryptionFailed` if the key, the data or the context is wrong."""
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionFailed(f"ciphertext of {len(blob)} bytes is shorter than nonce + tag")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated_data)
    except InvalidTag as exc:
        raise DecryptionFailed(
            "AES-GCM tag check failed (wrong key, round, source or dest)"
        ) from exc
