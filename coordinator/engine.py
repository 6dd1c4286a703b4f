"""The round engine: select -> configure -> collect -> aggregate -> publish, with no HTTP.

The engine is a small state machine driven by whoever owns the clock: the in-process simulator
calls it directly, the HTTP service calls it from request handlers and a deadline timer. Policy
lives in `Strategy` hooks (after Flower's strategy loop); the maths lives in aggregators.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from compression import CodecConfig, CodecError, DecodeLimits, ModelSpec, UpdateCodec

from .aggregators import AggregateOutput, AggregatorFactory, ClientUpdate
from .aggregators._base import finite_number, shown
from .aggregators._dp import accounted_sample_size, find_dp
from .ledger import BandwidthLedger
from .privacy import PoissonSampling

# The range of a float32 multiplier (np.float32(x) neither inf nor 0).
F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = float(np.finfo(np.float32).smallest_subnormal)

__all__ = [
    "EngineConfig",
    "F32_MAX",
    "F32_TINY",
    "RoundPlan",
    "Receipt",
    "RoundOutcome",
    "Strategy",
    "RoundEngine",
    "EngineError",
    "UnknownRound",
    "NotSelected",
    "DuplicateUpload",
    "RoundClosed",
    "TaskStopped",
    "find_measurement",
]


class EngineError(Exception):
    """A request the engine refuses; the engine's state is unchanged."""


class UnknownRound(EngineError):
    pass


class NotSelected(EngineError):
    pass


class DuplicateUpload(EngineError):
    pass


class RoundClosed(EngineError):
    """The round is closed or already has all the reports it wants (a straggler)."""


class TaskStopped(EngineError):
    """The task has stopped (e.g. its privacy budget is spent); no more rounds open."""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Round policy. `over_selection` 1.3 selects 30% more devices than `clients_per_round`;
    the first `clients_per_round` reports are kept and later ones refused as stragglers.
    A round with fewer than `min_reports` reports at close is abandoned (model unchanged)."""

    clients_per_round: int
    over_selection: float = 1.0
    min_reports: int = 1
    codec: CodecConfig = field(default_factory=lambda: CodecConfig(topk=0.01, bits=4))
    server_lr: float = 1.0
    seed: int = 0
    limits: DecodeLimits | None = None

    def __post_init__(self) -> None:
        if self.clients_per_round < 1:
            raise ValueError("clients_per_round must be at least 1")
        if not 1.0 <= self.over_selection <= 10.0:
            raise ValueError("over_selection must be in [1, 10]")
        if not 1 <= self.min_reports <= self.clients_per_round:
            raise ValueError("min_reports must be in [1, clients_per_round]")
        if not self.server_lr > 0:  # NaN too
            raise ValueError("server_lr must be positive")
        if not (finite_number(self.server_lr) and F32_TINY <= self.server_lr <= F32_MAX):
            # The step is multiplied by np.float32(server_lr): inf past float32's range (every
            # round's step refused), 0 below its smallest value (the model never moves).
            raise ValueError(
                f"server_lr must be a float32 number (about 1.4e-45 to 3.4e38), got "
                f"{shown(self.server_lr)}"
            )

    @property
    def cohort_size(self) -> int:
        """Devices selected per round, over-selection included."""
        return math.ceil(self.clients_per_round * self.over_selection - 1e-9)


@dataclass(frozen=True, slots=True)
class RoundPlan:
    """What the selected devices are told: train from model `version`, encode with `codec`."""

    round_id: int
    selected: list[str]
    codec: CodecConfig
    version: int
    target_reports: int


@dataclass(frozen=True, slots=True)
class Receipt:
    round_id: int
    device_id: str
    payload_bytes: int
    nnz: int
    weight: float


@dataclass(frozen=True, slots=True)
class RoundOutcome:
    round_id: int
    committed: bool
    reports: int
    version: int
    measurements: dict[str, Any]


@dataclass
class _Round:
    plan: RoundPlan
    selected: frozenset[str]
    updates: dict[str, ClientUpdate] = field(default_factory=dict)
    closed: bool = False


# Every closed round maps to this one record: `_precheck` refuses on `closed` before it reads
# anything else, so a closed round need not keep its selection (as large as its cohort).
_CLOSED = _Round(RoundPlan(0, [], CodecConfig.dense(), 0, 0), frozenset(), closed=True)


class Strategy:
    """Overridable hooks of the round loop. Each receives the engine for read access.

    `poisson_sampling`: set it to True on a subclass whose `select` really selects each
    available device independently with the probability q a `dp` stage's `PoissonSampling`
    accounts (a cohort of Binomial size, hidden from devices). `RoundEngine` refuses a `dp`
    stage accounting Poisson sampling unless its strategy declares this and overrides
    `select`: the default `select` picks a fixed-size cohort (docs/privacy.md, assumption 1).
    """

    poisson_sampling: ClassVar[bool] = False

    def select(
        self, engine: RoundEngine, round_id: int, available: Sequence[str], rng: np.random.Generator
    ) -> list[str]:
        """Uniform sampling without replacement of the over-selected cohort."""
        n = min(engine.config.cohort_size, len(available))
        picks = rng.choice(len(available), size=n, replace=False)
        return [available[i] for i in sorted(picks.tolist())]

    def configure(self, engine: RoundEngine, round_id: int, selected: list[str]) -> RoundPlan:
        return RoundPlan(
            round_id,
            selected,
            engine.config.codec,
            engine.version,
            min(engine.config.clients_per_round, len(selected)),
        )

    def aggregate(
        self, engine: RoundEngine, round_id: int, updates: Sequence[ClientUpdate]
    ) -> AggregateOutput:
        return engine.process.next(engine.aggregator_state, updates)

    def publish(self, engine: RoundEngine, round_id: int, output: AggregateOutput) -> None:
        """w_r = w_{r-1} + server_lr * aggregate.

        An override assigns a new array to `engine.params` and never changes the published one
        in place: the engine's rollback and the simulator's `last_params` hold it by reference."""
        step = output.result.astype(np.float32)
        if engine.config.server_lr != 1.0:
            step = step * np.float32(engine.config.server_lr)
        engine.params = (engine.params + step).astype(np.float32)


def _poisson_refusal(aggregator: object, strategy: Strategy, cohort: int) -> str | None:
    """Why `strategy` may not run `aggregator`'s dp stage, or None: Poisson accounting (q=)
    holds only for a `select` that samples each device independently with probability q, so
    the default `select` (a fixed-size cohort) and an override that does not declare
    `poisson_sampling = True` are refused; the epsilon reported would not hold."""
    dp = find_dp(aggregator)
    s = dp.sampling if dp is not None else None
    if not isinstance(s, PoissonSampling):
        return None
    name = type(strategy).__qualname__
    if type(strategy).select is Strategy.select:
        problem = (
            f"the default Strategy.select (used by {name}) selects fixed-size cohorts of {cohort}"
            if type(strategy) is not Strategy
            else f"the default Strategy.select selects fixed-size cohorts of {cohort}"
        )
    elif not strategy.poisson_sampling:
        problem = f"{name}.select does not declare Poisson sampling (poisson_sampling = True)"
    else:
        return None
    return (
        f"dp accounts Poisson sampling (PoissonSampling({s.probability:g}), q={s.probability:g}) "
        f"but {problem}, so the epsilon it reports would not hold: account the cohort with "
        f"FixedSizeSampling(N, {cohort}) (population=N,sample={cohort}), or pass a Strategy "
        "subclass whose select samples each device independently with probability q and "
        "that sets poisson_sampling = True"
    )


class RoundEngine:
    """Runs rounds over a flat float32[d] model. Not thread-safe: callers serialise calls."""

    def __init__(
        self,
        spec: ModelSpec,
        params: npt.NDArray[np.float32],
        aggregator: AggregatorFactory,
        config: EngineConfig,
        ledger: BandwidthLedger | None = None,
        strategy: Strategy | None = None,
        *,
        version: int = 0,
        next_round: int = 1,
    ) -> None:
        if params.shape != (spec.size,):
            raise ValueError(f"params of shape {params.shape}, spec wants ({spec.size},)")
        sample = accounted_sample_size(aggregator)
        if sample is not None and config.cohort_size > sample:
            # Central DP accounts a cohort of `sample`; selecting more devices samples each
            # one more often than epsilon assumes (docs/privacy.md, assumption 2).
            raise ValueError(
                f"dp accounts cohorts of sample={sample} but the engine selects "
                f"{config.cohort_size} (over-selection included): set sample= to the cohort"
            )
        strategy = strategy or Strategy()
        if (why := _poisson_refusal(aggregator, strategy, config.cohort_size)) is not None:
            raise ValueError(why)
        self.spec = spec
        self.params = np.array(params, dtype=np.float32, copy=True)
        self.config = config
        self.ledger = ledger if ledger is not None else BandwidthLedger()
        self.strategy = strategy
        self.codec = UpdateCodec(spec, config.codec, config.limits)
        self.process = aggregator.create(spec.size)
        self.aggregator_state: Any = self.process.initialize()
        self.version = version
        self.stopped = False
        self._next_round = next_round
        self._rounds: dict[int, _Round] = {}
        self._rng = np.random.default_rng(config.seed)

    # -- select + configure -------------------------------------------------------------------
    def open_round(
        self, available: Sequence[str], rng: np.random.Generator | None = None
    ) -> RoundPlan:
        """Select a cohort from `available` and plan the round. The selection draws from `rng`,
        by default one seeded by the task seed and the round number (reproducible; whoever
        knows the seed and `available` knows the cohort). Pass an unpredictably seeded one
        where the cohort must be secret, as privacy amplification by sampling requires."""
        if self.stopped:
            raise TaskStopped("the task has stopped; no more rounds")
        if not available:
            raise EngineError("no devices available to select from")
        round_id = self._next_round
        if rng is None:
            rng = np.random.default_rng([self.config.seed, round_id])
        selected = self.strategy.select(self, round_id, list(available), rng)
        plan = self.strategy.configure(self, round_id, selected)
        self._rounds[round_id] = _Round(plan, frozenset(selected))
        self._next_round += 1
        return plan

    def cancel_open(self, round_id: int) -> None:
        """Undo `open_round` of the newest round while nothing was submitted to it (its caller
        could not record it, e.g. the store refused it): the engine is as before that call,
        so the next `open_round` gets the same round number and seeded selection."""
        rnd = self._round(round_id)
        if round_id != self._next_round - 1 or rnd.closed or rnd.updates:
            raise EngineError(f"round {round_id} is not a newest round with nothing submitted")
        del self._rounds[round_id]
        self._next_round -= 1

    # -- collect ------------------------------------------------------------------------------
    def submit(
        self, round_id: int, device_id: str, frame: bytes, *, wire_bytes: int | None = None
    ) -> Receipt:
        """Decode one upload under the codec's limits and hold it for aggregation."""
        rnd = self._round(round_id)
        refused = self._precheck(rnd, round_id, device_id)
        if refused is not None:
            raise refused
        decoded = self.codec.decode_frame(frame)  # raises CodecError; nothing stored yet
        cu = ClientUpdate(device_id, decoded.update, decoded.weight)
        rnd.updates[device_id] = cu
        self.ledger.record(round_id, device_id, "up", len(frame), wire_bytes, self.spec.dense_bytes)
        return Receipt(round_id, device_id, len(frame), decoded.update.nnz, decoded.weight)

    def submit_many(
        self,
        round_id: int,
        uploads: Sequence[tuple[str, bytes]],
        *,
        wire_bytes: Sequence[int | None] | None = None,
    ) -> list[Receipt | EngineError | CodecError]:
        """`submit` for each `(device_id, frame)` in order, with the frames decoded as a batch.

        Entry i is upload i's `Receipt`, or the `EngineError` / `CodecError` that `submit`
        would have raised for it at that point of the sequence; a refused upload changes
        nothing, so it does not affect the others. The engine ends in the state the sequential
        calls leave. Only frames that `submit` would decode are decoded (same limits, same
        errors). Raises `UnknownRound` for an unknown round, as `submit` would for every upload,
        and `TypeError` for a frame that is not bytes (uploads before its chunk stay submitted).
        """
        rnd = self._round(round_id)
        n = len(uploads)
        if wire_bytes is not None and len(wire_bytes) != n:
            raise ValueError(f"{n} uploads but {len(wire_bytes)} wire_bytes")
        out: list[Receipt | EngineError | CodecError | None] = [None] * n
        target = rnd.plan.target_reports
        dense_bytes = self.spec.dense_bytes
        pos = 0
        while pos < n:
            # Until the round is full every upload that passes the cheap checks is decoded in
            # turn, so a chunk of `target - reports` of them is exactly what `submit` decodes.
            want = max(1, target - len(rnd.updates))
            chunk: list[int] = []
            while pos < n and len(chunk) < want:
                chunk.append(pos)
                pos += 1
            # Chunk members that pass the cheap checks now; the ones that still pass them in
            # the walk below (after earlier acceptances) are a subset of these.
            passing = [i for i in chunk if self._precheck(rnd, round_id, uploads[i][0]) is None]
            frames = [uploads[i][1] for i in passing]
            decoded = (
                dict(zip(passing, self.codec.decode_many(frames), strict=True)) if frames else {}
            )
            for i in chunk:
                device_id, frame = uploads[i]
                early = self._precheck(rnd, round_id, device_id)
                if early is not None:
                    out[i] = early
                    continue
                got = decoded[i]
                if isinstance(got, CodecError):
                    out[i] = got  # nothing stored, as when `submit` raises it
                    continue
                rnd.updates[device_id] = ClientUpdate(device_id, got.update, got.weight)
                wb = None if wire_bytes is None else wire_bytes[i]
                self.ledger.record(round_id, device_id, "up", len(frame), wb, dense_bytes)
                out[i] = Receipt(round_id, device_id, len(frame), got.update.nnz, got.weight)
        return [r for r in out if r is not None]

    @staticmethod
    def _precheck(rnd: _Round, rid: int, device_id: str) -> EngineError | None:
        """`submit`'s checks before decoding, in its order; the error it would raise, or None."""
        if rnd.closed:
            return RoundClosed(f"round {rid} is closed")
        if device_id not in rnd.selected:
            return NotSelected(f"device {device_id!r} was not selected for round {rid}")
        if device_id in rnd.updates:
            return DuplicateUpload(f"device {device_id!r} already reported in round {rid}")
        if len(rnd.updates) >= rnd.plan.target_reports:
            return RoundClosed(
                f"round {rid} already has its {rnd.plan.target_reports} reports (straggler)"
            )
        return None

    def record_download(
        self, round_id: int, device_id: str, payload_bytes: int, wire_bytes: int | None = None
    ) -> None:
        """Account a model download (its dense baseline is the fp32 model)."""
        self.ledger.record(
            round_id, device_id, "down", payload_bytes, wire_bytes, self.spec.dense_bytes
        )

    def reports(self, round_id: int) -> int:
        return len(self._round(round_id).updates)

    # -- aggregate + publish ------------------------------------------------------------------
    def abandon_round(self, round_id: int) -> None:
        """Close a round without aggregating it (a stopped task's): its updates and selection
        are let go, as `close_round` lets them go. A round already closed stays closed."""
        if not self._round(round_id).closed:
            self._rounds[round_id] = _CLOSED

    def close_round(self, round_id: int) -> RoundOutcome:
        """Aggregate and publish the round's updates, or abandon it below `min_reports`.

        The round is closed however this ends: if aggregating or publishing raises, the model
        and aggregator state are left as they were and the exception propagates. Either way
        its updates and selection are let go (a closed round refuses every upload, so only
        the fact that it is closed is kept)."""
        rnd = self._round(round_id)
        if rnd.closed:
            raise RoundClosed(f"round {round_id} is already closed")
        # Sorted so the float accumulation order, and so the result, never depends on arrival.
        updates = [rnd.updates[k] for k in sorted(rnd.updates)]
        self._rounds[round_id] = _CLOSED
        if len(updates) < self.config.min_reports:
            return RoundOutcome(
                round_id,
                False,
                len(updates),
                self.version,
                {"abandoned": f"{len(updates)} reports < min_reports {self.config.min_reports}"},
            )
        output = self.strategy.aggregate(self, round_id, updates)
        if output.result.shape != (self.spec.size,) or not np.all(np.isfinite(output.result)):
            raise EngineError("aggregator returned a malformed or non-finite result")
        params, state = self.params, self.aggregator_state
        self.aggregator_state = output.state
        try:
            # A finite aggregate can still overflow float32 once added to the model (a device
            # may send float32's largest value round after round): never publish inf or NaN.
            with np.errstate(over="ignore", invalid="ignore"):
                self.strategy.publish(self, round_id, output)
            if not np.all(np.isfinite(self.params)):
                raise EngineError(
                    f"publishing round {round_id} would make the model non-finite; "
                    "the model is unchanged"
                )
        except BaseException:
            self.params, self.aggregator_state = params, state
            raise
        self.version += 1
        if find_measurement(output.measurements, "budget_exhausted") is True:
            self.stopped = True
        return RoundOutcome(round_id, True, len(updates), self.version, output.measurements)

    # -- the template method ------------------------------------------------------------------
    def run_round(
        self,
        available: Sequence[str],
        collect: Callable[[RoundPlan], Iterable[tuple[str, bytes]]],
    ) -> RoundOutcome:
        """One whole round: `collect(plan)` yields `(device_id, frame)` in arrival order."""
        plan = self.open_round(available)
        for device_id, frame in collect(plan):
            try:
                self.submit(plan.round_id, device_id, frame)
            except RoundClosed:
                break  # enough reports: the rest are stragglers
        return self.close_round(plan.round_id)

    def _round(self, round_id: int) -> _Round:
        try:
            return self._rounds[round_id]
        except KeyError:
            raise UnknownRound(f"no round {round_id}") from None


def find_measurement(measurements: Mapping[str, Any], name: str) -> Any:
    """The first value named `name` in nested measurements (depth-first), or None."""
    if name in measurements:
        return measurements[name]
    for value in measurements.values():
        if isinstance(value, Mapping):
            found = find_measurement(value, name)
            if found is not None:
                return found
    return None
