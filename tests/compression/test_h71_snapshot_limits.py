"""encode_snapshot and decode_snapshot agree on DecodeLimits: what the encoder writes under a
receiver's limits, that receiver decodes; what it cannot fit, it refuses at encode."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from compression import DecodeLimits, ModelSpec, decode_snapshot, encode_snapshot
from compression._snapshot import SNAPSHOT_HEADER_LEN


def _noise(d: int, seed: int) -> np.ndarray:
    """Incompressible float32[d] (random mantissas): zstd's worst case, stored raw."""
    return np.random.default_rng(seed).standard_normal(d).astype(np.float32)


@settings(max_examples=40, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(
    d=st.integers(1, 300_000),
    dtype=st.sampled_from(["fp16", "fp32"]),
    level=st.sampled_from([-5, 1, 3, 19, 22]),
    seed=st.integers(0, 2**32 - 1),
)
@example(d=300_000, dtype="fp32", level=3, seed=1)  # many raw zstd blocks
@example(d=300_000, dtype="fp32", level=22, seed=2)
@example(d=1, dtype="fp16", level=3, seed=3)  # the fixed overheads against a 1-scalar cap
def test_every_snapshot_fits_the_default_limits(d: int, dtype: str, level: int, seed: int) -> None:
    # Prepare: incompressible params. The default cap leaves d/8 + 1024 bytes above 4d for a
    # 56-byte header and zstd's expansion (at most d/64 + 64 bytes plus its frame header).
    spec = ModelSpec.from_shapes([("w", (d,))])
    params = _noise(d, seed)
    # Execute
    blob = encode_snapshot(params, spec, dtype, level)
    # Assert: the receiver's default limits take it, and it is the encoder's own bytes.
    assert len(blob) <= DecodeLimits().frame_cap(spec)
    out = decode_snapshot(blob, spec)
    assert np.array_equal(out, params.astype(dtype.replace("fp", "float")).astype(np.float32))


def test_a_tighter_zstd_window_is_kept_by_the_encoder_given_the_same_limits() -> None:
    # Prepare: a receiver whose zstd window is capped at 64 KiB, and a 400 KB fp32 model
    # (level 3 asks for a 512 KiB window: before, the receiver refused every such snapshot
    # and the encoder had no way to know).
    d = 100_000
    spec = ModelSpec.from_shapes([("w", (d,))])
    params = _noise(d, 7)
    tight = DecodeLimits(zstd_max_window_log=16)
    # Execute
    blob = encode_snapshot(params, spec, "fp32", limits=tight)
    # Assert: decoded under those limits, bit for bit; the default-limit snapshot is
    # unchanged by the new argument.
    assert np.array_equal(decode_snapshot(blob, spec, tight), params)
    assert encode_snapshot(params, spec, "fp32") == encode_snapshot(
        params, spec, "fp32", limits=DecodeLimits()
    )


def test_a_snapshot_above_the_receivers_frame_cap_is_refused_at_encode() -> None:
    # Prepare: a receiver that takes frames of at most 100,000 bytes; the fp32 snapshot of
    # 100,000 random values takes about 400 KB, the fp16 one about 200 KB.
    d = 100_000
    spec = ModelSpec.from_shapes([("w", (d,))])
    params = _noise(d, 11)
    small = DecodeLimits(max_frame_bytes=100_000)
    # Execute / Assert: refused with the sizes and the cap named, for both dtypes
    for dtype in ("fp32", "fp16"):
        with pytest.raises(ValueError, match=r"snapshot of \d+ bytes .* cap of 100000 bytes"):
            encode_snapshot(params, spec, dtype, limits=small)
    # ... and one that fits is encoded and decodes under the same cap.
    zeros = np.zeros(d, np.float32)  # compresses to a few dozen bytes
    blob = encode_snapshot(zeros, spec, "fp32", limits=small)
    assert SNAPSHOT_HEADER_LEN < len(blob) <= 100_000
    assert np.array_equal(decode_snapshot(blob, spec, small), zeros)
