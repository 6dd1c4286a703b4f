"""Checks of protocol/secagg/_plan.py that no test in tests/protocol reached (a mutation hunt,
helper s59s, removed each and those tests still passed). A device decodes its plan from the
server: each refusal in `SecurePlan.from_bytes` is sent a plan of the coordinator's own with
one field made hostile, and must name it as a `MalformedMessage`; the field checks every
plan goes through (`SecurePlan(...)`, `replace`) must name theirs as a `ValueError`; and the
bounds beside them (two and MAX_NODES nodes, a sum of exactly 2^m, headroom of exactly 4 sd)."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import numpy as np
import pytest

from coordinator.secure import SecureConfig, make_plan
from protocol.secagg import (
    MalformedMessage,
    NoiseKind,
    RingOverflow,
    SecurePlan,
    check_ring,
    round_digest,
)
from protocol.secagg._plan import _FIXED, MAX_NODES, MAX_RING_BITS, MAX_SEGMENTS

D = 64
K = 16


def _plan() -> SecurePlan:
    return make_plan(SecureConfig(coord_fraction=0.25), 5, 10, D, np.arange(K, dtype=np.int64))


def _with(plan: SecurePlan, **changes: Any) -> bytes:
    """The plan's bytes with fixed fields (by index in `_FIXED`) replaced."""
    data = plan.to_bytes()
    fields = list(_FIXED.unpack_from(data))
    for key, value in changes.items():
        fields[int(key[1:])] = value
    return _FIXED.pack(*fields) + data[_FIXED.size :]


def test_the_unchanged_plan_decodes() -> None:
    plan = _plan()
    assert SecurePlan.from_bytes(_with(plan), D).to_bytes() == plan.to_bytes()


def test_a_truncated_plan_is_refused() -> None:
    data = _plan().to_bytes()
    with pytest.raises(MalformedMessage, match="^plan truncated$"):
        SecurePlan.from_bytes(data[: _FIXED.size + 8], D)


def test_a_plan_without_its_magic_is_refused() -> None:
    with pytest.raises(MalformedMessage, match=r"^not a secure plan \(bad magic\)$"):
        SecurePlan.from_bytes(_with(_plan(), f0=b"PSP2"), D)


def test_a_plan_larger_than_the_device_s_model_is_refused() -> None:
    data = _plan().to_bytes()
    with pytest.raises(MalformedMessage, match=f"^plan sizes d={D}, k={K} out of range$"):
        SecurePlan.from_bytes(data, D - 1)
    assert SecurePlan.from_bytes(data, D).model_size == D  # at the limit


@pytest.mark.parametrize("k", [0, D + 1])
def test_a_plan_whose_k_is_outside_one_to_d_is_refused(k: int) -> None:
    with pytest.raises(MalformedMessage, match=f"^plan sizes d={D}, k={k} out of range$"):
        SecurePlan.from_bytes(_with(_plan(), f17=k), D)


@pytest.mark.parametrize("flags", [0b100, 0b1000_0001])
def test_a_plan_with_unknown_flag_bits_is_refused(flags: int) -> None:
    with pytest.raises(MalformedMessage, match=f"^plan flags {flags:#04x} set unknown bits$"):
        SecurePlan.from_bytes(_with(_plan(), f11=flags), D)


def test_a_plan_declaring_too_many_sketch_segments_is_refused() -> None:
    data = bytearray(_plan().to_bytes())
    struct.pack_into("<I", data, _FIXED.size + 1, MAX_SEGMENTS + 1)
    with pytest.raises(MalformedMessage, match=f"^plan declares {MAX_SEGMENTS + 1} sketch segm"):
        SecurePlan.from_bytes(bytes(data), D)


def test_a_plan_with_bytes_after_its_coordinates_is_refused() -> None:
    with pytest.raises(MalformedMessage, match="^plan length mismatch$"):
        SecurePlan.from_bytes(_plan().to_bytes() + b"\0", D)


def test_a_plan_whose_k_is_not_its_coordinate_count_is_refused() -> None:
    # k + 1 coordinates declared, k packed: the frame's declared size is refused first
    with pytest.raises(
        MalformedMessage, match=f"^plan coordinates: .*the header says {4 * K + 4}$"
    ):
        SecurePlan.from_bytes(_with(_plan(), f17=K + 1), D)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"num_nodes": 1}, f"^num_nodes=1 outside 2..{MAX_NODES}$"),
        ({"num_nodes": MAX_NODES + 1}, f"^num_nodes={MAX_NODES + 1} outside 2..{MAX_NODES}$"),
        ({"threshold": 0}, r"^need 1 <= t=0 <= k=\d+ <= n-1$"),
        ({"value_bits": 0}, r"^value_bits in 1..32 and max_weight in 1..2\^32-1$"),
        ({"value_bits": 33}, r"^value_bits in 1..32 and max_weight in 1..2\^32-1$"),
        ({"max_weight": 0}, r"^value_bits in 1..32 and max_weight in 1..2\^32-1$"),
        ({"max_weight": 1 << 32}, r"^value_bits in 1..32 and max_weight in 1..2\^32-1$"),
        ({"clip_norm": 0.0}, "^clip_norm and coord_bound must be positive$"),
        ({"coord_bound": -1.0}, "^clip_norm and coord_bound must be positive$"),
        ({"clip_norm": float("inf")}, "^clip_norm and coord_bound must be finite$"),
        ({"coord_bound": float("inf")}, "^clip_norm and coord_bound must be finite$"),
        ({"dither": True, "max_weight": 2}, "^dither needs max_weight=1$"),
        ({"indices": np.array([], np.int64)}, "^coordinate set empty or out of range$"),
        ({"indices": np.array([-1, 3], np.int64)}, "^coordinate set empty or out of range$"),
        ({"indices": np.array([3, D], np.int64)}, "^coordinate set empty or out of range$"),
        ({"indices": np.array([3, 3, 5], np.int64)}, "^coordinate set not strictly increasing$"),
        ({"indices": np.array([5, 3], np.int64)}, "^coordinate set not strictly increasing$"),
    ],
)
def test_a_plan_with_a_field_out_of_range_is_refused(changes: dict[str, Any], match: str) -> None:
    plan = _plan()
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(plan, **changes)


def test_a_dithered_plan_of_unit_weight_and_the_top_index_are_accepted() -> None:
    plan = _plan()
    assert dataclasses.replace(plan, dither=True, max_weight=1).dither
    top = dataclasses.replace(plan, indices=np.array([0, D - 1], np.int64))
    assert top.k == 2


@pytest.mark.parametrize("size", [0, 31, 33])
def test_the_round_digest_needs_a_32_byte_model_digest(size: int) -> None:
    with pytest.raises(ValueError, match="^model digest is 32 bytes$"):
        round_digest(bytes(size), _plan())
    assert len(round_digest(bytes(32), _plan())) == 32


def test_a_plan_of_max_nodes_is_accepted() -> None:
    plan = dataclasses.replace(_plan(), num_nodes=MAX_NODES, degree=8, threshold=5, ring_bits=64)
    assert plan.num_nodes == MAX_NODES


def test_a_sum_of_exactly_two_to_the_m_does_not_fit_a_ring_of_m_bits() -> None:
    # n * w * (2^b - 1) + 2 h: 2 * 1 * 1 + 0 = 2 = 2^1
    with pytest.raises(RingOverflow, match="= 2 does not fit in a ring of 1 bits"):
        check_ring(2, 1, 1, 1)
    check_ring(1, 1, 1, 1)  # 1 < 2^1
    check_ring(1, 1, 1, MAX_RING_BITS)  # the widest ring
    with pytest.raises(RingOverflow, match=f"does not fit in a ring of {MAX_RING_BITS + 1} bits"):
        check_ring(1, 1, 1, MAX_RING_BITS + 1)


def test_noise_headroom_of_exactly_four_standard_deviations_is_enough() -> None:
    # 16 * variance * n = headroom^2 at variance 10, n = 10, headroom 40
    plan = _plan()
    assert plan.num_nodes == 10
    wide = {"noise": NoiseKind.SKELLAM, "noise_variance": 10.0, "ring_bits": plan.ring_bits + 12}
    assert dataclasses.replace(plan, noise_headroom=40, **wide).noise_headroom == 40
    with pytest.raises(ValueError, match="at least 4 standard deviations .* got 39$"):
        dataclasses.replace(plan, noise_headroom=39, **wide)


def test_a_plan_of_two_nodes_is_a_valid_plan() -> None:
    # the plan's floor is 2 (a device refuses to take part below 3: test_h224_two_node_plan)
    plan = dataclasses.replace(_plan(), num_nodes=2, degree=1, threshold=1)
    assert SecurePlan.from_bytes(plan.to_bytes(), D).num_nodes == 2
