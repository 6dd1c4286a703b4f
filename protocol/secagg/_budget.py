"""What one device uploads over the four SecAgg+ stages, in bytes, before running a round.

The coordinator sizes the shared coordinate set S_r to a per-device byte budget with this: the
masked input is bit-packed and masked (so its size is exact), and the key stages have fixed
layouts (`protocol.secagg._wire`). The figure is exact for a device that completes every stage
and is asked for a share of each of its `degree` neighbours, and an upper bound otherwise.
"""

from __future__ import annotations

from ._client import _PLAIN_HEAD
from ._crypto import KEY_BYTES, NONCE_BYTES, TAG_BYTES
from ._packing import packed_size
from ._shamir import share_size
from ._wire import _HEAD

__all__ = ["key_stage_bytes", "masked_input_bytes", "device_upload_bytes"]

_U32, _U8, _U16 = 4, 1, 2


def key_stage_bytes(degree: int) -> int:
    """Advertise keys + share keys (one AES-GCM bundle per neighbour) + unmask (one share per
    neighbour): everything but the masked input."""
    if degree < 1:
        raise ValueError(f"degree must be positive, got {degree}")
    share = share_size(KEY_BYTES)  # both secrets (mask key, self-mask seed) are 32 bytes
    advertise = _HEAD.size + _U32 + 2 * KEY_BYTES
    bundle = NONCE_BYTES + _PLAIN_HEAD.size + 2 * (_U16 + share) + TAG_BYTES
    share_keys = _HEAD.size + 2 * _U32 + degree * (2 * _U32 + bundle)
    unmask = _HEAD.size + 2 * _U32 + degree * (_U32 + _U8 + _U32 + share)
    return advertise + share_keys + unmask


def masked_input_bytes(vector_len: int, ring_bits: int) -> int:
    """The stage-3 message: header, node, length, bits, then vector_len x ring_bits bit-packed."""
    return _HEAD.size + 2 * _U32 + _U8 + packed_size(vector_len, ring_bits)


def device_upload_bytes(degree: int, vector_len: int, ring_bits: int) -> int:
    """All four stages' upload of one device (exact for a full round, see the module doc)."""
    return key_stage_bytes(degree) + masked_input_bytes(vector_len, ring_bits)
