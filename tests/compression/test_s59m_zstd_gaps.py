"""zstd behaviour that no test pinned down (stop 59's mutation hunt over _zstd.py).

`zstd_frame_length` (the diagnostic test_stages.py uses to check that a payload is one zstd
frame) had one happy-path test: the block-header walk, its checksum step and its four refusals
were free to change (a block size read with the wrong shift, the checksum not counted, a
truncation let through). `ZstdCodec.decompress`'s step-18 split was also open: removing its
`declared > expected` refusal turned that case into a DecompressionError, not the documented
SizeLimitExceeded, and no test noticed.
"""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

from compression import DecompressionError, SizeLimitExceeded, TruncatedFrame, ZstdCodec
from compression._zstd import zstd_frame_length
from tests.compression._craft import ZSTD_MAGIC, zstd_rle_frame

DATA = bytes(range(256)) * 40 + b"tail" * 1000


def _frame(checksum: bool) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(
        3, write_checksum=int(checksum), write_content_size=1
    )
    return zstandard.ZstdCompressor(compression_params=params).compress(DATA)


@pytest.mark.parametrize("checksum", [False, True])
def test_the_frame_length_counts_every_block_and_the_checksum(checksum: bool) -> None:
    frame = _frame(checksum)
    assert zstd_frame_length(frame) == len(frame)
    # bytes after the frame are not part of it
    assert zstd_frame_length(frame + b"\x00" * 7) == len(frame)
    assert zstd_frame_length(frame + frame) == len(frame)


def test_the_frame_length_walks_rle_blocks_of_one_byte_each() -> None:
    # Magic 4 + descriptor 2 + no content size, then 3 blocks of a 3-byte header and 1 byte
    frame = zstd_rle_frame([(7, 100), (8, 1), (9, 5000)], declared=None)
    assert len(frame) == 6 + 3 * 4
    assert zstd_frame_length(frame) == len(frame)
    assert zstd_frame_length(frame + b"\xff") == len(frame)


@pytest.mark.parametrize("checksum", [False, True])
def test_a_frame_cut_anywhere_after_its_header_is_a_truncated_frame(checksum: bool) -> None:
    frame = _frame(checksum)
    header = zstandard.frame_header_size(frame)
    for cut in range(header, len(frame)):
        with pytest.raises(TruncatedFrame):
            zstd_frame_length(frame[:cut])


def test_the_three_truncation_messages() -> None:
    frame = zstd_rle_frame([(7, 100)], declared=100)
    head = len(frame) - 4
    with pytest.raises(
        TruncatedFrame, match=rf"^zstd frame cut inside a block header at payload byte {head}$"
    ):
        zstd_frame_length(frame[: head + 2])
    with pytest.raises(
        TruncatedFrame,
        match=rf"^zstd block runs past the payload end \({head + 4} > {head + 3} bytes\)$",
    ):
        zstd_frame_length(frame[:-1])
    with_sum = _frame(checksum=True)
    with pytest.raises(TruncatedFrame, match=r"^zstd frame cut inside its checksum$"):
        zstd_frame_length(with_sum[:-1])


def test_a_reserved_block_type_and_a_bad_header_are_decompression_errors() -> None:
    frame = bytearray(zstd_rle_frame([(7, 100)], declared=100))
    head = len(frame) - 4
    frame[head] |= 0b110  # block type 3: reserved
    with pytest.raises(
        DecompressionError, match=rf"^zstd block of reserved type at payload byte {head}$"
    ):
        zstd_frame_length(bytes(frame))
    with pytest.raises(DecompressionError, match="does not start with the zstd magic"):
        zstd_frame_length(b"\x00" * 16)
    with pytest.raises(DecompressionError, match="not a zstd frame header"):
        zstd_frame_length(ZSTD_MAGIC + b"\x08")  # reserved descriptor bit


def test_a_frame_declaring_more_than_expected_is_a_size_limit_not_a_mismatch() -> None:
    # Step 18 of docs/wire-format.md: above the section total is SizeLimitExceeded, below it
    # DecompressionError.
    codec = ZstdCodec()
    payload = codec.compress(DATA)
    with pytest.raises(
        SizeLimitExceeded,
        match=rf"^zstd frame declares {len(DATA)} bytes of content; the header allows {len(DATA) - 1}$",
    ):
        codec.decompress(payload, len(DATA) - 1)
    with pytest.raises(
        DecompressionError,
        match=rf"^zstd frame declares {len(DATA)} bytes of content; the header says {len(DATA) + 1}$",
    ):
        codec.decompress(payload, len(DATA) + 1)
    assert codec.decompress(payload, len(DATA)) == DATA


@pytest.mark.parametrize("window", [1 << 9, 1 << 32, (1 << 10) + 1])
def test_a_window_outside_2_10_to_2_31_or_not_a_power_of_two_is_refused(window: int) -> None:
    # test_s57c_param_types covers 1000, 0 and 2**40; the ends one step out were open.
    with pytest.raises(ValueError, match=r"^max_window must be a power of two from 2\*\*10"):
        ZstdCodec(3, window)


def test_a_block_longer_than_two_header_bytes_can_say_is_walked_whole() -> None:
    # A block's size is 21 bits of its 3-byte header: an incompressible 20,000-byte block
    # (a raw block) needs the third byte.
    data = np.random.default_rng(0).bytes(20_000)
    frame = ZstdCodec().compress(data)
    assert len(frame) > 1 << 13
    assert zstd_frame_length(frame) == len(frame)
    assert zstd_frame_length(frame + b"\x00") == len(frame)
