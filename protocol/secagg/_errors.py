"""The SecAgg+ exception tree. Every refusal is a `SecAggError` with a message naming the check.

SecAggError (ValueError)
├── CryptoError            a primitive refused its input
│   ├── DecryptionFailed   AES-GCM tag, key or associated data (round, source, dest) wrong
│   ├── KeyAgreementFailed X25519 gave the all-zero secret or a key is malformed
│   └── ShareError         Shamir share malformed, inconsistent or tampered
│       └── NotEnoughShares fewer shares than the threshold written in them
├── ProtocolViolation      a peer or the server broke the protocol; the round must stop
│   ├── DuplicateKey       two nodes advertised the same public key
│   ├── WrongAddress       a ciphertext's source or destination is not what it claims
│   ├── RepeatedShareRequest  a second share request for a node, or one node alive and dropped
│   ├── ModelMismatch      the model/plan digest differs from the one this device computed
│   └── WrongStage         a message arrived in a stage that does not accept it
├── RingOverflow           n_max * w_max * (2^b - 1) (+ noise headroom) does not fit in 2^m
├── MalformedMessage       wire bytes truncated, oversized, or out of domain
└── RoundAborted           too few survivors; nothing was reconstructed
"""

from __future__ import annotations

__all__ = [
    "SecAggError",
    "CryptoError",
    "DecryptionFailed",
    "KeyAgreementFailed",
    "ShareError",
    "NotEnoughShares",
    "ProtocolViolation",
    "DuplicateKey",
    "WrongAddress",
    "RepeatedShareRequest",
    "ModelMismatch",
    "WrongStage",
    "RingOverflow",
    "MalformedMessage",
    "RoundAborted",
]


class SecAggError(ValueError):
    """Root of every secure-aggregation refusal."""


class CryptoError(SecAggError):
    pass


class DecryptionFailed(CryptoError):
    pass


class KeyAgreementFailed(CryptoError):
    pass


class ShareError(CryptoError):
    pass


class NotEnoughShares(ShareError):
    pass


class ProtocolViolation(SecAggError):
    pass


class DuplicateKey(ProtocolViolation):
    pass


class WrongAddress(ProtocolViolation):
    pass


class RepeatedShareRequest(ProtocolViolation):
    pass


class ModelMismatch(ProtocolViolation):
    pass


class WrongStage(ProtocolViolation):
    pass


class RingOverflow(SecAggError):
    pass


class MalformedMessage(SecAggError):
    pass


class RoundAborted(SecAggError):
    pass
