"""Downlink: publish each new model as a quantized delta with server-side error feedback.

w_r = w_{r-1} + decode(encode(server_lr * aggregate_r + residual)), and the residual keeps what
the encoding dropped. Devices apply the same frames with `protocol.messages.apply_delta`, so
server and devices hold bit-identical models and a device `j` versions behind needs only the
`j` small frames (a delta chain) instead of the dense model.

A step the task's lossy downlink codec cannot carry (a value beyond fp16's range with bits=16,
a magnitude near float32's maximum with 2..8 bits, a 1-bit span whose residual overflows) is
published as fp32 values instead, with the same top-k: the frame header says which, and every
decoder reads it from there, so devices apply it as any other frame and the round is not lost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

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

log = logging.getLogger("plume.coordinator")


class DownlinkStrategy(Strategy):
    """The engine's default hooks, except `publish`, which quantizes the step for the downlink.

    `round_key` must be set to the durable round id before `close_round`; it seeds the encoder
    so that aggregation + publish are a deterministic function of the accepted updates.
    """

    def __init__(
        self, spec: ModelSpec, downlink: CodecConfig, seed: int, feedback: ErrorFeedback
    ) -> None:
        self.codec = UpdateCodec(spec, downlink)
        # The same codec with raw fp32 values: what a step the lossy values cannot carry is
        # published with (None when the downlink is fp32 already).
        self.fallback = (
            UpdateCodec(spec, replace(downlink, bits=32)) if downlink.bits != 32 else None
        )
        self.seed = seed
        self.feedback = feedback
        self.round_key = 0
        self.last_frame: bytes | None = None
        # Why the last published frame carries fp32 values instead of the codec's (None: it
        # carries the codec's own).
        self.last_fallback: str | None = None

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
        seed = [self.seed, self.round_key, DOWNLINK_STREAM]
        fallback: str | None = None
        try:
            frame, _report = self.feedback.step(
                step, self.codec, np.random.default_rng(seed), weight=0.0
            )
        except ValueError as exc:
            # The residual is unchanged when `step` raises. A refusal fp32 values would not
            # lift (a non-finite sum, a frame over the cap) raises again just below.
            if self.fallback is None:
                raise
            fallback = str(exc)
            frame, _report = self.feedback.step(
                step, self.fallback, np.random.default_rng(seed), weight=0.0
            )
            log.warning(
                "round %d: the downlink delta is published with fp32 values: the %d-bit "
                "downlink codec cannot carry it (%s)",
                self.round_key,
                self.codec.config.bits,
                fallback,
            )
        engine.params = apply_delta(engine.params, self.codec.decode(frame))
        self.last_frame = frame
        self.last_fallback = fallback
