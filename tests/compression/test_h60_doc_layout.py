"""docs/wire-format.md is enough to read what `compression` writes.

A reader built from the document alone (its field tables, parsed from the markdown, and the
formulas of sections 1.2 to 1.4, 2 and 3, in plain Python) decodes the encoder's frames,
snapshots and residuals to the same values as the package's own decoders. Nothing here imports
the package's parsers, struct layouts or bit helpers.
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import (
    CodecConfig,
    ErrorFeedback,
    ModelSpec,
    UpdateCodec,
    decode_snapshot,
    encode_snapshot,
)

DOC = (Path(__file__).resolve().parents[2] / "docs" / "wire-format.md").read_text()
# The document's types, little-endian as its conventions say.
FORMATS = {"u8": "<B", "u16": "<H", "u32": "<I", "f64": "<d", "bytes": None}


def _table(heading: str) -> list[tuple[int, int, str, str]]:
    """`(offset, size, type, field)` rows of the first field table after `heading`."""
    start = DOC.index(heading)
    rows = []
    for line in DOC[start:].splitlines()[1:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 4 and cells[0].isdigit():
            offset, size, kind, field = cells[:4]
            if not size.isdigit():  # a variable-length tail (payload, values): not a field
                break
            # the field's name is its first word: "flags, 0" and "magic `"PLMR"`" too
            name = re.match(r"[A-Za-z0-9_-]+", field)
            assert name is not None, line
            rows.append((int(offset), int(size), kind, name.group(0)))
        elif rows and not line.startswith("|"):
            break
    return rows


def _fields(rows: list[tuple[int, int, str, str]], data: bytes) -> dict[str, object]:
    out: dict[str, object] = {}
    for offset, size, kind, field in rows:
        raw = data[offset : offset + size]
        fmt = FORMATS[kind]
        out[field] = raw if fmt is None else struct.unpack(fmt, raw)[0]
    return out


UPDATE = _table("### 1.1 Header")
SNAPSHOT = _table("## 2. Snapshot")
RESIDUAL = _table("## 3. Residual")


def test_the_tables_are_contiguous_and_as_long_as_the_headers_they_describe() -> None:
    for rows, length in ((UPDATE, 56), (SNAPSHOT, 56), (RESIDUAL, 16)):
        ends = 0
        for offset, size, kind, _ in rows:
            assert offset == ends, rows
            assert FORMATS[kind] is None or struct.calcsize(FORMATS[kind]) == size
            ends += size
        assert ends == length
    assert [r[3] for r in UPDATE][:3] == ["magic", "version", "flags"]


def _bits_lsb_first(buf: bytes) -> list[int]:
    """Bit i of the stream is bit i % 8 of byte i // 8 (docs: conventions)."""
    return [(byte >> b) & 1 for byte in buf for b in range(8)]


def _fields_of(buf: bytes, count: int, width: int) -> list[int]:
    bits = _bits_lsb_first(buf)
    assert len(buf) == -(-count * width // 8)
    assert not any(bits[count * width :]), "non-zero padding"
    return [sum(bits[i * width + b] << b for b in range(width)) for i in range(count)]


def _ones(buf: bytes) -> list[int]:
    bits = _bits_lsb_first(buf)
    assert not buf or buf[-1] != 0, "the stream ends with the byte holding its last one bit"
    return [i for i, b in enumerate(bits) if b]


def _doc_indices(index: bytes, index_id: int, param: int, k: int, d: int) -> list[int]:
    """Section 1.3, as written."""
    if index_id == 0:
        assert k == d and index == b""
        return list(range(d))
    if index_id == 1:
        assert len(index) == -(-d // 8)
        bits = _bits_lsb_first(index)
        assert not any(bits[d:])
        out = [i for i in range(d) if bits[i]]
        assert len(out) == k
        return out
    nlow = -(-k * param // 8)
    low = _fields_of(index[:nlow], k, param)
    p = _ones(index[nlow:])
    assert len(p) == k
    if index_id == 2:  # Golomb-Rice: q_i = p_i - p_{i-1} - 1, idx = cumsum((q << r | low) + 1) - 1
        out, prev, acc = [], -1, 0
        for i in range(k):
            q = p[i] - prev - 1
            prev = p[i]
            acc += ((q << param) | low[i]) + 1
            out.append(acc - 1)
        return out
    assert index_id == 3  # Elias-Fano: idx_i = ((p_i - i) << L) | low_i
    return [((p[i] - i) << param) | low[i] for i in range(k)]


def _doc_values(scales: bytes, values: bytes, bits: int, block: int, k: int) -> np.ndarray:
    """Section 1.4, in float32 exactly as written."""
    if bits == 32:
        return np.array(struct.unpack(f"<{k}f", values), dtype=np.float32)
    if bits == 16:
        return np.frombuffer(values, dtype="<f2").astype(np.float32)
    nb = -(-k // block)
    assert len(scales) == 8 * nb and len(values) == -(-k * bits // 8)
    pairs = struct.unpack(f"<{2 * nb}f", scales)
    codes = _fields_of(values, k, bits)
    out = np.empty(k, dtype=np.float32)
    for i, c in enumerate(codes):
        lo, hi = np.float32(pairs[2 * (i // block)]), np.float32(pairs[2 * (i // block) + 1])
        if bits == 1:
            out[i] = hi if c == 1 else lo
            continue
        j, s = c >> 1, c & 1
        step = np.float32((hi - lo) / np.float32(2 ** (bits - 1) - 1))
        m = np.float32(lo + np.float32(j) * step)
        out[i] = -m if s else m
    return out


def _doc_read_frame(frame: bytes, spec: ModelSpec) -> tuple[list[int], np.ndarray, float]:
    """Section 1: header by the table, payload (1.2), sections (1.3, 1.4); (indices, values,
    weight)."""
    h = _fields(UPDATE, frame)
    assert h["magic"] == b"PLMU" and h["version"] == 1 and h["header_len"] == 56
    assert h["reserved"] == 0 and h["flags"] in (0, 1)
    assert h["fingerprint"] == _doc_fingerprint(spec) and h["d"] == spec.size
    assert len(frame) == 56 + h["payload_bytes"] + 4
    assert struct.unpack("<I", frame[-4:])[0] == zlib.crc32(frame[:-4])
    payload = frame[56:-4]
    total = h["index_bytes"] + h["scale_bytes"] + h["value_bytes"]
    if h["flags"] & 1:
        assert len(payload) < total and payload[:4] == bytes.fromhex("28b52ffd")
        assert zstandard.get_frame_parameters(payload).content_size == total
        raw = zstandard.ZstdDecompressor().decompress(payload)
    else:
        raw = payload
    assert len(raw) == total
    ib, sb = h["index_bytes"], h["scale_bytes"]
    k, d, bits, block = h["k"], h["d"], h["bits"], h["block"]
    assert (block == 0) == (bits in (16, 32))
    idx = _doc_indices(raw[:ib], h["index_id"], h["index_param"], k, d)
    assert all(0 <= a < b < d for a, b in zip(idx, idx[1:], strict=False)) and all(
        0 <= i < d for i in idx
    )
    vals = _doc_values(raw[ib : ib + sb], raw[ib + sb :], bits, block, k)
    return idx, vals, h["weight"]


def _doc_fingerprint(spec: ModelSpec) -> bytes:
    """The conventions' formula for the spec fingerprint."""
    text = b"plume-spec-v1\0float32\0"
    for e in spec.entries:
        text += e.name.encode() + b"\0" + ",".join(map(str, e.shape)).encode() + b"\0"
    return hashlib.sha256(text).digest()[:8]


SPECS = [
    ModelSpec.from_shapes([("w", (4, 4)), ("b", (4,))]),
    ModelSpec.from_shapes([("conv", (3, 1, 5, 5)), ("bias", (3,)), ("fc", (7, 11))]),
    ModelSpec.from_shapes([("x", (301,))]),
]


@settings(derandomize=True, max_examples=120, deadline=None)
@given(
    spec_i=st.integers(0, len(SPECS) - 1),
    topk=st.sampled_from([0.02, 0.1, 0.3, 0.7, 1.0]),
    bits=st.sampled_from([1, 2, 4, 8, 16, 32]),
    block=st.sampled_from([8, 9, 64]),
    index=st.sampled_from(["auto", "bitmap", "rice", "ef"]),
    kind=st.sampled_from(["normal", "ties", "sparse"]),
    weight=st.sampled_from([0.0, 1.0, 600.0, 2.0**53]),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_reader_built_from_the_doc_decodes_every_frame_like_the_codec(
    spec_i: int,
    topk: float,
    bits: int,
    block: int,
    index: str,
    kind: str,
    weight: float,
    seed: int,
) -> None:
    # Prepare
    spec = SPECS[spec_i]
    rng = np.random.default_rng(seed)
    u = (rng.standard_normal(spec.size) * 0.1).astype(np.float32)
    if kind == "ties":
        u = rng.integers(-2, 3, spec.size).astype(np.float32)  # zeros and many ties
    elif kind == "sparse":
        u[rng.random(spec.size) < 0.9] = 0.0
    codec = UpdateCodec(spec, CodecConfig(topk=topk, bits=bits, block=block, index=index))
    frame, _ = codec.encode(u, np.random.default_rng(seed + 1), weight=weight)
    # Execute
    idx, vals, w = _doc_read_frame(frame, spec)
    # Assert: the same coordinates, the same float32 values bit for bit, the same weight
    got = codec.decode_frame(frame)
    assert idx == got.update.indices.tolist()
    np.testing.assert_array_equal(vals.view(np.uint32), got.update.values.view(np.uint32))
    assert w == got.weight == weight


def test_the_doc_reader_reads_the_worked_example_byte_by_byte() -> None:
    # docs/wire-format.md 1.6: indices 0, 3, 6, 9, 13 and codes 0, 15, 6, 3, 8
    spec = SPECS[0]
    start = DOC.index("assert frame.hex() == (")
    shown = DOC[start : DOC.index(")", start + len("assert frame.hex() == ("))]
    frame = bytes.fromhex("".join(re.findall(r'"([0-9a-f]+)"', shown)))
    idx, vals, w = _doc_read_frame(frame, spec)
    assert idx == [0, 3, 6, 9, 13] and w == 32.0
    step = np.float32(np.float32(1.25 - 0.5) / np.float32(7))
    want = [0.5, -1.25, 0.5 + 3 * step, -(0.5 + step), 0.5 + 4 * step]
    np.testing.assert_array_equal(vals, np.array(want, np.float32))


@settings(derandomize=True, max_examples=40, deadline=None)
@given(
    spec_i=st.integers(0, len(SPECS) - 1),
    dtype=st.sampled_from(["fp16", "fp32"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_reader_built_from_the_doc_reads_snapshots(spec_i: int, dtype: str, seed: int) -> None:
    # Prepare
    spec = SPECS[spec_i]
    params = (np.random.default_rng(seed).standard_normal(spec.size) * 3).astype(np.float32)
    data = encode_snapshot(params, spec, dtype)
    # Execute: section 2 as written
    h = _fields(SNAPSHOT, data)
    assert h["magic"] == b"PLMS" and h["version"] == 1 and h["header_len"] == 56
    assert h["fingerprint"] == _doc_fingerprint(spec) and h["d"] == spec.size
    assert len(data) == 56 + h["payload_bytes"]
    payload = data[56:]
    width = {1: 2, 2: 4}[h["dtype"]]
    assert zstandard.get_frame_parameters(payload).content_size == width * spec.size
    raw = zstandard.ZstdDecompressor().decompress(payload)
    values = np.frombuffer(raw, dtype={1: "<f2", 2: "<f4"}[h["dtype"]]).astype(np.float32)
    # Assert: the digest is SHA-256 of the decoded values' canonical bytes, and they agree
    assert h["digest"] == hashlib.sha256(values.astype("<f4").tobytes()).digest()
    np.testing.assert_array_equal(values, decode_snapshot(data, spec))


@pytest.mark.parametrize("size", [1, 2, 37])
def test_a_reader_built_from_the_doc_reads_residuals(size: int) -> None:
    ef = ErrorFeedback(size)
    ef.residual = (np.random.default_rng(size).standard_normal(size)).astype(np.float32)
    data = ef.to_bytes()
    h = _fields(RESIDUAL, data)
    assert h["magic"] == b"PLMR" and h["version"] == 1 and h["flags"] == 0
    assert h["header_len"] == 16 and h["d"] == size and len(data) == 16 + 4 * size
    body = data[16:]
    assert h["CRC-32"] == zlib.crc32(body)
    np.testing.assert_array_equal(np.frombuffer(body, "<f4"), ef.residual)
    np.testing.assert_array_equal(ErrorFeedback.from_bytes(data, size).residual, ef.residual)


@settings(derandomize=True, max_examples=40, deadline=None)
@given(
    shapes=st.lists(
        st.tuples(
            st.text("abcxyz._0123456789", min_size=1, max_size=8),
            st.lists(st.integers(1, 5), min_size=0, max_size=3),
        ),
        min_size=1,
        max_size=4,
        unique_by=lambda t: t[0],
    )
)
def test_the_fingerprint_is_the_documented_hash(shapes: list[tuple[str, list[int]]]) -> None:
    spec = ModelSpec.from_shapes(shapes)
    assert spec.fingerprint == _doc_fingerprint(spec)


def _doc_choice(idx: list[int], d: int) -> tuple[int, int]:
    """`(index_id, param)` that docs/wire-format.md 1.3 says `index="auto"` writes: the exact
    sizes of Rice (r from r0 - 2 to r0 + 3, r0 = floor(log2(max(1, mean gap)))), Elias-Fano (L
    from l0 - 2 to l0 + 3, l0 = floor(log2(d / k))), both within 2**param <= d, and the bitmap;
    the smallest wins, ties to rice, then ef, then bitmap, then the smaller parameter."""
    k = len(idx)
    if k == d:
        return 0, 0
    top = d.bit_length() - 1
    gaps = [idx[0]] + [b - a - 1 for a, b in zip(idx, idx[1:], strict=False)]
    r0 = int(np.log2(max(1.0, sum(gaps) / k)))
    l0 = int(np.log2(max(1.0, d / k)))
    sizes = []
    for r in range(max(0, r0 - 2), min(r0 + 3, top) + 1):
        sizes.append((-(-k * r // 8) + -(-(k + sum(g >> r for g in gaps)) // 8), 0, r, 2))
    for low in range(max(0, l0 - 2), min(l0 + 3, top) + 1):
        sizes.append((-(-k * low // 8) + -(-((idx[-1] >> low) + k) // 8), 1, low, 3))
    sizes.append((-(-d // 8), 2, 0, 1))
    _, _, param, index_id = min(sizes)
    return index_id, param


@settings(derandomize=True, max_examples=80, deadline=None)
@given(
    spec_i=st.integers(0, len(SPECS) - 1),
    topk=st.sampled_from([0.01, 0.05, 0.1, 0.3, 0.5, 0.8]),
    kind=st.sampled_from(["normal", "clustered", "sparse"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_auto_index_coding_is_the_documented_choice(
    spec_i: int, topk: float, kind: str, seed: int
) -> None:
    # Prepare
    spec = SPECS[spec_i]
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(spec.size).astype(np.float32)
    if kind == "clustered":
        u[: spec.size // 3] *= 100  # kept coordinates bunched at the start: small gaps
    elif kind == "sparse":
        u[rng.random(spec.size) < 0.95] = 0.0
    codec = UpdateCodec(spec, CodecConfig(topk=topk, bits=8))
    # Execute
    frame, _ = codec.encode(u, np.random.default_rng(seed))
    idx, _, _ = _doc_read_frame(frame, spec)
    h = _fields(UPDATE, frame)
    # Assert
    if idx:
        assert (h["index_id"], h["index_param"]) == _doc_choice(idx, spec.size)
