"""The public plan of one secure round, its canonical bytes, and the per-round model/plan digest.

Both sides derive everything from the plan: the graph, the ring, the coordinate set S_r, the
quantizer and the noise. The device recomputes `round_digest(model_digest(params), plan)` from
the model it actually holds and refuses a mismatch; the digest is also mixed into every key
derivation and AES-GCM associated data, so devices given different models or plans cannot
complete a round together (the model-inconsistency defence).
"""

from __future__ import annotations

import hashlib
import math
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt
import zstandard

import compression

from ._errors import MalformedMessage, RingOverflow
from ._prg import MAX_RING_BITS
from ._shamir import MAX_SHARES

__all__ = [
    "MAX_DEGREE",
    "MAX_DG_VARIANCE",
    "MAX_SKELLAM_VARIANCE",
    "MIN_NOISE_VARIANCE",
    "NoiseKind",
    "SecurePlan",
    "ProtocolParams",
    "model_digest",
    "round_digest",
    "required_ring_bits",
    "check_ring",
    "sketch_length",
]

PLAN_MAGIC = b"PSP1"
MAX_NODES = 1 << 20
# Largest graph degree a plan may set. A device's share-keys work grows with k^2 (Shamir
# shares of two secrets for k neighbours, t ~ k/2), so the share format's own limit (65,534)
# would let a hostile coordinator make every device do about 1,000 times the work of k = 2048. The default degree,
# 2 ceil(1.5 log2 n), is 60 at n = 10^6.
MAX_DEGREE = 2048
MAX_SEGMENTS = 4096
# Per-device noise variances a device can draw, by kind. Skellam(mu) = Poisson(mu) - Poisson(mu)
# with mu = variance / 2: numpy's Poisson refuses mu above about 9.2e18 (a bare ValueError), so
# mu is at most 2^62. The discrete Gaussian's draws go through int64: at sigma = 2^57 a draw
# past 2^63 is 64 sigma away (probability about e^-2048). Both are far above what the
# coordinator plans (value_bits <= 16). The least is the smallest normal float: a subnormal
# variance halves to mu = 0, which the Skellam sampler refuses.
MAX_SKELLAM_VARIANCE = 2.0**63
MAX_DG_VARIANCE = 2.0**114
MIN_NOISE_VARIANCE = sys.float_info.min
PLAN_FLAGS = 0b11  # bit 0 rotate, bit 1 dither
_FIXED = struct.Struct("<4sQIIIBBIQddBBdQ32s32sI")
_ZSTD = compression.ZstdCodec()  # decoding only: one frame, declared size and window checked


class NoiseKind(IntEnum):
    """Integer-domain noise each device adds for distributed DP."""

    NONE = 0
    DISCRETE_GAUSSIAN = 1
    SKELLAM = 2


@dataclass(frozen=True, slots=True)
class ProtocolParams:
    """What the SecAgg+ state machines need: sizes, graph, ring and the round's digest."""

    round_id: int
    num_nodes: int
    degree: int
    threshold: int
    ring_bits: int
    vector_len: int
    graph_seed: bytes
    digest: bytes


def required_ring_bits(num_nodes: int, max_weight: int, value_bits: int, headroom: int = 0) -> int:
    """Smallest m with n_max * w_max * (2^b - 1) + 2 * headroom < 2^m.

    The headroom (noise bound) is counted twice: the sum may dip below zero by it, and the
    decoder reads the top `headroom` ring values as negatives.
    """
    top = num_nodes * max_weight * ((1 << value_bits) - 1) + 2 * headroom
    return max(1, top.bit_length())


def check_ring(
    num_nodes: int, max_weight: int, value_bits: int, ring_bits: int, headroom: int = 0
) -> None:
    """Raise `RingOverflow` when the worst-case sum does not fit in Z_{2^m}."""
    top = num_nodes * max_weight * ((1 << value_bits) - 1) + 2 * headroom
    if not 1 <= ring_bits <= MAX_RING_BITS or top >= 1 << ring_bits:
        raise RingOverflow(
            f"n_max={num_nodes} * w_max={max_weight} * (2^{value_bits} - 1) + 2 * {headroom} = "
            f"{top} does not fit in a ring of {ring_bits} bits (need "
            f"{required_ring_bits(num_nodes, max_weight, value_bits, headroom)}, max {MAX_RING_BITS})"
        )


def sketch_length(segments: Sequence[tuple[int, int, int, int]]) -> int:
    """Sketch entries for segments (offset, rows, cols, pool): sum of rows + ceil(cols / pool)."""
    return sum(r + -(-c // p) for _, r, c, p in segments)


def model_digest(params: npt.NDArray[np.float32]) -> bytes:
    """SHA-256 of the model's canonical bytes: the same digest the downlink snapshot carries."""
    return compression.model_digest(params)


@dataclass(frozen=True, slots=True, eq=False)
class SecurePlan:
    """Everything public about one secure round.

    indices: int64[k], the shared coordinate set S_r (sorted, unique, < model_size).
    Values at S_r are clipped to L2 norm `clip_norm`, optionally rotated, clipped per coordinate
    to [-coord_bound, coord_bound] and quantized to `value_bits`-bit unsigned integers; each
    device multiplies by its integer weight (1..max_weight), adds noise of variance
    `noise_variance` (integer units) and appends the weight: `vector_len = k + 1` elements of
    Z_{2^ring_bits}.

    With `dither`, rounding uses a public per-node dither that the coordinator subtracts
    (subtractive dither, `protocol.secagg._encoding`): half the rounding noise of stochastic
    rounding at the same bits; it needs max_weight = 1.

    With `sketch_bits > 0` the device also sends a row/column energy sketch of its update
    (`protocol.secagg._sketch`) between the values and the weight: one entry per row and per
    pooled column of each segment `(offset, rows, cols, pool)`. The coordinator uses the summed
    sketch to choose later rounds' coordinate sets.
    """

    round_id: int
    num_nodes: int
    degree: int
    threshold: int
    ring_bits: int
    value_bits: int
    max_weight: int
    model_size: int
    indices: npt.NDArray[np.int64]
    clip_norm: float
    coord_bound: float
    graph_seed: bytes
    rotation_seed: bytes
    rotate: bool = False
    noise: NoiseKind = NoiseKind.NONE
    noise_variance: float = 0.0
    noise_headroom: int = 0
    sketch_bits: int = 0
    sketch_segments: tuple[tuple[int, int, int, int], ...] = ()
    dither: bool = False
    # The canonical bytes in two parts: this plan's header (fixed fields, sketch segments and
    # the packed length), then the zstd-packed gaps of S_r, which `derive` shares between
    # the plans of one round instead of compressing (and keeping) them once per group.
    _head: bytes = field(default=b"", init=False, repr=False)
    _packed: bytes = field(default=b"", init=False, repr=False)

    def __post_init__(self) -> None:
        self._finish(None)

    def derive(self, **changes: Any) -> SecurePlan:
        """This plan with `changes` (any field but `indices` and `model_size`), over the same
        S_r: its checked indices and packed bytes are shared, not checked and compressed again.

        The result equals `SecurePlan(...)` given the same fields, byte for byte; a grouped
        round plans every group this way (one zstd pass per round instead of one per group).
        """
        if "indices" in changes or "model_size" in changes:
            raise ValueError("derive keeps the plan's indices and model_size")
        plan = object.__new__(SecurePlan)
        for f in fields(SecurePlan):
            if f.init:
                value = changes.pop(f.name, getattr(self, f.name))
                object.__setattr__(plan, f.name, value)
        if changes:
            raise TypeError(f"SecurePlan has no field {', '.join(sorted(changes))}")
        plan._finish(self)
        return plan

    def _finish(self, shared: SecurePlan | None) -> None:
        """Normalize and check the fields, then encode; `shared` (a plan over the same S_r
        and model size) lends its checked indices and packed gaps."""
        if shared is None:
            idx = np.ascontiguousarray(self.indices, dtype=np.int64).reshape(-1)
            object.__setattr__(self, "indices", idx)
        else:
            idx = shared.indices
        segs = tuple(tuple(int(x) for x in t) for t in self.sketch_segments)
        object.__setattr__(self, "sketch_segments", segs)
        if not 2 <= self.num_nodes <= MAX_NODES:
            raise ValueError(f"num_nodes={self.num_nodes} outside 2..{MAX_NODES}")
        if not 1 <= self.threshold <= self.degree <= self.num_nodes - 1:
            raise ValueError(f"need 1 <= t={self.threshold} <= k={self.degree} <= n-1")
        if self.degree > MAX_DEGREE:
            raise ValueError(
                f"degree {self.degree} above {MAX_DEGREE}: a device's share-keys work grows with "
                "the square of the degree"
            )
        if self.degree + 1 > MAX_SHARES:
            # A node splits its secrets among its k neighbours (x = 1..k, a u16), one to spare;
            # unreachable below MAX_DEGREE, kept for a larger MAX_DEGREE.
            raise ValueError(f"degree {self.degree} needs more than {MAX_SHARES} Shamir shares")
        if self.degree % 2 and self.degree != self.num_nodes - 1:
            raise ValueError(f"degree {self.degree} must be even below n - 1 (Harary graph)")
        if not 1 <= self.value_bits <= 32 or not 1 <= self.max_weight < 1 << 32:
            raise ValueError("value_bits in 1..32 and max_weight in 1..2^32-1")
        if shared is None:
            if idx.size == 0 or idx[0] < 0 or idx[-1] >= self.model_size:
                raise ValueError("coordinate set empty or out of range")
            if np.any(np.diff(idx) <= 0):
                raise ValueError("coordinate set not strictly increasing")
        if not (self.clip_norm > 0 and self.coord_bound > 0):
            raise ValueError("clip_norm and coord_bound must be positive")
        if not (math.isfinite(self.clip_norm) and math.isfinite(self.coord_bound)):
            raise ValueError("clip_norm and coord_bound must be finite")
        # The device quantizes with (2^b - 1) / (2 C') and the inverse rotation sums up to
        # |S_r| values of size C' (before its 1 / sqrt(block)): past a float's range its
        # levels were NaN or its residual inf. The coordinator's C' is at most C.
        levels = (1 << self.value_bits) - 1
        scale = levels / (2.0 * self.coord_bound)
        if not (math.isfinite(scale) and math.isfinite(2.0 * self.coord_bound * idx.size)):
            raise ValueError(
                f"coord_bound {self.coord_bound:g} at {self.value_bits} bits over {idx.size} "
                "coordinates is outside a float's range"
            )
        if not (0 <= self.noise_variance < math.inf) or self.noise_headroom < 0:
            raise ValueError("noise variance (finite) and headroom must be non-negative")
        if self.noise != NoiseKind.NONE:
            # A device must be able to add the noise and the sum to decode: a zero variance
            # has no sampler, and noise the ring's headroom cannot hold wraps. The coordinator
            # sizes the headroom at 8 standard deviations of the group's summed noise.
            if not self.noise_variance > 0:
                raise ValueError("noise needs a positive variance")
            if 16.0 * self.noise_variance * self.num_nodes > float(self.noise_headroom) ** 2:
                raise ValueError(
                    f"noise variance {self.noise_variance:g} per device needs a headroom of at "
                    f"least 4 standard deviations of {self.num_nodes} devices' noise, got "
                    f"{self.noise_headroom}"
                )
            top = MAX_SKELLAM_VARIANCE if self.noise == NoiseKind.SKELLAM else MAX_DG_VARIANCE
            if not MIN_NOISE_VARIANCE <= self.noise_variance <= top:
                # Checked before any sampling: the device's sampler would raise a bare
                # ValueError mid-round instead of refusing the plan by name.
                raise ValueError(
                    f"noise variance {self.noise_variance:g} per device is outside what the "
                    f"{self.noise.name.lower()} sampler draws ({MIN_NOISE_VARIANCE:g} to {top:g})"
                )
        # Segments tile disjoint, in-order parts of the model (as `sketch_segments_for` lays
        # them out), so the sketch has at most 2 d entries and every reshape on a device fits.
        end, d = 0, self.model_size
        if len(segs) > MAX_SEGMENTS:
            # `from_bytes` refuses a plan declaring more, so every device would refuse it.
            raise ValueError(
                f"{len(segs)} sketch segments, at most {MAX_SEGMENTS}: a device refuses a plan "
                "with more; turn the sketch off for a model of more non-empty tensors"
            )
        for off, rows, cols, pool in segs:
            if off < end or rows < 1 or not 1 <= pool <= cols or off + rows * cols > d:
                raise ValueError(f"sketch segment {(off, rows, cols, pool)} is out of range")
            end = off + rows * cols
        if not (1 <= self.sketch_bits <= 32 if segs else self.sketch_bits == 0):
            raise ValueError(f"sketch_bits={self.sketch_bits} with {len(segs)} sketch segments")
        if len(self.graph_seed) != 32 or len(self.rotation_seed) != 32:
            raise ValueError("seeds are 32 bytes")
        if self.dither and self.max_weight != 1:
            # The coordinator subtracts each contributor's dither, so it must know every weight.
            raise ValueError("dither needs max_weight=1")
        check_ring(
            self.num_nodes, self.max_weight, self.value_bits, self.ring_bits, self.noise_headroom
        )
        packed = _pack_gaps(idx) if shared is None else shared._packed
        object.__setattr__(self, "_packed", packed)
        object.__setattr__(self, "_head", self._encode_head(len(packed)))

    @property
    def k(self) -> int:
        """|S_r|, the number of shared coordinates."""
        return int(self.indices.size)

    @property
    def sketch_len(self) -> int:
        """Sketch entries of this plan (`sketch_length` of its segments)."""
        return sketch_length(self.sketch_segments)

    @property
    def vector_len(self) -> int:
        """Ring elements each device masks: the k values, the sketch, the weight."""
        return self.k + self.sketch_len + 1

    @property
    def flags(self) -> int:
        """The plan's flag byte: bit 0 rotate, bit 1 dither."""
        return int(self.rotate) | int(self.dither) << 1

    def _encode(self) -> bytes:
        """The canonical bytes from the fields alone (nothing shared or cached)."""
        packed = _pack_gaps(self.indices)
        return self._encode_head(len(packed)) + packed

    def _encode_head(self, packed_len: int) -> bytes:
        """Every byte before the packed gaps: fixed fields, sketch segments, packed length."""
        head = _FIXED.pack(
            PLAN_MAGIC, self.round_id, self.num_nodes, self.degree, self.threshold,
            self.ring_bits, self.value_bits, self.max_weight, self.model_size,
            self.clip_norm, self.coord_bound, self.flags, int(self.noise),
            self.noise_variance, self.noise_headroom, self.graph_seed, self.rotation_seed,
            self.k,
        )  # fmt: skip
        seg = struct.pack("<BI", self.sketch_bits, len(self.sketch_segments)) + b"".join(
            struct.pack("<QIII", *t) for t in self.sketch_segments
        )
        return head + seg + struct.pack("<I", packed_len)

    def to_bytes(self) -> bytes:
        """Canonical bytes: the fixed header then the zstd-packed gaps of S_r (built on each
        call; `nbytes` is their length)."""
        return self._head + self._packed

    @property
    def nbytes(self) -> int:
        """Length of `to_bytes()` (bytes), without building them."""
        return len(self._head) + len(self._packed)

    @classmethod
    def from_bytes(cls, data: bytes, max_model_size: int) -> SecurePlan:
        """Decode a plan, checking sizes against `max_model_size` before allocating."""
        if len(data) < _FIXED.size + 9:
            raise MalformedMessage("plan truncated")
        f = _FIXED.unpack_from(data)
        if f[0] != PLAN_MAGIC:
            raise MalformedMessage("not a secure plan (bad magic)")
        model_size, k = f[8], f[17]
        if not 1 <= model_size <= max_model_size or not 1 <= k <= model_size:
            raise MalformedMessage(f"plan sizes d={model_size}, k={k} out of range")
        if f[11] & ~PLAN_FLAGS:
            raise MalformedMessage(f"plan flags {f[11]:#04x} set unknown bits")
        sketch_bits, n_seg = struct.unpack_from("<BI", data, _FIXED.size)
        pos = _FIXED.size + 5
        if n_seg > MAX_SEGMENTS or len(data) < pos + 20 * n_seg + 4:
            raise MalformedMessage(f"plan declares {n_seg} sketch segments")
        segments = tuple(struct.unpack_from("<QIII", data, pos + 20 * i) for i in range(n_seg))
        pos += 20 * n_seg
        (clen,) = struct.unpack_from("<I", data, pos)
        body = data[pos + 4 :]
        if clen != len(body):
            raise MalformedMessage("plan length mismatch")
        try:
            # The frame's declared content size and window are checked before inflating: a
            # plain decompress allocated whatever a mutated header declared (43 TB, MemoryError).
            raw = _ZSTD.decompress(body, 4 * k)
        except compression.CodecError as exc:
            raise MalformedMessage(f"plan coordinates: {exc}") from exc
        if len(raw) != 4 * k:
            raise MalformedMessage("plan coordinate count mismatch")
        indices = np.cumsum(np.frombuffer(raw, dtype="<u4").astype(np.int64))
        try:
            plan = cls(
                round_id=f[1], num_nodes=f[2], degree=f[3], threshold=f[4], ring_bits=f[5],
                value_bits=f[6], max_weight=f[7], model_size=model_size, indices=indices,
                clip_norm=f[9], coord_bound=f[10], rotate=bool(f[11] & 1), noise=NoiseKind(f[12]),
                noise_variance=f[13], noise_headroom=f[14], graph_seed=f[15],
                rotation_seed=f[16], sketch_bits=sketch_bits, sketch_segments=segments,
                dither=bool(f[11] & 2),
            )  # fmt: skip
        except ValueError as exc:
            if isinstance(exc, RingOverflow):
                raise
            raise MalformedMessage(f"invalid plan: {exc}") from exc
        # The header must be the one the fields give. The packed gaps are taken as received:
        # zstd does not promise the same bytes across library versions, so a device whose
        # zstd compresses S_r otherwise must still take the server's plan (their content was
        # checked above). The plan then holds the bytes received, which its digest is over:
        # every device of a group gets the same bytes, so they agree on it with the server.
        head = data[: pos + 4]
        if plan._encode_head(len(body)) != head:
            raise MalformedMessage("plan header is not canonical")
        object.__setattr__(plan, "_packed", bytes(body))
        object.__setattr__(plan, "_head", bytes(head))
        return plan

    def protocol_params(self, model_digest_bytes: bytes) -> ProtocolParams:
        """The state machines' view of this plan, bound to one model digest."""
        return ProtocolParams(
            round_id=self.round_id,
            num_nodes=self.num_nodes,
            degree=self.degree,
            threshold=self.threshold,
            ring_bits=self.ring_bits,
            vector_len=self.vector_len,
            graph_seed=self.graph_seed,
            digest=round_digest(model_digest_bytes, self),
        )


def round_digest(model_digest_bytes: bytes, plan: SecurePlan) -> bytes:
    """SHA-256 over (model digest, canonical plan bytes): what every device checks."""
    if len(model_digest_bytes) != 32:
        raise ValueError("model digest is 32 bytes")
    h = hashlib.sha256(b"plume-round-v1\0" + model_digest_bytes + plan._head)
    h.update(plan._packed)  # the same digest as over to_bytes(), without copying S_r
    return h.digest()


def _pack_gaps(indices: npt.NDArray[np.int64]) -> bytes:
    """The plan's last section: S_r as u32 gaps (the first from 0), zstd level 10."""
    gaps = np.diff(indices, prepend=np.int64(0)).astype("<u4")
    return zstandard.ZstdCompressor(level=10).compress(gaps.tobytes())
