"""Bounds of protocol/secagg/_plan.py that no test pinned (s60c mutation hunt, after s59s):
the sketch-segment count a plan may carry, and the exact lengths at which `from_bytes` stops
calling a plan truncated. A plan the server can build must be one a device decodes: a plan of
more than `MAX_SEGMENTS` sketch segments was built and sent, and every device refused it."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from coordinator.secure import SecureConfig, make_plan
from protocol.secagg import (
    MalformedMessage,
    RingOverflow,
    SecurePlan,
    check_ring,
    required_ring_bits,
)
from protocol.secagg._plan import _FIXED, MAX_SEGMENTS


def _sketched(n_seg: int) -> SecurePlan:
    """A plan over a model of n_seg one-scalar tensors, one sketch segment each."""
    return SecurePlan(
        round_id=1,
        num_nodes=3,
        degree=2,
        threshold=2,
        ring_bits=32,
        value_bits=8,
        max_weight=1,
        model_size=n_seg,
        indices=np.arange(4, dtype=np.int64),
        clip_norm=1.0,
        coord_bound=1.0,
        graph_seed=b"g" * 32,
        rotation_seed=b"r" * 32,
        sketch_bits=8,
        sketch_segments=tuple((i, 1, 1, 1) for i in range(n_seg)),
    )


def test_a_plan_of_exactly_max_segments_is_built_and_decoded() -> None:
    # Kills `n_seg > MAX_SEGMENTS` flipped to >= in from_bytes.
    plan = _sketched(MAX_SEGMENTS)
    data = plan.to_bytes()
    back = SecurePlan.from_bytes(data, MAX_SEGMENTS)
    assert len(back.sketch_segments) == MAX_SEGMENTS
    assert back.to_bytes() == data


def test_a_plan_of_more_than_max_segments_is_not_built() -> None:
    # Before, SecurePlan took 4,097 segments and wrote them; its own from_bytes (every device)
    # refused the bytes as "plan declares 4097 sketch segments".
    with pytest.raises(
        ValueError, match=f"^{MAX_SEGMENTS + 1} sketch segments, at most {MAX_SEGMENTS}: "
    ):
        _sketched(MAX_SEGMENTS + 1)
    plan = _sketched(MAX_SEGMENTS)
    with pytest.raises(ValueError, match=f"^{MAX_SEGMENTS + 1} sketch segments"):
        plan.derive(sketch_segments=plan.sketch_segments + ((MAX_SEGMENTS, 1, 1, 1),))


def _plain() -> bytes:
    """A coordinator plan without sketch segments: fixed fields, then (bits, count = 0)."""
    plan = make_plan(SecureConfig(coord_fraction=0.25), 5, 10, 64, np.arange(16, dtype=np.int64))
    assert plan.sketch_segments == ()
    return plan.to_bytes()


def test_a_plan_cut_after_its_length_field_is_not_called_truncated() -> None:
    # _FIXED.size + 9 bytes hold every field up to the packed length: the shortest plan
    # from_bytes reads on. Kills `len(data) < _FIXED.size + 9` flipped to <=.
    cut = _plain()[: _FIXED.size + 9]
    with pytest.raises(MalformedMessage, match="^plan length mismatch$"):
        SecurePlan.from_bytes(cut, 64)
    with pytest.raises(MalformedMessage, match="^plan truncated$"):
        SecurePlan.from_bytes(cut[:-1], 64)


def test_a_plan_whose_segments_end_at_its_length_field_is_not_short_of_them() -> None:
    # One declared segment and exactly its 20 bytes and the length field (0): the segments
    # are all there; what is missing is the coordinates. Kills `len(data) < pos + 20 * n_seg
    # + 4` flipped to <=.
    data = _plain()
    head = bytearray(data[: _FIXED.size + 5])
    struct.pack_into("<I", head, _FIXED.size + 1, 1)
    exact = bytes(head) + struct.pack("<QIII", 0, 1, 1, 1) + struct.pack("<I", 0)
    with pytest.raises(MalformedMessage, match="^plan coordinates: "):
        SecurePlan.from_bytes(exact, 64)
    with pytest.raises(MalformedMessage, match="^plan declares 1 sketch segments$"):
        SecurePlan.from_bytes(exact[:-1], 64)


def test_a_zero_coordinate_bound_is_refused_by_name() -> None:
    # Kills `coord_bound > 0` flipped to >=: a bound of 0 then reached the quantizer scale
    # (2^b - 1) / (2 C') and raised a bare ZeroDivisionError.
    plan = _sketched(4)
    with pytest.raises(ValueError, match="^clip_norm and coord_bound must be positive$"):
        plan.derive(coord_bound=0.0)


@pytest.mark.parametrize(("bits", "taken"), [(0, False), (1, True), (32, True), (33, False)])
def test_sketch_bits_from_1_to_32_are_taken(bits: int, taken: bool) -> None:
    # Kills `1 <= sketch_bits <= 32` flipped to 1 < or to < 32.
    plan = _sketched(4)
    if not taken:
        with pytest.raises(ValueError, match=f"^sketch_bits={bits} with 4 sketch segments$"):
            plan.derive(sketch_bits=bits)
        return
    assert SecurePlan.from_bytes(plan.derive(sketch_bits=bits).to_bytes(), 4).sketch_bits == bits


def test_required_ring_bits_is_the_smallest_ring_check_ring_takes() -> None:
    # Both compute n * w * (2^b - 1) + 2 * headroom; the ring of m bits holds it when it is
    # below 2^m. Kills max(1, ...) turned to max(2, ...) (n = w = b = 1: the sum 1 fits in one
    # bit) and 2 * headroom turned to 3 * headroom in required_ring_bits (1 + 2 = 3 fits in
    # two bits, 1 + 3 would not).
    assert required_ring_bits(1, 1, 1) == 1
    assert required_ring_bits(1, 1, 1, 1) == 2
    for n in (1, 2, 3, 5):
        for w in (1, 2, 3):
            for b in (1, 2, 3):
                for h in (0, 1, 2, 3, 7):
                    m = required_ring_bits(n, w, b, h)
                    check_ring(n, w, b, m, h)
                    if m > 1:
                        with pytest.raises(RingOverflow):
                            check_ring(n, w, b, m - 1, h)
