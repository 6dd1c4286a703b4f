"""An independent writer and strict reader of wire format v1, from docs/wire-format.md alone.

Everything that builds or parses bytes here follows the document (field offsets of 1.1, the
payload rule of 1.2, the index codings of 1.3, the value codings of 1.4, the checks of 1.5 in
their order, the encoder's choices of section 5, the snapshot of 2 and the residual of 3) in
plain Python: bit streams are Python integers, the header is packed field by field at the
documented offsets, zstd frame headers are read by hand (RFC 8878). Nothing is imported from
`compression` for encoding or parsing; the package is only the other side of each comparison:

- frames this writer builds (every bit width, every index coding and parameter, raw and zstd,
  k = 0 and k = d, weights -0.0 and 2**53) decode in `compression` to what the doc says;
- the codec's frames parse here to what the codec decodes, and given the codec's input and
  seed this writer builds the same bytes (same sections, same header; the zstd bytes are only
  compared after inflating, as 1.2 lets a port write its own);
- mutated frames are refused by both sides with the same error class (the first failing
  check of 1.5), or accepted by both with the same values.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compression
from compression import (
    CodecConfig,
    CodecError,
    ErrorFeedback,
    ModelSpec,
    UpdateCodec,
    decode_snapshot,
    encode_snapshot,
)

F32 = npt.NDArray[np.float32]
SETTINGS = settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------------------------------------
# The document, transcribed

HEADER_LEN = 56
# 1.1: (offset, struct code) of every header field
FIELDS = {
    "magic": (0, "4s"),
    "version": (4, "B"),
    "flags": (5, "B"),
    "header_len": (6, "H"),
    "fingerprint": (8, "8s"),
    "d": (16, "I"),
    "k": (20, "I"),
    "bits": (24, "B"),
    "index_id": (25, "B"),
    "index_param": (26, "B"),
    "reserved": (27, "B"),
    "block": (28, "I"),
    "weight": (32, "d"),
    "index_bytes": (40, "I"),
    "scale_bytes": (44, "I"),
    "value_bytes": (48, "I"),
    "payload_bytes": (52, "I"),
}
INDEX_IDS = {"all": 0, "bitmap": 1, "rice": 2, "ef": 3}
VALID_BITS = (1, 2, 4, 8, 16, 32)
ZSTD_MAGIC = bytes.fromhex("28b52ffd")


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def fingerprint(shapes: list[tuple[str, tuple[int, ...]]]) -> bytes:
    text = b"plume-spec-v1\0float32\0"
    for name, shape in shapes:
        text += name.encode() + b"\0" + ",".join(str(n) for n in shape).encode() + b"\0"
    return hashlib.sha256(text).digest()[:8]


# -- bit streams (LSB first) ------------------------------------------------------------------


def pack_fields(fields: list[int], width: int) -> bytes:
    acc = 0
    for i, f in enumerate(fields):
        assert 0 <= f < (1 << width)
        acc |= f << (i * width)
    return acc.to_bytes(cdiv(len(fields) * width, 8), "little")


def unpack_fields(buf: bytes, count: int, width: int) -> list[int] | None:
    """None when the padding after the last field is not zero."""
    acc = int.from_bytes(buf, "little")
    if acc >> (count * width):
        return None
    mask = (1 << width) - 1
    return [(acc >> (i * width)) & mask for i in range(count)]


def ones_stream(positions: list[int]) -> bytes:
    """Ones at `positions`, ending with the byte holding the last one."""
    if not positions:
        return b""
    acc = 0
    for p in positions:
        acc |= 1 << p
    return acc.to_bytes(positions[-1] // 8 + 1, "little")


# -- 1.3 index codings ------------------------------------------------------------------------


def gaps(idx: list[int]) -> list[int]:
    return [i - p - 1 for p, i in zip([-1, *idx], idx, strict=False)]


def index_encode(coding: str, idx: list[int], d: int, param: int) -> bytes:
    if coding == "all":
        assert idx == list(range(d))
        return b""
    if coding == "bitmap":
        acc = sum(1 << i for i in idx)
        return acc.to_bytes(cdiv(d, 8), "little")
    if coding == "rice":
        g = gaps(idx)
        low = pack_fields([x & ((1 << param) - 1) for x in g], param)
        pos, p = [], -1
        for x in g:
            p += (x >> param) + 1
            pos.append(p)
        return low + ones_stream(pos)
    assert coding == "ef"
    low = pack_fields([x & ((1 << param) - 1) for x in idx], param)
    return low + ones_stream([(x >> param) + i for i, x in enumerate(idx)])


def index_bounds(coding: str, k: int, d: int, param: int) -> tuple[int, int]:
    if coding == "all":
        return 0, 0
    if coding == "bitmap":
        return cdiv(d, 8), cdiv(d, 8)
    nlow = cdiv(k * param, 8)
    top = (d - k) >> param if coding == "rice" else (d - 1) >> param
    return nlow + cdiv(k, 8), nlow + cdiv(k + top, 8)


def param_legal(coding: str, d: int, param: int) -> bool:
    if coding in ("all", "bitmap"):
        return param == 0
    return 0 <= param and (1 << param) <= d


def index_size(coding: str, idx: list[int], d: int, param: int) -> int:
    """Exact section length, from the formulas of 1.3."""
    k = len(idx)
    if coding == "bitmap":
        return cdiv(d, 8)
    if coding == "rice":
        return cdiv(k * param, 8) + cdiv(k + sum(g >> param for g in gaps(idx)), 8)
    return cdiv(k * param, 8) + cdiv((idx[-1] >> param) + k, 8)


def auto_index(idx: list[int], d: int, choice: str) -> tuple[str, int]:
    """Section 5 and 1.3: coding 0 at k = d, else the smallest (ties: rice, ef, bitmap, then
    the smaller parameter)."""
    k = len(idx)
    if k == d:
        return "all", 0
    if choice != "auto":
        names = [choice]
    else:
        names = ["rice", "ef", "bitmap"]
    if k == 0:
        # An empty index section: Rice or Elias-Fano at parameter 0 (the bitmap is never empty).
        return (names[0] if names[0] != "bitmap" else "bitmap"), 0
    best: tuple[int, int, int, str] | None = None
    for rank, name in enumerate(names):
        if name == "bitmap":
            params = [0]
        else:
            if name == "rice":
                mean = sum(gaps(idx)) / k
                centre = math.floor(math.log2(max(1.0, mean)))
            else:
                centre = math.floor(math.log2(d / k))
            params = [p for p in range(centre - 2, centre + 4) if param_legal(name, d, p)]
        for p in params:
            key = (index_size(name, idx, d, p), rank, p, name)
            if best is None or key < best:
                best = key
    assert best is not None
    return best[3], best[2]


def index_decode(coding: str, buf: bytes, k: int, d: int, param: int) -> list[int]:
    """Step 22; raises the documented error name."""
    if coding == "all":
        return list(range(d))
    if coding == "bitmap":
        acc = int.from_bytes(buf, "little")
        if acc >> d:
            raise Refused("InvalidIndices")
        idx = [i for i in range(d) if acc >> i & 1]
        if len(idx) != k:
            raise Refused("InvalidIndices")
        return idx
    nlow = cdiv(k * param, 8)
    low = unpack_fields(buf[:nlow], k, param)
    if low is None:
        raise Refused("MalformedSection")
    upper = buf[nlow:]
    if k == 0:
        if upper:
            raise Refused("MalformedSection")
        return []
    if not upper or upper[-1] == 0:
        raise Refused("MalformedSection")
    acc = int.from_bytes(upper, "little")
    pos = [i for i in range(8 * len(upper)) if acc >> i & 1]
    if len(pos) != k:
        raise Refused("MalformedSection")
    if coding == "rice":
        out, prev_p, prev_i = [], -1, -1
        for p, lo in zip(pos, low, strict=True):
            q = p - prev_p - 1
            prev_i = prev_i + ((q << param) | lo) + 1
            out.append(prev_i)
            prev_p = p
    else:
        out = [((p - i) << param) | lo for i, (p, lo) in enumerate(zip(pos, low, strict=True))]
        if any(b <= a for a, b in zip(out, out[1:], strict=False)):
            raise Refused("InvalidIndices")
    if out and out[-1] >= d:
        raise Refused("InvalidIndices")
    return out


# -- 1.4 value codings ------------------------------------------------------------------------


def f32(x: float) -> np.float32:
    return np.float32(x)


@dataclass
class Coded:
    scales: bytes
    values: bytes


def quantize(vals: F32, bits: int, block: int, uniforms: F32) -> Coded:
    """bits 1/2/4/8 as 1.4 writes them (float32 arithmetic in the order shown)."""
    k = len(vals)
    scales, codes = b"", []
    for start in range(0, k, block):
        v = vals[start : start + block]
        if bits == 1:
            neg = [float(x) for x in v if x < 0]
            oth = [float(x) for x in v if not x < 0]
            lo = f32(sum(neg) / len(neg)) if neg else None
            hi = f32(sum(oth) / len(oth)) if oth else None
            lo, hi = (lo if lo is not None else hi), (hi if hi is not None else lo)
            codes += [0 if x < 0 else 1 for x in v]
        else:
            steps = (1 << (bits - 1)) - 1
            mag = np.abs(v)
            lo, hi = mag.min(), mag.max()
            step = f32((hi - lo) / f32(steps))
            for x, s, u in zip(mag, np.signbit(v), uniforms[start : start + block], strict=True):
                j = 0
                if step != 0:
                    xx = f32((x - lo) / step)
                    j = min(steps, max(0, math.floor(f32(xx + u))))
                codes.append((j << 1) | int(s))
        scales += struct.pack("<ff", lo, hi)
    return Coded(scales, pack_fields(codes, bits))


def values_encode(vals: F32, bits: int, block: int, uniforms: F32) -> Coded:
    if bits == 32:
        return Coded(b"", b"".join(struct.pack("<f", x) for x in vals))
    if bits == 16:
        return Coded(b"", b"".join(struct.pack("<e", float(x)) for x in vals))
    return quantize(vals, bits, block, uniforms)


def values_decode(scales: bytes, values: bytes, k: int, bits: int, block: int) -> F32:
    """Steps 23 and 24; raises the documented error name."""
    if bits in (16, 32):
        fmt = "<e" if bits == 16 else "<f"
        width = bits // 8
        out = np.array(
            [struct.unpack_from(fmt, values, i * width)[0] for i in range(k)], dtype=np.float32
        )
        if not np.all(np.isfinite(out)):
            raise Refused("NonFiniteValues")
        return out
    pairs = [struct.unpack_from("<ff", scales, 8 * b) for b in range(cdiv(k, block))]
    sc = np.array(pairs, dtype=np.float32).reshape(-1, 2)
    if not np.all(np.isfinite(sc)):
        raise Refused("NonFiniteValues")
    if np.any(sc[:, 0] > sc[:, 1]):
        raise Refused("MalformedSection")
    codes = unpack_fields(values, k, bits)
    if codes is None:
        raise Refused("MalformedSection")
    if bits > 1 and np.any(sc[:, 0] < 0):
        raise Refused("MalformedSection")
    out = np.empty(k, dtype=np.float32)
    with np.errstate(over="ignore"):
        for i, c in enumerate(codes):
            lo, hi = sc[i // block]
            if bits == 1:
                out[i] = hi if c == 1 else lo
                continue
            step = f32((hi - lo) / f32((1 << (bits - 1)) - 1))
            m = f32(lo + f32(c >> 1) * step)
            out[i] = -m if c & 1 else m
    if not np.all(np.isfinite(out)):
        raise Refused("NonFiniteValues")
    return out


# -- 1.1 / 1.2 the frame ----------------------------------------------------------------------


class Refused(Exception):
    """A refusal by the doc reader, named by the error class the doc's table gives."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def build_header(**fields: object) -> bytes:
    out = bytearray(HEADER_LEN)
    for name, (offset, code) in FIELDS.items():
        struct.pack_into("<" + code, out, offset, fields[name])
    return bytes(out)


def build_frame(
    *,
    fp: bytes,
    d: int,
    idx: list[int],
    coding: str,
    param: int,
    bits: int,
    block: int,
    coded: Coded,
    weight: float,
    zstd_level: int | None = 3,
) -> bytes:
    """A frame exactly as 1.1 and 1.2 lay it out; zstd kept only when strictly shorter."""
    index = index_encode(coding, idx, d, param)
    raw = index + coded.scales + coded.values
    flags, payload = 0, raw
    if zstd_level is not None and raw:
        z = zstandard.ZstdCompressor(
            level=zstd_level, write_content_size=True, write_checksum=False
        ).compress(raw)
        if len(z) < len(raw):
            flags, payload = 1, z
    head = build_header(
        magic=b"PLMU",
        version=1,
        flags=flags,
        header_len=HEADER_LEN,
        fingerprint=fp,
        d=d,
        k=len(idx),
        bits=bits,
        index_id=INDEX_IDS[coding],
        index_param=param,
        reserved=0,
        block=block if bits <= 8 else 0,
        weight=weight,
        index_bytes=len(index),
        scale_bytes=len(coded.scales),
        value_bytes=len(coded.values),
        payload_bytes=len(payload),
    )
    body = head + payload
    return body + struct.pack("<I", zlib.crc32(body))


def zstd_header(payload: bytes) -> tuple[int | None, int]:
    """(content size or None, window size) from a zstd frame header read by hand (RFC 8878);
    raises DecompressionError for a missing or malformed header (step 16)."""
    if payload[:4] != ZSTD_MAGIC or len(payload) < 5:
        raise Refused("DecompressionError")
    fhd = payload[4]
    fcs_flag, single, reserved, dict_flag = fhd >> 6, fhd >> 5 & 1, fhd >> 3 & 1, fhd & 3
    if reserved:
        raise Refused("DecompressionError")
    pos = 5
    window = None
    if not single:
        if len(payload) < pos + 1:
            raise Refused("DecompressionError")
        wd = payload[pos]
        exponent, mantissa = wd >> 3, wd & 7
        if exponent + 10 > 31:
            raise Refused("DecompressionError")
        base = 1 << (exponent + 10)
        window = base + (base // 8) * mantissa
        pos += 1
    pos += (0, 1, 2, 4)[dict_flag]
    fcs_len = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if len(payload) < pos + fcs_len:
        raise Refused("DecompressionError")
    content: int | None = None
    if fcs_len:
        content = int.from_bytes(payload[pos : pos + fcs_len], "little")
        if fcs_len == 2:
            content += 256
    if window is None:
        window = content if content is not None else 0
    return content, window


@dataclass
class Parsed:
    header: dict[str, object]
    idx: list[int]
    values: F32


def parse_frame(frame: bytes, fp: bytes, d: int) -> Parsed:
    """Section 1.5, in order, with the default DecodeLimits."""
    cap = 4 * d + cdiv(d, 8) + 1024
    if len(frame) > cap:  # 1
        raise Refused("SizeLimitExceeded")
    if len(frame) < 8:  # 2
        raise Refused("TruncatedFrame")
    if frame[:4] != b"PLMU":  # 3
        raise Refused("BadMagic")
    if frame[4] != 1:  # 4
        raise Refused("UnsupportedVersion")
    header_len = struct.unpack_from("<H", frame, 6)[0]
    if header_len > 4096:  # 5
        raise Refused("HeaderTooLarge")
    if header_len != HEADER_LEN:  # 6
        raise Refused("MalformedHeader")
    if len(frame) < HEADER_LEN:  # 7
        raise Refused("TruncatedFrame")
    h = {
        name: struct.unpack_from("<" + code, frame, off)[0] for name, (off, code) in FIELDS.items()
    }
    total = HEADER_LEN + int(h["payload_bytes"]) + 4  # type: ignore[call-overload]
    if len(frame) < total:  # 8
        raise Refused("TruncatedFrame")
    if len(frame) > total:
        raise Refused("TrailingBytes")
    if zlib.crc32(frame[:-4]) != struct.unpack_from("<I", frame, total - 4)[0]:  # 9
        raise Refused("ChecksumMismatch")
    flags, k, bits = int(h["flags"]), int(h["k"]), int(h["bits"])  # type: ignore[call-overload]
    if flags & ~1 or h["reserved"] != 0:  # 10
        raise Refused("MalformedHeader")
    if h["fingerprint"] != fp or h["d"] != d:  # 11
        raise Refused("SpecMismatch")
    if k > d:  # 12
        raise Refused("SizeLimitExceeded")
    index_id, param, block = int(h["index_id"]), int(h["index_param"]), int(h["block"])  # type: ignore[call-overload]
    weight = float(h["weight"])  # type: ignore[arg-type]
    coding = {v: n for n, v in INDEX_IDS.items()}.get(index_id)
    if (  # 13
        bits not in VALID_BITS
        or coding is None
        or not param_legal(coding, d, param)
        or (coding == "all" and k != d)
        or not (8 <= block <= 1 << 20 if bits <= 8 else block == 0)
        or not 0 <= weight <= 2.0**53
    ):
        raise Refused("MalformedHeader")
    assert coding is not None
    if bits <= 8:
        want_scales, want_values = 8 * cdiv(k, block), cdiv(k * bits, 8)
    else:
        want_scales, want_values = 0, k * bits // 8
    lo, hi = index_bounds(coding, k, d, param)
    index_bytes, scale_bytes, value_bytes = (
        int(h["index_bytes"]),  # type: ignore[call-overload]
        int(h["scale_bytes"]),  # type: ignore[call-overload]
        int(h["value_bytes"]),  # type: ignore[call-overload]
    )
    if (  # 14
        scale_bytes != want_scales or value_bytes != want_values or not lo <= index_bytes <= hi
    ):
        raise Refused("MalformedHeader")
    raw_len = index_bytes + scale_bytes + value_bytes
    payload = frame[HEADER_LEN : total - 4]
    if (flags == 0 and len(payload) != raw_len) or (flags == 1 and len(payload) >= raw_len):  # 15
        raise Refused("MalformedHeader")
    if flags:
        content, window = zstd_header(payload)  # 16
        if content is None:  # 17
            raise Refused("DecompressionError")
        if content > raw_len:  # 18
            raise Refused("SizeLimitExceeded")
        if content != raw_len:
            raise Refused("DecompressionError")
        if window > 1 << 24:  # 19
            raise Refused("DecompressionError")
        dobj = zstandard.ZstdDecompressor(max_window_size=1 << 24).decompressobj()
        try:  # 20
            raw = dobj.decompress(payload)
        except zstandard.ZstdError as exc:
            raise Refused("DecompressionError") from exc
        if not dobj.eof or len(raw) != raw_len:
            raise Refused("DecompressionError")
        if dobj.unused_data:  # 21
            raise Refused("TrailingBytes")
    else:
        raw = payload
    sec_i = raw[:index_bytes]
    sec_s = raw[index_bytes : index_bytes + scale_bytes]
    sec_v = raw[index_bytes + scale_bytes :]
    idx = index_decode(coding, sec_i, k, d, param)  # 22
    values = values_decode(sec_s, sec_v, k, bits, block)  # 23, 24
    return Parsed(h, idx, values)


# -- section 5: the encoder's choices ---------------------------------------------------------


def doc_encode(
    shapes: list[tuple[str, tuple[int, ...]]],
    u: F32,
    cfg: CodecConfig,
    seed: int,
    weight: float,
) -> bytes:
    d = len(u)
    k = max(1, min(d, round(cfg.topk * d)))
    order = sorted(range(d), key=lambda i: -abs(float(u[i])))
    idx = sorted(order[:k])
    if k < d:
        idx = [i for i in idx if u[i] != 0]
    vals = u[idx].astype(np.float32)
    coding, param = auto_index(idx, d, cfg.index)
    bits = cfg.bits
    # the README of docs/test-vectors: one float32 uniform per value, in index order
    uniforms = (
        np.random.default_rng(seed).random(len(idx), dtype=np.float32)
        if bits <= 8
        else np.zeros(0, np.float32)
    )
    coded = values_encode(vals, bits, cfg.block, uniforms)
    return build_frame(
        fp=fingerprint(shapes),
        d=d,
        idx=idx,
        coding=coding,
        param=param,
        bits=bits,
        block=cfg.block,
        coded=coded,
        weight=weight,
        zstd_level=cfg.zstd_level,
    )


def sections_of(frame: bytes) -> tuple[bytes, bytes]:
    """(header without payload_bytes and flags, inflated payload)."""
    head = bytearray(frame[:HEADER_LEN])
    flags = head[5]
    head[5] = 0
    head[52:56] = bytes(4)
    payload = frame[HEADER_LEN:-4]
    if flags:
        payload = zstandard.ZstdDecompressor().decompress(payload)
    return bytes(head), payload


# ---------------------------------------------------------------------------------------------
# Strategies

SHAPES = [
    [("w", (20,))],
    [("w", (4, 4)), ("b", (4,))],
    [("conv.weight", (3, 3, 2)), ("conv.bias", (2,)), ("fc", (37,))],
    [("é", (1,))],
    [("a", (7, 9)), ("b", (0,)), ("c", (130,))],
]


def _shape_size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _spec(shapes: list[tuple[str, tuple[int, ...]]]) -> ModelSpec:
    return ModelSpec.from_shapes(shapes)


def _update(d: int, seed: int, scale: float, zeros: float) -> F32:
    """Distinct non-zero magnitudes (no ties for the top-k to break), random signs, some zeros."""
    rng = np.random.default_rng(seed)
    mags = (rng.permutation(d) + 1 + rng.uniform(0.0, 0.5, d)) * scale
    vals = np.where(rng.random(d) < 0.5, -mags, mags)
    vals[rng.random(d) < zeros] = 0.0
    return vals.astype(np.float32)


configs = st.builds(
    dict,
    topk=st.sampled_from([0.01, 0.05, 0.25, 0.5, 0.9, 1.0]),
    bits=st.sampled_from(VALID_BITS),
    block=st.sampled_from([8, 9, 16, 256]),
    index=st.sampled_from(["auto", "bitmap", "rice", "ef"]),
    zstd_level=st.sampled_from([1, 3, 19]),
)


# ---------------------------------------------------------------------------------------------
# Tests


def test_the_doc_fingerprints_match_the_specs() -> None:
    for shapes in SHAPES:
        assert fingerprint(shapes) == _spec(shapes).fingerprint, shapes


def test_the_worked_example_is_what_the_doc_writer_builds() -> None:
    # Prepare: 1.6's inputs, the doc's choices by hand
    shapes = [("w", (4, 4)), ("b", (4,))]
    u = np.array(
        [0.5, -0.02, 0.01, -1.25, 0.0, 0.03, 0.75, -0.04, 0.02, -0.6]
        + [0.01, 0.0, 0.05, 0.9, -0.03, 0.02, 0.01, -0.01, 0.04, 0.3],
        dtype=np.float32,
    )
    cfg = CodecConfig(topk=0.25, bits=4, block=8)
    # Execute
    frame = doc_encode(shapes, u, cfg, 7, 32.0)
    # Assert: the bytes printed in 1.6
    assert frame.hex() == (
        "504c4d55010038005b958b4436e245f71400000005000000040200000800000000000000000040400200000008"
        "000000030000000d0000004922"
        "0000003f0000a03f"
        "f03608"
        "2cad2d97"
    )
    got, _ = UpdateCodec(_spec(shapes), cfg).encode(u, np.random.default_rng(7), weight=32.0)
    assert got == frame


@SETTINGS
@given(
    shape_i=st.integers(0, len(SHAPES) - 1),
    cfg=configs,
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([1e-6, 1e-3, 1.0, 50.0]),
    zeros=st.sampled_from([0.0, 0.3, 1.0]),
    weight=st.sampled_from([0.0, 1.0, 600.0, 2.0**53]),
)
def test_the_doc_writer_builds_the_codecs_frames(
    shape_i: int, cfg: dict[str, object], seed: int, scale: float, zeros: float, weight: float
) -> None:
    # Prepare
    shapes = SHAPES[shape_i]
    spec = _spec(shapes)
    u = _update(spec.size, seed, scale, zeros)
    config = CodecConfig(**cfg)  # type: ignore[arg-type]
    codec = UpdateCodec(spec, config)
    # Execute
    frame, _ = codec.encode(u, np.random.default_rng(seed), weight=weight)
    ours = doc_encode(shapes, u, config, seed, weight)
    # Assert: same header fields (payload length and flag aside) and same raw sections
    assert sections_of(frame) == sections_of(ours)
    if frame[5] == 0 and ours[5] == 0:
        assert frame == ours
    # and the doc reader reads the codec's frame to the codec's values
    parsed = parse_frame(frame, fingerprint(shapes), spec.size)
    dec = codec.decode_frame(frame)
    assert parsed.idx == dec.update.indices.tolist()
    assert np.array_equal(parsed.values.view(np.uint32), dec.update.values.view(np.uint32))
    assert float(parsed.header["weight"]) == dec.weight == weight  # type: ignore[arg-type]


@SETTINGS
@given(
    shape_i=st.integers(0, len(SHAPES) - 1),
    cfg=configs,
    seeds=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=5),
    scale=st.sampled_from([1e-3, 1.0, 50.0]),
    zeros=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_the_batch_encoder_writes_the_doc_writers_frames(
    shape_i: int, cfg: dict[str, object], seeds: list[int], scale: float, zeros: float
) -> None:
    # Prepare: one row per seed
    shapes = SHAPES[shape_i]
    spec = _spec(shapes)
    config = CodecConfig(**cfg)  # type: ignore[arg-type]
    rows = np.stack([_update(spec.size, s, scale, zeros) for s in seeds])
    weights = [float(i) for i in range(len(seeds))]
    # Execute
    frames = UpdateCodec(spec, config).encode_many(
        rows, [np.random.default_rng(s) for s in seeds], weights
    )
    # Assert
    for row, seed, weight, frame in zip(rows, seeds, weights, frames, strict=True):
        assert sections_of(frame) == sections_of(doc_encode(shapes, row, config, seed, weight))


@st.composite
def crafted(draw: st.DrawFn) -> tuple[list[tuple[str, tuple[int, ...]]], bytes, list[int], F32]:
    """A legal frame built from the doc with arbitrary content: any index coding and legal
    parameter, arbitrary codes and scales, raw or zstd, and the values the doc decodes."""
    shapes = SHAPES[draw(st.integers(0, len(SHAPES) - 1))]
    d = sum(_shape_size(s) for _, s in shapes)
    bits = draw(st.sampled_from(VALID_BITS))
    block = draw(st.integers(8, 40)) if bits <= 8 else 0
    k = draw(st.integers(0, d))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    idx = sorted(rng.choice(d, size=k, replace=False).tolist())
    if k == d and draw(st.booleans()):
        coding = "all"
    else:
        coding = draw(st.sampled_from(["bitmap", "rice", "ef"]))
    param = 0 if coding in ("all", "bitmap") else draw(st.integers(0, d.bit_length() - 1))
    if bits == 32:
        vals = rng.standard_normal(k).astype(np.float32)
        coded = Coded(b"", vals.astype("<f4").tobytes())
    elif bits == 16:
        coded = Coded(b"", rng.standard_normal(k).astype("<f2").tobytes())
    else:
        nb = cdiv(k, block)
        lo = np.abs(rng.standard_normal(nb)).astype(np.float32)
        if bits == 1 and draw(st.booleans()):
            lo = -lo  # 1-bit levels may be negative
        hi = (lo + np.abs(rng.standard_normal(nb)) * draw(st.sampled_from([0.0, 1.0]))).astype(
            np.float32
        )
        scales = np.stack([lo, hi], axis=1).astype("<f4").tobytes()
        codes = rng.integers(0, 1 << bits, size=k).tolist()
        coded = Coded(scales, pack_fields(codes, bits))
    frame = build_frame(
        fp=fingerprint(shapes),
        d=d,
        idx=idx,
        coding=coding,
        param=param,
        bits=bits,
        block=block,
        coded=coded,
        weight=draw(st.sampled_from([-0.0, 0.0, 0.5, 2.0**53])),
        zstd_level=draw(st.sampled_from([None, 3])),
    )
    want = values_decode(coded.scales, coded.values, k, bits, block)
    return shapes, frame, idx, want


@SETTINGS
@given(case=crafted())
def test_the_codec_decodes_frames_the_doc_writer_builds(
    case: tuple[list[tuple[str, tuple[int, ...]]], bytes, list[int], F32],
) -> None:
    # Prepare
    shapes, frame, idx, want = case
    spec = _spec(shapes)
    # Execute
    got = UpdateCodec(spec, CodecConfig(topk=1.0, bits=32)).decode_frame(frame)
    parsed = parse_frame(frame, fingerprint(shapes), spec.size)
    # Assert
    assert got.update.indices.tolist() == idx == parsed.idx
    assert np.array_equal(got.update.values.view(np.uint32), want.view(np.uint32))
    assert math.copysign(1.0, got.weight) == 1.0  # -0.0 decodes as +0.0


MUTATIONS = st.one_of(
    st.tuples(st.just("field"), st.sampled_from(sorted(FIELDS)), st.integers(0, 2**32)),
    st.tuples(st.just("byte"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("payload"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("section"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("append"), st.integers(1, 8), st.just(0)),
)


def _mutate(frame: bytes, how: tuple[str, object, int], fix_crc: bool) -> bytes:
    kind, where, value = how
    out = bytearray(frame)
    if kind == "field":
        offset, code = FIELDS[str(where)]
        if len(out) < offset + struct.calcsize(code):
            return bytes(out)
        if code == "d":
            struct.pack_into("<d", out, offset, [-0.0, math.nan, 2.0**53 + 2, -1.0, 3.5][value % 5])
        elif code.endswith("s"):
            out[offset + value % int(code[:-1])] ^= 1 + value % 255
        else:
            struct.pack_into("<" + code, out, offset, value % (1 << (8 * struct.calcsize(code))))
    elif kind == "byte":
        out[int(where) % len(out)] = value  # type: ignore[call-overload]
    elif kind in ("payload", "section"):
        # a byte of the stored payload, or of the raw sections (zstd rewritten around it)
        if len(out) <= HEADER_LEN + 4 or struct.unpack_from("<I", out, 52)[0] != len(out) - 60:
            return bytes(out)
        payload = bytearray(out[HEADER_LEN:-4])
        if kind == "section" and out[5] == 1:
            try:
                payload = bytearray(zstandard.ZstdDecompressor().decompress(bytes(payload)))
            except zstandard.ZstdError:
                return bytes(out)
        if payload:
            payload[int(where) % len(payload)] = value  # type: ignore[call-overload]
        if kind == "section" and out[5] == 1:
            payload = bytearray(zstandard.ZstdCompressor(write_content_size=True).compress(payload))
        out[HEADER_LEN:-4] = payload
        struct.pack_into("<I", out, 52, len(payload))
        fix_crc = True
    elif kind == "cut":
        del out[int(where) % len(out) :]  # type: ignore[call-overload]
    else:
        out += bytes(int(where))  # type: ignore[call-overload]
    if fix_crc and kind not in ("cut", "append") and len(out) >= HEADER_LEN + 4:
        struct.pack_into("<I", out, len(out) - 4, zlib.crc32(bytes(out[:-4])))
    return bytes(out)


@SETTINGS
@given(case=crafted(), hows=st.lists(MUTATIONS, min_size=1, max_size=3), fix=st.booleans())
def test_a_mutated_frame_gets_the_same_verdict_from_the_doc_and_the_codec(
    case: tuple[list[tuple[str, tuple[int, ...]]], bytes, list[int], F32],
    hows: list[tuple[str, object, int]],
    fix: bool,
) -> None:
    # Prepare
    shapes, frame, _, _ = case
    spec = _spec(shapes)
    for how in hows:
        frame = _mutate(frame, how, fix) if frame else frame
    codec = UpdateCodec(spec, CodecConfig(topk=1.0, bits=32))
    # Execute
    try:
        parsed: Parsed | str = parse_frame(frame, fingerprint(shapes), spec.size)
    except Refused as exc:
        parsed = exc.name
    try:
        got: compression.DecodedFrame | str = codec.decode_frame(frame)
    except CodecError as exc:
        got = type(exc).__name__
    # Assert
    if isinstance(parsed, str) or isinstance(got, str):
        assert parsed == got, (parsed, got)
    else:
        assert parsed.idx == got.update.indices.tolist()
        assert np.array_equal(parsed.values.view(np.uint32), got.update.values.view(np.uint32))


def _verdict(frame: bytes, spec: ModelSpec) -> Parsed | str:
    try:
        return parse_frame(frame, spec.fingerprint, spec.size)
    except Refused as exc:
        return exc.name


@SETTINGS
@given(
    cases=st.lists(
        st.tuples(crafted(), st.lists(MUTATIONS, max_size=2), st.booleans()),
        min_size=1,
        max_size=8,
    )
)
def test_the_batch_decoder_gives_each_frame_the_doc_verdict(
    cases: list[
        tuple[
            tuple[list[tuple[str, tuple[int, ...]]], bytes, list[int], F32],
            list[tuple[str, object, int]],
            bool,
        ]
    ],
) -> None:
    # Prepare: frames of several specs, some mutated, decoded under the first one's spec
    spec = _spec(cases[0][0][0])
    frames = []
    for (_, frame, _, _), hows, fix in cases:
        for how in hows:
            frame = _mutate(frame, how, fix) if frame else frame
        frames.append(frame)
    # Execute
    got = UpdateCodec(spec, CodecConfig.dense()).decode_many(frames)
    # Assert
    for frame, theirs in zip(frames, got, strict=True):
        ours = _verdict(frame, spec)
        if isinstance(ours, str) or isinstance(theirs, CodecError):
            assert ours == type(theirs).__name__
        else:
            assert ours.idx == theirs.update.indices.tolist()
            assert np.array_equal(ours.values.view(np.uint32), theirs.update.values.view(np.uint32))


# -- section 2: snapshots; section 3: residuals -----------------------------------------------


def doc_snapshot(shapes: list[tuple[str, tuple[int, ...]]], params: F32, dtype: str) -> bytes:
    stored = params.astype("<f2" if dtype == "fp16" else "<f4")
    digest = hashlib.sha256(stored.astype("<f4").tobytes()).digest()
    payload = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(stored.tobytes())
    head = (
        b"PLMS"
        + bytes([1, 1 if dtype == "fp16" else 2])
        + struct.pack("<H", 56)
        + fingerprint(shapes)
        + struct.pack("<II", len(params), len(payload))
        + digest
    )
    assert len(head) == 56
    return head + payload


def read_snapshot(blob: bytes, shapes: list[tuple[str, tuple[int, ...]]]) -> F32:
    assert blob[:4] == b"PLMS" and blob[4] == 1 and struct.unpack_from("<H", blob, 6)[0] == 56
    assert blob[8:16] == fingerprint(shapes)
    d, n = struct.unpack_from("<II", blob, 16)
    assert len(blob) == 56 + n
    raw = zstandard.ZstdDecompressor().decompress(blob[56:])
    vals = np.frombuffer(raw, dtype="<f2" if blob[5] == 1 else "<f4").astype(np.float32)
    assert len(vals) == d and hashlib.sha256(vals.astype("<f4").tobytes()).digest() == blob[24:56]
    return vals


@SETTINGS
@given(shape_i=st.integers(0, len(SHAPES) - 1), dtype=st.sampled_from(["fp16", "fp32"]))
def test_snapshots_both_ways(shape_i: int, dtype: str) -> None:
    # Prepare
    shapes = SHAPES[shape_i]
    spec = _spec(shapes)
    params = np.random.default_rng(shape_i).standard_normal(spec.size).astype(np.float32)
    # Execute
    ours = doc_snapshot(shapes, params, dtype)
    theirs = encode_snapshot(params, spec, dtype)
    # Assert
    want = params.astype("<f2" if dtype == "fp16" else "<f4").astype(np.float32)
    assert np.array_equal(decode_snapshot(ours, spec), want)
    assert np.array_equal(read_snapshot(theirs, shapes), want)
    assert ours[:56] == theirs[:20] + struct.pack("<I", len(ours) - 56) + theirs[24:56]


@SETTINGS
@given(size=st.integers(1, 50), seed=st.integers(0, 1000))
def test_residuals_both_ways(size: int, seed: int) -> None:
    # Prepare
    res = np.random.default_rng(seed).standard_normal(size).astype(np.float32)
    body = res.astype("<f4").tobytes()
    ours = b"PLMR" + bytes([1, 0]) + struct.pack("<HII", 16, size, zlib.crc32(body)) + body
    ef = ErrorFeedback(size)
    ef.residual = res.copy()
    # Execute + Assert
    assert ef.to_bytes() == ours
    assert np.array_equal(ErrorFeedback.from_bytes(ours, size).residual, res)


@pytest.mark.parametrize(
    ("doc_example", "build"),
    [
        (
            "504c4d52 01 00 1000 02000000 00fbde05 0000803e 000080bf",
            lambda: (
                b"PLMR\x01\x00"
                + struct.pack("<HI", 16, 2)
                + struct.pack("<I", zlib.crc32(struct.pack("<ff", 0.25, -1.0)))
                + struct.pack("<ff", 0.25, -1.0)
            ),
        ),
    ],
)
def test_the_residual_example_is_what_the_doc_builds(doc_example: str, build: object) -> None:
    assert build().hex() == doc_example.replace(" ", "")  # type: ignore[operator]


# -- 1.5 steps 16 to 24 on hand-made payloads -------------------------------------------------


def zstd_rle_frame(
    content: bytes,
    *,
    single: bool = True,
    did: bytes = b"",
    fcs: int | None = -1,
    window_byte: int | None = None,
    fhd_extra: int = 0,
    checksum: bytes | None = None,
) -> bytes:
    """A zstd frame (RFC 8878) of one RLE block repeating `content[0]` len(content) times.
    `fcs`: -1 the true size, None no Frame_Content_Size, else that value (4 bytes)."""
    assert content == content[:1] * len(content)
    size = len(content) if fcs == -1 else fcs
    fcs_flag, fcs_bytes = 0, b""
    if size is not None:
        fcs_flag, fcs_bytes = 2, struct.pack("<I", size)
    did_flag = {0: 0, 1: 1, 2: 2, 4: 3}[len(did)]
    fhd = fcs_flag << 6 | int(single) << 5 | int(checksum is not None) << 2 | did_flag | fhd_extra
    head = ZSTD_MAGIC + bytes([fhd])
    if not single:
        head += bytes([window_byte if window_byte is not None else 0])  # 1 KiB window
    block = struct.pack("<I", 1 | 1 << 1 | len(content) << 3)[:3] + content[:1]
    return head + did + fcs_bytes + block + (checksum or b"")


def _dense_frame(payload: bytes, d: int, raw_len: int) -> bytes:
    head = build_header(
        magic=b"PLMU", version=1, flags=1, header_len=56, fingerprint=fingerprint([("w", (d,))]),
        d=d, k=d, bits=32, index_id=0, index_param=0, reserved=0, block=0, weight=1.0,
        index_bytes=0, scale_bytes=0, value_bytes=raw_len, payload_bytes=len(payload),
    )  # fmt: skip
    return head + payload + struct.pack("<I", zlib.crc32(head + payload))


_CONTENT = b"\x3f" * 160  # forty fp32 values 0x3f3f3f3f
_XXH_OK = zstandard.ZstdCompressor(write_checksum=True).compress(_CONTENT)[-4:]

ZSTD_CASES = {
    # name: (payload, the doc's verdict)
    "rle block, single segment": (zstd_rle_frame(_CONTENT), None),
    "window descriptor, 1 KiB": (zstd_rle_frame(_CONTENT, single=False), None),
    "unused FHD bit 4 set": (zstd_rle_frame(_CONTENT, fhd_extra=0x10), None),
    "Dictionary_ID field holding 0": (zstd_rle_frame(_CONTENT, did=b"\x00"), None),
    "a zstd checksum that matches": (zstd_rle_frame(_CONTENT, checksum=_XXH_OK), None),
    "reserved FHD bit 3 set": (zstd_rle_frame(_CONTENT, fhd_extra=0x08), "DecompressionError"),
    "window log 41": (
        zstd_rle_frame(_CONTENT, single=False, window_byte=31 << 3),
        "DecompressionError",
    ),
    "skippable frame magic": (b"\x50\x2a\x4d\x18" + bytes(6), "DecompressionError"),
    "no content size": (zstd_rle_frame(_CONTENT, single=False, fcs=None), "DecompressionError"),
    "content size above the sections": (zstd_rle_frame(_CONTENT, fcs=161), "SizeLimitExceeded"),
    "content size below the sections": (zstd_rle_frame(_CONTENT, fcs=159), "DecompressionError"),
    "window of 32 MiB": (
        zstd_rle_frame(_CONTENT, single=False, window_byte=15 << 3),
        "DecompressionError",
    ),
    "nonzero dictionary id": (zstd_rle_frame(_CONTENT, did=b"\x07"), "DecompressionError"),
    "a zstd checksum that does not match": (
        zstd_rle_frame(_CONTENT, checksum=bytes(a ^ 1 for a in _XXH_OK)),
        "DecompressionError",
    ),
    "a byte after the frame": (zstd_rle_frame(_CONTENT) + b"\x00", "TrailingBytes"),
}


@pytest.mark.parametrize("name", sorted(ZSTD_CASES))
def test_zstd_payloads_get_the_doc_verdict(name: str) -> None:
    # Prepare
    payload, want = ZSTD_CASES[name]
    assert len(payload) < len(_CONTENT)  # step 15 passes
    frame = _dense_frame(payload, 40, len(_CONTENT))
    spec = _spec([("w", (40,))])
    # Execute
    try:
        ours: str | None = None
        parsed = parse_frame(frame, spec.fingerprint, 40)
        assert parsed.values.tobytes() == _CONTENT
    except Refused as exc:
        ours = exc.name
    try:
        theirs: str | None = None
        got = UpdateCodec(spec, CodecConfig.dense()).decode(frame)
        assert got.values.tobytes() == _CONTENT
    except CodecError as exc:
        theirs = type(exc).__name__
    # Assert
    assert ours == theirs == want


def _quantized_frame(bits: int, k: int, scales: list[float], codes: list[int]) -> bytes:
    coded = Coded(struct.pack(f"<{len(scales)}f", *scales), pack_fields(codes, bits))
    return build_frame(
        fp=fingerprint([("w", (k,))]), d=k, idx=list(range(k)), coding="all", param=0,
        bits=bits, block=8, coded=coded, weight=1.0, zstd_level=None,
    )  # fmt: skip


F32_MAX = float(np.finfo(np.float32).max)
VALUE_CASES = {
    "NaN scale": (_quantized_frame(4, 8, [0.0, math.nan], [0] * 8), "NonFiniteValues"),
    "lo > hi": (_quantized_frame(4, 8, [2.0, 1.0], [0] * 8), "MalformedSection"),
    "negative lo at 4 bits": (_quantized_frame(4, 8, [-1.0, 1.0], [0] * 8), "MalformedSection"),
    "negative lo at 1 bit": (_quantized_frame(1, 8, [-1.0, 1.0], [1, 0] * 4), None),
    "padding after the last code": (
        _quantized_frame(2, 3, [0.0, 1.0], [0, 0, 0, 3]),  # a fourth 2-bit field in the pad
        "MalformedSection",
    ),
    "top level overflows": (_quantized_frame(8, 8, [0.0, F32_MAX], [254] * 8), "NonFiniteValues"),
    "fp16 infinity": (
        build_frame(
            fp=fingerprint([("w", (2,))]),
            d=2,
            idx=[0, 1],
            coding="all",
            param=0,
            bits=16,
            block=0,
            coded=Coded(b"", bytes.fromhex("003c007c")),
            weight=1.0,
            zstd_level=None,
        ),  # fmt: skip
        "NonFiniteValues",
    ),
}


@pytest.mark.parametrize("name", sorted(VALUE_CASES))
def test_value_sections_get_the_doc_verdict(name: str) -> None:
    # Prepare
    frame, want = VALUE_CASES[name]
    d = struct.unpack_from("<I", frame, 16)[0]
    spec = _spec([("w", (d,))])
    # Execute
    try:
        ours: str | None = None
        parsed = parse_frame(frame, spec.fingerprint, d)
    except Refused as exc:
        ours = exc.name
    try:
        theirs: str | None = None
        got = UpdateCodec(spec, CodecConfig.dense()).decode(frame)
    except CodecError as exc:
        theirs = type(exc).__name__
    # Assert
    assert ours == theirs == want
    if want is None:
        assert np.array_equal(parsed.values, got.values)


# -- claims of the text that the code decides -------------------------------------------------


def test_k_is_rounded_half_to_even() -> None:
    # section 5: topk = 0.5 keeps 2 of d = 5 and 4 of d = 7
    for d, want in ((5, 2), (7, 4)):
        spec = _spec([("w", (d,))])
        u = np.arange(1, d + 1, dtype=np.float32)
        frame, _ = UpdateCodec(spec, CodecConfig(topk=0.5, bits=32)).encode(
            u, np.random.default_rng(0)
        )
        assert parse_frame(frame, spec.fingerprint, d).header["k"] == want


@pytest.mark.parametrize(("index", "coding", "section"), [
    ("auto", "rice", 0), ("rice", "rice", 0), ("ef", "ef", 0), ("bitmap", "bitmap", 2),
])  # fmt: skip
def test_an_all_zero_update_names_its_coding_with_parameter_0(
    index: str, coding: str, section: int
) -> None:
    spec = _spec([("w", (16,))])
    frame, _ = UpdateCodec(spec, CodecConfig(topk=0.5, bits=4, index=index)).encode(
        np.zeros(16, np.float32), np.random.default_rng(0)
    )
    h = parse_frame(frame, spec.fingerprint, 16).header
    assert (h["k"], h["index_id"], h["index_param"]) == (0, INDEX_IDS[coding], 0)
    assert h["index_bytes"] == section


@pytest.mark.parametrize(("coding", "param", "error"), [
    ("ef", 4, "MalformedHeader"),  # d - 1 < 2**L: the upper bound is 0, step 14
    ("ef", 3, "MalformedSection"),
    ("rice", 4, "MalformedSection"),
])  # fmt: skip
def test_a_non_empty_index_section_at_k_0(coding: str, param: int, error: str) -> None:
    # Prepare: d = 16, k = 0, an index section of one byte
    spec = _spec([("w", (16,))])
    assert index_bounds(coding, 0, 16, param)[1] == (0 if error == "MalformedHeader" else 1)
    head = build_header(
        magic=b"PLMU", version=1, flags=0, header_len=56, fingerprint=spec.fingerprint, d=16,
        k=0, bits=32, index_id=INDEX_IDS[coding], index_param=param, reserved=0, block=0,
        weight=1.0, index_bytes=1, scale_bytes=0, value_bytes=0, payload_bytes=1,
    )  # fmt: skip
    frame = head + b"\x01" + struct.pack("<I", zlib.crc32(head + b"\x01"))
    # Execute + Assert
    with pytest.raises(CodecError) as caught:
        UpdateCodec(spec, CodecConfig.dense()).decode(frame)
    assert type(caught.value).__name__ == error == _verdict(frame, spec)


# -- section 6: the delta chain ---------------------------------------------------------------


@SETTINGS
@given(frames=st.lists(st.binary(max_size=30), max_size=6), cut=st.integers(0, 300))
def test_the_delta_chain_is_laid_out_and_checked_as_section_6_says(
    frames: list[bytes], cut: int
) -> None:
    from protocol.messages import MessageError, pack_chain, unpack_chain

    # Prepare: the container by hand
    ours = b"PLCH" + bytes([1, 0]) + struct.pack("<H", len(frames))
    ours += b"".join(struct.pack("<I", len(f)) for f in frames) + b"".join(frames)
    # Execute + Assert
    assert pack_chain(frames) == ours
    assert unpack_chain(ours, max_frames=len(frames), max_frame_bytes=30) == frames
    cap = max((len(f) for f in frames), default=0)
    # the checks of the table, in order, on the chain cut short (or not)
    data = ours[: min(cut, len(ours))]
    want: str | None = None
    if len(data) < 8:
        want = "chain shorter than its header"
    elif len(data) < 8 + 4 * len(frames):
        want = "chain truncated in its length table"
    elif len(data) != len(ours):
        want = "chain lengths do not add up to the body size"
    if want is None:
        assert unpack_chain(data, max_frames=len(frames), max_frame_bytes=cap) == frames
    else:
        with pytest.raises(MessageError, match=want):
            unpack_chain(data, max_frames=len(frames), max_frame_bytes=cap)
    if frames:
        with pytest.raises(MessageError, match=f"chain of {len(frames)} frames exceeds the cap"):
            unpack_chain(ours, max_frames=len(frames) - 1, max_frame_bytes=cap)
        if cap:
            with pytest.raises(MessageError, match=f"a chain frame exceeds the cap of {cap - 1}"):
                unpack_chain(ours, max_frames=len(frames), max_frame_bytes=cap - 1)
    for at, value, message in (
        (0, 0x51, "not a delta chain"),
        (4, 2, "unsupported chain version 2"),
        (5, 7, "chain reserved byte is 7, must be 0"),
    ):
        bad = bytearray(ours)
        bad[at] = value
        with pytest.raises(MessageError, match=message):
            unpack_chain(bytes(bad), max_frames=len(frames), max_frame_bytes=cap)


def _inflate(payload: bytes, expected: int) -> bytes:
    """Steps 16 to 21 of 1.5 for a payload that must inflate to `expected` bytes."""
    content, window = zstd_header(payload)
    if content is None:
        raise Refused("DecompressionError")
    if content > expected:
        raise Refused("SizeLimitExceeded")
    if content != expected or window > 1 << 24:
        raise Refused("DecompressionError")
    dobj = zstandard.ZstdDecompressor(max_window_size=1 << 24).decompressobj()
    try:
        raw = dobj.decompress(payload)
    except zstandard.ZstdError as exc:
        raise Refused("DecompressionError") from exc
    if not dobj.eof or len(raw) != expected:
        raise Refused("DecompressionError")
    if dobj.unused_data:
        raise Refused("TrailingBytes")
    return raw


def parse_snapshot(blob: bytes, fp: bytes, d: int) -> F32:
    """Section 2: the envelope checks of 1.5 (cap, magic, version, header length, dtype id,
    spec, exact length), zstd steps 16-21, then NaN or Inf, then the digest."""
    if len(blob) > 4 * d + cdiv(d, 8) + 1024:
        raise Refused("SizeLimitExceeded")
    if len(blob) < 8:
        raise Refused("TruncatedFrame")
    if blob[:4] != b"PLMS":
        raise Refused("BadMagic")
    if blob[4] != 1:
        raise Refused("UnsupportedVersion")
    header_len = struct.unpack_from("<H", blob, 6)[0]
    if header_len > 4096:
        raise Refused("HeaderTooLarge")
    if header_len != 56:
        raise Refused("MalformedHeader")
    if len(blob) < 56:
        raise Refused("TruncatedFrame")
    if blob[5] not in (1, 2):
        raise Refused("MalformedHeader")
    got_d, n = struct.unpack_from("<II", blob, 16)
    if blob[8:16] != fp or got_d != d:
        raise Refused("SpecMismatch")
    if len(blob) < 56 + n:
        raise Refused("TruncatedFrame")
    if len(blob) > 56 + n:
        raise Refused("TrailingBytes")
    width = 2 if blob[5] == 1 else 4
    raw = _inflate(blob[56:], width * d)
    vals = np.frombuffer(raw, dtype="<f2" if width == 2 else "<f4").astype(np.float32)
    if not np.all(np.isfinite(vals)):
        raise Refused("NonFiniteValues")
    if hashlib.sha256(vals.astype("<f4").tobytes()).digest() != blob[24:56]:
        raise Refused("ChecksumMismatch")
    return vals


SNAPSHOT_FIELDS = {"dtype": (5, "B"), "d": (16, "I"), "payload_bytes": (20, "I")}


@SETTINGS
@given(
    shape_i=st.integers(0, len(SHAPES) - 1),
    dtype=st.sampled_from(["fp16", "fp32"]),
    hows=st.lists(
        st.one_of(
            st.tuples(st.just("byte"), st.integers(0, 10_000), st.integers(0, 255)),
            st.tuples(st.just("cut"), st.integers(0, 10_000), st.just(0)),
            st.tuples(st.just("append"), st.integers(1, 8), st.just(0)),
            st.tuples(st.just("field"), st.sampled_from(sorted(SNAPSHOT_FIELDS)), st.integers()),
        ),
        min_size=1,
        max_size=2,
    ),
)
def test_a_mutated_snapshot_gets_the_same_verdict_from_the_doc_and_the_codec(
    shape_i: int, dtype: str, hows: list[tuple[str, object, int]]
) -> None:
    # Prepare
    shapes = SHAPES[shape_i]
    spec = _spec(shapes)
    params = np.random.default_rng(shape_i).standard_normal(spec.size).astype(np.float32)
    blob = bytearray(encode_snapshot(params, spec, dtype))
    for kind, where, value in hows:
        if not blob:
            break
        if kind == "byte":
            blob[int(where) % len(blob)] = value  # type: ignore[call-overload]
        elif kind == "cut":
            del blob[int(where) % len(blob) :]  # type: ignore[call-overload]
        elif kind == "append":
            blob += bytes(int(where))  # type: ignore[call-overload]
        else:
            offset, code = SNAPSHOT_FIELDS[str(where)]
            if len(blob) >= offset + struct.calcsize(code):
                size = 8 * struct.calcsize(code)
                struct.pack_into("<" + code, blob, offset, value % (1 << size))
    data = bytes(blob)
    # Execute
    try:
        ours: F32 | str = parse_snapshot(data, spec.fingerprint, spec.size)
    except Refused as exc:
        ours = exc.name
    try:
        theirs: F32 | str = decode_snapshot(data, spec)
    except CodecError as exc:
        theirs = type(exc).__name__
    # Assert
    if isinstance(ours, str) or isinstance(theirs, str):
        assert ours == theirs
    else:
        assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def parse_residual(data: bytes, size: int) -> F32:
    """Section 3's checks, in order."""
    if len(data) < 8:
        raise Refused("TruncatedFrame")
    if data[:4] != b"PLMR":
        raise Refused("BadMagic")
    if data[4] != 1:
        raise Refused("UnsupportedVersion")
    header_len = struct.unpack_from("<H", data, 6)[0]
    if header_len > 4096:
        raise Refused("HeaderTooLarge")
    if header_len != 16:
        raise Refused("MalformedHeader")
    if len(data) < 16:
        raise Refused("TruncatedFrame")
    if data[5] != 0:
        raise Refused("MalformedHeader")
    d, crc = struct.unpack_from("<II", data, 8)
    if d != size:
        raise Refused("SpecMismatch")
    if len(data) > 16 + 4 * size:
        raise Refused("TrailingBytes")
    if len(data) < 16 + 4 * size:
        raise Refused("TruncatedFrame")
    if zlib.crc32(data[16:]) != crc:
        raise Refused("ChecksumMismatch")
    vals = np.frombuffer(data[16:], dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(vals)):
        raise Refused("NonFiniteValues")
    return vals


@SETTINGS
@given(
    size=st.integers(1, 40),
    hows=st.lists(
        st.tuples(
            st.sampled_from(["byte", "cut", "append"]), st.integers(0, 500), st.integers(0, 255)
        ),
        min_size=1,
        max_size=2,
    ),
    fix_crc=st.booleans(),
)
def test_a_mutated_residual_gets_the_same_verdict_from_the_doc_and_the_codec(
    size: int, hows: list[tuple[str, int, int]], fix_crc: bool
) -> None:
    # Prepare
    ef = ErrorFeedback(size)
    ef.residual = np.random.default_rng(size).standard_normal(size).astype(np.float32)
    data = bytearray(ef.to_bytes())
    for kind, where, value in hows:
        if not data:
            break
        if kind == "byte":
            data[where % len(data)] = value
        elif kind == "cut":
            del data[where % len(data) :]
        else:
            data += bytes(1 + where % 8)
    if fix_crc and len(data) >= 16:
        struct.pack_into("<I", data, 12, zlib.crc32(bytes(data[16:])))
    # Execute
    try:
        ours: F32 | str = parse_residual(bytes(data), size)
    except Refused as exc:
        ours = exc.name
    try:
        theirs: F32 | str = ErrorFeedback.from_bytes(bytes(data), size).residual
    except CodecError as exc:
        theirs = type(exc).__name__
    # Assert
    if isinstance(ours, str) or isinstance(theirs, str):
        assert ours == theirs
    else:
        assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


# -- the committed vectors, read with the doc's readers ---------------------------------------

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "test-vectors"


def _vectors(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return data


def _doc_spec(entry: dict[str, Any]) -> tuple[bytes, int]:
    shapes = [(t["name"], tuple(t["shape"])) for t in entry["tensors"]]
    fp = fingerprint(shapes)
    assert fp.hex() == entry["fingerprint_hex"]
    return fp, sum(math.prod(s) for _, s in shapes)


def test_the_doc_reader_reads_every_update_frame_vector() -> None:
    for v in _vectors("update_frames.json")["vectors"]:
        fp, d = _doc_spec(v["spec"])
        parsed = parse_frame(bytes.fromhex(v["frame_hex"]), fp, d)
        assert parsed.idx == v["decoded"]["indices"], v["name"]
        assert parsed.values.astype("<f4").tobytes().hex() == v["decoded"]["values_f32le_hex"]
        assert float(parsed.header["weight"]) == v["decoded"]["weight"]  # type: ignore[arg-type]


def test_the_doc_readers_refuse_every_negative_vector_with_its_error() -> None:
    doc = _vectors("negative.json")
    specs = {sid: _doc_spec(entry) for sid, entry in doc["meta"]["specs"].items()}
    seen = 0
    for v in doc["vectors"]:
        data = bytes.fromhex(v["input_hex"])
        try:
            if v["decoder"] == "update_frame":
                parse_frame(data, *specs[v["spec"]])
            elif v["decoder"] == "snapshot":
                parse_snapshot(data, *specs[v["spec"]])
            elif v["decoder"] == "residual":
                parse_residual(data, v["size"])
            else:
                continue  # the chain's checks are section 6's, tested above
        except Refused as exc:
            assert exc.name == v["error"], v["name"]
            seen += 1
        else:
            raise AssertionError(f"{v['name']} passed the doc reader")
    assert seen >= 60
