"""Wire names and the binary messages of the four SecAgg+ stages (one place for all of them).

Every message is `magic "PSA1" | kind u8 | round_id u64 | body`. Bodies use u32 counts and
u32-length-prefixed byte strings; decoders check every count and length against the round's
limits before reading, and refuse trailing bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from ._errors import MalformedMessage
from ._packing import packed_size

__all__ = [
    "SecAggPath",
    "SecAggHeader",
    "Stage",
    "ShareKind",
    "MessageKind",
    "AdvertiseKeys",
    "KeyDirectory",
    "ShareKeys",
    "ShareDelivery",
    "MaskedInput",
    "UnmaskRequest",
    "UnmaskResponse",
    "MAX_CIPHERTEXT_BYTES",
    "MAX_SHARE_BYTES",
]

MAGIC = b"PSA1"
MAX_CIPHERTEXT_BYTES = 1024
MAX_SHARE_BYTES = 512


class Stage(StrEnum):
    """Protocol stages; the values are the wire/URL names."""

    ADVERTISE_KEYS = "advertise-keys"
    SHARE_KEYS = "share-keys"
    MASKED_INPUT = "masked-input"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


class SecAggPath(StrEnum):
    """URL templates of the secure-round HTTP endpoints (FastAPI syntax)."""

    SETUP = "/v1/secure/rounds/{round_id}/setup"
    STAGE = "/v1/secure/rounds/{round_id}/stages/{stage}"
    RESULT = "/v1/secure/rounds/{round_id}/result"


class SecAggHeader(StrEnum):
    """Response headers of the setup download (lower case)."""

    DIGEST = "x-plume-secagg-digest"  # hex of the (model, plan) digest
    NODE = "x-plume-secagg-node"  # the device's node index in its SecAgg instance


class ShareKind(IntEnum):
    """Which secret an unmask share reconstructs."""

    MASK_KEY = 1  # the X25519 mask private key of a dropped node
    SELF_MASK = 2  # the self-mask seed of a surviving node


class MessageKind(IntEnum):
    ADVERTISE_KEYS = 1
    KEY_DIRECTORY = 2
    SHARE_KEYS = 3
    SHARE_DELIVERY = 4
    MASKED_INPUT = 5
    UNMASK_REQUEST = 6
    UNMASK_RESPONSE = 7


_HEAD = struct.Struct("<4sBQ")


class _Writer:
    def __init__(self, kind: MessageKind, round_id: int) -> None:
        self.buf = bytearray(_HEAD.pack(MAGIC, int(kind), round_id))

    def u8(self, v: int) -> None:
        self.buf += struct.pack("<B", v)

    def u32(self, v: int) -> None:
        self.buf += struct.pack("<I", v)

    def fixed(self, b: bytes) -> None:
        self.buf += b

    def blob(self, b: bytes) -> None:
        self.u32(len(b))
        self.buf += b

    def done(self) -> bytes:
        return bytes(self.buf)


class _Reader:
    def __init__(self, data: bytes, kind: MessageKind) -> None:
        if len(data) < _HEAD.size:
            raise MalformedMessage(f"message of {len(data)} bytes is shorter than its header")
        magic, k, self.round_id = _HEAD.unpack_from(data)
        if magic != MAGIC:
            raise MalformedMessage("not a SecAgg message (bad magic)")
        if k != kind:
            raise MalformedMessage(f"message kind {k}, expected {int(kind)} ({kind.name})")
        self.data = data
        self.pos = _HEAD.size

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise MalformedMessage("message truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return int(self._take(1)[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self._take(4))[0])

    def count(self, limit: int) -> int:
        n = self.u32()
        if n > limit:
            raise MalformedMessage(f"{n} entries, limit {limit}")
        return n

    def fixed(self, n: int) -> bytes:
        return self._take(n)

    def blob(self, limit: int) -> bytes:
        n = self.u32()
        if n > limit:
            raise MalformedMessage(f"field of {n} bytes, limit {limit}")
        return self._take(n)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise MalformedMessage(f"{len(self.data) - self.pos} trailing bytes")


@dataclass(frozen=True, slots=True)
class AdvertiseKeys:
    """Stage 1 upload: a node's two X25519 public keys (encryption and masking)."""

    round_id: int
    node: int
    enc_public: bytes
    mask_public: bytes

    def to_bytes(self) -> bytes:
        w = _Writer(MessageKind.ADVERTISE_KEYS, self.round_id)
        w.u32(self.node)
        w.fixed(self.enc_public)
        w.fixed(self.mask_public)
        return w.done()

    @classmethod
    def from_bytes(cls, data: bytes) -> AdvertiseKeys:
        r = _Reader(data, MessageKind.ADVERTISE_KEYS)
        node = r.u32()
        out = cls(r.round_id, node, r.fixed(32), r.fixed(32))
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class KeyDirectory:
    """Stage 1 download: the public keys of a node's neighbours that advertised."""

    round_id: int
    entries: tuple[tuple[int, bytes, bytes], ...]  # (node, enc_public, mask_public)

    def to_bytes(self) -> bytes:
        w = _Writer(MessageKind.KEY_DIRECTORY, self.round_id)
        w.u32(len(self.entries))
        for node, epk, mpk in self.entries:
            w.u32(node)
            w.fixed(epk)
            w.fixed(mpk)
        return w.done()

    @classmethod
    def from_bytes(cls, data: bytes, max_nodes: int) -> KeyDirectory:
        r = _Reader(data, MessageKind.KEY_DIRECTORY)
        n = r.count(max_nodes)
        entries = tuple((r.u32(), r.fixed(32), r.fixed(32)) for _ in range(n))
        r.end()
        return cls(r.round_id, entries)


@dataclass(frozen=True, slots=True)
class ShareKeys:
    """Stage 2 upload: AES-GCM share bundles from `node`, one per neighbour (dest, ciphertext)."""

    round_id: int
    node: int
    ciphertexts: tuple[tuple[int, bytes], ...]

    def to_bytes(self) -> bytes:
        w = _Writer(MessageKind.SHARE_KEYS, self.round_id)
        w.u32(self.node)
        w.u32(len(self.ciphertexts))
        for dest, ct in self.ciphertexts:
            w.u32(dest)
            w.blob(ct)
        return w.done()

    @classmethod
    def from_bytes(cls, data: bytes, max_nodes: int) -> ShareKeys:
        r = _Reader(data, MessageKind.SHARE_KEYS)
        node = r.u32()
        n = r.count(max_nodes)
        cts = tuple((r.u32(), r.blob(MAX_CIPHERTEXT_BYTES)) for _ in range(n))
        r.end()
        return cls(r.round_id, node, cts)


@dataclass(frozen=True, slots=True)
class ShareDelivery:
    """Stage 2 download: the bundles addressed to one node, relayed (source, ciphertext)."""

    round_id: int
    ciphertexts: tuple[tuple[int, bytes], ...]

    def to_bytes(self) -> bytes:
        w = _Writer(MessageKind.SHARE_DELIVERY, self.round_id)
        w.u32(len(self.ciphertexts))
        for src, ct in self.ciphertexts:
            w.u32(src)
            w.blob(ct)
        return w.done()

    @classmethod
    def from_bytes(cls, data: bytes, max_nodes: int) -> ShareDelivery:
        r = _Reader(data, MessageKind.SHARE_DELIVERY)
        n = r.count(max_nodes)
        cts = tuple((r.u32(), r.blob(MAX_CIPHERTEXT_BYTES)) for _ in range(n))
        r.end()
        return cls(r.round_id, cts)


@dataclass(frozen=True, slots=True)
class MaskedInput:
    """Stage 3 upload: the masked vector, `length` elements of Z_{2^bits} bit-packed."""

    round_id: int
    node: int
    length: int
    bits: int
    packed: bytes

    def to_bytes(self) -> bytes:
        w = _Writer(MessageKind.MASKED_INPUT, self.round_id)
        w.u32(self.node)
        w.u32(self.length)
        w.u8(self.bits)
        w.fixed(self.packed)
        return w.done()

    @classmethod
    def from_bytes(cls, data: bytes, length: int, bits: int) -> MaskedInput:
        r = _Reader(data, MessageKind.MASKED_INPUT)
        node = r.u32()
        got_len, got_bits = r.u32(), r.u8()
        if (got_len, got_bits) != (length, bits):
            raise MalformedMessage(
                f"masked input of {got_len} x {got_bits} bits, round expects {length} x {bits}"
            )
        packed = r.fixed(packed_size(length, bits))
        r.end()
        return cls(r.round_id, node, length, bits, packed)


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """Stage 4 download: who survived to masked input (alive) and who dropped after sharing."""

    round_id: int
    alive: tuple[int, ...]
    dropped: tuple[int, ...]

    def to_bytes(self) -> bytes:
        w = _Writer(MessageKind.UNMASK_REQUEST, self.round_id)
        for group in (self.alive, self.dropped):
            w.u32(len(group))
            for node in group:
                w.u32(node)
        return w.done()

    @classmethod
    def from_bytes(cls, data: bytes, max_nodes: int) -> UnmaskRequest:
        r = _Reader(data, MessageKind.UNMASK_REQUEST)
        alive = tuple(r.u32() for _ in range(r.count(max_nodes)))
        dropped = tuple(r.u32() for _ in range(r.count(max_nodes)))
        r.end()
        return cls(r.round_id, alive, dropped)


@dataclass(frozen=True, slots=True)
class UnmaskResponse:
    """Stage 4 upload: one Shamir share per requested neighbour (about, kind, share)."""

    round_id: int
    node: int
    shares: tuple[tuple[int, ShareKind, bytes], ...]

    def to_bytes(self) -> bytes:
        w = _Writer(MessageKind.UNMASK_RESPONSE, self.round_id)
        w.u32(self.node)
        w.u32(len(self.shares))
        for about, kind, share in self.shares:
            w.u32(about)
            w.u8(int(kind))
            w.blob(share)
        return w.done()

    @classmethod
    def from_bytes(cls, data: bytes, max_nodes: int) -> UnmaskResponse:
        r = _Reader(data, MessageKind.UNMASK_RESPONSE)
        node = r.u32()
        n = r.count(max_nodes)
        shares = []
        for _ in range(n):
            about, kind = r.u32(), r.u8()
            if kind not in (ShareKind.MASK_KEY, ShareKind.SELF_MASK):
                raise MalformedMessage(f"unknown share kind {kind}")
            shares.append((about, ShareKind(kind), r.blob(MAX_SHARE_BYTES)))
        r.end()
        return cls(r.round_id, node, tuple(shares))
