"""A plan derived from another shares its packed S_r and has the same canonical bytes.

Opening a grouped secure round built one `SecurePlan` per group and zstd-compressed the same
S_r in each (a cohort of 30,000 in groups of 3: 10,000 compressions of 12,500 indices, 6.7 s
of the event loop, scratch measurement on the 2-core dev machine, 2026-11-29). The plan now
keeps its header and the packed gaps apart, and `SecurePlan.derive` shares the latter. The
bytes (and so every round digest) must not change: the golden digests below were taken from
the encoder before the change, and `_reference_encode` is that encoder, verbatim.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.secure import SecureConfig, make_plan
from protocol.secagg import NoiseKind, SecurePlan, round_digest
from protocol.secagg._plan import _FIXED, PLAN_MAGIC


def _reference_encode(p: SecurePlan) -> bytes:
    """SecurePlan._encode as it was before the header and the packed gaps were split."""
    gaps = np.diff(p.indices, prepend=np.int64(0)).astype("<u4")
    packed = zstandard.ZstdCompressor(level=10).compress(gaps.tobytes())
    head = _FIXED.pack(
        PLAN_MAGIC, p.round_id, p.num_nodes, p.degree, p.threshold,
        p.ring_bits, p.value_bits, p.max_weight, p.model_size,
        p.clip_norm, p.coord_bound, p.flags, int(p.noise),
        p.noise_variance, p.noise_headroom, p.graph_seed, p.rotation_seed,
        p.k,
    )  # fmt: skip
    seg = struct.pack("<BI", p.sketch_bits, len(p.sketch_segments)) + b"".join(
        struct.pack("<QIII", *t) for t in p.sketch_segments
    )
    return head + seg + struct.pack("<I", len(packed)) + packed


def _golden_plans() -> dict[str, SecurePlan]:
    rng = np.random.default_rng(76)
    idx = np.sort(rng.choice(100_000, 5_000, replace=False)).astype(np.int64)
    dp = SecureConfig(seed=1, noise=NoiseKind.SKELLAM, noise_multiplier=1.0, sketch=False)
    plain = SecureConfig(seed=0, rotate=False, dither=False, max_weight=4)
    return {
        "default": make_plan(SecureConfig(seed=7), 9, 3, 100_000, idx),
        "group5": make_plan(
            SecureConfig(seed=7, group_size=3), 9, 5, 100_000, idx, ((0, 100, 1000, 4),), 5
        ),
        "dp": make_plan(dp, 2, 40, 100_000, idx[:777]),
        "one": make_plan(plain, 1, 3, 10, np.array([9], np.int64)),
    }


# sha256 of the plan bytes and round_digest(b"\x01" * 32, plan), from the encoder before.
GOLDEN = {
    "default": (
        5296,
        "180668d9c961aab1d042b10c4f249ff63b358bb890e6263a6ef61c294ce3ec6c",
        "00292f59591a13a9a42e7a2084987002938403561579dc25375c20918def814d",
    ),
    "group5": (
        5316,
        "feb5d5b2717d6099701050440d16e129f2477b1fb1c093823f988787adf32437",
        "e238f2f88c3ec8b223ba11fd8a66dade2d24c967bc571cd7dd7ff034112eb65a",
    ),
    "dp": (
        1072,
        "0eb995cdac4b3e8439ce2f26cf5aae7c728d884e90d7ca3849dc2e272ee1a6ab",
        "a558fbc77e22cdd5852106adda8c5af1078e6406fd966fb8b2c4dd178a225103",
    ),
    "one": (
        162,
        "ab9585543a1e84b46b0507131b3967b7775496a80106280ffa9bf97dab8d29f5",
        "6509675138fe9e70047da0a51af35a6d41a362280f36a13e8bce6a25816783d5",
    ),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_plan_bytes_and_round_digest_are_the_golden_ones(name: str) -> None:
    plan = _golden_plans()[name]
    size, sha, digest = GOLDEN[name]
    data = plan.to_bytes()
    assert len(data) == size
    assert hashlib.sha256(data).hexdigest() == sha
    assert round_digest(b"\x01" * 32, plan).hex() == digest
    assert data == _reference_encode(plan)


def _seed(data: st.DataObject) -> bytes:
    return data.draw(st.binary(min_size=32, max_size=32))


@st.composite
def _changes(draw: st.DrawFn, model_size: int) -> dict[str, object]:
    """Fields of a valid plan over any S_r of `model_size` (indices and size excluded)."""
    n = draw(st.integers(3, 60))
    degree = n - 1 if draw(st.booleans()) or n - 1 <= 2 else 2 * draw(st.integers(1, (n - 2) // 2))
    value_bits = draw(st.integers(1, 16))
    max_weight = draw(st.integers(1, 8))
    noise = draw(st.sampled_from(list(NoiseKind)))
    variance = 0.0 if noise == NoiseKind.NONE else draw(st.floats(0.5, 1e6))
    headroom = int(4 * (variance * n) ** 0.5) + 1 if variance else draw(st.integers(0, 99))
    top = n * max_weight * ((1 << value_bits) - 1) + 2 * headroom
    segs: tuple[tuple[int, int, int, int], ...] = ()
    if draw(st.booleans()) and model_size >= 4:
        segs = ((0, 2, model_size // 2, draw(st.integers(1, model_size // 2))),)
    return {
        "round_id": draw(st.integers(1, 2**63)),
        "num_nodes": n,
        "degree": degree,
        "threshold": draw(st.integers(1, degree)),
        "ring_bits": draw(st.integers(top.bit_length(), 64)),
        "value_bits": value_bits,
        "max_weight": max_weight,
        "clip_norm": draw(st.floats(1e-3, 1e3)),
        "coord_bound": draw(st.floats(1e-3, 1e3)),
        "graph_seed": draw(st.binary(min_size=32, max_size=32)),
        "rotation_seed": draw(st.binary(min_size=32, max_size=32)),
        "rotate": draw(st.booleans()),
        "noise": noise,
        "noise_variance": variance,
        "noise_headroom": headroom,
        "sketch_bits": draw(st.integers(1, 32)) if segs else 0,
        "sketch_segments": segs,
        "dither": max_weight == 1 and draw(st.booleans()),
    }


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.data())
def test_a_derived_plan_is_byte_for_byte_a_fresh_one(data: st.DataObject) -> None:
    # Prepare: one S_r (gaps of any size up to u32), a first plan over it, another's fields
    model_size = data.draw(st.integers(1, 2**32))
    k = data.draw(st.integers(1, min(model_size, 3_000)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32)))
    idx = np.unique(rng.integers(0, model_size, size=k, dtype=np.int64))
    first = SecurePlan(model_size=model_size, indices=idx, **data.draw(_changes(model_size)))
    other = data.draw(_changes(model_size))
    # Execute
    derived = first.derive(**other)
    fresh = SecurePlan(model_size=model_size, indices=idx.copy(), **other)
    # Assert: the bytes, the digest and the decoded plan are those of a plan built anew
    assert derived.to_bytes() == fresh.to_bytes() == _reference_encode(fresh)
    assert first.to_bytes() == _reference_encode(first)
    assert derived.nbytes == len(fresh.to_bytes())
    md = hashlib.sha256(_seed(data)).digest()
    assert round_digest(md, derived) == round_digest(md, fresh)
    assert (
        round_digest(md, derived)
        == hashlib.sha256(b"plume-round-v1\0" + md + _reference_encode(fresh)).digest()
    )
    assert derived.indices is first.indices and derived._packed is first._packed
    again = SecurePlan.from_bytes(derived.to_bytes(), model_size)
    assert again.to_bytes() == derived.to_bytes()
    assert np.array_equal(again.indices, idx)


def test_derive_keeps_s_r_and_checks_every_other_field() -> None:
    plan = _golden_plans()["default"]
    with pytest.raises(ValueError, match="keeps the plan's indices"):
        plan.derive(indices=np.arange(3, dtype=np.int64))
    with pytest.raises(ValueError, match="keeps the plan's indices"):
        plan.derive(model_size=200_000)
    with pytest.raises(TypeError, match="no field colour"):
        plan.derive(colour=1)
    with pytest.raises(ValueError, match="must be even"):
        plan.derive(num_nodes=10, degree=3)
    with pytest.raises(ValueError, match="seeds are 32 bytes"):
        plan.derive(rotation_seed=b"x")
    # a derived plan's own fields are checked as a fresh plan's: a ring too small overflows
    with pytest.raises(ValueError, match="does not fit"):
        plan.derive(num_nodes=1000, degree=20, threshold=11)
    assert plan.derive().to_bytes() == plan.to_bytes()
