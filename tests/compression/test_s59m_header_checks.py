"""Header checks of docs/wire-format.md 1.5 that no test pinned down (stop 59's mutation hunt).

Each test here fails against a mutant of `compression/_wire.py` that the rest of the suite let
through: the check removed, or its bound moved by one. Where a later check would refuse the
same frame anyway the frames are built so that only this check can (a block above the cap
that still needs the scale bytes the header declares, an index coding 'all' with a consistent
empty index section), and every frame goes through the single and the batch decoder alike.
"""

from __future__ import annotations

import array
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from compression import (
    CodecConfig,
    CodecError,
    DecodedFrame,
    ErrorFeedback,
    MalformedHeader,
    ModelSpec,
    UpdateCodec,
    decode_snapshot,
    encode_snapshot,
)
from compression._config import MAX_BLOCK, MIN_BLOCK
from compression._wire import HEADER_LEN, check_u32
from tests.compression._craft import payload_of, with_field, with_payload

SPEC = ModelSpec.from_shapes([("w", (64,))])


def _verdicts(codec: UpdateCodec, frame: bytes) -> list[object]:
    """What the single decoder and the batch decoder (alone and beside a good frame) say."""
    got: list[object] = []
    try:
        got.append(codec.decode_frame(frame))
    except CodecError as exc:
        got.append(exc)
    got.extend(codec.decode_many([frame]))
    got.append(codec.decode_many([frame, frame])[1])
    return got


def _frame(config: CodecConfig, seed: int = 0) -> bytes:
    u = np.random.default_rng(seed).normal(size=SPEC.size).astype(np.float32)
    frame, _ = UpdateCodec(SPEC, config).encode(u, np.random.default_rng(seed))
    return frame


@pytest.mark.parametrize("block", [MIN_BLOCK - 1, MAX_BLOCK + 1])
def test_a_block_outside_its_range_is_refused_even_when_the_scale_bytes_agree(block: int) -> None:
    # Prepare: k = 6 values in one block of 8, so a block of 7 or of 2^20 + 1 needs the same
    # one block of scales (8 bytes) that the header declares: only step 13's range refuses it.
    codec = UpdateCodec(SPEC, CodecConfig(topk=6 / 64, bits=4, block=8))
    frame = _frame(codec.config)
    assert int.from_bytes(frame[20:24], "little") == 6
    assert int.from_bytes(frame[44:48], "little") == 8
    hostile = with_field(frame, "block", block)
    # Execute
    verdicts = _verdicts(codec, hostile)
    # Assert: the documented MalformedHeader, naming the block and the range
    for got in verdicts:
        assert isinstance(got, MalformedHeader), got
        assert str(got) == f"block={block} outside [{MIN_BLOCK}, {MAX_BLOCK}]"


@pytest.mark.parametrize("block", [MIN_BLOCK, MAX_BLOCK])
def test_the_ends_of_the_block_range_decode(block: int) -> None:
    codec = UpdateCodec(SPEC, CodecConfig(topk=6 / 64, bits=4, block=8))
    frame = _frame(codec.config)
    want = codec.decode(frame)
    for got in _verdicts(codec, with_field(frame, "block", block)):
        assert isinstance(got, DecodedFrame), got
        np.testing.assert_array_equal(got.update.indices, want.indices)
        np.testing.assert_array_equal(got.update.values, want.values)


def test_index_coding_all_with_k_below_d_is_a_malformed_header() -> None:
    # Prepare: a raw fp32 frame with a bitmap index, rewritten to index coding 0 ('all') with
    # an empty index section and a consistent payload, so nothing but "id 0 only with k == d"
    # (step 13) is wrong. Without that check the index decoder refused it as InvalidIndices.
    config = CodecConfig(topk=0.5, bits=32, index="bitmap")
    codec = UpdateCodec(SPEC, config)
    frame = _frame(config)
    assert frame[5] == 0, "the test needs a raw payload"
    index_bytes = int.from_bytes(frame[40:44], "little")
    assert index_bytes == 8
    frame = with_field(frame, "index_id", 0)
    frame = with_field(frame, "index_bytes", 0)
    hostile = with_payload(frame, payload_of(frame)[index_bytes:])
    # Execute / Assert
    for got in _verdicts(codec, hostile):
        assert isinstance(got, MalformedHeader), got
        assert str(got) == "index coding 'all' with k=32 != d=64"


@pytest.mark.parametrize("value", [0, 1, 0xFFFF_FFFF])
def test_check_u32_takes_every_u32(value: int) -> None:
    assert check_u32(value, "payload") == value


@pytest.mark.parametrize("value", [-1, 1 << 32])
def test_check_u32_refuses_what_a_u32_cannot_hold(value: int) -> None:
    with pytest.raises(ValueError, match=rf"^payload of {value} bytes does not fit a v1 u32"):
        check_u32(value, "payload")


def _decoders(codec: UpdateCodec) -> list[tuple[str, Callable[[Any], object]]]:
    return [
        ("frame", codec.decode_frame),
        ("frame", lambda b: codec.decode_many([b])),
        ("snapshot", lambda b: decode_snapshot(b, SPEC)),
        ("residual", lambda b: ErrorFeedback.from_bytes(b, SPEC.size)),
    ]


@pytest.mark.parametrize(
    "wrap",
    [
        lambda b: np.frombuffer(b, dtype=np.uint8),
        lambda b: array.array("B", b),
    ],
    ids=["ndarray", "array"],
)
def test_a_buffer_that_is_not_bytes_is_a_type_error_naming_its_type(
    wrap: Callable[[bytes], object],
) -> None:
    # A numpy array or an array.array holds the bytes and exports the buffer protocol, so
    # memoryview() takes it: only byte_view's isinstance check keeps the documented "bytes, a
    # bytearray or a contiguous memoryview" true. Given a valid frame/snapshot/residual each.
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=4))
    params = np.linspace(-1, 1, SPEC.size, dtype=np.float32)
    valid = {
        "frame": _frame(codec.config),
        "snapshot": encode_snapshot(params, SPEC),
        "residual": ErrorFeedback(SPEC.size).to_bytes(),
    }
    for what, decode in _decoders(codec):
        data = wrap(valid[what])
        with pytest.raises(TypeError) as caught:
            decode(data)
        assert str(caught.value) == f"{what} must be bytes, got {type(data).__name__}"


def test_header_len_is_the_struct_size() -> None:
    assert HEADER_LEN == 56


@pytest.mark.parametrize("bits", [4, 32])
def test_the_decoded_header_sizes_add_up_to_the_frame(bits: int) -> None:
    # FrameHeader.frame_bytes and raw_bytes (public, in compression.__all__) had no test.
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=bits))
    u = np.zeros(SPEC.size, np.float32)
    u[::2] = 1.0  # compresses well: a zstd payload
    frame, report = codec.encode(u, np.random.default_rng(0))
    header = codec.decode_frame(frame).header
    assert header.frame_bytes == len(frame) == report.frame_bytes
    assert header.raw_bytes == header.index_bytes + header.scale_bytes + header.value_bytes
    assert header.compressed == report.compressed == bool(frame[5] & 1)
    assert header.raw_bytes == report.stage("zstd").bytes_in


def test_an_encode_report_names_its_stages_and_refuses_others() -> None:
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=4, index="rice"))
    _, report = codec.encode(np.ones(SPEC.size, np.float32), np.random.default_rng(0))
    assert report.stage("index") is report.stage("index:rice")
    assert report.stage("index").name == "index:rice"
    with pytest.raises(KeyError):
        report.stage("rice")


def test_each_stage_reports_its_bytes_in_and_out_and_its_own_seconds() -> None:
    # The figures bench/codec.py records: top-k takes 4d bytes (dense fp32) to 8k (a 4-byte
    # index and a 4-byte value per kept coordinate), quantize 4k to the scale and value
    # sections, index 4k to the index section, zstd the sections to the payload, frame the
    # payload to the frame. No test pinned any of them but the last three's outputs.
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.25, bits=4, block=8))
    u = np.random.default_rng(1).normal(size=SPEC.size).astype(np.float32)
    start = time.perf_counter()
    frame, report = codec.encode(u, np.random.default_rng(1))
    wall = time.perf_counter() - start
    h = codec.decode_frame(frame).header
    d, k = SPEC.size, h.nnz
    assert k == 16
    got = [(s.name, s.bytes_in, s.bytes_out) for s in report.stages]
    assert got == [
        ("topk", 4 * d, 8 * k),
        ("quantize", 4 * k, h.scale_bytes + h.value_bytes),
        (f"index:{h.index_coding}", 4 * k, h.index_bytes),
        ("zstd", h.raw_bytes, h.payload_bytes),
        ("frame", h.payload_bytes, len(frame)),
    ]
    # Each stage's seconds are its own span of the encode, so they add up to at most its wall
    # time.
    assert all(s.seconds >= 0 for s in report.stages)
    assert report.seconds <= wall + 1e-9  # float sums of perf_counter differences
