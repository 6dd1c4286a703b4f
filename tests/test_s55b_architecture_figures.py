"""docs/architecture.md's figures are the code's (s55b).

The page quotes a few numbers about the code rather than about a run: the decode limits'
defaults and the derived frame cap, the codec's bit widths, the MNIST split's sizes and seed,
and the MNIST CNN's parameter count. Each check reads the doc's line and the code's value.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"


def _row(start: str) -> str:
    (row,) = [line for line in DOC.read_text().splitlines() if line.startswith(start)]
    return row


def test_the_decode_limits_are_the_defaults() -> None:
    from compression import DecodeLimits, ModelSpec

    limits = DecodeLimits()
    row = _row("| `DecodeLimits` |")
    assert f"`max_header_bytes={limits.max_header_bytes}`" in row
    assert f"`zstd_max_window_log={limits.zstd_max_window_log}`" in row
    assert limits.max_frame_bytes is None
    assert (
        "`max_frame_bytes` (default None: `limits.frame_cap(spec)` = 4d + ceil(d/8) + 1024)" in row
    )
    for d in (1, 7, 8, 9, 1_663_370):
        spec = ModelSpec.from_shapes([("w", (d,))])
        assert limits.frame_cap(spec) == 4 * d + math.ceil(d / 8) + 1024, d


def test_the_codec_bit_widths_are_the_accepted_ones() -> None:
    from compression import CodecConfig

    row = _row("| `CodecConfig` |")
    assert "`bits: int` in {1,2,4,8} (quantized), 16 (fp16) or 32 (fp32)" in row
    for bits in (1, 2, 4, 8, 16, 32):
        CodecConfig(topk=0.01, bits=bits)
    for bits in (0, 3, 5, 12, 64):
        with pytest.raises(ValueError, match="bits must be one of"):
            CodecConfig(topk=0.01, bits=bits)
    dense = CodecConfig.dense()
    assert (dense.topk, dense.bits) == (1.0, 32)


def test_the_mnist_split_is_load_mnists() -> None:
    from mobile_sim.data import load_mnist

    params = inspect.signature(load_mnist).parameters
    train, seed = params["train_size"].default, params["seed"].default
    line = _row("- `mobile_sim.data`:")
    assert f"`load_mnist(root)` ({train:,} train / {10_000 - train:,} test, seed {seed})" in line


def test_the_mnist_cnn_size_is_the_models() -> None:
    from mobile_sim.models import build_model

    params = sum(p.numel() for p in build_model("mnist_cnn").parameters())
    line = _row("- `mobile_sim.models`:")
    assert f"`mnist_cnn` (McMahan et al. 2017, {params:,} params)" in line


def test_the_fingerprint_and_dense_bytes_are_the_codes() -> None:
    import numpy as np

    from compression import CodecConfig, ModelSpec, UpdateCodec

    spec = ModelSpec.from_shapes([("w", (1000,)), ("b", (10,))])
    assert "`fingerprint` (8 bytes of SHA-256 over the canonical layout)" in _row("| `ModelSpec` |")
    assert isinstance(spec.fingerprint, bytes) and len(spec.fingerprint) == 8
    codec = UpdateCodec(spec, CodecConfig(topk=0.1, bits=4))
    u = np.random.default_rng(0).standard_normal(spec.size).astype(np.float32)
    frame, report = codec.encode(u, np.random.default_rng(1))
    assert "`dense_bytes` (= 4·d)" in _row("| `EncodeReport` |")
    assert report.dense_bytes == 4 * spec.size and report.frame_bytes == len(frame)
