"""AES-256-CTR pseudo-random generator: a 32-byte seed expands into uniform m-bit ring elements."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ._crypto import KEY_BYTES, hkdf
from ._errors import CryptoError

__all__ = ["MAX_RING_BITS", "prg_bytes", "expand_mask", "ring_mask"]

MAX_RING_BITS = 64
_ZERO_NONCE = bytes(16)


def prg_bytes(seed: bytes, nbytes: int, label: bytes = b"") -> bytes:
    """`nbytes` of AES-256-CTR keystream under HKDF(seed, label).

    The label separates uses of one seed (self-mask, pair mask, graph, rotation), so no two
    uses ever share a keystream; the zero counter start is then safe.
    """
    if len(seed) != KEY_BYTES:
        raise CryptoError(f"PRG seed of {len(seed)} bytes, expected {KEY_BYTES}")
    if nbytes < 0:
        raise CryptoError("negative PRG length")
    key = hkdf(seed, b"plume-prg-v1\0" + label)
    enc = Cipher(algorithms.AES(key), modes.CTR(_ZERO_NONCE)).encryptor()
    return enc.update(bytes(nbytes)) + enc.finalize()


def ring_mask(bits: int) -> int:
    """2^bits - 1, the mask that reduces a uint64 into Z_{2^bits}."""
    if not 1 <= bits <= MAX_RING_BITS:
        raise CryptoError(f"ring of {bits} bits, expected 1..{MAX_RING_BITS}")
    return (1 << bits) - 1


def expand_mask(seed: bytes, count: int, bits: int, label: bytes = b"") -> npt.NDArray[np.uint64]:
    """`count` uniform elements of Z_{2^bits} as uint64, from one AES-CTR pass.

    Uniform because 2^bits divides the word size: every word is uniform and the low bits of a
    uniform word are uniform. Words are 4 bytes when bits <= 32 to halve the AES work.
    """
    mask = ring_mask(bits)
    word = 4 if bits <= 32 else 8
    raw = prg_bytes(seed, count * word, label)
    words = np.frombuffer(raw, dtype="<u4" if word == 4 else "<u8").astype(np.uint64)
    return words & np.uint64(mask)
