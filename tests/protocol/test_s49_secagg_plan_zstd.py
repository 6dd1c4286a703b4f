"""A device takes the server's plan whatever zstd bytes its S_r came in (s49, helper-416's
review, item 6).

`SecurePlan.from_bytes` re-encoded the plan and required the same bytes: the gaps of S_r are
zstd-compressed, and zstd promises the same output only for the same library version, so a
device whose zstandard compressed them otherwise would have refused every secure round as
"not canonical". Now the header must be the one its fields give, the gaps are taken as
received (their content checked), and the plan's bytes and digest are the bytes received.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import zstandard

from coordinator.secure import SecureConfig, make_plan
from protocol.secagg import SecurePlan, round_digest


def _recompressed(data: bytes, level: int) -> bytes:
    """`data` with its packed gaps compressed again at zstd `level` (the same content)."""
    (clen,) = struct.unpack_from("<I", data, len(data) - len(_body(data)) - 4)
    body = _body(data)
    assert clen == len(body)
    raw = zstandard.ZstdDecompressor().decompress(body)
    other = zstandard.ZstdCompressor(level=level).compress(raw)
    head = data[: len(data) - len(body) - 4]
    return head + struct.pack("<I", len(other)) + other


def _body(data: bytes) -> bytes:
    plan = SecurePlan.from_bytes(data, 10**6)
    return data[len(data) - len(plan._packed) :]


def test_a_plan_whose_gaps_another_zstd_compressed_is_taken_as_received() -> None:
    # Prepare: a plan, and the same plan with S_r's gaps compressed at another level
    idx = np.sort(np.random.default_rng(3).choice(100_000, 5_000, replace=False)).astype(np.int64)
    plan = make_plan(SecureConfig(seed=7), 9, 3, 100_000, idx)
    sent = plan.to_bytes()
    other = _recompressed(sent, 1)
    assert other != sent  # different bytes, the same coordinates
    digest = hashlib.sha256(b"m").digest()
    # Execute
    got = SecurePlan.from_bytes(other, 10**6)
    # Assert: the same coordinates and fields; its bytes and digest are the ones received
    np.testing.assert_array_equal(got.indices, plan.indices)
    assert got.to_bytes() == other and got.nbytes == len(other)
    expected = hashlib.sha256(b"plume-round-v1\0" + digest + other).digest()
    assert round_digest(digest, got) == expected != round_digest(digest, plan)
