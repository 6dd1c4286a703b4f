"""The update pipeline's stages (topk, quantize, index, zstd, frame), each with encode/decode."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ._bits import ByteView
from ._config import QUANTIZED_BITS, CodecConfig, DecodeLimits
from ._index import INDEX_BY_NAME, INDEX_CODINGS, IndexCoding
from ._quant import VALUE_CODINGS, ValueCoding
from ._spec import ModelSpec
from ._topk import select_topk
from ._wire import CRC_LEN, FLAG_ZSTD, HEADER_LEN, FrameHeader, pack_header, parse_header
from ._zstd import ZstdCodec

__all__ = [
    "AUTO_CANDIDATES",
    "TopKStage",
    "QuantizeStage",
    "IndexStage",
    "ZstdStage",
    "FrameStage",
    "Sections",
]

F32 = npt.NDArray[np.float32]
Indices = npt.NDArray[np.int64]

# The codings "auto" chooses between; ties go to the earlier one.
AUTO_CANDIDATES = ("rice", "ef", "bitmap")


class TopKStage:
    """float32[d] -> (sorted int64[k] indices, float32[k] values); exact zeros are dropped."""

    name = "topk"

    def __init__(self, spec: ModelSpec, config: CodecConfig) -> None:
        self.spec = spec
        self.k = config.k_for(spec.size)
        self.mode = config.topk_mode
        self.scope = config.scope

    def encode(self, u: F32, rng: np.random.Generator) -> tuple[Indices, F32]:
        d = self.spec.size
        idx = select_topk(u, self.k, self.spec, self.mode, self.scope, rng)
        vals = u[idx]
        if idx.shape[0] < d:
            # Exact zeros carry nothing; they are kept only when the whole vector is sent.
            nonzero = vals != 0
            if not nonzero.all():
                idx, vals = idx[nonzero], vals[nonzero]
        return idx, vals

    def decode(self, idx: Indices, vals: F32) -> F32:
        """The dense float32[d] vector (zeros where nothing was sent)."""
        out = np.zeros(self.spec.size, dtype=np.float32)
        out[idx] = vals
        return out


class QuantizeStage:
    """float32[k] values -> (scale section, value section) by the `bits` value coding."""

    name = "quantize"

    def __init__(self, bits: int, block: int) -> None:
        self.bits = bits
        # The wire carries block 0 for unquantized values; the codings then ignore it.
        self.block = block if bits in QUANTIZED_BITS else 0
        self.coding: ValueCoding = VALUE_CODINGS[bits]

    def encode(self, vals: F32, rng: np.random.Generator) -> tuple[bytes, bytes]:
        return self.coding.encode(vals, max(self.block, 1), rng)

    def decode(self, scales: ByteView, codes: ByteView, k: int) -> F32:
        return self.coding.decode(scales, codes, k, max(self.block, 1))


class IndexStage:
    """Sorted indices -> index section, by the smallest allowed coding (`"auto"`) or a fixed one."""

    name = "index"

    def __init__(self, d: int, choice: str) -> None:
        self.d = d
        self.candidates = AUTO_CANDIDATES if choice == "auto" else (choice,)

    def choose(self, idx: Indices) -> tuple[IndexCoding, int]:
        """`(coding, param)` with the fewest bytes; every coordinate sent needs no index."""
        if idx.shape[0] == self.d:
            return INDEX_CODINGS[0], 0
        best: tuple[int, IndexCoding, int] | None = None
        for name in self.candidates:
            coding = INDEX_BY_NAME[name]
            size, param = coding.plan(idx, self.d)
            if best is None or size < best[0]:
                best = (size, coding, param)
        assert best is not None
        return best[1], best[2]

    def encode(self, idx: Indices) -> tuple[IndexCoding, int, bytes]:
        coding, param = self.choose(idx)
        return coding, param, coding.encode(idx, self.d, param)

    @staticmethod
    def decode(buf: ByteView, coding: str, k: int, d: int, param: int) -> Indices:
        return INDEX_BY_NAME[coding].decode(buf, k, d, param)


class ZstdStage:
    """Raw sections -> stored payload: zstd only when strictly shorter (flag bit 0)."""

    name = "zstd"

    def __init__(self, level: int, max_window: int) -> None:
        self.zstd = ZstdCodec(level, max_window)

    def encode(self, raw: bytes) -> tuple[bytes, int]:
        """`(payload, flags)`."""
        if raw:
            packed = self.zstd.compress(raw)
            if len(packed) < len(raw):
                return packed, FLAG_ZSTD
        return raw, 0

    def decode(self, payload: ByteView, header: FrameHeader) -> ByteView:
        if header.compressed:
            return self.zstd.decompress(payload, header.raw_bytes)
        return payload


@dataclass(frozen=True, slots=True)
class Sections:
    """The three raw sections of a frame (bytes when encoding, views when decoding)."""

    index: bytes | memoryview
    scales: bytes | memoryview
    values: bytes | memoryview

    @classmethod
    def split(cls, raw: ByteView, header: FrameHeader) -> Sections:
        """Views into `raw` (no copies)."""
        raw = memoryview(raw)
        i, s = header.index_bytes, header.index_bytes + header.scale_bytes
        return cls(raw[:i], raw[i:s], raw[s:])

    def join(self) -> bytes:
        return b"".join((self.index, self.scales, self.values))


class FrameStage:
    """Header + payload + CRC-32 -> frame; decoding checks the envelope and the header."""

    name = "frame"

    def __init__(self, spec: ModelSpec, limits: DecodeLimits) -> None:
        self.spec = spec
        self.limits = limits

    @staticmethod
    def encode(header: FrameHeader, index_id: int, payload: bytes) -> bytes:
        body = pack_header(header, index_id) + payload
        return body + zlib.crc32(body).to_bytes(CRC_LEN, "little")

    def decode(self, frame: bytes) -> tuple[FrameHeader, memoryview]:
        header = parse_header(frame, self.spec, self.limits)
        # A view, not a copy: sections of a large frame are read in place.
        return header, memoryview(frame)[HEADER_LEN : HEADER_LEN + header.payload_bytes]
