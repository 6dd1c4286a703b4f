"""The update codec: top-k -> quantize -> index coding -> zstd -> frame, and its strict decoder."""

from __future__ import annotations

import math
import numbers
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ._config import QUANTIZED_BITS, CodecConfig, DecodeLimits
from ._index import INDEX_BY_NAME, INDEX_CODINGS, IndexCoding
from ._quant import VALUE_CODINGS
from ._sparse import SparseUpdate
from ._spec import ModelSpec
from ._topk import select_topk
from ._wire import (
    CRC_LEN,
    FLAG_ZSTD,
    HEADER_LEN,
    WIRE_VERSION,
    FrameHeader,
    pack_header,
    parse_header,
)
from ._zstd import ZstdCodec

__all__ = ["StageReport", "EncodeReport", "DecodedFrame", "UpdateCodec", "AUTO_CANDIDATES"]

F32 = npt.NDArray[np.float32]

# The codings "auto" chooses between; ties go to the earlier one.
AUTO_CANDIDATES = ("rice", "ef", "bitmap")


@dataclass(frozen=True, slots=True)
class StageReport:
    """What one pipeline stage did: bytes in and out, and wall seconds."""

    name: str
    bytes_in: int
    bytes_out: int
    seconds: float


@dataclass(slots=True)
class EncodeReport:
    """Per-stage reports plus the totals of one encoded update. Bytes throughout."""

    stages: list[StageReport] = field(default_factory=list)
    nnz: int = 0
    frame_bytes: int = 0
    dense_bytes: int = 0
    index_coding: str = ""
    compressed: bool = False

    @property
    def ratio(self) -> float:
        """dense fp32 bytes / frame bytes."""
        return self.dense_bytes / self.frame_bytes if self.frame_bytes else math.inf

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def stage(self, name: str) -> StageReport:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """A decoded frame: the update, the example-count weight, and the parsed header."""

    update: SparseUpdate
    weight: float
    header: FrameHeader


class UpdateCodec:
    """Encodes float32[d] updates to v1 frames under `config`; decodes any v1 frame for `spec`.

    Decoding only needs the spec and the limits: every encoder choice is in the frame header.
    Instances keep zstd contexts (per thread), so reuse one codec per model.
    """

    def __init__(
        self, spec: ModelSpec, config: CodecConfig, limits: DecodeLimits | None = None
    ) -> None:
        self.spec = spec
        self.config = config
        self.limits = limits if limits is not None else DecodeLimits()
        self._zstd = ZstdCodec(config.zstd_level, self.limits.zstd_max_window)

    # -- encoding -------------------------------------------------------------------------

    def _check_input(self, u: npt.ArrayLike, weight: float) -> F32:
        arr = np.asarray(u)
        if arr.ndim != 1 or arr.shape[0] != self.spec.size:
            raise ValueError(f"update must have shape ({self.spec.size},), got {arr.shape}")
        if arr.dtype != np.float32:
            raise ValueError(f"update must be float32, got {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("update contains NaN or Inf")
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise ValueError(f"weight must be a real number, got {weight!r}")
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        return arr

    def _index_coding(self, idx: npt.NDArray[np.int64]) -> tuple[IndexCoding, int, int]:
        d = self.spec.size
        if idx.shape[0] == d:
            return INDEX_CODINGS[0], 0, 0
        names = AUTO_CANDIDATES if self.config.index == "auto" else (self.config.index,)
        best: tuple[IndexCoding, int, int] | None = None
        for name in names:
            coding = INDEX_BY_NAME[name]
            size, param = coding.plan(idx, d)
            if best is None or size < best[2]:
                best = (coding, param, size)
        assert best is not None
        return best[0], best[1], best[2]

    def _encode(
        self, u: npt.ArrayLike, rng: np.random.Generator, weight: float, want_decoded: bool
    ) -> tuple[bytes, npt.NDArray[np.int64], F32 | None, EncodeReport]:
        arr = self._check_input(u, weight)
        cfg, d = self.config, self.spec.size
        report = EncodeReport(dense_bytes=4 * d)
        clock = time.perf_counter

        t0 = clock()
        idx = select_topk(arr, cfg.k_for(d), self.spec, cfg.topk_mode, cfg.scope, rng)
        vals = arr[idx]
        if idx.shape[0] < d:
            # Exact zeros carry nothing; they are kept only when the whole vector is sent.
            nonzero = vals != 0
            if not nonzero.all():
                idx, vals = idx[nonzero], vals[nonzero]
        k = int(idx.shape[0])
        t1 = clock()
        report.stages.append(StageReport("topk", 4 * d, 8 * k, t1 - t0))

        vc = VALUE_CODINGS[cfg.bits]
        block = cfg.block if cfg.bits in QUANTIZED_BITS else 0
        scales, codes = vc.encode(vals, max(block, 1), rng)
        decoded = vc.decode(scales, codes, k, max(block, 1)) if want_decoded else None
        t2 = clock()
        report.stages.append(StageReport("quantize", 4 * k, len(scales) + len(codes), t2 - t1))

        coding, param, _ = self._index_coding(idx)
        index = coding.encode(idx, d, param)
        t3 = clock()
        report.stages.append(StageReport(f"index:{coding.name}", 4 * k, len(index), t3 - t2))

        raw = index + scales + codes
        flags = 0
        payload = raw
        if raw:
            packed = self._zstd.compress(raw)
            if len(packed) < len(raw):
                payload, flags = packed, FLAG_ZSTD
        t4 = clock()
        report.stages.append(StageReport("zstd", len(raw), len(payload), t4 - t3))

        header = FrameHeader(
            version=WIRE_VERSION,
            flags=flags,
            fingerprint=self.spec.fingerprint,
            size=d,
            nnz=k,
            bits=cfg.bits,
            index_coding=coding.name,
            index_param=param,
            block=block,
            weight=float(weight),
            index_bytes=len(index),
            scale_bytes=len(scales),
            value_bytes=len(codes),
            payload_bytes=len(payload),
        )
        body = pack_header(header, coding.wire_id) + payload
        frame = body + zlib.crc32(body).to_bytes(CRC_LEN, "little")
        t5 = clock()
        report.stages.append(StageReport("frame", len(payload), len(frame), t5 - t4))

        report.nnz = k
        report.frame_bytes = len(frame)
        report.index_coding = coding.name
        report.compressed = bool(flags)
        return frame, idx, decoded, report

    def encode(
        self, u: npt.ArrayLike, rng: np.random.Generator, weight: float = 1.0
    ) -> tuple[bytes, EncodeReport]:
        """Encode float32[d] `u` into one v1 frame carrying `weight` (example count, >= 0)."""
        frame, _, _, report = self._encode(u, rng, weight, want_decoded=False)
        return frame, report

    def roundtrip(
        self, u: npt.ArrayLike, rng: np.random.Generator, weight: float = 1.0
    ) -> tuple[bytes, F32, EncodeReport]:
        """`(frame, decoded float32[d], report)`; decoded is bit-identical to
        `decode(frame).to_dense()` because it comes from the same value decoder on the
        same section bytes (indices are coded losslessly)."""
        frame, idx, decoded, report = self._encode(u, rng, weight, want_decoded=True)
        assert decoded is not None
        dense = np.zeros(self.spec.size, dtype=np.float32)
        dense[idx] = decoded
        return frame, dense, report

    # -- decoding -------------------------------------------------------------------------

    def decode_frame(self, frame: bytes) -> DecodedFrame:
        """Checks and decodes a v1 frame; any problem raises a `CodecError` subclass."""
        if not isinstance(frame, (bytes, bytearray, memoryview)):
            raise TypeError(f"frame must be bytes, got {type(frame).__name__}")
        frame = bytes(frame)
        h = parse_header(frame, self.spec, self.limits)
        payload = frame[HEADER_LEN : HEADER_LEN + h.payload_bytes]
        raw = self._zstd.decompress(payload, h.raw_bytes) if h.compressed else payload
        i_end = h.index_bytes
        s_end = i_end + h.scale_bytes
        coding = INDEX_BY_NAME[h.index_coding]
        idx = coding.decode(raw[:i_end], h.nnz, h.size, h.index_param)
        vals = VALUE_CODINGS[h.bits].decode(raw[i_end:s_end], raw[s_end:], h.nnz, max(h.block, 1))
        return DecodedFrame(SparseUpdate(idx, vals, h.size), h.weight, h)

    def decode(self, frame: bytes) -> SparseUpdate:
        """The update in a v1 frame (see `decode_frame`)."""
        return self.decode_frame(frame).update
