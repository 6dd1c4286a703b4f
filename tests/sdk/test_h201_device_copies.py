"""The device's update pipeline keeps fewer parameter-sized copies (helper-194's finding:
`UpdateEncoder.encode` computed delta + residual twice, and `OrtDevice` held the encoder's
copy of u for a refusal it has no path for), with the same frames bit for bit."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from compression import CodecConfig, ErrorFeedback, UpdateCodec
from sdk.device import UpdateEncoder, clip_l2
from sdk.flat import spec_from_module
from sdk.ort import OrtDevice, OrtTrainer
from tests._export_cache import ExportCache, example


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    # 2,500 x 100: a quarter million parameters (1 MB a copy) in a graph of a few KB.
    return torch.nn.Sequential(torch.nn.Linear(2500, 100), torch.nn.Linear(100, 3))


@pytest.mark.parametrize(
    "config",
    [CodecConfig(topk=0.01, bits=4), CodecConfig(topk=1.0, bits=8), CodecConfig(0.1, 1)],
)
@pytest.mark.parametrize("clip", [None, 0.5])
def test_frames_are_those_of_error_feedback_step(config: CodecConfig, clip: float | None) -> None:
    """Five rounds of the encoder against `ErrorFeedback.step` driven by hand (what `encode`
    called before): the same frames and residuals, bit for bit."""
    spec = spec_from_module(_model())
    enc = UpdateEncoder(spec, config, clip_norm=clip)
    ref, codec = ErrorFeedback(spec.size), UpdateCodec(spec, config)
    data = np.random.default_rng(7)
    for round_ in range(5):
        delta = data.normal(0, 0.01, spec.size).astype(np.float32)
        frame, report = enc.encode(delta, np.random.default_rng(round_), weight=3.0)
        d = clip_l2(delta, clip) if clip is not None else delta
        u = d + ref.residual
        want, want_report = ref.step(d, codec, np.random.default_rng(round_), weight=3.0)
        assert frame == want
        assert [(g.name, g.bytes_in, g.bytes_out) for g in report.stages] == [
            (g.name, g.bytes_in, g.bytes_out) for g in want_report.stages
        ]  # the stages' seconds differ, naturally
        assert np.array_equal(enc.feedback.residual, ref.residual)
        assert enc._pending_u is not None and np.array_equal(enc._pending_u, u)


def test_ort_device_keeps_one_copy_after_a_round(tmp_path: Path, export_cache: ExportCache) -> None:
    model = _model()
    export_cache.export(model, example(2, 2500), tmp_path)
    trainer = OrtTrainer.from_dir(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.random((8, 2500), dtype=np.float32)
    y = rng.integers(0, 3, 8)
    device = OrtDevice(trainer, x, y, codec=CodecConfig(topk=0.01, bits=4), batch_size=4)
    params = rng.normal(0, 0.05, trainer.spec.size).astype(np.float32)
    copy = params.nbytes
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        upload = device.run_round(params, np.random.default_rng(3))
        del upload  # the caller's: the trained parameters are in it
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    # The residual (one copy) is the device's state; before, u was held as well (two).
    assert held < 1.5 * copy, f"{held / copy:.2f} parameter copies held after run_round"
    assert device.encoder._pending_u is None
