"""Downlink: publish each new model as a quantized delta with server-side error feedback.

w_r = w_{r-1} + decode(encode(server_lr * aggregate_r + residual)), and the residual keeps what
the encoding dropped. Devices apply the same frames with `protocol.messages.apply_delta`, so
server and devices hold bit-identical models and a device `j` versions behind needs only the
`j` small frames (a delta chain) instead of the dense model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from compression import CodecConfig, ErrorFeedback, ModelSpec, UpdateCodec
from coordinator.aggregators import AggregateOutput, ClientUpdate
from coordinator.engine import RoundEngine, Strategy
from protocol.messages import apply_delta

from .faults import fault_point

__all__ = ["DownlinkStrategy", "DOWNLINK_STREAM"]

# Third component of the per-round RNG seed of the downlink encoder (stochastic rounding);
# fixed, so replaying a round after a crash re-creates the exact same frame.
DOWNLINK_STREAM = 0x646C


class DownlinkStrategy(Strategy):
    """The engine's default hooks, except `publish`, which quantizes the step for the downlink.

    `round_key` must be set to the durable round id before `close_round`; it seeds the encoder
    so that aggregation + publish are a deterministic function of the accepted updates.
    """

    def __init__(
        self, spec: ModelSpec, downlink: CodecConfig, seed: int, feedback: ErrorFeedback
    ) -> None:
        self.codec = UpdateCodec(spec, downlink)
        self.seed = seed
        self.feedback = feedback
        self.round_key = 0
        self.last_frame: bytes | None = None

    def aggregate(
        self, engine: RoundEngine, round_id: int, updates: Sequence[ClientUpdate]
    ) -> AggregateOutput:
        output = super().aggregate(engine, round_id, updates)
        fault_point("during_aggregation")
        return output

    def publish(self, engine: RoundEngine, round_id: int, output: AggregateOutput) -> None:
        step = output.result.astype(np.float32)
        if engine.config.server_lr != 1.0:
            step = (step * np.float32(engine.config.server_lr)).astype(np.float32)
        rng = np.random.default_rng([self.seed, self.round_key, DOWNLINK_STREAM])
        frame, _report = self.feedback.step(step, self.codec, rng, weight=0.0)
        engine.params = apply_delta(engine.params, self.codec.decode(frame))
        self.last_frame = frame
