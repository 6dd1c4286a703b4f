"""docs/wire-format.md: a decoder given anything but bytes, a bytearray or a contiguous
memoryview raises a TypeError. A strided memoryview got Python's own message ("memoryview:
casts are restricted to C-contiguous views"), which named neither the input nor the fix."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from compression import CodecConfig, ErrorFeedback, ModelSpec, UpdateCodec, decode_snapshot

SPEC = ModelSpec.from_shapes([("w", (8,))])
CODEC = UpdateCodec(SPEC, CodecConfig.dense())


def _strided(data: bytes) -> memoryview:
    return memoryview(np.frombuffer(data * 2, dtype=np.uint8)[::2])


@pytest.mark.parametrize(
    ("what", "decode"),
    [
        ("frame", CODEC.decode),
        ("frame", lambda v: CODEC.decode_many([v])),
        ("snapshot", lambda v: decode_snapshot(v, SPEC)),
        ("residual", lambda v: ErrorFeedback.from_bytes(v, 8)),
    ],
)
def test_a_strided_memoryview_is_refused_by_name(
    what: str, decode: Callable[[memoryview], object]
) -> None:
    view = _strided(bytes(100))
    assert not view.c_contiguous
    with pytest.raises(TypeError) as caught:
        decode(view)
    assert str(caught.value) == (
        f"{what} must be bytes, a bytearray or a contiguous memoryview; got a non-contiguous "
        "memoryview (copy it with bytes(view))"
    )
