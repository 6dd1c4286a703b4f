"""The largest legal Rice and Elias-Fano parameter, and one above it (stop 59's mutation hunt).

docs/wire-format.md 1.3 and step 13 allow `0 <= param` with `2**param <= d`, i.e. param below
`d.bit_length()`. With `param < d.bit_length()` moved to `<=` in `param_ok`, no test failed: a
frame whose parameter is one above the range but whose index section is otherwise consistent
decoded in the single decoder (the batch decoder's own check refused it, so the two disagreed).
Here k = 1 out of d = 64: the index section is one byte of low bits and one byte of unary or
upper bits at any parameter from 1 to 8, so only the parameter check tells them apart.
"""

from __future__ import annotations

import numpy as np
import pytest

from compression import (
    CodecConfig,
    CodecError,
    DecodedFrame,
    InvalidIndices,
    MalformedHeader,
    ModelSpec,
    UpdateCodec,
)
from tests.compression._craft import make_frame

SPEC = ModelSpec.from_shapes([("w", (64,))])
INDEX = 45
VALUE = np.float32(-1.5)


def _frame(index_id: int, param: int) -> bytes:
    # Rice (id 2) of one gap g = INDEX: `param` low bits of g, then g >> param zeros and a one.
    # Elias-Fano (id 3): `param` low bits of the index, then a one at (INDEX >> param) + 0.
    # At param >= 6 both have their one at bit 0 of the second byte.
    low = INDEX & ((1 << param) - 1)
    high = INDEX >> param
    assert high < 8
    index = bytes([low, 1 << high])
    return make_frame(
        SPEC.fingerprint, SPEC.size, 1, 32, index_id, param, 0,
        (index, b"", VALUE.tobytes()),
    )  # fmt: skip


def _verdicts(frame: bytes) -> list[object]:
    codec = UpdateCodec(SPEC, CodecConfig(topk=0.5, bits=32))
    got: list[object] = []
    try:
        got.append(codec.decode_frame(frame))
    except CodecError as exc:
        got.append(exc)
    got.extend(codec.decode_many([frame, frame]))
    return got


@pytest.mark.parametrize("index_id", [2, 3], ids=["rice", "ef"])
@pytest.mark.parametrize("param", [3, 6])
def test_a_legal_parameter_decodes(index_id: int, param: int) -> None:
    assert 1 << param <= SPEC.size
    for got in _verdicts(_frame(index_id, param)):
        assert isinstance(got, DecodedFrame), got
        assert got.update.indices.tolist() == [INDEX]
        assert got.update.values.tolist() == [VALUE]


@pytest.mark.parametrize("index_id", [2, 3], ids=["rice", "ef"])
@pytest.mark.parametrize("param", [7, 8])
def test_a_parameter_past_the_model_size_is_a_malformed_header(index_id: int, param: int) -> None:
    assert 1 << param > SPEC.size and param >= SPEC.size.bit_length()
    name = {2: "rice", 3: "ef"}[index_id]
    for got in _verdicts(_frame(index_id, param)):
        assert isinstance(got, MalformedHeader), got
        assert str(got) == f"index coding {name!r} parameter {param} invalid for d=64"


@pytest.mark.parametrize("index_id", [2, 3], ids=["rice", "ef"])
@pytest.mark.parametrize("cut", [1, -1], ids=["short", "long"])
def test_an_index_section_outside_its_length_bounds_is_a_malformed_header(
    index_id: int, cut: int
) -> None:
    # At k = 1, d = 64, param 6 both codings allow exactly 2 index bytes (1.3): one byte less or
    # more is refused at step 14, before the section is read (with the lower bound moved, the
    # short section reached the unary decoder as a MalformedSection).
    index = bytes([INDEX & 63, 1])
    index = index[:1] if cut == 1 else index + b"\x01"
    frame = make_frame(
        SPEC.fingerprint, SPEC.size, 1, 32, index_id, 6, 0, (index, b"", VALUE.tobytes())
    )
    name = {2: "rice", 3: "ef"}[index_id]
    for got in _verdicts(frame):
        assert isinstance(got, MalformedHeader), got
        assert str(got) == (f"{name} index section of {len(index)} bytes; k=1, d=64 allow [2, 2]")


@pytest.mark.parametrize("lows", [(5, 5), (5, 4)], ids=["repeat", "decrease"])
def test_two_elias_fano_indices_that_do_not_rise_are_invalid(lows: tuple[int, int]) -> None:
    # k = 2 is the smallest k with a pair to compare (the check ran only for k > 1; with k > 2
    # no test failed). L = 3: both indices have upper bits 5 (ones at 5 and 5 + 1), and low
    # bits 5 then 5 or 4: 45 then 45, or 45 then 44.
    index = bytes([lows[0] | lows[1] << 3, 1 << 5 | 1 << 6])
    frame = make_frame(SPEC.fingerprint, SPEC.size, 2, 32, 3, 3, 0, (index, b"", bytes(8)))
    second = 40 + lows[1]
    for got in _verdicts(frame):
        assert isinstance(got, InvalidIndices), got
        assert str(got) == f"indices not strictly increasing at position 1: 45 then {second}"
