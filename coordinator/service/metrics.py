"""Prometheus metrics of one coordinator (its own registry, so several apps can share a process)."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from protocol.names import CheckInAction, Direction, Reason

from .dp_total import AllTasksPrivacyCollector
from .store import SCHEMA_VERSION

if TYPE_CHECKING:
    from .auth import BodyBudget

__all__ = ["Metrics", "StoreErrors", "TaskRegistries", "UploadBuffer", "plume_version"]


def plume_version() -> str:
    """The installed plume-fl version, as the coordinator's start log line gives it."""
    try:
        return version("plume-fl")
    except PackageNotFoundError:  # a source tree never installed
        return "(not installed)"


class TaskRegistries(Collector):
    """Per-task registries (anomaly signals, privacy ledger) served as one set of families
    with a `task` label, so several tasks' series of the same name coexist in `/metrics`."""

    def __init__(self) -> None:
        self._tasks: dict[int, list[CollectorRegistry]] = {}
        self._lock = threading.Lock()

    def attach(self, task_id: int, registries: Iterable[CollectorRegistry]) -> None:
        """Serve these registries as task `task_id` (replacing what it had)."""
        with self._lock:
            self._tasks[task_id] = list(registries)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            tasks = sorted(self._tasks.items())
        families: dict[str, Metric] = {}
        for task_id, registries in tasks:
            for registry in registries:
                for fam in registry.collect():
                    out = families.get(fam.name)
                    if out is None:
                        out = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                        families[fam.name] = out
                    for smp in fam.samples:
                        labels = {"task": str(task_id), **smp.labels}
                        out.samples.append(
                            Sample(smp.name, labels, smp.value, smp.timestamp, smp.exemplar)
                        )
        yield from families.values()


# The label values the labelled counters below are created with, at 0, when the metrics are
# (s25/ops finding 4): a series that first appears already at 1 is invisible to increase()
# and rate(), so the first abandoned round or bad signature after each start would not
# alert. Values outside these (none today) still appear when first counted.
ROUND_OUTCOMES = ("committed", "abandoned")
AUTH_FAILURE_REASONS = (
    Reason.UNSIGNED,
    Reason.UNREGISTERED,
    Reason.BAD_SIGNATURE,
    Reason.STALE_TIMESTAMP,
    Reason.REPLAYED_NONCE,
    Reason.ROUND_MISMATCH,
    Reason.BAD_ADMIN_TOKEN,
)
BYTE_KINDS = ("payload", "wire", "dense")


class StoreErrors(Collector):
    """`plume_store_errors_total`: writes the database refused (`Store.write_errors`), read
    from the store the app points `source` at; 0 until it does."""

    def __init__(self) -> None:
        self.source: Callable[[], int] | None = None

    def collect(self) -> Iterator[Metric]:
        count = self.source() if self.source is not None else 0
        yield CounterMetricFamily(
            "plume_store_errors",
            "Writes the coordinator's database refused (a full disk, a lock held past the busy "
            "timeout, a read-only file, an I/O error): each answered 503 store_unavailable or "
            "retried by the coordinator; /readyz is 503 while the last write failed",
            value=count,
        )


class UploadBuffer(Collector):
    """The upload budget's state (`BodyBudget`, serve --upload-buffer-mb), read from the
    budget the app points `budget` at when /metrics is scraped; zeros until it does."""

    def __init__(self) -> None:
        self.budget: BodyBudget | None = None

    def collect(self) -> Iterator[Metric]:
        b = self.budget
        limit = b.limit_bytes if b is not None else 0
        bodies = b.bodies - b.waiting if b is not None else 0
        held = b.held - b.waiting_held if b is not None else 0
        reserved = b.reserved if b is not None else 0
        waiting = b.waiting if b is not None else 0
        waiting_bytes = b.waiting_held if b is not None else 0
        refused = b.refused if b is not None else 0
        reclaimed = b.fell_behind if b is not None else 0
        for name, doc, value in (
            (
                "plume_upload_buffer_limit_bytes",
                "The upload budget, bytes (serve --upload-buffer-mb; 0: no limit)",
                limit,
            ),
            (
                "plume_upload_buffer_bodies",
                "Upload bodies being read that hold or reserve bytes of the budget (waiting "
                "ones not included)",
                bodies,
            ),
            (
                "plume_upload_buffer_held_bytes",
                "Bytes of the upload bodies being read that have arrived (waiting first parts "
                "not included)",
                held,
            ),
            (
                "plume_upload_buffer_reserved_bytes",
                "Bytes the upload bodies being read declared and have not sent yet (their "
                "reservations)",
                reserved,
            ),
            (
                "plume_upload_buffer_waiting_bodies",
                "Upload bodies waiting (up to 2 s) for room at their first part",
                waiting,
            ),
            (
                "plume_upload_buffer_waiting_bytes",
                "Bytes of the first parts the waiting upload bodies hold (counted apart, at "
                "most an eighth of the budget)",
                waiting_bytes,
            ),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        yield CounterMetricFamily(
            "plume_upload_buffer_refused",
            "Upload bodies refused 503 busy by the upload budget (no room at their first part "
            "within the wait, too many waiting, or a chunked or behind-pace body's part that "
            "did not fit)",
            value=refused,
        )
        yield CounterMetricFamily(
            "plume_upload_buffer_reclaimed",
            "Reservations given back because their body fell behind the pace that ends it "
            "within the body timeout, when another body needed room",
            value=reclaimed,
        )


class Metrics:
    """Counters served at `/metrics`. Byte counters mirror the bandwidth ledger."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tasks = TaskRegistries()
        r.register(self.tasks)
        # plume_dp_epsilon_all_tasks and its companions (docs/privacy.md, assumption 7); the
        # app points it at its coordinator's tasks.
        self.dp_all_tasks = AllTasksPrivacyCollector()
        r.register(self.dp_all_tasks)
        # Prometheus's build-info convention: always 1, the labels say which build answered
        # (joined onto other series in queries, e.g. to see a change across an upgrade).
        self.build_info = Gauge(
            "plume_build_info",
            "Always 1; the labels name the plume version, the store schema version it runs "
            "and the Python version",
            ["version", "schema", "python"],
            registry=r,
        )
        python = ".".join(str(n) for n in sys.version_info[:3])
        self.build_info.labels(plume_version(), str(SCHEMA_VERSION), python).set(1)
        self.requests = Counter(
            "plume_http_requests", "HTTP requests by route and status", ["route", "status"],
            registry=r,
        )  # fmt: skip
        self.bytes = Counter(
            "plume_bytes",
            "Bytes attributed to rounds, by direction (up/down) and kind (payload/wire/dense)",
            ["direction", "kind"],
            registry=r,
        )
        self.control_wire_bytes = Counter(
            "plume_control_wire_bytes",
            "HTTP wire bytes of every exchange not attributed to a round (registration, idle "
            "check-ins, admin, refusals)",
            ["direction"],
            registry=r,
        )
        self.control_wire_bytes_by_route = Counter(
            "plume_control_wire_bytes_by_route",
            "plume_control_wire_bytes by route template (unmatched: no route) and direction: "
            "which requests the traffic outside rounds is",
            ["route", "direction"],
            registry=r,
        )
        self.model_snapshots_rate_limited = Counter(
            "plume_model_snapshots_rate_limited",
            "Model downloads refused (429) by the per-device snapshots_per_version limit",
            registry=r,
        )
        self.updates_accepted = Counter(
            "plume_updates_accepted", "Uploads accepted and committed", registry=r
        )
        self.auth_failures = Counter(
            "plume_auth_failures", "Requests refused by authentication", ["reason"], registry=r
        )
        self.registrations_rate_limited = Counter(
            "plume_registrations_rate_limited",
            "Registrations refused (429) by the per-address registration rate limit",
            registry=r,
        )
        self.rounds = Counter("plume_rounds", "Rounds closed, by outcome", ["outcome"], registry=r)
        self.check_ins = Counter("plume_check_ins", "Check-ins by answer", ["action"], registry=r)
        self.store_errors = StoreErrors()
        r.register(self.store_errors)
        self.upload_buffer = UploadBuffer()  # the app points it at its BodyBudget
        r.register(self.upload_buffer)
        self.check_ins_sdk_unsupported = Counter(
            "plume_check_ins_sdk_unsupported",
            "Check-ins not given a task's rounds because the device's SDK did not declare a "
            "feature the task needs (naming the task: 409 sdk_unsupported; naming none: the "
            "task passed over), by task and feature; devices on an older SDK poll on, so "
            "divide the rate by their polling rate for a head count",
            ["task", "feature"],
            registry=r,
        )
        self.check_ins_model_too_large = Counter(
            "plume_check_ins_model_too_large",
            "Check-ins not given a task's rounds because its model is larger than the "
            "max_model_bytes the device declared (naming the task: 409 model_too_large; "
            "naming none: the task passed over), by task; devices poll on, so divide the rate "
            "by their polling rate for a head count",
            ["task"],
            registry=r,
        )
        self.check_ins_model_layout_mismatch = Counter(
            "plume_check_ins_model_layout_mismatch",
            "Check-ins not given a task's rounds because its model's layout is none of the "
            "model_layouts the device declared (naming the task: 409 model_layout_mismatch; "
            "naming none: the task passed over), by task; devices poll on, so divide the rate "
            "by their polling rate for a head count",
            ["task"],
            registry=r,
        )
        self.model_version = Gauge(
            "plume_model_version", "Published model version", ["task"], registry=r
        )
        self.round_train_loss = Gauge(
            "plume_round_train_loss",
            "The task's last committed round's training loss: stat=median or mean (unweighted) "
            "of the mean local training losses its devices sent with their updates (a plain "
            "task without DP; a training loss, not a test accuracy); no series when that "
            "round had none",
            ["task", "stat"],
            registry=r,
        )
        self.devices = Gauge("plume_registered_devices", "Registered devices", registry=r)
        self.stored_frame_bytes = Gauge(
            "plume_stored_frame_bytes",
            "Bytes of accepted update frames held in the database (pruned frames count 0; "
            "--keep-frames bounds it)",
            registry=r,
        )
        self.tasks_refused = Gauge(
            "plume_tasks_refused",
            "Tasks in the store this coordinator refuses to run (admin task status says why)",
            registry=r,
        )
        self.tasks_unloaded = Gauge(
            "plume_tasks_unloaded",
            "Tasks not running since the store failed while they were rebuilt from it; each is "
            "tried again every few seconds (503 store_unavailable to its requests meanwhile)",
            registry=r,
        )
        self.upload_seconds = Histogram(
            "plume_upload_seconds",
            "Server time to take one upload after its body was read and its signature "
            "verified: decode + commit (a secure stage message, of any stage: its check + "
            "holding it); refused uploads are not observed",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        for outcome in ROUND_OUTCOMES:
            self.rounds.labels(outcome)
        for reason in AUTH_FAILURE_REASONS:
            self.auth_failures.labels(str(reason))
        for action in CheckInAction:
            self.check_ins.labels(str(action))
        for direction in Direction:
            for kind in BYTE_KINDS:
                self.bytes.labels(str(direction), kind)
        self.aggregate_seconds = Histogram(
            "plume_aggregate_seconds",
            "Time to aggregate and publish a round",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )

    def observe_train_loss(self, task_id: int, measurements: dict[str, Any]) -> None:
        """Set task `task_id`'s `plume_round_train_loss` from a committed round's measurements
        (`train_loss_median`, `train_loss_mean`); a round without them removes the task's
        series, so a figure never outlives the round it came from."""
        task = str(task_id)
        median = measurements.get("train_loss_median")
        mean = measurements.get("train_loss_mean")
        if isinstance(median, float) and isinstance(mean, float):
            self.round_train_loss.labels(task, "median").set(median)
            self.round_train_loss.labels(task, "mean").set(mean)
            return
        for stat in ("median", "mean"):
            with contextlib.suppress(KeyError):
                self.round_train_loss.remove(task, stat)
