"""Server optimizers: FedAvgM and the adaptive FedAdagrad, FedAdam and FedYogi, as the
outermost aggregation stage (`adam:lr=0.01+fedavg`).

The inner stages produce the round's pseudo-gradient Δ_t (the aggregated client delta). The
optimizer turns it into the step the engine adds to the model (times `server_lr`):
- FedAvgM (Hsu et al. 2019): m_t = β1 m_{t-1} + Δ_t; step = η m_t.
- Adaptive (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2):
  m_t = β1 m_{t-1} + (1 − β1) Δ_t, and
  - Adagrad: v_t = v_{t-1} + Δ_t²,
  - Adam: v_t = β2 v_{t-1} + (1 − β2) Δ_t²,
  - Yogi: v_t = v_{t-1} − (1 − β2) Δ_t² sign(v_{t-1} − Δ_t²);
  step = η m_t / (√v_t + τ), with m_{-1} = 0 and v_{-1} = τ² (no bias correction, as in the
  paper). Defaults are the paper's: β1 = 0.9, β2 = 0.99, τ = 1e-3.

Why it matters here: a top-k compressed aggregate is sparse and shrunk (each coordinate is sent
by only the devices that ranked it). The adaptive rules rescale each coordinate by its own
history, so rarely sent coordinates are not starved. The state (m, v: float32[d] each) is part
of the aggregator state, so the coordinator service persists it with every round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ._base import (
    AggregateOutput,
    AggregatorFactory,
    ClientUpdate,
    finite_number,
    saturate_f32,
    shown,
)

__all__ = ["ServerOptimizer", "SERVER_OPTIMIZERS"]

SERVER_OPTIMIZERS = ("avgm", "adagrad", "adam", "yogi")
_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = float(np.finfo(np.float32).smallest_subnormal)


@dataclass(frozen=True, slots=True)
class ServerOptimizer:
    """`kind` in SERVER_OPTIMIZERS around the `inner` aggregator; `lr` is η (the engine's
    `server_lr` multiplies the step again; leave it at 1 with these).

    Memory: m (and v for the adaptive kinds), float32[d] each, kept between rounds.
    """

    inner: AggregatorFactory
    kind: str = "adam"
    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        if self.kind not in SERVER_OPTIMIZERS:
            raise ValueError(
                f"server optimizer must be one of {SERVER_OPTIMIZERS}, not {self.kind!r}"
            )
        if not (finite_number(self.lr) and self.lr > 0):
            raise ValueError(f"server optimizer lr must be positive, got {shown(self.lr)}")
        if not 0 <= self.beta1 < 1 or not 0 <= self.beta2 < 1:
            raise ValueError(
                f"betas must be in [0, 1), got {shown(self.beta1)}, {shown(self.beta2)}"
            )
        if not (finite_number(self.tau) and self.tau > 0):
            raise ValueError(f"tau must be positive, got {shown(self.tau)}")
        for name in ("lr", "tau"):
            # The arithmetic is float32 (np.float32(lr)): an lr past float32's range was inf
            # (every step inf or NaN), one below its smallest value 0 (every step 0), and a
            # tau of 0 made an untouched coordinate's step 0 / 0 = NaN.
            value = getattr(self, name)
            if not _F32_TINY <= value <= _F32_MAX:
                raise ValueError(
                    f"server optimizer {name} must be a float32 number (about 1.4e-45 to "
                    f"3.4e38), got {shown(value)}"
                )

    def create(self, size: int) -> _ServerOptProcess:
        return _ServerOptProcess(self, size, self.inner.create(size))


class _ServerOptProcess:
    def __init__(self, cfg: ServerOptimizer, size: int, inner: Any) -> None:
        self.cfg, self.size, self.inner = cfg, size, inner

    def initialize(self) -> Any:
        m = np.zeros(self.size, dtype=np.float32)
        v = None
        if self.cfg.kind != "avgm":
            v = np.full(self.size, np.float32(self.cfg.tau) ** 2, dtype=np.float32)
        return (m, v, self.inner.initialize())

    def next(self, state: Any, updates: Sequence[ClientUpdate]) -> AggregateOutput:
        cfg = self.cfg
        m, v, inner_state = state
        if m.shape != (self.size,) or (v is not None and v.shape != (self.size,)):
            raise ValueError(f"server optimizer state must be float32[{self.size}]")
        out = self.inner.next(inner_state, updates)
        delta: npt.NDArray[np.float32] = np.asarray(out.result, dtype=np.float32)
        b1, b2 = np.float32(cfg.beta1), np.float32(cfg.beta2)
        # A finite aggregate can still overflow float32 here (delta^2 past 1.8e19 made v inf,
        # and that coordinate's step 0 in every later round). m and v saturate at float32's
        # largest value instead; wherever nothing overflows the bits are unchanged (the
        # float64 square of a float32 is exact, so rounding it gives delta * delta's bits).
        with np.errstate(over="ignore"):
            if cfg.kind == "avgm":
                m = saturate_f32(b1 * m + delta)
                step = np.float32(cfg.lr) * m
            else:
                m = saturate_f32(b1 * m + (np.float32(1) - b1) * delta)
                sq = saturate_f32(np.square(delta, dtype=np.float64))
                if cfg.kind == "adagrad":
                    v = v + sq
                elif cfg.kind == "adam":
                    v = b2 * v + (np.float32(1) - b2) * sq
                else:  # yogi
                    v = v - (np.float32(1) - b2) * sq * np.sign(v - sq)
                v = saturate_f32(v)
                step = np.float32(cfg.lr) * m / (np.sqrt(v) + np.float32(cfg.tau))
        step = step.astype(np.float32, copy=False)
        meas = {
            "server_opt": cfg.kind,
            "pseudo_gradient_norm": _norm(delta),
            "step_norm": _norm(step),
            "inner": out.measurements,
        }
        return AggregateOutput((m.astype(np.float32, copy=False), v, out.state), step, meas)


def _norm(x: npt.NDArray[np.float32]) -> float:
    """L2 norm in float64 (a float32 norm overflows past about 1.8e19)."""
    return float(np.linalg.norm(x.astype(np.float64)))
