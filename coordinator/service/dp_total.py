"""The coordinator-wide privacy figure: the epsilon of a device that takes part in every
DP-accounted task on this coordinator (report only: nothing is refused on it).

Each task keeps its own accountant (docs/privacy.md, assumption 7); this composes them. A
plain task with an accounting `dp` stage (`population=`/`q=`) contributes its released rounds
as `coordinator.privacy.rdp_curve` gives them (its accountant's round event, `rounds` times;
the round count is the one its accountant keeps, in the aggregator state of its last
committed round: `TaskRuntime.dp_rounds_released`, restored from the store at a start, so a
round aggregated but not committed, or discarded, is not in it); a secure task with
distributed DP its `DistributedDpAccountant`'s curve (its zCDP and Skellam rounds, rebuilt
from the stored measurements at a start). The curves add (RDP
composition) and `composed_rdp_epsilon` converts the sum at the smallest delta of the tasks
that released a round. With one such task the figure is that task's own epsilon, as it
reports it (PLD for a Poisson-sampled task): the composition of one mechanism is itself.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from coordinator.privacy import PrivacyAccountant, composed_rdp_epsilon, rdp_curve

if TYPE_CHECKING:
    from .rounds import TaskRuntime

__all__ = ["AllTasksPrivacy", "AllTasksPrivacyCollector", "AllTasksPrivacyCache"]

_log = logging.getLogger("plume.coordinator.dp")


@dataclass(frozen=True, slots=True)
class AllTasksPrivacy:
    """epsilon: of a device in every composed task, at `delta` (0 while none released a
    round; inf once a secure task released a round without noise). delta: the smallest of the
    delta of the tasks that released a round (None while none did). tasks: the tasks this
    coordinator runs; composed: those with accounting (a `dp` stage that accounts epsilon, or
    distributed DP), by id; not_accounted: the others, left out."""

    epsilon: float
    delta: float | None
    tasks: int
    composed: tuple[int, ...]
    not_accounted: tuple[int, ...]
    # Tasks this coordinator has but does not run now (refused at start, or unloaded after a
    # store error): their released rounds are not in `epsilon`, which is then a lower bound.
    not_running: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (an infinite epsilon is null with `epsilon_infinite` true)."""
        return {
            "epsilon": self.epsilon if math.isfinite(self.epsilon) else None,
            "epsilon_infinite": not math.isfinite(self.epsilon),
            "delta": self.delta,
            "tasks": self.tasks,
            "tasks_composed": len(self.composed),
            "composed": list(self.composed),
            "not_accounted": list(self.not_accounted),
            "not_running": list(self.not_running),
            "partial": bool(self.not_running),
        }


@dataclass(frozen=True, slots=True)
class _Part:
    """One accounted task: how it accounts (hashable, for the cache) and how far."""

    task_id: int
    key: tuple[Any, ...]
    rounds: int
    delta: float


def _part(rt: TaskRuntime) -> _Part | None:
    if rt.secure is not None:
        if not rt.secure.settings.config.dp:
            return None
        acc = rt.secure.coordinator.accountant
        return _Part(rt.task_id, ("secure", id(acc)), acc.rounds, float(acc.delta))
    dp = rt.accounted_dp  # the task's own dp stage, when it accounts epsilon
    if dp is None or dp.sampling is None:
        return None
    rounds = _central_rounds(rt)
    key = ("central", dp.noise_multiplier, dp.sampling, dp.accounting_method)
    return _Part(rt.task_id, key, rounds, float(dp.delta))


def _central_rounds(rt: TaskRuntime) -> int:
    """A central task's released rounds, as its accountant counts them."""
    return max(rt.dp_rounds_released() or 0, 0)


def _task_epsilon(rt: TaskRuntime, part: _Part) -> float:
    """The task's own epsilon at its delta, as it reports it."""
    if rt.secure is not None:
        return float(rt.secure.coordinator.accountant.epsilon())
    _, z, sampling, method = part.key
    return PrivacyAccountant(z, sampling, method).epsilon(part.rounds, part.delta)


def _task_curve(rt: TaskRuntime, part: _Part) -> Any:
    if rt.secure is not None:
        return rt.secure.coordinator.accountant.rdp()
    _, z, sampling, method = part.key
    return rdp_curve(PrivacyAccountant(z, sampling, method), part.rounds)


def all_tasks_privacy(runtimes: Iterable[TaskRuntime]) -> AllTasksPrivacy:
    """The figure for these tasks, computed now."""
    return _compute(sorted(runtimes, key=lambda rt: rt.task_id))


def _compute(rts: list[TaskRuntime]) -> AllTasksPrivacy:
    composed: list[int] = []
    left: list[int] = []
    released: list[tuple[TaskRuntime, _Part]] = []
    for rt in rts:
        part = _part(rt)
        if part is None:
            left.append(rt.task_id)
            continue
        composed.append(rt.task_id)
        if part.rounds > 0:
            released.append((rt, part))
    if not released:
        return AllTasksPrivacy(0.0, None, len(rts), tuple(composed), tuple(left))
    delta = min(p.delta for _, p in released)
    if len(released) == 1:
        rt, part = released[0]
        eps = _task_epsilon(rt, part)
    else:
        eps = composed_rdp_epsilon([_task_curve(rt, p) for rt, p in released], delta)
    return AllTasksPrivacy(eps, delta, len(rts), tuple(composed), tuple(left))


class AllTasksPrivacyCache:
    """`all_tasks_privacy` of a coordinator's running tasks, computed again only when a
    task's accounting moved (a round released, a task added or gone): /healthz and every
    scrape read it."""

    def __init__(
        self,
        runtimes: dict[int, TaskRuntime],
        not_running: Callable[[], Iterable[int]] | None = None,
    ) -> None:
        self._runtimes = runtimes  # the coordinator's own dict: the tasks it runs now
        # The ids of tasks the coordinator has but does not run (refused, unloaded).
        self._not_running = not_running
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._value: AllTasksPrivacy | None = None

    def get(self) -> AllTasksPrivacy:
        """The figure, computed again only when some task's accounting moved. Safe to call
        from a worker thread (the app warms it there, `asyncio.to_thread`, before answering on
        the event loop): it reads a snapshot of the task dicts."""
        # sorted() copies the values first, in one C call the event loop cannot interleave
        rts = sorted(self._runtimes.values(), key=lambda rt: rt.task_id)
        missing = tuple(sorted(set(self._not_running()))) if self._not_running else ()
        key = (tuple((rt.task_id, _part(rt)) for rt in rts), missing)
        with self._lock:
            if self._value is not None and key == self._key:
                return self._value
        value = dataclasses.replace(_compute(rts), not_running=missing)
        with self._lock:
            self._key, self._value = key, value
        return value


class AllTasksPrivacyCollector(Collector):
    """The figure as Prometheus gauges, computed at each scrape from `source` (the app sets
    it to its `AllTasksPrivacyCache.get`; without one, a coordinator with no task: 0)."""

    def __init__(self, source: Callable[[], AllTasksPrivacy] | None = None) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        try:
            v = self.source() if self.source is not None else AllTasksPrivacy(0.0, None, 0, (), ())
        except Exception:  # a scrape keeps every other metric; the log says why
            _log.exception("the coordinator-wide epsilon could not be computed")
            return
        eps = GaugeMetricFamily(
            "plume_dp_epsilon_all_tasks",
            "Epsilon of a device that takes part in every DP-accounted task on this "
            "coordinator (their rounds composed under RDP), at plume_dp_delta_all_tasks; "
            "report only, nothing enforces it",
        )
        eps.add_metric([], v.epsilon)
        yield eps
        delta = GaugeMetricFamily(
            "plume_dp_delta_all_tasks",
            "The delta of plume_dp_epsilon_all_tasks: the smallest delta of the tasks composed "
            "that released a round (no sample before one did)",
        )
        if v.delta is not None:
            delta.add_metric([], v.delta)
        yield delta
        composed = GaugeMetricFamily(
            "plume_dp_tasks_composed",
            "Running tasks with DP accounting, composed in plume_dp_epsilon_all_tasks",
        )
        composed.add_metric([], float(len(v.composed)))
        yield composed
        left = GaugeMetricFamily(
            "plume_dp_tasks_not_accounted",
            "Running tasks without DP accounting (no epsilon), left out of "
            "plume_dp_epsilon_all_tasks",
        )
        left.add_metric([], float(len(v.not_accounted)))
        yield left
