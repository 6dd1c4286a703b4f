"""Fuzzing: random damage to valid frames only ever raises a CodecError."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compression import (
    CodecConfig,
    CodecError,
    ErrorFeedback,
    ModelSpec,
    UpdateCodec,
    decode_snapshot,
    encode_snapshot,
)

from ._craft import reseal, unseal

SPEC = ModelSpec.from_shapes([("w", (30, 30)), ("b", (30,))])
D = SPEC.size
_U = np.random.default_rng(0).standard_t(3, D).astype(np.float32)
_ZU = np.where(np.arange(D) % 9 == 0, _U, 0).astype(np.float32)
CODEC = UpdateCodec(SPEC, CodecConfig(0.1, 4))
FRAMES = [
    UpdateCodec(SPEC, cfg).encode(u, np.random.default_rng(1), weight=3.0)[0]
    for cfg, u in [
        (CodecConfig(0.1, 4, block=16), _U),
        (CodecConfig(0.3, 1, index="bitmap", block=8), _U),
        (CodecConfig(0.05, 8, index="ef"), _U),
        (CodecConfig(0.2, 16, index="rice"), _U),
        (CodecConfig.dense(), _ZU),  # zstd payload
    ]
]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, bytes]:
    base = draw(st.sampled_from(FRAMES))
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
    return base, bytes(data)


def _decode_or_codec_error(frame: bytes) -> None:
    try:
        out = CODEC.decode_frame(frame)
    except CodecError:
        return
    out.update.validate()  # whatever decodes satisfies the SparseUpdate invariants
    assert out.update.size == D and np.isfinite(out.weight) and out.weight >= 0


@settings(
    derandomize=True, max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(case=mutated())
def test_mutations_raise_codec_error(case: tuple[bytes, bytes]) -> None:
    base, damaged = case
    if damaged == base:
        CODEC.decode(damaged)
        return
    with pytest.raises(CodecError):
        CODEC.decode(damaged)


@settings(
    derandomize=True, max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(case=mutated())
def test_mutations_behind_a_valid_crc(case: tuple[bytes, bytes]) -> None:
    # The CRC is recomputed, so the damage reaches the header and section checks.
    _, damaged = case
    if len(damaged) >= 4:
        _decode_or_codec_error(reseal(unseal(damaged)))


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=200),
    prefix=st.sampled_from([b"", b"PLMU\x01\x00\x38\x00", b"PLMS\x01"]),
)
def test_random_bytes(data: bytes, prefix: bytes) -> None:
    _decode_or_codec_error(prefix + data)
    for fn in (lambda b: decode_snapshot(b, SPEC), lambda b: ErrorFeedback.from_bytes(b, D)):
        try:
            fn(prefix + data)
        except CodecError:
            pass


SNAP = encode_snapshot(_U, SPEC, "fp16")
SNAP_PARAMS = decode_snapshot(SNAP, SPEC)


@settings(derandomize=True, max_examples=150, deadline=None)
@given(pos=st.integers(0, len(SNAP) - 1), value=st.integers(0, 255))
def test_snapshot_mutations(pos: int, value: int) -> None:
    # A snapshot has no CRC: its SHA-256 covers the decoded parameters. A few zstd bits do not
    # change the content (the frame header's unused bit, some entropy-table bits), so a damaged
    # snapshot either raises a CodecError or decodes to exactly the same parameters.
    damaged = bytearray(SNAP)
    damaged[pos] = value
    try:
        out = decode_snapshot(bytes(damaged), SPEC)
    except CodecError:
        return
    assert np.array_equal(out, SNAP_PARAMS)


@pytest.mark.slow
@settings(
    derandomize=True, max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(case=mutated())
def test_many_mutations_behind_a_valid_crc(case: tuple[bytes, bytes]) -> None:
    _, damaged = case
    if len(damaged) >= 4:
        _decode_or_codec_error(reseal(unseal(damaged)))
