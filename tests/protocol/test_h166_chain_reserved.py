"""The delta-chain container's reserved byte (docs/http-api.md, model download: "u8 0") is
checked: a chain whose byte 5 is not 0 is refused with `MessageError`, as any other malformed
chain, instead of being split as if it were 0."""

from __future__ import annotations

import pytest

from protocol.messages import MessageError, pack_chain, unpack_chain


@pytest.mark.parametrize("reserved", [1, 0x80, 0xFF])
def test_a_non_zero_reserved_byte_is_refused(reserved: int) -> None:
    # Prepare: an honest two-frame chain, its reserved byte (offset 5) set.
    good = pack_chain([b"abc", b"de"])
    assert good[5] == 0
    bad = good[:5] + bytes([reserved]) + good[6:]
    # Execute / Assert
    with pytest.raises(MessageError, match=f"reserved byte is {reserved}, must be 0"):
        unpack_chain(bad, max_frames=4, max_frame_bytes=10)


def test_the_reserved_byte_is_checked_after_magic_and_version() -> None:
    # Prepare: a chain wrong in magic or version as well as in its reserved byte.
    bad = bytearray(pack_chain([b"abc"]))
    bad[5] = 1
    # Execute / Assert: the earlier checks' errors, as before.
    with pytest.raises(MessageError, match="not a delta chain"):
        unpack_chain(b"XXXX" + bytes(bad[4:]), max_frames=4, max_frame_bytes=10)
    bad[4] = 2
    with pytest.raises(MessageError, match="unsupported chain version 2"):
        unpack_chain(bytes(bad), max_frames=4, max_frame_bytes=10)


def test_an_honest_chain_still_splits() -> None:
    frames = [b"abc", b"", b"de"]
    assert unpack_chain(pack_chain(frames), max_frames=3, max_frame_bytes=3) == frames
    assert unpack_chain(pack_chain([]), max_frames=0, max_frame_bytes=64) == []
