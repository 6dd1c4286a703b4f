"""ModelSpec refuses what would make its fingerprint ambiguous or unreproducible (stop 50):
a NUL inside a tensor name (two layouts hashed alike, so one layout's decoder took the other's
frames), and dimensions that are not integers >= 0 when built from TensorEntry directly. And
decode_many's updates own their arrays (a kept update held its whole group's)."""

from __future__ import annotations

import numpy as np
import pytest

from compression import CodecConfig, DecodedFrame, ModelSpec, UpdateCodec
from compression._spec import TensorEntry


def test_a_nul_in_a_name_is_refused_so_two_layouts_cannot_share_a_fingerprint() -> None:
    # Before: [("a\0" "3", (1,)) ...] and [("a", (1,)), ("3", ...)] hashed to the same bytes
    with pytest.raises(ValueError, match="no NUL character"):
        ModelSpec.from_shapes([("a\x003", (3,)), ("b", (1,))])
    with pytest.raises(ValueError, match="no NUL character"):
        ModelSpec.from_json([{"name": "w\x00", "shape": [2]}])
    # A name without one is as before
    assert ModelSpec.from_shapes([("a3", (3,)), ("b", (1,))]).size == 4


@pytest.mark.parametrize("shape", [(-2, -3), (2.0, 3.0), (True, 6), [2, 3]])
def test_an_entry_whose_shape_is_not_integers_at_least_zero_is_refused(shape: object) -> None:
    # Before: accepted, with a fingerprint unlike (2, 3)'s or a spec from_json refused
    entry = TensorEntry("w", shape, 0, 6)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape must be a tuple of integers >= 0"):
        ModelSpec((entry,))


def test_an_entry_of_plain_ints_is_accepted() -> None:
    spec = ModelSpec((TensorEntry("w", (2, 3), 0, 6),))
    assert spec.fingerprint == ModelSpec.from_shapes([("w", (2, 3))]).fingerprint


def test_decode_many_updates_do_not_share_their_groups_arrays() -> None:
    # Prepare: a batch of frames of one spec and codec (one decoding group)
    spec = ModelSpec.from_shapes([("w", (2000,))])
    codec = UpdateCodec(spec, CodecConfig(topk=0.05, bits=4))
    rng = np.random.default_rng(0)
    frames = [
        codec.encode(rng.normal(size=2000).astype(np.float32), np.random.default_rng(i), 1.0)[0]
        for i in range(8)
    ]
    # Execute
    out = codec.decode_many(frames)
    # Assert: each update's arrays are its own, of k elements
    first = out[0]
    assert isinstance(first, DecodedFrame)
    idx, vals = first.update.indices, first.update.values
    assert idx.base is None and vals.base is None
    assert idx.size == vals.size == 100
