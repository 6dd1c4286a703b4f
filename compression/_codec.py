"""The update codec: top-k -> quantize -> index coding -> zstd -> frame, and its strict decoder."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ._bits import ByteView
from ._config import CodecConfig, DecodeLimits, check_weight
from ._errors import CodecError
from ._sparse import SparseUpdate
from ._spec import ModelSpec
from ._stages import FrameStage, IndexStage, QuantizeStage, Sections, TopKStage, ZstdStage
from ._wire import WIRE_VERSION, FrameHeader, byte_view, check_frame_fits, check_size

__all__ = ["StageReport", "EncodeReport", "DecodedFrame", "UpdateCodec"]

F32 = npt.NDArray[np.float32]


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
        """The report of stage `name` ("index" matches "index:rice" and the other codings)."""
        for s in self.stages:
            if s.name == name or s.name.split(":", 1)[0] == name:
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
        self.topk = TopKStage(spec, config)
        self.quantize = QuantizeStage(config.bits, config.block)
        self.index = IndexStage(spec.size, config.index)
        self.zstd = ZstdStage(config.zstd_level, self.limits.zstd_max_window)
        self.frame = FrameStage(spec, self.limits)

    # -- encoding -------------------------------------------------------------------------

    def _check_input(self, u: npt.ArrayLike, rng: np.random.Generator, weight: float) -> F32:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        arr = np.asarray(u)
        if arr.ndim != 1 or arr.shape[0] != self.spec.size:
            raise ValueError(f"update must have shape ({self.spec.size},), got {arr.shape}")
        if arr.dtype != np.float32:
            raise ValueError(f"update must be float32, got {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("update contains NaN or Inf")
        check_weight(weight)
        return arr

    def _encode(
        self, u: npt.ArrayLike, rng: np.random.Generator, weight: float, want_decoded: bool
    ) -> tuple[bytes, npt.NDArray[np.int64], F32 | None, EncodeReport]:
        arr = self._check_input(u, rng, weight)
        d = self.spec.size
        report = EncodeReport(dense_bytes=4 * d)
        clock = time.perf_counter

        t0 = clock()
        idx, vals = self.topk.encode(arr, rng)
        k = int(idx.shape[0])
        t1 = clock()
        # bytes out: the plain sparse form, a 4-byte index and a 4-byte value per coordinate
        report.stages.append(StageReport(self.topk.name, 4 * d, 8 * k, t1 - t0))

        scales, codes = self.quantize.encode(vals, rng)
        # roundtrip() needs the values exactly as the server will decode them
        decoded = self.quantize.decode(scales, codes, k) if want_decoded else None
        t2 = clock()
        report.stages.append(
            StageReport(self.quantize.name, 4 * k, len(scales) + len(codes), t2 - t1)
        )

        coding, param, index = self.index.encode(idx)
        t3 = clock()
        report.stages.append(StageReport(f"index:{coding.name}", 4 * k, len(index), t3 - t2))

        raw = Sections(index, scales, codes).join()
        payload, flags = self.zstd.encode(raw)
        t4 = clock()
        report.stages.append(StageReport(self.zstd.name, len(raw), len(payload), t4 - t3))
        # Not a frame this codec's own decoder (its limits) would refuse: ValueError, no state.
        check_frame_fits(len(payload), self.limits.frame_cap(self.spec))

        header = FrameHeader(
            version=WIRE_VERSION,
            flags=flags,
            fingerprint=self.spec.fingerprint,
            size=d,
            nnz=k,
            bits=self.quantize.bits,
            index_coding=coding.name,
            index_param=param,
            block=self.quantize.block,
            weight=float(weight),
            index_bytes=len(index),
            scale_bytes=len(scales),
            value_bytes=len(codes),
            payload_bytes=len(payload),
        )
        frame = self.frame.encode(header, coding.wire_id, payload)
        t5 = clock()
        report.stages.append(StageReport(self.frame.name, len(payload), len(frame), t5 - t4))

        report.nnz = k
        report.frame_bytes = len(frame)
        report.index_coding = coding.name
        report.compressed = bool(flags)
        return frame, idx, decoded, report

    def encode(
        self, u: npt.ArrayLike, rng: np.random.Generator, weight: float = 1.0
    ) -> tuple[bytes, EncodeReport]:
        """Encode float32[d] `u` into one v1 frame carrying `weight` (example count, >= 0).

        `rng` drives the stochastic rounding (and the sample of "sampled" top-k). A frame
        longer than `limits.frame_cap(spec)`, which this codec's decoder refuses, is a
        ValueError instead (before anything is returned; `roundtrip` and the batch encoders too).
        """
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
        return frame, self.topk.decode(idx, decoded), report

    # -- decoding -------------------------------------------------------------------------

    def decode_frame(self, frame: ByteView) -> DecodedFrame:
        """Checks and decodes a v1 frame, stages in reverse; any problem raises a `CodecError`."""
        if not isinstance(frame, bytes):
            view = byte_view(frame, "frame")
            check_size(view.nbytes, self.limits.frame_cap(self.spec), "frame")
            frame = bytes(view)
        header, payload = self.frame.decode(frame)
        sections = Sections.split(self.zstd.decode(payload, header), header)
        idx = IndexStage.decode(
            sections.index, header.index_coding, header.nnz, header.size, header.index_param
        )
        vals = QuantizeStage(header.bits, header.block).decode(
            sections.scales, sections.values, header.nnz
        )
        return DecodedFrame(SparseUpdate(idx, vals, header.size), header.weight, header)

    def decode(self, frame: ByteView) -> SparseUpdate:
        """The update in a v1 frame (see `decode_frame`)."""
        return self.decode_frame(frame).update

    # -- batches ----------------------------------------------------------------------------

    def encode_many(
        self,
        updates: npt.ArrayLike,
        rngs: Sequence[np.random.Generator],
        weights: Sequence[float],
    ) -> list[bytes]:
        """The frames of `encode(updates[i], rngs[i], weights[i])` for every row of the
        float32[n, d] batch, byte for byte (no reports); see `compression._batch`."""
        from ._batch import encode_many

        return encode_many(self, updates, rngs, weights)

    def roundtrip_many(
        self,
        updates: npt.ArrayLike,
        rngs: Sequence[np.random.Generator],
        weights: Sequence[float],
    ) -> tuple[list[bytes], F32]:
        """`(frames, decoded float32[n, d])`, row i bit-identical to `roundtrip(updates[i], ...)`."""
        from ._batch import roundtrip_many

        return roundtrip_many(self, updates, rngs, weights)

    def decode_many(self, frames: Sequence[bytes]) -> list[DecodedFrame | CodecError]:
        """`decode_frame` of every frame under the same limits; a refused frame's entry is the
        `CodecError` that `decode_frame` raises for it, and it does not affect the others."""
        from ._batch import decode_many

        return decode_many(self, frames)
