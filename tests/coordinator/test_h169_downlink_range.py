"""A round whose server step the task's lossy downlink codec cannot carry (a value beyond
fp16's range with `downlink.bits=16`, float32's largest value with 8 bits; until 2026-12-03 also
a 1-bit block whose residual would overflow float32) is published with fp32 values in the same
frame format, and the task goes on.

Before: `DownlinkStrategy.publish` raised the encoder's ValueError, `close_round` abandoned the
round, and the task was stuck: the downlink residual and the device's own residual (an
abandoned round's upload goes back into it) carried the step into every later round, which
was abandoned the same way, honest updates with it. A device can bring a task there itself (a
legal upload of large values under plain fedavg).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import numpy as np
import numpy.typing as npt

from compression import CodecConfig, ErrorFeedback, UpdateCodec
from coordinator.engine import RoundEngine
from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.downlink import DownlinkStrategy
from protocol.messages import CodecParams
from sdk import TrainResult
from sdk.client import Client

from .test_service_support import (
    ADMIN,
    SPEC,
    SoftmaxTrainer,
    admin_get,
    create_task,
    initial_params,
    local_data,
    task_config,
    wait_until,
)


class _Shifter:
    """A trainer that adds `shift` to every parameter and claims `examples` examples."""

    def __init__(self, shift: float, examples: int) -> None:
        self.shift, self.examples = np.float32(shift), examples

    def train(self, params: npt.NDArray[np.float32], *_a: Any, **_kw: Any) -> TrainResult:
        return TrainResult((params + self.shift).astype(np.float32), self.examples, 0.0)


def test_an_fp16_downlink_publishes_a_step_beyond_its_range_as_fp32(tmp_path: Path) -> None:
    # Prepare: a task whose published deltas are fp16 (half the coordinates), one device a
    # round, uploads exact (fp32), so the step is exactly what the device sends
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05)
    task = task_config(
        clients_per_round=1,
        rounds=3,
        codec=CodecParams(topk=1.0, bits=32),
        downlink=CodecParams(topk=0.5, bits=16),
    )
    x, y = local_data(0)
    with ServerThread(cfg) as url, httpx.Client(base_url=url) as http:
        task_id = create_task(http, task)
        with Client(url, str(tmp_path / "dev")) as device:
            device.register()
            # Execute: round 1 brings +100,000 on every parameter (one device a round: its weight,
            # all its examples since the SDK caps it there, is the whole average);
            # rounds 2 and 3 are honest training
            reports = [
                device.participate(trainer, x, y, task_id=task_id, max_wait_s=20)
                for trainer in (_Shifter(1e5, len(x)), SoftmaxTrainer(), SoftmaxTrainer())
            ]
            status = wait_until(http, f"/v1/admin/tasks/{task_id}", "rounds_closed", 3)
            rounds = admin_get(http, f"/v1/admin/tasks/{task_id}/rounds")
            # the device's copy of the newest model (a delta chain from the version it holds)
            held, version, _encoding = device.fetch_current(task_id, SPEC)
        with Client(url, str(tmp_path / "fresh")) as fresh:
            fresh.register()
            snapshot, snapshot_version, _ = fresh.fetch_current(task_id, SPEC)
    # Assert: every round committed (none abandoned), the task done at version 3
    assert [r["state"] for r in rounds] == ["committed"] * 3, rounds
    assert (status["state"], status["version"], status["rounds_committed"]) == ("done", 3, 3)
    # round 1's frame carries fp32 values, and says so; its kept half of the step is exact
    assert rounds[0]["measurements"]["downlink_bits"] == 32
    # round 2 took the device from version 0 to 1 with a delta chain holding that fp32 frame
    assert all(r is not None for r in reports)
    second = reports[1]
    assert second is not None
    assert (second.model_version, second.download_encoding) == (1, "delta-chain")
    # the device's chain and a fresh snapshot give the same model (digests checked by the SDK)
    assert version == snapshot_version == 3
    np.testing.assert_array_equal(held, snapshot)
    moved = snapshot - initial_params()
    assert np.count_nonzero(moved > 5e4) >= SPEC.size // 2


def _publish(downlink: CodecConfig, step: npt.NDArray[np.float32]) -> tuple[bytes, Any]:
    """One `DownlinkStrategy.publish` of `step` onto a zero model: (frame, strategy)."""
    strategy = DownlinkStrategy(SPEC, downlink, seed=7, feedback=ErrorFeedback(SPEC.size))
    strategy.round_key = 11
    engine = SimpleNamespace(
        config=SimpleNamespace(server_lr=1.0), params=np.zeros(SPEC.size, dtype=np.float32)
    )
    output = SimpleNamespace(result=step)
    strategy.publish(cast(RoundEngine, engine), 1, cast(Any, output))
    assert strategy.last_frame is not None
    return strategy.last_frame, (strategy, engine)


def test_the_fallback_is_fp32_with_the_same_topk_and_deterministic() -> None:
    rng = np.random.default_rng(3)
    small = rng.normal(0, 1, SPEC.size).astype(np.float32)
    big = small.copy()
    # Beyond fp16's range; float32's largest value, whose 8-bit top level overflows; and a
    # 1-bit block from -3.4e38 to that, which the 1-bit encoder before 2026-12-03 (rounding to
    # the block's min or max) could not carry either: values of 1e38 rounded down to -3.4e38
    # left a residual beyond float32's range. The sign-and-mean encoder carries it (below).
    big[:20] = 1e38
    big[20] = np.finfo(np.float32).max
    big[21] = -3.4e38
    decoder = UpdateCodec(SPEC, CodecConfig(topk=1.0, bits=32))
    frame, (strategy, engine) = _publish(CodecConfig(topk=0.25, bits=1, block=64), big)
    assert decoder.decode_frame(frame).header.bits == 1
    assert getattr(strategy, "last_fallback", None) is None
    assert np.all(np.isfinite(strategy.feedback.residual))
    for bits in (16, 8):
        downlink = CodecConfig(topk=0.25, bits=bits, block=64)
        # A step that fits keeps the codec's own values
        frame, (strategy, _engine) = _publish(downlink, small)
        assert decoder.decode_frame(frame).header.bits == bits
        assert getattr(strategy, "last_fallback", None) is None
        # One that does not is fp32 values at the same top-k, identical on a replay
        frame, (strategy, engine) = _publish(downlink, big)
        again, _ = _publish(downlink, big)
        decoded = decoder.decode_frame(frame)
        assert decoded.header.bits == 32 and strategy.last_fallback is not None
        assert decoded.update.indices.shape[0] == downlink.k_for(SPEC.size)
        assert frame == again
        # the kept coordinates are exact, the rest stays in a finite residual
        kept = decoded.update.indices
        np.testing.assert_array_equal(engine.params[kept], big[kept])
        residual = strategy.feedback.residual
        assert np.all(np.isfinite(residual))
        np.testing.assert_array_equal(engine.params + residual, big)
