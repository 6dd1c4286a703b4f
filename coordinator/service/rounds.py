"""The durable coordinator: one `RoundEngine` per task, every acknowledged change in SQLite.

HTTP-free (the FastAPI app in `app.py` and the in-process benchmark both drive it). Round life:
devices check in and join the task's pool; when the pool holds the over-selected cohort (or
the selection timeout passes with at least `min_reports` devices) a round opens; selected
devices learn it at their next check-in, download the model, train and upload; the round closes
when `clients_per_round` reports are in or at the deadline (late uploads are stragglers and get
409), then aggregates and publishes in a worker thread, or is abandoned below `min_reports`.
A task whose `dp` stage accounts amplification by sampling (`population=N,sample=k`, N > k)
opens a round only once N devices wait, timeout or not, and draws its cohort from OS
randomness unless the stage is seeded (docs/privacy.md, assumption 1).

Recovery: accepted frames are committed with the round-state check in one transaction, and
aggregation + publish are a deterministic function of the accepted set (sorted by device,
seeded downlink encoder), committed in one transaction with the round's status. On start,
`restore()` rebuilds each engine from the last published version and replays open rounds. A
stored task that no longer restores (its config or stored state refused by this code) is
*refused*: kept intact in the store, not run, reported by the admin API and `/metrics`, and
device requests for it get 409 `task_refused`; the other tasks run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import heapq
import json
import logging
import math
import re
import secrets
import sqlite3
import statistics
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from compression import (
    CodecError,
    DecodeLimits,
    ErrorFeedback,
    ModelSpec,
    decode_snapshot,
    encode_snapshot,
    model_digest,
)
from coordinator.aggregators import (
    AdaptiveClip,
    AggregateOutput,
    AggregatorFactory,
    CenteredClipping,
    Clip,
    CoordinateMedian,
    DPMean,
    GeometricMedian,
    Krum,
    MomentumCosineFilter,
    NearestNeighborMixing,
    RobustLearningRate,
    ServerOptimizer,
    TrimmedMean,
    build_aggregator,
    decode_state,
    encode_state,
)
from coordinator.aggregators._base import finite_number, short_digits, shown, stages
from coordinator.aggregators._clip import MIN_CLIP
from coordinator.aggregators._dp import (
    accounted_sample_size,
    amplified_cohort,
    amplified_population,
    delta_note,
    delta_refusal,
    find_dp,
    returns_refused,
    seed_note,
    seed_refusal,
)
from coordinator.aggregators._robust import cohort_refusal
from coordinator.anomaly import AnomalyFilter, AnomalyMetrics
from coordinator.engine import (
    F32_MAX,
    F32_TINY,
    DuplicateUpload,
    EngineConfig,
    EngineError,
    NotSelected,
    RoundClosed,
    RoundEngine,
    RoundOutcome,
    UnknownRound,
    find_measurement,
)
from coordinator.ledger import BandwidthLedger
from coordinator.privacy import (
    PoissonSampling,
    PrivacyAccountant,
    PrivacyMetrics,
)
from coordinator.secure import BudgetExhausted
from protocol.messages import (
    MAX_BATCH_SIZE,
    MAX_ID,
    MAX_LOCAL_EPOCHS,
    MAX_RETRY_AFTER_S,
    Assignment,
    BandwidthReport,
    CheckInResponse,
    LedgerRow,
    RoundStatus,
    TaskConfig,
    TaskStatus,
    TensorShape,
    UploadOutcome,
    UploadReceipt,
    chain_bytes,
    from_json,
    pack_chain,
    to_json,
)
from protocol.names import (
    CheckInAction,
    Feature,
    Header,
    ModelEncoding,
    Path,
    Reason,
    RoundState,
    SnapshotDType,
    TaskState,
)
from protocol.secagg import (
    MAX_SEGMENTS,
    MalformedMessage,
    NoiseKind,
    RoundAborted,
    SecAggError,
    SecAggHeader,
    SecAggPath,
    Stage,
    WrongStage,
)

from ._secagg_routes import DuplicateStageUpload
from .auth import MAX_REGISTER_BURST, MIN_REGISTER_RATE, admin_token_problem
from .downlink import DownlinkStrategy
from .errors import ApiError
from .faults import fault_point
from .metrics import Metrics
from .secure import SECURE_STAGES, SecureTaskState, check_plan, parse_secure
from .store import DamagedRow, RoundRow, RoundStateError, Store, StoreError

__all__ = [
    "Coordinator",
    "ServiceConfig",
    "TaskRuntime",
    "ActiveRound",
    "RefusedTask",
    "UnloadedTask",
    "RELOAD_RETRY_S",
    "validate_task",
    "unproven_feedback_note",
    "over_selection_note",
    "krum_topk_note",
    "creation_warnings",
    "check_features",
    "required_features",
]

log = logging.getLogger("plume.coordinator")


# Largest accepted clock skew of a signed request: a day (a phone further off is broken).
MAX_SIGNATURE_WINDOW_S = 86_400.0
# Shortest: a signed request is checked once its whole body has arrived, so the window holds
# the device's clock skew and the request's transfer; under a second (1e-9 was accepted) every
# request of a device over a network is 401 stale_timestamp, and serve started regardless.
MIN_SIGNATURE_WINDOW_S = 1.0
# Shortest pool_ttl_s (and it must exceed poll_s): a waiting device stays in the selection pool
# only if it checks in again within it; it is told to come back after poll_s (the SDK waits
# at least 0.05 s) and its check-in takes a round trip. 1e-6 was accepted and emptied the pool
# between any two check-ins, so no cohort ever formed.
MIN_POOL_TTL_S = 1.0
# Shortest body_timeout_s other than 0 (no limit): a request's whole body must arrive within
# it of its first read; 1e-6 was accepted and answered every upload 408.
MIN_BODY_TIMEOUT_S = 1.0
# Longest body_timeout_s: a day. It is also the pace a body keeps its room in the upload buffer
# by (`auth.BodyBudget`), so 1e300, taken before, let a sender that sent one byte hold its
# declared length for good, where 0 (no limit) keeps the default 120 s pace.
MAX_BODY_TIMEOUT_S = 86_400.0
# The pacing wait is len(pool) / max_checkin_rate, so a rate near 0 gave an infinite wait (a
# 500): one check-in every 1,000 s per task is the slowest. (MIN_REGISTER_RATE and
# MAX_REGISTER_BURST bound the registration limiter the same way, auth.RateLimiter.)
MIN_CHECKIN_RATE = 1e-3
# The shortest tick (the timer of deadlines and selection timeouts; 0.05 s by default).
MIN_TICK_S = 1e-3
# ServiceConfig.upload_buffer_bytes' default (`serve --upload-buffer-mb 256`): the upload
# bodies read into memory at once. Before, each upload held its whole body until it was
# checked, however many arrived together, from devices selected or not (helper-275's F3).
DEFAULT_UPLOAD_BUFFER_BYTES = 256 << 20
# Seconds between attempts to rebuild a task from the store after a store error stopped it
# (`Coordinator.unloaded`); its requests' 503 says how long is left (Retry-After).
RELOAD_RETRY_S = 5.0
# Longest delta chain one admin export answers (`Coordinator.export_model` with a base): the
# chain format counts frames in a u16; the client asks in steps below it. It also bounds the
# versions one export rebuilds from the initial model (app.py `_older_version`;
# `admin_client.EXPORT_REACH` mirrors it).
MAX_EXPORT_CHAIN = 1024
# How long after a round closed the exchanges its own devices sign with it still count in its
# ledger (`Coordinator.attributable`): an upload retried across the close (answered 409
# `round_closed`, or its receipt again) and a late read of the round's status or of a secure
# round's last stage. Later ones are control traffic: a closed round's ledger stops growing.
LEDGER_GRACE_S = 60.0
# The `direction` of the ledger rows that record a secure round's accepted masked inputs, one
# row per device (payload_bytes: its masked input's size; requests: 1). A secure round stores
# no update frame, and its masked input is its update: `Coordinator.bandwidth` counts these in
# `up_accepted_*` and lists only the up and down rows (what crossed the network).
MASKED_INPUT_LEDGER = "masked_input"
# The window of `ServiceConfig.snapshots_per_version`: a device's count of snapshots of the
# current version starts again after this many seconds, or at the task's next version.
SNAPSHOT_WINDOW_S = 3600.0
# Most rounds one `GET /v1/admin/tasks/{id}/rounds?last=N` answers (a task may have up to
# 1,000,000; the whole list is still answered without `last`).
MAX_ROUNDS_PAGE = 100_000
# What an operator's stop (`Coordinator.stop_task`) records as the reason its open round ended.
STOP_REASON = "stopped by the operator"
# Encoded snapshots of finished (done or stopped) tasks kept in memory at once, all such tasks
# together, most recently downloaded first (`Coordinator._finished_snapshots`): a finished
# task holds no model in memory (`TaskRuntime.release_finished`); its download is read from
# the store and encoded, and these few are kept for the next request.
FINISHED_SNAPSHOTS_KEPT = 4
# What a finished task's model-size arrays are replaced with (`TaskRuntime.release_finished`):
# empty and read-only, so a use that should never come fails loudly instead of serving it.
_RELEASED: npt.NDArray[np.float32] = np.empty(0, dtype=np.float32)
_RELEASED.setflags(write=False)


def _secure_abandon_reason(reasons: list[str] | None, shown: int = 3) -> str:
    """A secure round's `abandoned` text: the groups' own abort reasons (the first `shown`,
    and how many more), or, when none was given, too few devices at some stage. Before, it
    was always the latter, so that a forged masked input read as ordinary dropouts."""
    if not reasons:
        return "secure round aborted: too few devices at some stage"
    more = f"; and {len(reasons) - shown} more" if len(reasons) > shown else ""
    return "secure round aborted: " + "; ".join(reasons[:shown]) + more


class KeptSnapshots:
    """The encoded snapshots of finished tasks kept in memory, the FINISHED_SNAPSHOTS_KEPT most
    recently used of all of them, keyed by (task, version, dtype). Used from the event loop
    and from the worker threads that read a finished task's model back (`TaskRuntime.warm`),
    so every access holds its lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blobs: OrderedDict[tuple[int, int, str], bytes] = OrderedDict()

    def get(self, key: tuple[int, int, str]) -> bytes | None:
        with self._lock:
            blob = self._blobs.get(key)
            if blob is not None:
                self._blobs.move_to_end(key)
            return blob

    def put(self, key: tuple[int, int, str], blob: bytes) -> None:
        with self._lock:
            self._blobs[key] = blob
            self._blobs.move_to_end(key)
            while len(self._blobs) > FINISHED_SNAPSHOTS_KEPT:
                self._blobs.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._blobs.clear()


# Check-in `features` (`protocol.names.Feature`): what the device's SDK honours, so that a task
# that needs one is never given to a device whose SDK would silently not do it.
MAX_FEATURES = 32
# What a task that needs a feature asks of the device, for its refusal's detail.
_FEATURE_WHY: dict[str, str] = {
    Feature.ERROR_FEEDBACK_OFF: (
        "the task turns the devices' error feedback off, and an SDK that does not honour it "
        "keeps its residual and sends it"
    ),
}
_FEATURE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def check_features(value: object) -> frozenset[str]:
    """A check-in's `features` as sent (JSON builtins): null or absent is none; else a list of
    at most MAX_FEATURES names, each a lower-case letter then up to 63 lower-case letters,
    digits or `_`. Anything else raises `ValueError` naming the field (a 422)."""
    if value is None:
        return frozenset()
    if not isinstance(value, list):
        raise ValueError(f"features: expected a JSON array of names, got {_shown(value)}")
    if len(value) > MAX_FEATURES:
        raise ValueError(f"features: {len(value)} names, more than {MAX_FEATURES}")
    for i, name in enumerate(value):
        if not (isinstance(name, str) and _FEATURE_NAME.fullmatch(name)):
            raise ValueError(
                f"features[{i}]: {_shown(name)} is not a feature name (a lower-case letter, "
                "then up to 63 lower-case letters, digits or _)"
            )
    return frozenset(value)


def check_model_version(value: object) -> int:
    """A check-in's `model_version` as sent (JSON builtins): the model version the device
    holds, a JSON integer (not a boolean, a float or a string) in [0, 2^63), the range of a
    task's versions; anything else raises `ValueError` naming the field (a 422). The route's
    model parsed it laxly: -5, 2^70, `true`, `2.0` and `"3"` were all taken (and ignored, the
    coordinator reads no version from a check-in), so a device or port sending a wrong one
    was never told."""
    if type(value) is not int:
        raise ValueError(
            f"$.model_version: expected an integer model version, got {type(value).__name__} "
            f"{_shown(value)}"
        )
    if not 0 <= value < MAX_ID:
        raise ValueError(f"$.model_version = {_shown(value)} is outside [0, {MAX_ID})")
    return value


def _shown(value: object) -> str:
    """A JSON value in a refusal: a string or number as sent (cut at 80 characters), a
    container by its kind only (nested arbitrarily deep, it is not printed back)."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:80] + "..."


def _too_large(rt: TaskRuntime, max_model_bytes: int, metrics: Metrics) -> str:
    """Why a task's rounds are not given to a device that declared `max_model_bytes`; counted
    in `plume_check_ins_model_too_large`."""
    metrics.check_ins_model_too_large.labels(str(rt.task_id)).inc()
    size = rt.spec.dense_bytes
    return (
        f"task {rt.task_id}'s model is {size} bytes ({size // 4} float32 parameters, as its spec "
        f"declares), over the max_model_bytes={max_model_bytes} this device declared in its "
        "check-in"
    )


def _other_layout(rt: TaskRuntime, model_layouts: Collection[str], metrics: Metrics) -> str:
    """Why a task's rounds are not given to a device whose declared `model_layouts` do not
    include its model's layout; counted in `plume_check_ins_model_layout_mismatch`."""
    metrics.check_ins_model_layout_mismatch.labels(str(rt.task_id)).inc()
    name = _shown(rt.config.model_name) if rt.config.model_name else "its model"
    declared = ", ".join(sorted(model_layouts))
    return (
        f"task {rt.task_id}'s model {name} has layout {rt.layout} ({len(rt.spec.entries)} "
        f"tensors, {rt.spec.size} parameters), not one of the model_layouts this device "
        f"declared in its check-in ({declared})"
    )


def _other_model(rt: TaskRuntime, model_names: Collection[str], metrics: Metrics) -> str:
    """Why a task's rounds are not given to a device whose declared `model_names` do not
    include its model's name; counted in `plume_check_ins_model_layout_mismatch`."""
    metrics.check_ins_model_layout_mismatch.labels(str(rt.task_id)).inc()
    declared = ", ".join(_shown(n) for n in sorted(model_names))
    return (
        f"task {rt.task_id}'s model {_shown(rt.config.model_name)} is not one of the "
        f"model_names this device declared in its check-in ({declared})"
    )


def required_features(cfg: TaskConfig) -> frozenset[str]:
    """The check-in features a device must declare to be given `cfg`'s rounds: none, or
    `error_feedback_off` for a task whose devices keep no residual (docs/privacy.md, item 5).
    A secure task never needs it (`validate_task` refuses error feedback off there)."""
    if cfg.codec.error_feedback is False:
        return frozenset({Feature.ERROR_FEEDBACK_OFF})
    return frozenset()


@dataclass(frozen=True)
class ServiceConfig:
    """Coordinator settings (times in seconds, sizes in bytes).

    poll_s: retry-after told to a device while its task gathers a cohort.
    idle_retry_s: retry-after when no task is active.
    pool_ttl_s: a device that has not checked in for this long leaves the selection pool.
    json_body_cap: largest JSON request body (uploads and snapshots have their own caps).
    max_checkin_rate: check-ins per second the waiting devices of a task are paced to.
    register_rate_per_s, register_burst: registrations per client address (IPv6: per /64),
        a token bucket; 0 (the default) is unlimited (see docs/operations.md for why).
    body_timeout_s: a request's body must arrive in full within this many seconds of its
        first read, else 408 `request_timeout` and the connection closes (0: no limit; else
        1 to 86,400, MIN_BODY_TIMEOUT_S and MAX_BODY_TIMEOUT_S).
    keep_frames_rounds: None (the default) keeps every accepted update frame. N >= 0 empties
        the stored frames of each task's closed rounds older than its N most recent closed
        rounds, at every round close and on start; the rows stay (key, device, round, time,
        the frame's length and SHA-256), so idempotent retries and `round_outcome` answer as
        before (docs/operations.md, "What grows, and `--keep-frames`"). It also empties the
        downlink delta frames of each task's versions older than its newest max(N,
        `max_chain`): no model download reads them (a device further behind gets the
        snapshot); their rows and digests stay.
    snapshots_per_version: whole-model snapshots (`GET /v1/tasks/{id}/model` answered with a
        snapshot, any format or dtype) one device may fetch of one version of one task within
        `SNAPSHOT_WINDOW_S`; past it, 429 `rate_limited` with `Retry-After`. The SDK fetches
        at most one or two per round, and a round's retries a few more; 0 turns it off.
    allow_seeded_dp: take a new task whose dp stage has a fixed noise seed= and accounts
        epsilon (population=/q=), with a warning; off (the default), such a task is refused
        (`seed_refusal`: its epsilon would mean nothing). For simulations and tests only, e.g.
        the HTTP simulator's own in-process coordinator; no `serve` flag sets it.
    upload_buffer_bytes: bytes of upload bodies (plain updates and secure stage messages)
        read into memory at once: a body reserves its declared length when its first part
        arrives (and keeps it while it keeps the pace of `body_timeout_s`); one that does not
        fit waits up to 2 s for room, then 503 `busy` and Retry-After, the rest unread (an
        upload alone is always let in; `auth.BodyBudget`). 0: no limit.
    """

    db_path: str = "plume.db"
    # Kept out of the repr: a log line, an error message or a debugger dump of the config
    # would show the token (s25/ops finding 7).
    admin_token: str | None = field(default=None, repr=False)
    signature_window_s: float = 300.0
    tick_s: float = 0.05
    poll_s: float = 0.25
    idle_retry_s: float = 30.0
    pool_ttl_s: float = 60.0
    json_body_cap: int = 64 * 1024
    max_checkin_rate: float = 200.0
    register_rate_per_s: float = 0.0
    register_burst: int = 20
    body_timeout_s: float = 120.0
    keep_frames_rounds: int | None = None
    snapshots_per_version: int = 16
    allow_seeded_dp: bool = False
    upload_buffer_bytes: int = DEFAULT_UPLOAD_BUFFER_BYTES

    def __post_init__(self) -> None:
        # Refused here with the field's name: a NaN signature window would raise deep in
        # create_app, a NaN poll would make every check-in answer a 500 (JSON has no NaN), a
        # negative one an answer the SDK refuses, and a zero tick a busy loop.
        def number(v: object) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool) and finite_number(v)

        for name in (
            "pool_ttl_s",
            "max_checkin_rate",
            "signature_window_s",
            "tick_s",
            "poll_s",
            "idle_retry_s",
        ):
            value = getattr(self, name)
            if not (number(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {shown(value)}")
        if self.tick_s < MIN_TICK_S:
            # The tick loop sleeps tick_s between passes: a tick of 5e-324 s passed "> 0" and
            # spun the event loop as a zero one did.
            raise ValueError(f"tick_s must be at least {MIN_TICK_S:g} s, got {shown(self.tick_s)}")
        if self.max_checkin_rate < MIN_CHECKIN_RATE:
            raise ValueError(
                f"max_checkin_rate must be at least {MIN_CHECKIN_RATE:g} check-ins per second "
                f"(the pacing wait divides by it), got {shown(self.max_checkin_rate)}"
            )
        if self.signature_window_s > MAX_SIGNATURE_WINDOW_S:
            # Its milliseconds must be an integer (auth.py), and nonces are kept for twice it.
            raise ValueError(
                f"signature_window_s must be at most {MAX_SIGNATURE_WINDOW_S:g} s (a day), got "
                f"{shown(self.signature_window_s)}"
            )
        if self.signature_window_s < MIN_SIGNATURE_WINDOW_S:
            raise ValueError(
                f"signature_window_s must be at least {MIN_SIGNATURE_WINDOW_S:g} s: a signed "
                "request is checked once its body has arrived, so the window must cover the "
                "device's clock skew and the request's transfer time (300 s by default), got "
                f"{shown(self.signature_window_s)}"
            )
        if self.pool_ttl_s < MIN_POOL_TTL_S:
            raise ValueError(
                f"pool_ttl_s must be at least {MIN_POOL_TTL_S:g} s: a waiting device leaves the "
                "selection pool unless it checks in again within it, which takes it poll_s "
                f"and a round trip (60 s by default), got {shown(self.pool_ttl_s)}"
            )
        if self.pool_ttl_s <= self.poll_s:
            raise ValueError(
                f"pool_ttl_s ({self.pool_ttl_s:g} s) must be more than poll_s "
                f"({self.poll_s:g} s): waiting devices are told to check in again after poll_s, "
                "so every one would leave the selection pool before it came back"
            )
        if (problem := admin_token_problem(self.admin_token)) is not None:
            raise ValueError(f"admin_token {problem}")
        for name in ("register_rate_per_s", "body_timeout_s"):
            value = getattr(self, name)
            if not (number(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {shown(value)}")
        if self.body_timeout_s > MAX_BODY_TIMEOUT_S:
            raise ValueError(
                f"body_timeout_s must be at most {MAX_BODY_TIMEOUT_S:g} s (a day; 0 is no "
                f"limit), got {shown(self.body_timeout_s)}"
            )
        if 0 < self.body_timeout_s < MIN_BODY_TIMEOUT_S:
            raise ValueError(
                f"body_timeout_s must be 0 (no limit) or at least {MIN_BODY_TIMEOUT_S:g} s: a "
                "request's whole body must arrive within it (120 s by default), got "
                f"{shown(self.body_timeout_s)}"
            )
        for name in ("json_body_cap", "register_burst"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {shown(value)}")
        if 0 < self.register_rate_per_s < MIN_REGISTER_RATE:
            raise ValueError(
                f"register_rate_per_s must be 0 (unlimited) or at least {MIN_REGISTER_RATE:g} "
                f"per second (a refused registration's wait divides by it), got "
                f"{shown(self.register_rate_per_s)}"
            )
        if self.register_burst > MAX_REGISTER_BURST:
            raise ValueError(
                f"register_burst must be at most {MAX_REGISTER_BURST:,}, got {shown(self.register_burst)}"
            )
        budget = self.upload_buffer_bytes
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise ValueError(
                f"upload_buffer_bytes must be an integer >= 0 (0: no limit), got {shown(budget)}"
            )
        cap = self.snapshots_per_version
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise ValueError(
                f"snapshots_per_version must be an integer >= 0 (0: no limit), got {shown(cap)}"
            )
        keep = self.keep_frames_rounds
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
            raise ValueError(
                f"keep_frames_rounds must be None (keep every frame) or a number of rounds "
                f">= 0, got {shown(keep)}"
            )


@dataclass
class ActiveRound:
    round_id: int
    engine_round: int
    selected: frozenset[str]
    target: int
    min_reports: int
    opened: float
    deadline: float
    base_version: int
    reports: int = 0
    uploaded: set[str] = field(default_factory=set)
    upload_bytes: int = 0  # the accepted update frames' bytes (plain rounds; for its close's log)
    closing: bool = False  # no more uploads accepted
    close_started: bool = False  # an aggregation is in flight
    # A secure DP round's `dp` record, stored before its sums were unmasked (see _close_secure)
    pending_dp: dict[str, Any] | None = None
    # device -> the training loss its accepted upload carried (`?train_loss=`), if it did
    losses: dict[str, float] = field(default_factory=dict)
    # What its close wrote to the store (published or abandoned), set by the worker thread
    # under `Coordinator._close_lock`: a stop that lands before the event loop has finished
    # the close finishes it itself, so that its answer is the task's final state.
    stored: RoundOutcome | None = None
    # The model its close published, prepared in the worker thread for the event loop's half
    # (`finish_close`): the copy, digest and fp32 snapshot were made on the loop before.
    published: PublishedModel | None = None


@dataclass
class PublishedModel:
    """A version a round's close published: its parameters, their digest (hex), and its fp32
    snapshot (None until encoded: `finish_close` may run before the worker has encoded it,
    when a stop finishes the close; the first download then encodes it)."""

    params: npt.NDArray[np.float32]
    digest: str
    fp32: bytes | None = None


@dataclass(frozen=True)
class RefusedTask:
    """A stored task this coordinator will not run, and why (a sentence for the operator).

    upload_cap: the largest upload frame of its model (bytes), so that an upload to one of its
    rounds is read and answered 409 `task_refused` rather than cut off as too large; None when
    its stored spec does not parse either. state: its state as stored ("" when unreadable):
    a done or stopped one runs no more rounds whatever this coordinator makes of its config.
    """

    task_id: int
    reason: str
    upload_cap: int | None
    state: str = ""

    def error(self) -> ApiError:
        return ApiError(
            409,
            Reason.TASK_REFUSED,
            f"task {self.task_id} is refused by this coordinator: {self.reason}",
        )


@dataclass(frozen=True)
class UnloadedTask:
    """A task whose rebuild from the store (`Coordinator._reload`) failed on a store error (a
    lock, a full disk, an I/O error): not running, tried again from `retry_at` (clock seconds).
    Its stored rows, accepted updates included, are what it goes on from.

    upload_cap, dense_bytes: those of its model (bytes), so that an upload to one of its
    rounds is read, answered 503 and counted as before; None and 0 when not known. active:
    whether memory held it active when it was unloaded, so that the rebuild that loads it
    again ends it if the store holds it done (`Coordinator._build`'s `was_active`).
    """

    task_id: int
    reason: str
    retry_at: float
    upload_cap: int | None
    dense_bytes: int
    active: bool = False

    def error(self, now: float) -> ApiError:
        wait = max(1, math.ceil(self.retry_at - now))
        return ApiError(
            503,
            Reason.STORE_UNAVAILABLE,
            f"task {self.task_id} is not running: the coordinator's database failed while the "
            f"task was loaded from it ({self.reason}); it is loaded again in {wait} s",
            headers={"retry-after": str(wait)},
        )


def loss_measurements(losses: Collection[float]) -> dict[str, Any]:
    """A round's training-loss figures from the losses its accepted uploads carried (each a
    finite number in [0, MAX_TRAIN_LOSS]): `train_loss_median`, `train_loss_mean` (unweighted:
    each report counts once, whatever its example count) and `train_loss_reports` (how many
    carried one); {} when none did, so a round without them has no such keys."""
    if not losses:
        return {}
    return {
        "train_loss_median": float(statistics.median(losses)),
        "train_loss_mean": math.fsum(losses) / len(losses),
        "train_loss_reports": len(losses),
    }


def _stored_upload_cap(config_json: str) -> int | None:
    """The upload cap of a stored task's spec, if its spec still parses."""
    try:
        spec = ModelSpec.from_json(json.loads(config_json)["spec"])
        return DecodeLimits().frame_cap(spec)
    except (ValueError, TypeError, KeyError):
        return None


def _released_dp(state: str, measurements: dict[str, Any]) -> dict[str, Any] | None:
    """The `dp` record a secure round (in `state`, with `measurements`) counts in epsilon: its
    final one once committed or abandoned, else (stopped while open or closing) the one stored
    before a group's unmask request went out, or before unmasking (`pending_dp`)."""
    if state in (RoundState.COMMITTED, RoundState.ABANDONED):
        dp = measurements.get("dp")
    elif state in (RoundState.OPEN, RoundState.AGGREGATING):
        dp = measurements.get("pending_dp")
    else:
        return None
    return dp if isinstance(dp, dict) else None


def _aggregator(name: str) -> AggregatorFactory:
    factory: AggregatorFactory = build_aggregator(name)
    return factory


def dp_rounds_in_state(factory: AggregatorFactory, state: Any) -> int | None:
    """The rounds the `dp` stage of `factory` has released, as its accountant counts them:
    the round counter of that stage's state within `state`, the aggregator state of
    `factory`'s process (`DPMean`'s is (rounds, clip, inner state), and a server optimizer's
    in front of it (m, v, inner state)). None without a `dp` stage there: `build_aggregator`
    puts one first, or right behind a server optimizer (a `dp` behind a report screen
    accounts no epsilon)."""
    node, st = factory, state
    for _ in range(2):
        if isinstance(node, DPMean):
            return int(st[0])
        if not isinstance(node, ServerOptimizer):
            return None
        node, st = node.inner, st[2]
    return None


def _with_dp_rounds(factory: AggregatorFactory, state: Any, rounds: int, clip: float | None) -> Any:
    """`state` (the aggregator state of `factory`'s process) with its accounting `dp` stage's
    round counter set to `rounds`, and its clip to `clip` unless None: the inverse of
    `dp_rounds_in_state`, at the same places (first, or right behind a server optimizer)."""
    if isinstance(factory, DPMean):
        _, old_clip, inner = state
        return (rounds, old_clip if clip is None else clip, inner)
    if isinstance(factory, ServerOptimizer) and isinstance(factory.inner, DPMean):
        m, v, inner = state
        return (m, v, _with_dp_rounds(factory.inner, inner, rounds, clip))
    raise ValueError("no accounting dp stage where the coordinator reads its round counter")


def _restored_clip(dp: DPMean, last: dict[str, Any]) -> float | None:
    """The clip an adaptive `dp` stage carries out of the round whose dp measurements are
    `last`, as `DPMean` computes it (`clip` is the round's own, `unclipped_fraction_noised` the
    noised fraction it stepped on; both stored exactly, as JSON floats); None for a fixed clip
    or when the record does not say (the clip is not in epsilon: the configured start is then
    a loss of tuning, not of accounting)."""
    if not isinstance(dp.clip, AdaptiveClip):
        return None
    used, fraction = last.get("clip"), last.get("unclipped_fraction_noised")
    if isinstance(used, bool) or not isinstance(used, int | float):
        return None
    if not (math.isfinite(used) and used > 0):
        return None
    value = float(used)
    if isinstance(fraction, int | float) and not isinstance(fraction, bool):
        value = dp.clip.step(value, float(fraction))
    return min(max(value, MIN_CLIP), dp.clip_ceiling())


def validate_task(cfg: TaskConfig) -> ModelSpec:
    """The task's spec; raises `ValueError` naming the first bad field."""
    if not cfg.name or len(cfg.name) > 200:
        raise ValueError("name must be 1..200 characters")
    if not 1 <= cfg.rounds <= 1_000_000:
        raise ValueError("rounds must be in 1..1000000")
    if not 1 <= cfg.clients_per_round <= 1_000_000:
        raise ValueError("clients_per_round must be in 1..1000000")
    if not (finite_number(cfg.over_selection) and 1.0 <= cfg.over_selection <= 10.0):
        raise ValueError("over_selection must be in [1, 10]")
    if not 1 <= cfg.min_reports <= cfg.clients_per_round:
        raise ValueError("min_reports must be in [1, clients_per_round]")
    for name in ("deadline_s", "selection_timeout_s", "retry_after_s"):
        v = getattr(cfg, name)
        if not (finite_number(v) and 0 < v <= 7 * 86400):
            raise ValueError(f"{name} must be in (0, 604800]")
    if not cfg.server_lr > 0:  # NaN too; a positive one too large is refused just below
        raise ValueError("server_lr must be positive")
    if not (finite_number(cfg.server_lr) and F32_TINY <= cfg.server_lr <= F32_MAX):
        # Multiplied into the step as np.float32(server_lr): inf or 0 outside this range
        raise ValueError("server_lr must be a float32 number (about 1.4e-45 to 3.4e38)")
    if not 1 <= cfg.max_chain <= 1000:
        raise ValueError("max_chain must be in 1..1000")
    t = cfg.training
    for name, value, top in (
        ("local_epochs", t.local_epochs, MAX_LOCAL_EPOCHS),
        ("batch_size", t.batch_size, MAX_BATCH_SIZE),
    ):
        if not 1 <= value <= top:
            raise ValueError(f"training.{name} must be in 1..{top}, got {shown(value)}")
    if not t.lr > 0:  # NaN too
        raise ValueError("training.lr must be positive")
    if not finite_number(t.lr):
        raise ValueError(f"training.lr must be a finite number, got {shown(t.lr)}")
    if not 0 <= cfg.seed < 2**63:
        raise ValueError("seed must be in [0, 2**63)")
    for name, codec in (("codec", cfg.codec), ("downlink", cfg.downlink)):
        try:
            codec.to_config()
        except OverflowError:  # an int past float's range for a float field (topk=10**400)
            raise ValueError(f"{name}: a number is past a float's range (about 1.8e+308)") from None
        except ValueError as exc:
            # compression writes an int parameter short itself (0aa3b27: codec.block=1e308 is
            # 1e+308, not int(1e308)'s 309 digits); short_digits stays as a guard for any
            # refusal that still echoes a long whole number.
            raise ValueError(short_digits(str(exc))) from None
    ef = cfg.codec.error_feedback
    if ef is not None and not isinstance(ef, bool):
        raise ValueError(f"codec.error_feedback must be true, false or null, got {shown(ef)}")
    if cfg.downlink.error_feedback is not None:
        raise ValueError(
            "downlink.error_feedback is not a setting: the coordinator always keeps the "
            "downlink's residual; codec.error_feedback sets the devices' (uploads)"
        )
    if ef is False and cfg.secure is not None:
        raise ValueError(
            "codec.error_feedback false is for plain tasks: a secure task's devices keep "
            "their residual inside SecAgg+, which claims no amplification by sampling "
            "(docs/privacy.md)"
        )
    factory = _aggregator(cfg.aggregator)
    _check_dp(factory)
    short = cohort_refusal(factory, cfg.clients_per_round)
    if short is not None:
        # A round hands its rule at most clients_per_round reports (the engine's target).
        raise ValueError(f"aggregator: {short}")
    sample = accounted_sample_size(factory)
    cohort = math.ceil(cfg.clients_per_round * cfg.over_selection - 1e-9)
    if sample is not None and cohort > sample:
        # Refused here, not when the round engine is built after the model upload.
        raise ValueError(f"aggregator: dp accounts sample={sample} but {cohort} are selected")
    if not cfg.spec or len(cfg.spec) > 10_000:
        raise ValueError("spec must list 1..10000 tensors")
    if any(len(t.shape) > 8 or any(s < 0 or s > 2**31 for s in t.shape) for t in cfg.spec):
        raise ValueError("spec shapes must have <= 8 dims in [0, 2**31]")
    spec = ModelSpec.from_json([{"name": t.name, "shape": list(t.shape)} for t in cfg.spec])
    if cfg.secure is not None:
        settings = parse_secure(cfg.secure, seed=cfg.seed, server_lr=cfg.server_lr)
        noise = settings.config.noise
        if noise == NoiseKind.NONE and settings.config.noise_multiplier != 0:
            # Taken before (and `create-task --secure-noise-multiplier` without --secure-noise
            # too): the task looked private and no device added noise. Refused at creation
            # only: a stored task must still load.
            raise ValueError(
                "secure.noise_multiplier sets the noise of secure.noise discrete_gaussian or "
                "skellam; without secure.noise no device adds any: give secure.noise, or leave "
                "secure.noise_multiplier out"
            )
        if cfg.clients_per_round < 3:
            raise ValueError("a secure task needs clients_per_round >= 3")
        if cfg.aggregator != "fedavg":
            raise ValueError(
                "a secure task aggregates inside SecAgg; use secure.group_size and "
                "secure.group_aggregator for a robust aggregator across groups"
            )
        cohort = math.ceil(cfg.clients_per_round * cfg.over_selection - 1e-9)
        try:
            # A round opens with max(min_reports, 3) devices or more (`_open_round`).
            check_plan(settings, cohort, spec.size, least=max(cfg.min_reports, 3))
        except ValueError as exc:
            raise ValueError(f"secure: {exc}") from None
        if settings.config.sketch and not settings.config.dp:  # the sketch is off under DP
            # One sketch segment a non-empty tensor (`sketch_segments_for`); every round's plan
            # would be refused (`SecurePlan`), so the task could never open a round.
            tensors = sum(1 for e in spec.entries if e.size > 0)
            if tensors > MAX_SEGMENTS:
                raise ValueError(
                    f"secure.sketch: the model has {tensors} non-empty tensors, and a secure "
                    f"round's plan carries at most {MAX_SEGMENTS} sketch segments (one a "
                    "tensor): set secure.sketch to false"
                )
        g = settings.config.group_size
        if g is not None:
            from coordinator.secure._config import group_refusal

            # Grouped mode: the group aggregator's n is the number of group sums, at most
            # `group_count` (`split_groups`; the last group takes the remainder). A robust rule
            # over fewer than 3 is the mean, and each rule's own bound (krum's n > 2f + 2) too.
            short = group_refusal(
                settings.config.group_aggregator,
                cohort,
                g,
                src=f"{cohort} devices selected in groups of secure.group_size={g}",
                grow="clients_per_round or lower secure.group_size",
            )
            if short is not None:
                raise ValueError(f"secure.group_aggregator: {short}")
    return spec


def secure_delta_refusal(cfg: TaskConfig) -> str | None:
    """Why a new secure task may not use its distributed DP's `secure.dp_delta`, or None: a
    delta of at least 1/n, n the cohort each round selects (clients_per_round x
    over_selection, rounded up), as `delta_refusal` refuses a central dp stage's delta of at
    least 1/N. None without secure noise (the delta is then unused). `cfg` must be valid
    (`validate_task`); stored tasks are not checked (they must still load)."""
    if cfg.secure is None:
        return None
    config = parse_secure(cfg.secure, seed=cfg.seed, server_lr=cfg.server_lr).config
    if config.noise == NoiseKind.NONE:
        return None
    n = math.ceil(cfg.clients_per_round * cfg.over_selection - 1e-9)
    if config.dp_delta < 1.0 / n:
        return None
    return (
        f"dp_delta {config.dp_delta:g} is not below 1/n = 1/{n} (the {n} devices each round "
        "selects): a mechanism that publishes one device's data in full, a device chosen at "
        "random, is (0, 1/n)-DP, so this delta allows that; pick dp_delta well below 1/n "
        "(docs/privacy.md, assumption 8)"
    )


def unproven_feedback_note(cfg: TaskConfig) -> str | None:
    """Why `cfg`'s accounted epsilon rests on an unproven assumption, or None: a `dp` stage
    that claims amplification by fixed-size sampling (population=N > sample=k) while devices
    keep an error-feedback residual (docs/privacy.md, item 5). A lossless upload codec is no
    exception for an SDK from before `Assignment.return_refused`: an upload refused for good (a
    straggler's, an abandoned round's) goes back into its residual and out with the device's
    next report (this SDK drops it for a task with DP). Such a
    task is not refused (existing configs and benchmarks use it); `create_task` logs this and
    `plume coordinator create-task` prints it. `cfg` must be valid (`validate_task`)."""
    if cfg.secure is not None or cfg.codec.error_feedback is False:
        return None
    if (cohort := amplified_cohort(_aggregator(cfg.aggregator))) is None:
        return None
    return (
        f"its dp stage accounts epsilon with amplification by fixed-size sampling "
        f"(population={cohort[0]} > sample={cohort[1]}) while its devices "
        "keep an error-feedback residual: a residual depends on which "
        "rounds a device took part in, and no proof covers that path, so the accounted "
        "epsilon rests on an unproven assumption (docs/privacy.md, item 5); to remove it, "
        "turn the devices' error feedback off (codec.error_feedback false, create-task "
        "--no-error-feedback; devices need an SDK that honours it) or account without "
        "amplification (population=k,sample=k)"
    )


def _share_sized(stage: object) -> bool:
    """Whether `stage` is a robust rule sized against the attackers among a round's reports: an
    f (Krum, multi-Krum, NNM), a trim (trimmed mean with beta > 0), a breakdown point
    (median, geometric median, centered clipping), a vote threshold (rlr's theta), a screen
    whose reference or drop limit the reports set (cosfilter, anomaly's norm-ratio or cosine
    screen) or a clip that follows a quantile of the reports' norms (adaptive normbound).
    Bucketing is not one by itself (over a mean it is the mean); the rule behind it is."""
    if isinstance(stage, TrimmedMean):
        return stage.beta > 0
    if isinstance(stage, AnomalyFilter):
        return stage.max_norm_ratio is not None or stage.min_cosine is not None
    if isinstance(stage, Clip):
        return isinstance(stage.norm, AdaptiveClip)
    return isinstance(
        stage,
        (
            Krum,
            NearestNeighborMixing,
            CoordinateMedian,
            GeometricMedian,
            CenteredClipping,
            MomentumCosineFilter,
            RobustLearningRate,
        ),
    )


def over_selection_note(cfg: TaskConfig) -> str | None:
    """Why `cfg`'s robust rule may see more attackers than its f or trim is sized for, or
    None: the round selects S = ceil(clients_per_round x over_selection) > clients_per_round
    devices and keeps the first clients_per_round uploads, and attackers, who need not train,
    can all arrive first, so a share a among the S selected is up to min(1, a·S/cpr) of the
    reports (docs/robustness.md, "Size f for the attackers among the selected cohort"). Only
    for an aggregator with a rule sized against the attackers' share (`_share_sized`); a
    secure task's aggregator is fedavg. Not refused (the service's default over_selection is
    1.3); `create_task` logs it and the API answers it. `cfg` must be valid
    (`validate_task`)."""
    cpr, x = cfg.clients_per_round, cfg.over_selection
    selected = math.ceil(cpr * x - 1e-9)
    if selected <= cpr:
        return None
    if not any(_share_sized(s) for s in stages(_aggregator(cfg.aggregator))):
        return None
    return (
        f"over_selection {x:g} selects S = ceil({cpr}·{x:g}) = {selected} devices and keeps "
        f"the first {cpr} uploads; attackers need not train and can all arrive first, so with "
        f"a share a among the {selected} selected up to min(1, a·{selected}/{cpr}) of the "
        f"reports its robust rule sees can be attackers: size f/beta for the attackers among "
        f"the {selected} selected, or set over_selection 1 (docs/robustness.md)"
    )


def krum_topk_note(cfg: TaskConfig) -> str | None:
    """Why `cfg`'s Krum is one attacker's, or None: Krum with m=1 (`krum`, not `multikrum`)
    that no `nnm` stage precedes, on top-k uploads (codec.topk < 1). Nearly disjoint supports
    make ||a - b||^2 about ||a||^2 + ||b||^2, so the smallest report has the lowest score and
    one attacker sending a small report is selected every round, with `guarantee_holds` true
    (docs/robustness.md, "Krum with m = 1 on top-k reports is one attacker's"). Not refused;
    `create_task` logs it and the API answers it. `cfg` must be valid (`validate_task`)."""
    if not cfg.codec.topk < 1:
        return None
    for stage in stages(_aggregator(cfg.aggregator)):
        if isinstance(stage, NearestNeighborMixing):
            return None  # NNM mixes each report with its neighbours first: not sparse any more
        if isinstance(stage, Krum) and stage.m == 1:
            return (
                f"krum keeps the smallest report on top-k uploads (codec.topk {cfg.codec.topk:g};"
                " one small report is selected every round): use multikrum or nnm+krum "
                "(docs/robustness.md)"
            )
    return None


def creation_warnings(cfg: TaskConfig) -> list[str]:
    """What a new task `cfg` is created with but warned about, in this order: a dp delta
    above 1/(10 N) (`delta_note`), a dp noise `seed=` (`seed_note`), an epsilon that rests
    on an unproven assumption (`unproven_feedback_note`), a robust rule over an over-selected
    cohort that keeps the first uploads (`over_selection_note`) and Krum on top-k uploads
    (`krum_topk_note`). The coordinator logs each when it creates the task and answers them
    as the `warnings` of `POST /v1/admin/tasks`, which `plume coordinator create-task`
    prints. `cfg` must be valid (`validate_task`)."""
    dp = find_dp(_aggregator(cfg.aggregator))
    notes = (
        delta_note(dp),
        seed_note(dp),
        unproven_feedback_note(cfg),
        over_selection_note(cfg),
        krum_topk_note(cfg),
    )
    return [note for note in notes if note is not None]


def _check_dp(factory: object) -> None:
    """Refuse a `dp` stage the service cannot honour:
    - Poisson accounting (`q=`): the coordinator selects fixed-size cohorts and shows their
      size, so the epsilon that accounting reports would not bound anything;
    - an epsilon budget its first round alone would exceed: `DPMean` refuses that round at
      aggregation (`PrivacyBudgetExhausted`), so the task could never publish anything."""
    node = find_dp(factory)
    if node is None:
        return
    if isinstance(node.sampling, PoissonSampling):
        raise ValueError(
            "aggregator: dp with q= accounts Poisson sampling, but the coordinator selects "
            "fixed-size cohorts: use population=N,sample=M (M = the cohort it selects)"
        )
    if node.sampling is None or not math.isfinite(node.epsilon_budget):
        return
    accountant = PrivacyAccountant(
        node.noise_multiplier,
        node.sampling,
        node.accounting_method,  # type: ignore[arg-type]
    )
    eps = accountant.epsilon(1, node.delta)
    if eps > node.epsilon_budget:
        raise ValueError(
            f"aggregator: dp's first round alone reaches epsilon {eps:.4g} > the budget "
            f"eps={node.epsilon_budget:g} (at delta {node.delta:g}); raise eps= or the noise "
            "multiplier z="
        )


def _dp_measurements(meas: Any) -> dict[str, Any] | None:
    """`DPMean`'s measurements within a round's (found through wrappers' `inner`), or None."""
    for _ in range(64):  # wrapper chains are a few stages deep
        if not isinstance(meas, dict):
            return None
        if "noise_multiplier" in meas and "rounds" in meas and "clip" in meas:
            return meas
        meas = meas.get("inner")
    return None


def _observe_stored_dp(metrics: PrivacyMetrics, config: TaskConfig, rounds: list[Any]) -> None:
    """Set a plain task's dp gauges from its last committed round, so that after a restart
    they read what the accountant (restored with the aggregator state) has spent, not 0."""
    factory = find_dp(_aggregator(config.aggregator))
    if factory is None:
        return
    if not any(r.state == RoundState.COMMITTED for r in rounds):
        # Nothing released yet: the gauges read as a fresh task's.
        for gauge in (metrics.epsilon, metrics.rounds, metrics.noise_multiplier, metrics.clip):
            gauge.set(0.0)
        metrics.budget_exhausted.set(0.0)
        return
    for r in sorted(rounds, key=lambda r: r.seq, reverse=True):
        if r.state != RoundState.COMMITTED:
            continue
        dp = _dp_measurements(r.measurements)
        if dp is None:
            return
        try:
            metrics.observe(
                epsilon=float(dp["epsilon"]) if "epsilon" in dp else None,
                delta=factory.delta,
                rounds=int(dp["rounds"]),
                noise_multiplier=float(dp["noise_multiplier"]),
                clip=float(dp["clip"]),
                budget_exhausted=bool(dp.get("budget_exhausted", False)),
            )
        except (TypeError, ValueError):
            log.warning("round %d: its stored dp measurements do not parse", r.round_id)
        return


def _instrument(
    factory: AggregatorFactory, anomaly: AnomalyMetrics, privacy: PrivacyMetrics
) -> AggregatorFactory:
    """The factory with the task's anomaly and privacy metrics wired into every wrapper that
    takes them (`AnomalyFilter`, `DPMean`), however deeply nested."""
    if not dataclasses.is_dataclass(factory):
        return factory
    changes: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(factory)}
    if "inner" in names:
        changes["inner"] = _instrument(factory.inner, anomaly, privacy)  # type: ignore[attr-defined]
    if "metrics" in names:
        changes["metrics"] = anomaly if isinstance(factory, AnomalyFilter) else privacy
    out: AggregatorFactory = dataclasses.replace(factory, **changes)  # type: ignore[type-var]
    return out


# A device id (32 lower-case hex digits, protocol.auth) inside a longer string.
_ID_IN_TEXT = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")


def _own_view(value: Any, cohort: frozenset[str], me: str) -> Any:
    """`value` (a round's measurements) as device `me` may read it: every entry that names
    another device of the round's `cohort` is left out, at any depth. That is a dict key
    (anomaly norms and cosines, robust scores: per-device figures that depend on that device's
    data), a list item (a secure round's `dropped` and `suspect_devices`, Krum's `selected`), a
    dict value, a string with the id in it (a message such as "report from <id> ..."), and a
    whole pair or record (`[id, score]`, `{"device": id, "norm": x}`) in a list or as a dict
    value, so that no figure of another device stays behind without its name. A record is a
    list, or a dict of plain values only, holding another device's id; a dict that names one
    beside nested measurements (a wrapper's, with its `inner`) is walked instead. What names
    `me` stays, as do counts and every figure about the round as a whole. Costs what `value`
    holds: `cohort` is only looked up (no copy of it less `me` at each read)."""

    def other(s: str) -> bool:  # in the cohort, not `me`
        return s != me and s in cohort

    def names(v: Any) -> bool:  # another device's id, or a string that contains one
        if not isinstance(v, str):
            return False
        return other(v) or (len(v) > 32 and any(other(m) for m in _ID_IN_TEXT.findall(v)))

    def record(v: Any) -> bool:  # a list or dict about another device: its id next to figures
        if isinstance(v, dict):
            return any(names(x) for x in v.values())
        if isinstance(v, list | tuple):
            return any(names(x) for x in v) and not all(isinstance(x, str) for x in v)
        return False

    def flat(v: dict[Any, Any]) -> bool:  # plain values only: a record, not a wrapper level
        return not any(isinstance(x, dict | list | tuple) for x in v.values())

    def view(v: Any) -> Any:
        if isinstance(v, dict):
            # A dict value naming another device beside nested measurements is walked, not
            # dropped: {"dropped": {...}, "worst": id, "kept": 2} is about the round. A flat
            # one, {"worst": {"device": id, "norm": x}}, is that device's record: dropped whole.
            return {
                k: view(x)
                for k, x in v.items()
                if not names(k)
                and not names(x)
                and not (isinstance(x, list | tuple) and record(x))
                and not (isinstance(x, dict) and flat(x) and record(x))
            }
        if isinstance(v, list | tuple):
            return [view(x) for x in v if not names(x) and not record(x)]
        return v

    return view(value)


# `_OwnViews` index: whom an entry names is None (no device of the cohort), one device's id,
# or _MANY (two or more: no device's view keeps it). An entry is (position, key or None,
# value, node): node None serves the value as it is (it names nobody, at any depth), else a
# compiled dict or list: (kind, entries every view keeps, {device: entries only it keeps}).
_MANY = "*"  # not a device id (those are 32 hex digits)
_Entry = tuple[int, Any, Any, "_Node | None"]
_Node = tuple[str, list[_Entry], dict[str, list[_Entry]]]


def _either(a: str | None, b: str | None) -> str | None:
    """Whom two parts of one entry name together."""
    if a is None or a == b:
        return b
    if b is None:
        return a
    return _MANY


class _OwnViews:
    """`_own_view(value, cohort, me)` for any `me`, from an index built once (a closed round's
    measurements, read by each of its devices): an entry is kept for every device, for one
    device only (it names that device and no other of the cohort), or for none, and a subtree
    that names no cohort device is served as it is. So a device's view costs what it holds,
    not what the round's measurements hold (e.g. one norm, not the cohort's). Takes JSON
    values (dicts, lists, strings, numbers); the views share unchanged subtrees with `value`,
    which must not change."""

    def __init__(self, value: Any, cohort: frozenset[str]) -> None:
        self.cohort = cohort
        self.value = value
        self.root = self._compile(value)

    def view(self, me: str) -> Any:
        return self.value if self.root is None else self._view(self.root, me)

    def _view(self, node: _Node, me: str) -> Any:
        kind, always, only = node
        mine = only.get(me)
        entries = heapq.merge(always, mine) if mine else always
        if kind == "dict":
            return {k: v if n is None else self._view(n, me) for _, k, v, n in entries}
        return [v if n is None else self._view(n, me) for _, _, v, n in entries]

    def _names(self, v: Any) -> str | None:
        """Whom a string names (itself, or ids inside a longer string)."""
        if not isinstance(v, str):
            return None
        if len(v) <= 32:  # a device id is 32 digits: no id inside
            return v if v in self.cohort else None
        who = v if v in self.cohort else None
        for m in _ID_IN_TEXT.findall(v):
            if m in self.cohort:
                who = _either(who, m)
        return who

    def _record(self, v: Any, flat_only: bool) -> str | None:
        """Whom a list or dict is a record of (`_own_view`'s `record`; `flat_only`: a dict
        counts only when its values are all plain, as a dict's value)."""
        who: str | None = None
        if isinstance(v, dict):
            if flat_only and any(isinstance(x, dict | list | tuple) for x in v.values()):
                return None
            for x in v.values():
                who = _either(who, self._names(x))
        elif isinstance(v, list | tuple):
            if all(isinstance(x, str) for x in v):
                return None
            for x in v:
                who = _either(who, self._names(x))
        return who

    def _compile(self, v: Any) -> _Node | None:
        """The node of a dict or list, None for a value every view serves as it is."""
        if isinstance(v, dict):
            kind = "dict"
            items = [
                (_either(_either(self._names(k), self._names(x)), self._record(x, True)), k, x)
                for k, x in v.items()
            ]
        elif isinstance(v, list | tuple):
            kind = "list"
            items = [(_either(self._names(x), self._record(x, False)), None, x) for x in v]
        else:
            return None
        always: list[_Entry] = []
        only: dict[str, list[_Entry]] = {}
        changed = isinstance(v, tuple)  # a view makes a list of it
        for i, (who, key, x) in enumerate(items):
            node = self._compile(x)
            entry = (i, key, x, node)
            if who is None:
                always.append(entry)
                changed = changed or node is not None
            elif who != _MANY:
                only.setdefault(who, []).append(entry)
            changed = changed or who is not None
        return (kind, always, only) if changed else None


# Closed rounds kept parsed (`Coordinator._closed_rounds`): the most recently read; a device
# asks about the round it was in, so a few cover a round's whole cohort asking at once.
CLOSED_ROUNDS_KEPT = 8


@dataclass
class _ClosedRound:
    """A committed or abandoned round as stored (its row no longer changes), parsed once for
    the requests of its devices: membership, reports, each device's view."""

    row: RoundRow
    cohort: frozenset[str]
    reports: int | None = None  # a plain round's accepted updates, counted on first use
    views: _OwnViews | None = None  # built on first device read
    summed: frozenset[str] | None = None  # a secure round's: cohort less `dropped`, on first use

    def own_view(self, me: str) -> Any:
        if self.views is None:
            self.views = _OwnViews(self.row.measurements, self.cohort)
        return self.views.view(me)

    def in_secure_sum(self, me: str) -> bool:
        """Whether `me`'s masked input is in a secure round's sum: selected, and not in the
        round's `dropped` list (a set built once, not a scan of the list per device)."""
        if self.summed is None:
            dropped = self.row.measurements.get("dropped")
            # Only a string can equal a device id: other items (a hand-edited row's) drop
            # nobody, as `device_id in dropped` found.
            out = {d for d in dropped if isinstance(d, str)} if isinstance(dropped, list) else ()
            self.summed = self.cohort.difference(out)
        return me in self.summed


def pool_capacity(config: ServiceConfig) -> float:
    """About how many devices a task's selection pool can hold at once: pace steering asks a
    waiting device back after len(pool) / max_checkin_rate seconds, and it must come back
    within pool_ttl_s to stay; half of that product leaves room for late check-ins."""
    return config.max_checkin_rate * config.pool_ttl_s / 2


class TaskRuntime:
    """One task in memory: its engine, its selection pool, its open round and model caches."""

    def __init__(
        self,
        task_id: int,
        config: TaskConfig,
        state: str,
        params: npt.NDArray[np.float32],
        version: int,
        digest: str,
        residual: ErrorFeedback,
        now: float,
        released_dp: list[dict[str, Any]] | None = None,
        next_round: int = 1,
        anomaly_metrics: AnomalyMetrics | None = None,
    ) -> None:
        self.task_id = task_id
        self.config = config
        self.state = state
        self.spec = validate_task(config)
        # The model layout a check-in's `model_layouts` names to be given this task's rounds
        # (`ModelSpec.fingerprint` in hex; a task's spec never changes).
        self.layout = self.spec.fingerprint.hex()
        # The check-in features a device must declare to be given this task's rounds.
        self.requires = required_features(config)
        self.strategy = DownlinkStrategy(
            self.spec, config.downlink.to_config(), config.seed, residual
        )
        # Per-task registries, served at /metrics with a `task` label (Metrics.tasks). The
        # anomaly counters and histograms are the task's for the process's life, handed to
        # each rebuild of it (`Coordinator._anomaly_metrics`); the privacy gauges are set
        # again from the store at each build.
        self.anomaly_metrics = anomaly_metrics or AnomalyMetrics()
        self.privacy_metrics = PrivacyMetrics()
        self.secure: SecureTaskState | None = None
        if config.secure is not None:
            settings = parse_secure(config.secure, seed=config.seed, server_lr=config.server_lr)
            self.secure = SecureTaskState(settings, params, self.spec, released_dp or [])
        factory = _aggregator(config.aggregator)
        dp = find_dp(factory)
        # Central DP amplified by sampling (population=N > sample=k) holds only if each cohort
        # is a secret uniform draw from at least N devices: rounds wait for N in the pool.
        self.dp_pool = amplified_population(dp)
        # An unseeded dp stage's cohort is drawn from OS randomness, not from the task seed
        # (which every assignment carries): a cohort anyone can recompute is no sample.
        self.secret_selection = dp is not None and dp.seed is None
        # A plain task whose dp stage accounts epsilon: read by `dp_rounds_released`, and
        # that stage (`accounted_dp`: its noise, sampling and delta) by the all-tasks figure.
        self._accounted = factory if dp is not None and dp.sampling is not None else None
        self.accounted_dp = dp if self._accounted is not None else None
        # With DP (a dp stage, or a secure task's distributed noise) the devices drop an upload
        # the round did not take instead of returning it to their residual: which one a round
        # refuses depends on other devices' data (`returns_refused`; docs/privacy.md, item 2).
        self.return_refused = returns_refused(factory) and (
            self.secure is None or self.secure.settings.config.noise == NoiseKind.NONE
        )
        # Whether its devices send their training loss with an upload (`Assignment.report_loss`):
        # only a plain task without a dp stage anywhere in its chain. A device's loss depends on
        # its data: a dp stage accounts only the clipped, noised sum, and a secure round
        # promises that no single device's update is seen (docs/privacy.md).
        self.report_loss = dp is None and self.secure is None
        self.engine = RoundEngine(
            self.spec,
            params,
            _instrument(factory, self.anomaly_metrics, self.privacy_metrics),
            EngineConfig(
                clients_per_round=config.clients_per_round,
                over_selection=config.over_selection,
                min_reports=config.min_reports,
                codec=config.codec.to_config(),
                server_lr=config.server_lr,
                seed=config.seed,
            ),
            ledger=BandwidthLedger(keep=False),  # the service's ledger is in SQLite
            strategy=self.strategy,
            version=version,
            next_round=next_round,
        )
        # The aggregator state the last committed round left (the initial one before any):
        # what the store keeps with that round and a start restores. The engine's own state
        # runs ahead of it from the aggregation until the commit, and keeps an aggregate that
        # is then discarded (a stop that wins against the close, a publish the store refused)
        # until the task is rebuilt from the store.
        self.committed_state: Any = self.engine.aggregator_state
        self.published = np.array(params, dtype=np.float32, copy=True)
        self.version = version
        self.digest = digest
        # device -> time of its last check-in, oldest first (`Coordinator._expire_pool`).
        self.pool: OrderedDict[str, float] = OrderedDict()
        self.pool_short_logged = False
        self.current: ActiveRound | None = None
        self.waiting_since = now
        self.rounds_closed = 0
        self.rounds_committed = 0
        self.seq = 0
        self.max_upload_bytes = DecodeLimits().frame_cap(self.spec)
        self._snapshots: dict[str, bytes] = {}
        # Orders `warm`'s store of a snapshot encoded in a worker thread against the loop's
        # `set_published` and `release_finished`: one encoded from a model no longer published
        # is dropped, never served as the new version's.
        self._published_lock = threading.Lock()
        # Whether the published model fits fp16's range (None: not looked at since published).
        self._fits_fp16: bool | None = None
        # The fp32 snapshot's length (`snapshot_bytes`; None: not encoded since published).
        self._fp32_bytes: int | None = None
        # Set by `release_finished`: reads the published model back from the store, and the
        # coordinator's few finished tasks' snapshots (keyed by task, version and dtype).
        self._load_published: Callable[[], npt.NDArray[np.float32]] | None = None
        self._finished_snapshots: KeptSnapshots | None = None

    @property
    def released(self) -> bool:
        """Whether `release_finished` has let go of this finished task's model arrays."""
        return self._load_published is not None

    def release_finished(
        self,
        load_published: Callable[[], npt.NDArray[np.float32]],
        snapshots: KeptSnapshots,
    ) -> None:
        """Let go of what only running rounds use, once the task is done or stopped with no
        round in flight (it never runs one again): the published model and the engine's copy,
        the downlink residual and last frame, a secure task's model and coordinate scores, and
        the encoded snapshots. What a finished task still answers (its status, check-ins'
        "end", its model download and export, /metrics, the all-tasks dp figure) needs none:
        `snapshot` reads the model back with `load_published` and keeps the encoding among
        `snapshots` (the coordinator's, for all finished tasks, FINISHED_SNAPSHOTS_KEPT)."""
        assert self.state in (TaskState.DONE, TaskState.STOPPED) and self.current is None
        if self.released:
            return
        if (fp32 := self._snapshots.get(SnapshotDType.FP32)) is not None:
            self._fp32_bytes = len(fp32)  # kept: `snapshot_bytes` need not read the store
        self._load_published = load_published
        self._finished_snapshots = snapshots
        with self._published_lock:
            self.published = _RELEASED
            self._snapshots.clear()
        self.engine.params = _RELEASED
        self.strategy.feedback.residual = _RELEASED
        self.strategy.last_frame = None
        if self.secure is not None:
            self.secure.coordinator.params = _RELEASED
            self.secure.coordinator.score = None

    def dp_rounds_released(self) -> int | None:
        """The rounds a plain task's accounting `dp` stage has released: the round count its
        accountant keeps, in the aggregator state of the last committed round
        (`committed_state`), so a round aggregated but not (yet) committed is not in it.
        None for a secure task (its `DistributedDpAccountant` counts its rounds) and without
        a `dp` stage that accounts epsilon (`population=`/`q=`)."""
        if self.secure is not None or self._accounted is None:
            return None
        return dp_rounds_in_state(self._accounted, self.committed_state)

    def snapshot(self, dtype: str) -> bytes:
        """The published model as a `dtype` snapshot, encoded once per version. An fp16
        snapshot of a model with a parameter beyond fp16's range (|x| >= 65,520, which fp16
        rounds to inf; its largest value is 65,504) is 409 `invalid_state` asking for fp32, not
        the encoder's ValueError (a 500): a device's legal upload can bring the model there.
        A finished task's (`release_finished`) is encoded from the model read back from the
        store and kept among the coordinator's few finished tasks' snapshots."""
        if self.released:
            return self._finished_snapshot(dtype)
        blob = self._snapshots.get(dtype)
        if blob is None:
            if dtype == SnapshotDType.FP16 and not self._fp16_range_ok(self.published):
                raise self._fp16_refused()
            blob = encode_snapshot(self.published, self.spec, dtype)
            self._snapshots[dtype] = blob
        return blob

    def keeps(self, dtype: str) -> bool:
        """Whether a running task's `dtype` snapshot of its published version is encoded and
        kept, or known refused (an fp16 one of a model beyond fp16's range): `snapshot` then
        answers on the loop at once. False for a finished task (`warm` reads its model)."""
        if self.released:
            return False
        return dtype in self._snapshots or (
            dtype == SnapshotDType.FP16 and self._fits_fp16 is False
        )

    def _finished_snapshot(self, dtype: str) -> bytes:
        cache, load = self._finished_snapshots, self._load_published
        assert cache is not None and load is not None
        key = (self.task_id, self.version, str(dtype))
        blob = cache.get(key)
        if blob is not None:
            return blob
        if dtype == SnapshotDType.FP16 and self._fits_fp16 is False:
            raise self._fp16_refused()  # looked at before: the store is not read again
        params = load()
        if dtype == SnapshotDType.FP16 and not self._fp16_range_ok(params):
            raise self._fp16_refused()
        blob = encode_snapshot(params, self.spec, dtype)
        cache.put(key, blob)
        if dtype == SnapshotDType.FP32:
            self._fp32_bytes = len(blob)
        return blob

    def warm(self, dtype: str) -> None:
        """Encode the published model's `dtype` snapshot, so that `snapshot` finds it kept:
        the routes run this in a worker thread before they plan a download or an export, so
        the encoding (66 ms for 2M parameters) is not on the event loop every other request
        waits on. A running task's fp32 snapshot is encoded as its version is published (the
        close's worker thread, the start); this is for the first fp16 download of each
        version. A finished task's (`release_finished`) is read back from the store, its
        digest checked and encoded into the coordinator's kept ones (helper-381). Nothing for
        a snapshot already kept. A failure is left to `snapshot`, which meets it again on the
        loop and answers it as usual."""
        if self.released:
            with contextlib.suppress(Exception):  # raised again, and answered, by `snapshot`
                self._finished_snapshot(dtype)
            return
        params, version = self.published, self.version
        if self.keeps(dtype):
            return
        fits = dtype != SnapshotDType.FP16 or _in_fp16_range(params)
        blob = encode_snapshot(params, self.spec, dtype) if fits else None
        with self._published_lock:
            if self.published is not params or self.version != version:
                return  # published again meanwhile (or let go): this one is stale
            if dtype == SnapshotDType.FP16:
                self._fits_fp16 = fits
            if blob is not None:
                self._snapshots.setdefault(dtype, blob)

    def _fp16_refused(self) -> ApiError:
        return ApiError(
            409,
            Reason.INVALID_STATE,
            f"task {self.task_id}'s model (version {self.version}) has a parameter "
            "beyond fp16's range (|x| >= 65520, which fp16 rounds to infinity), so it "
            "cannot be sent as an fp16 snapshot; ask for dtype=fp32",
        )

    def _fp16_range_ok(self, params: npt.NDArray[np.float32]) -> bool:
        if self._fits_fp16 is None:
            self._fits_fp16 = _in_fp16_range(params)
        return self._fits_fp16

    def set_published(
        self,
        params: npt.NDArray[np.float32],
        version: int,
        digest: str,
        fp32: bytes | None = None,
    ) -> None:
        """Serve `params` as `version`; `fp32`: its fp32 snapshot, if already encoded."""
        with self._published_lock:
            self.published = params
            self.version = version
            self.digest = digest
            self._snapshots.clear()
            self._fits_fp16 = None
            self._fp32_bytes = None
            if fp32 is not None:
                self._snapshots[SnapshotDType.FP32] = fp32

    def snapshot_bytes(self) -> int:
        """The length of the fp32 snapshot of the published model: what a delta chain is
        weighed against. Encoded once per version and kept, a finished task's too (which would
        otherwise read its model back from the store and encode it at each chain asked for
        once its snapshot left the few kept: helper-381)."""
        if self._fp32_bytes is None:
            self._fp32_bytes = len(self.snapshot(SnapshotDType.FP32))
        return self._fp32_bytes


def _in_fp16_range(params: npt.NDArray[np.float32]) -> bool:
    """Whether `params` fit fp16's range: the encoder's own test, cast to fp16 and look for
    inf (|x| >= 65,520 rounds to it)."""
    with np.errstate(over="ignore"):
        return bool(np.isfinite(params.astype(np.float16)).all())


@dataclass(frozen=True)
class ModelAnswer:
    """A model download `Coordinator.plan_model` decided: the body (None: the delta chain from
    `have` to the version in `headers`, still to be read with `read_chain`) and its headers."""

    rt: TaskRuntime
    headers: dict[str, str]
    body: bytes | None
    have: int
    fmt: str
    dtype: str
    device_id: str | None = None
    # A snapshot counted against `device_id`'s `snapshots_per_version` (`uncount_snapshot`).
    counted: bool = False

    @property
    def sends_model(self) -> bool:
        """False for the empty chain (`have` is the current version): no model goes out, so
        the ledger counts no dense bytes for it."""
        chain = self.headers[Header.MODEL_ENCODING] == ModelEncoding.DELTA_CHAIN
        return not (chain and self.have == int(self.headers[Header.MODEL_VERSION]))


def _model_headers(version: int, digest: str, encoding: str, exact: bool) -> dict[str, str]:
    return {
        Header.MODEL_VERSION: str(version),
        Header.MODEL_DIGEST: digest,
        Header.MODEL_ENCODING: str(encoding),
        Header.MODEL_EXACT: "1" if exact else "0",
    }


def _chain_gone(have: int, v: int) -> ApiError:
    return ApiError(
        409,
        Reason.UNKNOWN_VERSION,
        f"no delta chain from version {have} to {v}: a delta frame on the way is no longer "
        "stored; fetch the snapshot",
    )


class Coordinator:
    """All tasks of one coordinator over one `Store`. Call from one thread (the event loop);
    only `close_round`'s aggregation step runs in a worker thread."""

    def __init__(
        self,
        store: Store,
        config: ServiceConfig,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.runtimes: dict[int, TaskRuntime] = {}
        # Stored tasks `restore` could not load: never run, reported with the reason.
        self.refused: dict[int, RefusedTask] = {}
        # Running tasks a store error stopped while they were rebuilt (`_reload`): each is
        # rebuilt again once due, by a tick or a request naming it.
        self.unloaded: dict[int, UnloadedTask] = {}
        # task -> when a tick rebuilds it: a round whose publish and abandonment the store
        # both refused (`fail_close`); until then the runtime holds that round `aggregating`.
        self._rebuild_at: dict[int, float] = {}
        # task id -> its anomaly counters and histograms, kept across rebuilds of the task
        # (`_reload` after a refused COMMIT or a failed publish, an unloaded task loaded
        # again): a new set each time put its `_total` and `_count` series back to 0 in
        # the middle of the process's life (s25/ops finding 3).
        self._anomaly: dict[int, AnomalyMetrics] = {}
        # round -> its row, parsed once: committed and abandoned rounds only (their rows do
        # not change), the most recently read CLOSED_ROUNDS_KEPT (`_stored_round`)
        self._closed_rounds: OrderedDict[int, _ClosedRound] = OrderedDict()
        # task id -> (version, device id -> (window start, snapshots of that version)): what
        # `_count_snapshot` limits. Dropped per task when its version changes.
        self._snapshot_counts: dict[int, tuple[int, dict[str, tuple[float, int]]]] = {}
        # (task, version, dtype) -> the encoded snapshot of a finished task, the most recently
        # downloaded FINISHED_SNAPSHOTS_KEPT of all of them (`TaskRuntime.release_finished`).
        self._finished_snapshots = KeptSnapshots()
        self.restored = False
        self._background: set[asyncio.Task[Any]] = set()
        # One prune at a time (a round may close while the last close's prune still runs).
        self._prune_lock = threading.Lock()
        # task -> the version up to which its delta frames are emptied (`prune_frames`)
        self._versions_pruned: dict[int, int] = {}
        # Tasks the operator stopped (`stop_task`), with or without a model: final; their
        # device requests get 409 `task_refused`, their rows and model stay readable.
        self.stopped_tasks: set[int] = set()
        # Orders a stop against a close's store write (`_store_close`, in the worker thread):
        # a stop that takes it first has the close discard its aggregate; one that comes after
        # sees the close's write in `ActiveRound.stored`. So nothing is published after a
        # stop's answer.
        self._close_lock = threading.Lock()
        self.metrics.stored_frame_bytes.set_function(lambda: float(store.frame_bytes))

    # -- startup -------------------------------------------------------------------------

    def _build(self, task_id: int, rebuild: bool = False, was_active: bool = False) -> TaskRuntime:
        """A task's runtime from its stored rows, as a start builds it; a round it finds in
        flight is replayed (plain) or abandoned (secure, or a stopped task's). `rebuild`: while
        the process runs (`_reload`), not at a start. `was_active`: a rebuild of a task memory
        held active, which ends it (`_done_task_ends`) if the store holds it done (its last
        round finished there)."""
        row = self.store.task(task_id)
        assert row is not None and row.version >= 0
        cfg = from_json(TaskConfig, row.config)
        spec = validate_task(cfg)
        params_bytes, residual_bytes = self.store.task_model(task_id)
        if len(params_bytes) != spec.dense_bytes:
            raise ValueError(
                f"the stored params are {len(params_bytes)} bytes; the spec needs "
                f"{spec.dense_bytes}"
            )
        if hashlib.sha256(params_bytes).hexdigest() != row.digest:
            # The digest is committed with the params: a mismatch is a damaged or edited row,
            # and serving it would hand devices a model whose digest check fails.
            raise ValueError("the stored params do not match the stored model digest")
        params = np.frombuffer(params_bytes, dtype="<f4").astype(np.float32)
        residual = (
            ErrorFeedback.from_bytes(residual_bytes, spec.size)
            if residual_bytes is not None
            else ErrorFeedback(spec.size)
        )
        # Only what a start needs is read from the task's history: its open or aggregating
        # round (replayed), counts, and its last committed round (a plain task's dp gauges);
        # every round's selection and measurements, as large as its cohort, would make the
        # start's memory grow with the task's history.
        live = self.store.rounds(task_id, (RoundState.OPEN, RoundState.AGGREGATING))
        # A secure task's privacy ledger is rebuilt from the measurements of every round whose
        # noisy sum was unmasked: committed ones, abandoned ones that carry `dp` (a group
        # that aborted after unmasking, or a publish that failed after it; the server saw the
        # sum), and a round the coordinator stopped in while open or closing, whose
        # `pending_dp` was stored before a group's unmask request went out, or before
        # unmasking (its server may have held the shares to unmask, or unmasked: count it).
        # A round that spent its epsilon budget (secure.epsilon_budget) says so in its
        # measurements (`budget_exhausted`: a released round after which none fits, or one
        # abandoned unreleased); the task stays stopped, as a plain task's DPMean stop does.
        released: list[dict[str, Any]] = []
        budget_spent = False
        if cfg.secure is not None:
            for state, meas in self.store.round_measurements(task_id):
                if isinstance(dp := _released_dp(state, meas), dict):
                    released.append(dp)
                budget_spent = budget_spent or find_measurement(meas, "budget_exhausted") is True
        # The engine numbers rounds as the store does (a task's seq): a round's seeded cohort
        # is drawn from (task seed, that number), so after a restart the task goes on with the
        # draws an uninterrupted run makes instead of starting again from its first round's.
        seq = self.store.count_rounds(task_id)
        replayed = [r.seq for r in live] if cfg.secure is None else []
        rt = TaskRuntime(
            task_id,
            cfg,
            row.state,
            params,
            row.version,
            row.digest,
            residual,
            self.clock(),
            released if cfg.secure is not None else None,
            next_round=min(replayed, default=seq + 1),
            anomaly_metrics=self._anomaly_metrics(task_id),
        )
        blob = self.store.task_aggregator_state(task_id)
        if blob is not None:
            # The state the last committed round left: a DP round count, an adaptive clip, a
            # server momentum, collusion histories (secure: coordinate scores, the group
            # aggregator's state). Without it a restart would reset them.
            try:
                carried = decode_state(blob)
                if rt.secure is not None:
                    rt.secure.coordinator.restore_carried_state(carried)
                else:
                    rt.engine.aggregator_state = rt.committed_state = carried
            except (KeyError, TypeError, ValueError) as exc:  # StateCodecError included
                raise RuntimeError(
                    f"task {task_id}: the stored aggregator state does not restore ({exc!r})"
                ) from exc
        elif rt.secure is None and rt._accounted is not None:
            # No stored state (a database from store schema 1, which had no tasks.agg_state)
            # but maybe rounds released: the accountant would start again at 0 and every later
            # round's epsilon, its budget check and the all-tasks figure under-count. Its
            # counter is rebuilt from the round records (never deleted) instead.
            self._restore_dp_rounds(rt)
        rt.seq = seq
        rt.rounds_closed, rt.rounds_committed = self.store.round_counts(task_id)
        stopped = row.state == TaskState.STOPPED
        if rt.secure is None and not stopped:
            for r in live:
                rt.current = self._replay(rt, r)
        if rt.secure is None:
            newest = self.store.last_round(task_id, RoundState.COMMITTED)
            _observe_stored_dp(rt.privacy_metrics, rt.config, [] if newest is None else [newest])
            if newest is not None:
                self.metrics.observe_train_loss(task_id, newest.measurements)
            if newest is not None and find_measurement(newest.measurements, "budget_exhausted"):
                # The engine stopped at that round (its epsilon budget is spent): a fresh
                # engine must too, or a task left paused then could be resumed into rounds
                # that train their devices only to be refused by DPMean and abandoned.
                rt.engine.stopped = True
        if rt.secure is not None and rt.secure.coordinator.budget_exhausted():
            # The replayed ledger leaves no round within the budget, though no stored round
            # says so: the last released one was stored through its `pending_dp` (a publish
            # that failed after unmasking, or a stop while closing), which carries no flag.
            budget_spent = True
        if rt.secure is not None and released:
            last = released[-1]
            rt.privacy_metrics.observe(
                epsilon=float(rt.secure.coordinator.accountant.epsilon()),
                delta=float(last["delta"]),
                rounds=len(released),
                noise_multiplier=float(last.get("noise_multiplier", 0.0)),
                clip=rt.secure.settings.config.clip_norm,
                budget_exhausted=budget_spent,
            )
        if budget_spent:
            rt.engine.stopped = True
            rt.privacy_metrics.budget_exhausted.set(1.0)
        if stopped:
            # Stopped for good: no round opens again (`_maybe_open` checks the state too).
            rt.engine.stopped = True
        if rt.secure is not None or stopped:
            # Last: everything above can refuse the task, and a refused task's rows stay as
            # they are; this writes. (A stopped task's round left open or aggregating: the
            # stop's own abandon did not reach the store, or a close was in flight.)
            for r in live:
                self._abandon_on_start(rt, r, rebuild)
        if budget_spent and rt.state == TaskState.ACTIVE:
            # Spent while active (its last released round stored through `pending_dp`, with no
            # flag): done now, not active forever with no round it may open.
            self.store.set_task_state(task_id, TaskState.DONE)
            rt.state = TaskState.DONE
            self._done_task_ends(rt)
        if was_active and row.state == TaskState.DONE:
            # Memory held it active; the store holds it done: its last round finished there (a
            # failed close's abandonment, a publish stored before its close failed, a round the
            # store holds finished behind memory's back). It ends here, once, as a close that
            # finishes it does (a stored `active` turned `done` above has ended already).
            self._done_task_ends(rt)
        self._attach(rt)
        if stopped:
            self.stopped_tasks.add(task_id)
        self._release_if_finished(rt)
        if not rt.released:
            # Here, not at the first download after a start on the event loop (helper-408).
            rt.snapshot(SnapshotDType.FP32)
        return rt

    def _release_if_finished(self, rt: TaskRuntime) -> None:
        """Let a done or stopped task with no round in flight go of its model arrays
        (`TaskRuntime.release_finished`): at its finish, and when a start loads it finished. A
        stopped task whose close is still in flight is let go at that close's end."""
        if rt.state in (TaskState.DONE, TaskState.STOPPED) and rt.current is None:
            task_id, digest = rt.task_id, rt.digest
            rt.release_finished(
                lambda: self._stored_params(task_id, digest), self._finished_snapshots
            )

    def _stored_params(self, task_id: int, digest: str) -> npt.NDArray[np.float32]:
        """A finished task's published model, read back from the store and checked against
        its digest (a mismatch: the row was changed under the coordinator, 503 as any damaged
        row)."""
        params_bytes = self.store.task_params(task_id)  # not the residual beside it
        if hashlib.sha256(params_bytes).hexdigest() != digest:
            raise DamagedRow(
                "tasks", task_id, task_id, "params", "they do not match the model digest"
            )
        # Read-only, no copy: it is only encoded (`TaskRuntime._finished_snapshot`).
        return np.frombuffer(params_bytes, dtype="<f4").astype(np.float32, copy=False)

    def _restore_dp_rounds(self, rt: TaskRuntime) -> None:
        """Set a plain task's accounting `dp` counter, with no stored aggregator state, to the
        rounds it released: its committed rounds (each one `DPMean` aggregated and the store
        published; an abandoned round published nothing), or the last one's own `rounds` if
        larger (what the stored state would hold: a round aggregated and then abandoned
        advances the counter too). Never fewer than the records show. An adaptive clip
        continues from the last committed round's record; a server optimizer's moments and
        the inner aggregator's state start again, as they did under schema 1."""
        assert rt._accounted is not None
        dp = find_dp(rt._accounted)
        assert dp is not None
        committed, last = 0, None
        for state, meas in self.store.round_measurements(rt.task_id):
            if state == RoundState.COMMITTED:
                committed += 1
                last = _dp_measurements(meas) or last
        if committed == 0:
            return
        recorded = last.get("rounds") if last is not None else None
        released = committed
        if isinstance(recorded, int) and not isinstance(recorded, bool):
            released = max(released, recorded)
        clip = _restored_clip(dp, last) if last is not None else None
        state = _with_dp_rounds(rt._accounted, rt.engine.aggregator_state, released, clip)
        rt.engine.aggregator_state = rt.committed_state = state
        log.warning(
            "task %d has no stored aggregator state (a database from before it was stored): "
            "its dp accountant resumes at the %d round(s) its records show released%s",
            rt.task_id, released, "" if clip is None else f", its adaptive clip at {clip:.6g}",
        )  # fmt: skip

    def _anomaly_metrics(self, task_id: int) -> AnomalyMetrics:
        """The task's anomaly counters and histograms, made at its first build."""
        found = self._anomaly.get(task_id)
        if found is None:
            found = self._anomaly[task_id] = AnomalyMetrics()
        return found

    def _attach(self, rt: TaskRuntime) -> None:
        """Serve a built runtime's gauges and registries (the last step of a build)."""
        if (short := self._pool_shortfall(rt.dp_pool)) is not None:
            log.warning("task %d may never open a round: %s", rt.task_id, short)
        self.metrics.model_version.labels(str(rt.task_id)).set(rt.version)
        self.metrics.tasks.attach(
            rt.task_id, [rt.anomaly_metrics.registry, rt.privacy_metrics.registry]
        )

    def _abandon_on_start(self, rt: TaskRuntime, r: RoundRow, rebuild: bool = False) -> None:
        """Abandon a round found open or aggregating on start, or at a `rebuild` while the
        process runs (its reason and log line say which): a secure round's keys, shares and
        masked sum were only in memory; a stopped task's round never closes otherwise. A
        plain round's accepted updates stay stored (and in its ledger)."""
        rt.rounds_closed += 1
        done = rt.rounds_closed >= rt.config.rounds and rt.state == TaskState.ACTIVE
        if done:
            rt.state = TaskState.DONE
        if rt.state == TaskState.STOPPED:
            reason = STOP_REASON
        elif rebuild:  # while the process runs (`_reload`): no restart happened
            reason = (
                "the task was rebuilt from the store during the secure round (its key material "
                "was in memory)"
            )
        else:
            reason = (
                "coordinator restarted during the secure round (its key material was in memory)"
            )
        meas: dict[str, Any] = {"abandoned": reason}
        if isinstance(dp := _released_dp(r.state, r.measurements), dict):
            meas["dp"] = dp  # counted above; kept so every later restart counts it too
        self.store.abandon(r.round_id, rt.task_id, meas, rt.state, self.clock())
        self.metrics.rounds.labels("abandoned").inc()
        log.warning(
            "task %d round %d abandoned %s (%s)",
            rt.task_id, r.round_id, "by its rebuild from the store" if rebuild else "on start",
            reason,
        )  # fmt: skip
        if done:
            self._done_task_ends(rt)

    def _replay(self, rt: TaskRuntime, r: RoundRow) -> ActiveRound:
        """Re-open a round in a fresh engine and re-submit its accepted frames in order."""
        plan = rt.engine.open_round(r.selected)  # cohort_size >= len(selected): all are taken
        cur = ActiveRound(
            round_id=r.round_id,
            engine_round=plan.round_id,
            selected=frozenset(r.selected),
            target=r.target,
            min_reports=r.min_reports,
            opened=r.opened_unix,
            deadline=r.deadline_unix,
            base_version=r.base_version,
        )
        for u in self.store.updates(r.round_id):
            try:
                rt.engine.submit(plan.round_id, u.device_id, u.frame)
            except (EngineError, CodecError) as exc:
                raise ValueError(
                    f"round {r.round_id}: the accepted update of device {u.device_id} "
                    f"does not replay ({type(exc).__name__}: {exc})"
                ) from exc
            cur.reports += 1
            cur.uploaded.add(u.device_id)
            cur.upload_bytes += len(u.frame)
            if u.train_loss is not None:
                cur.losses[u.device_id] = u.train_loss
        cur.closing = r.state == RoundState.AGGREGATING
        log.info(
            "task %d round %d resumed from the store with %d accepted updates%s",
            rt.task_id, r.round_id, cur.reports, " (it was aggregating)" if cur.closing else "",
        )  # fmt: skip
        return cur

    def restore(self) -> None:
        """Load every task with a model from the store, replaying its open round if any.

        A task that does not restore is refused (`refused`), not run, and left as stored; the
        others start. Raises `StoreError` only when the database itself fails.
        """
        self.runtimes.clear()
        self.refused.clear()
        self.unloaded.clear()
        self._rebuild_at.clear()
        self._closed_rounds.clear()
        self._finished_snapshots.clear()
        self.stopped_tasks.clear()
        self.metrics.tasks_unloaded.set(0)
        try:
            for task_id, version in self.store.task_versions():
                try:
                    if version >= 0:
                        self.runtimes[task_id] = self._build(task_id)
                    else:  # awaiting its model: its config must still be one this code runs
                        self._check_config(task_id)
                except (sqlite3.Error, OSError):
                    raise
                except Exception as exc:  # noqa: BLE001 - one task's failure must not stop the others
                    self._refuse(task_id, exc)
            self.metrics.devices.set(self.store.count_devices())
            self.metrics.tasks_refused.set(len(self.refused))
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"cannot restore from the database {self.store.path}: {exc} (a corrupt or "
                "unreadable file: restore a backup)"
            ) from exc
        self.restored = True
        # A task that closes no more rounds (done, or --keep-frames newly set) is pruned here.
        # Refused tasks are not: their rows stay exactly as stored.
        for task_id in sorted(self.runtimes):
            self.prune_frames(task_id)

    def prune_frames(self, task_id: int) -> None:
        """Apply `keep_frames_rounds` to one task's closed rounds (`Store.prune_frames`).

        Never raises: it runs after a round's publish has committed, which a failure here must
        not undo or hide; it is logged, and the next close or start prunes what is left.
        """
        keep = self.config.keep_frames_rounds
        if keep is None:
            return
        try:
            with self._prune_lock:
                done = self.store.prune_frames(task_id, keep)
        except Exception:  # noqa: BLE001 - the round is already published: log and go on
            log.exception("task %d: pruning the frames of its closed rounds failed", task_id)
            return
        if done.frames:
            log.info(
                "task %d: pruned %d frames (%d bytes) of rounds older than its %d most recent "
                "closed rounds",
                task_id,
                done.frames,
                done.bytes_freed,
                keep,
            )
        rt = self.runtimes.get(task_id)
        if rt is None:
            return
        # The downlink delta frames no download reads any more: a chain is served only from
        # a version within max_chain of the current one. The newest max(keep, max_chain)
        # versions keep theirs; a device further behind gets the snapshot, as before.
        window = max(keep, rt.config.max_chain)
        up_to = rt.version - window
        try:
            with self._prune_lock:
                after = self._versions_pruned.get(task_id, 0)
                gone = self.store.prune_versions(task_id, up_to, after)
                self._versions_pruned[task_id] = max(after, up_to)
        except Exception:  # noqa: BLE001 - as above
            log.exception("task %d: pruning the delta frames of its old versions failed", task_id)
            return
        if gone.frames:
            log.info(
                "task %d: emptied the delta frames of %d versions (%d bytes) older than its %d "
                "most recent",
                task_id,
                gone.frames,
                gone.bytes_freed,
                window,
            )

    def _check_config(self, task_id: int) -> None:
        row = self.store.task(task_id)
        assert row is not None
        validate_task(from_json(TaskConfig, row.config))
        if row.state == TaskState.STOPPED:  # stopped before it had a model
            self.stopped_tasks.add(task_id)

    def _refuse(self, task_id: int, exc: BaseException) -> None:
        """Record (and log, once) that a stored task will not run; the store is not touched."""
        self.runtimes.pop(task_id, None)
        if self.unloaded.pop(task_id, None) is not None:
            self.metrics.tasks_unloaded.set(len(self.unloaded))
        self.metrics.tasks.attach(task_id, [])
        try:
            raw = self.store.task_raw(task_id)
        except sqlite3.Error:
            raw = None  # the store failing is what refused it: no cap to offer
        cap = _stored_upload_cap(raw[0]) if raw is not None else None
        reason = f"{type(exc).__name__}: {exc}"
        self.refused[task_id] = RefusedTask(task_id, reason, cap, raw[1] if raw else "")
        self.metrics.tasks_refused.set(len(self.refused))
        log.error(
            "task %d in the store is refused and will not run (kept as stored; fix its config "
            "or finish it with a coordinator that accepts it): %s",
            task_id,
            reason,
        )

    def refusal(self, task_id: int) -> ApiError | None:
        """The 409 `task_refused` error of a refused or stopped task, the 503
        `store_unavailable` of an unloaded one (rebuilt here first when its retry is due), None
        for any other: what a device request naming the task (or one of its rounds) gets."""
        err = self._not_running(task_id)
        if err is None and task_id in self.stopped_tasks:
            err = ApiError(
                409,
                Reason.TASK_REFUSED,
                f"task {task_id} was stopped by the operator; it runs no more rounds",
            )
        return err

    def _not_running(self, task_id: int) -> ApiError | None:
        """`refusal` without the stopped tasks: what an admin request that a stopped task
        still answers (its model, its stop) gets."""
        refused = self.refused.get(task_id)
        if refused is not None:
            return refused.error()
        unloaded = self.unloaded.get(task_id)
        if unloaded is None:
            return None
        now = self.clock()
        if now >= unloaded.retry_at and self._reload(task_id):
            return None
        if task_id in self.refused:  # its stored rows no longer load
            return self.refused[task_id].error()
        return self.unloaded[task_id].error(now)

    def _kept(self, r: RoundRow) -> _ClosedRound | None:
        """The parsed closed round `_stored_round` keeps for `r`, if `r` is that very row (a
        row read elsewhere, e.g. by a listing, is not)."""
        kept = self._closed_rounds.get(r.round_id)
        return kept if kept is not None and kept.row is r else None

    def _stored_round(self, round_id: int) -> RoundRow | None:
        """A round as stored (None: no such round). A refused task's round whose stored JSON
        does not parse is its task's 409 `task_refused`, naming the damage; a running task's
        raises `DamagedRow` (503 `store_unavailable`, see app.py).

        A committed or abandoned round is parsed once and kept (`_closed_rounds`): every
        device of its cohort asks about it (its membership for the ledger, its status), and
        its selection and measurements, as large as the cohort, would be parsed each time."""
        kept = self._closed_rounds.get(round_id)
        if kept is not None:
            self._closed_rounds.move_to_end(round_id)
            return kept.row
        try:
            r = self.store.round(round_id)
        except DamagedRow as exc:
            self._raise_damaged(exc)
        if r is not None:
            self._keep(r)
        return r

    def _keep(self, r: RoundRow) -> _ClosedRound | None:
        """Keep `r`, just read from the store, among the parsed closed rounds if it is closed
        (the most recently read `CLOSED_ROUNDS_KEPT`); None for a round still open."""
        if r.state not in (RoundState.COMMITTED, RoundState.ABANDONED):
            return None
        kept = self._closed_rounds[r.round_id] = _ClosedRound(r, frozenset(r.selected))
        while len(self._closed_rounds) > CLOSED_ROUNDS_KEPT:
            self._closed_rounds.popitem(last=False)
        return kept

    def _raise_damaged(self, exc: DamagedRow) -> NoReturn:
        """Raise the 409 `task_refused` of a damaged row's task, naming the damage, or `exc`
        itself when the task is not refused (a 503, see app.py)."""
        refused = self.refused.get(exc.task_id)
        if refused is None:
            raise exc
        err = refused.error()
        if str(exc) in refused.reason:  # the damage that refused it: said once
            raise err from None
        raise ApiError(err.status, err.reason, f"{err.detail}; {exc}") from None

    def pending_closes(self) -> list[TaskRuntime]:
        """Runtimes whose open round must close now (deadline, full, or caught mid-close)."""
        now = self.clock()
        out = []
        for rt in self.runtimes.values():
            cur = rt.current
            if cur is None:
                continue
            if cur.closing or now >= cur.deadline:
                out.append(rt)
            elif rt.secure is not None:
                if rt.secure.registry.ready(cur.round_id):  # every group finished unmask
                    out.append(rt)
            elif cur.reports >= cur.target:
                out.append(rt)
        return out

    # -- admin -----------------------------------------------------------------------------

    def create_task(self, cfg: TaskConfig) -> int:
        validate_task(cfg)
        dp = find_dp(_aggregator(cfg.aggregator))
        if (why := delta_refusal(dp)) is not None:
            # New tasks only: validate_task, which a stored task is loaded with, accepts it.
            raise ValueError(f"aggregator: {why}")
        if (why := secure_delta_refusal(cfg)) is not None:
            raise ValueError(f"secure: {why}")  # new tasks only, as above
        if (
            isinstance(cfg.secure, dict)
            and cfg.secure.get("coord_fraction") is not None
            and cfg.secure.get("upload_budget") is not None
        ):
            # New tasks only, as above: the budget chose |S_r| and the fraction was ignored
            # (the CLIs refuse the pair of flags too).
            raise ValueError(
                "secure.coord_fraction and secure.upload_budget both set the shared "
                "coordinates a round: with a budget, |S_r| is the largest that fits it and the "
                "fraction is unused; give one of them"
            )
        if (why := seed_refusal(dp)) is not None and not self.config.allow_seeded_dp:
            raise ValueError(f"aggregator: {why}")  # new tasks only, as above
        if (short := self._pool_shortfall(amplified_population(dp))) is not None:
            raise ValueError(f"aggregator: {short}")
        task_id = self.store.create_task(to_json(cfg), TaskState.AWAITING_MODEL, self.clock())
        # delta_refusal logged delta_note above; the API answers them all (creation_warnings).
        notes = (seed_note(dp), unproven_feedback_note(cfg))
        for note in (*notes, over_selection_note(cfg), krum_topk_note(cfg)):
            if note is not None:
                log.warning("task %d: %s", task_id, note)
        return task_id

    def _pool_shortfall(self, need: int) -> str | None:
        """Why this coordinator's selection pool cannot hold `need` devices at once (see
        `pool_capacity`), or None when it can."""
        capacity = pool_capacity(self.config)
        if need <= capacity:
            return None
        return (
            f"dp accounts population={need}, so each round waits until {need} devices are in "
            f"the selection pool at once, but this coordinator's pool holds about "
            f"{capacity:g} (max_checkin_rate {self.config.max_checkin_rate:g}/s x pool_ttl_s "
            f"{self.config.pool_ttl_s:g} s / 2); lower population= to the devices really "
            "available at once, or serve with a larger --max-checkin-rate or --pool-ttl "
            "(ServiceConfig max_checkin_rate, pool_ttl_s)"
        )

    def set_initial_model(self, task_id: int, snapshot: bytes) -> TaskStatus:
        """Set a task's version 0 from an encoded snapshot: `prepare_initial_model`, then
        `commit_initial_model` (the app runs the first in a worker thread)."""
        if (refusal := self.refusal(task_id)) is not None:
            raise refusal  # first: its stored config may not parse
        return self.commit_initial_model(self.prepare_initial_model(task_id, snapshot))

    def prepare_initial_model(self, task_id: int, snapshot: bytes) -> TaskRuntime:
        """The checks and the work of setting a task's initial model that touch no shared
        state: the config validated again (a secure plan check can take seconds for a huge
        cohort after a restart), the snapshot decoded and the runtime built. Safe in a worker
        thread; `commit_initial_model` stores and serves the result. The caller has asked
        `refusal` first, on the event loop (it may rebuild an unloaded task: shared state)."""
        row = self.store.task(task_id)
        if row is None:
            raise ApiError(404, Reason.UNKNOWN_TASK, f"no task {task_id}")
        if row.state != TaskState.AWAITING_MODEL:
            raise ApiError(409, Reason.INVALID_STATE, f"task {task_id} already has a model")
        cfg = from_json(TaskConfig, row.config)
        spec = validate_task(cfg)
        try:
            params = decode_snapshot(snapshot, spec)
        except CodecError as exc:
            raise ApiError(422, Reason.BAD_FRAME, f"initial model refused: {exc}") from None
        params = np.ascontiguousarray(params, dtype=np.float32)
        if not np.all(np.isfinite(params)):
            raise ApiError(422, Reason.BAD_FRAME, "initial model has NaN or Inf")
        digest = model_digest(params).hex()
        # Built before the store calls the task active, from what the store is about to hold
        # (version 0, no residual, no rounds, no aggregator state: what `_build` reads back
        # for it): a build that fails leaves the task awaiting its model, and a write that
        # fails leaves no runtime for a task the store does not run.
        try:
            rt = TaskRuntime(
                task_id,
                cfg,
                TaskState.ACTIVE,
                params,
                0,
                digest,
                ErrorFeedback(spec.size),
                self.clock(),
                [] if cfg.secure is not None else None,
                anomaly_metrics=self._anomaly_metrics(task_id),
            )
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise ApiError(
                422,
                Reason.VALIDATION,
                f"task {task_id} cannot run with this model ({type(exc).__name__}: {exc}); "
                "it still awaits its model",
            ) from None
        rt.snapshot(SnapshotDType.FP32)  # here, not at the first download on the event loop
        return rt

    def commit_initial_model(self, rt: TaskRuntime) -> TaskStatus:
        """Store a prepared runtime's model as its task's version 0 and serve it; on the
        event loop. The task's state is read again: another upload may have set the model
        while this one was prepared."""
        task_id = rt.task_id
        if (refusal := self.refusal(task_id)) is not None:
            raise refusal  # stopped by the operator meanwhile
        row = self.store.task(task_id)
        if row is None:
            raise ApiError(404, Reason.UNKNOWN_TASK, f"no task {task_id}")
        if row.state != TaskState.AWAITING_MODEL or task_id in self.runtimes:
            raise ApiError(409, Reason.INVALID_STATE, f"task {task_id} already has a model")
        self.store.set_initial_model(
            task_id, rt.published.astype("<f4").tobytes(), rt.digest, TaskState.ACTIVE, self.clock()
        )
        self._attach(rt)
        self.runtimes[task_id] = rt
        return self.task_status(task_id)

    def set_paused(self, task_id: int, paused: bool) -> TaskStatus:
        if (refusal := self.refusal(task_id)) is not None:
            # Resuming it would run what this code refuses (and its config may not parse).
            raise refusal
        row = self.store.task(task_id)
        if row is None:
            raise ApiError(404, Reason.UNKNOWN_TASK, f"no task {task_id}")
        want_from = TaskState.ACTIVE if paused else TaskState.PAUSED
        to = TaskState.PAUSED if paused else TaskState.ACTIVE
        if row.state == to:
            return self.task_status(task_id)
        if row.state != want_from:
            raise ApiError(409, Reason.INVALID_STATE, f"task {task_id} is {row.state}")
        rt = self.runtimes.get(task_id)
        if (
            not paused
            and rt is not None
            and rt.current is None
            and (rt.rounds_closed >= rt.config.rounds or rt.engine.stopped)
        ):
            # Paused while its last round closed: that close left it paused; resuming it has
            # no round to run, so it is done (not active forever).
            to = TaskState.DONE
        self.store.set_task_state(task_id, to)
        if rt is not None:
            rt.state = to
            rt.waiting_since = self.clock()
            if to == TaskState.DONE:
                self._done_task_ends(rt)
                self._release_if_finished(rt)
        return self.task_status(task_id)

    def stop_task(self, task_id: int) -> TaskStatus:
        """Stop a task for good (`stopped`, persisted): no round opens again, and its device
        requests get 409 `task_refused`. Its open round, unless its close has begun, is
        abandoned now ("stopped by the operator"): a plain round's accepted updates stay
        stored and in its ledger, a secure round's key material is dropped; the model stays
        the last published one. A close already aggregating discards its aggregate and
        abandons the round the same way, unless its publish was stored before the stop, whose
        answer then shows that version: nothing is published after the answer. Stopping a
        stopped or done task answers its status and changes nothing."""
        if (err := self._not_running(task_id)) is not None:
            raise err
        if task_id in self.stopped_tasks:
            return self.task_status(task_id)
        if self.store.task(task_id) is None:
            raise ApiError(404, Reason.UNKNOWN_TASK, f"no task {task_id}")
        rt = self.runtimes.get(task_id)
        stored: RoundOutcome | None = None
        with self._close_lock:
            # Over already (its rounds run, or its privacy budget spent): `stopped` would only
            # overwrite the record that it ran to its end. Read from the store too, under the
            # close lock: a last round's publish stores `done` before its event-loop half sets
            # `rt.state` (`finish_close`).
            row = self.store.task(task_id)
            done = TaskState.DONE in (
                rt.state if rt is not None else None,
                getattr(row, "state", None),
            )
            if not done:
                # Durable first: a store that refuses leaves the task as it was (503, retry).
                self.store.set_task_state(task_id, TaskState.STOPPED)
                self.stopped_tasks.add(task_id)
            if rt is not None:
                if not done:
                    rt.state = TaskState.STOPPED  # a close that stores after this abandons
                    rt.engine.stopped = True
                stored = rt.current.stored if rt.current is not None else None
        if done:
            if rt is not None and stored is not None:
                self.finish_close(rt, stored)  # as below: the answer shows the task done
            return self.task_status(task_id)
        if rt is not None:
            rt.pool.clear()
            if stored is not None:
                # Its close stored its outcome before the stop (a version published, or the
                # round abandoned) and only its event-loop half is left: done here, so the
                # answer below is final (`close_round` sees it done and leaves it).
                self.finish_close(rt, stored)
            cur = rt.current
            if cur is not None and not cur.close_started:
                flags = (cur.closing, cur.close_started)
                cur.closing = cur.close_started = True  # no close starts on it meanwhile
                try:
                    outcome = self._abandon_stopped(rt, cur)
                except (sqlite3.Error, OSError) as exc:
                    # The stop itself is durable, so it answers 200: the round's abandonment
                    # was not recorded, and the round's next close (its deadline, a tick)
                    # abandons it (`close_blocking` reads the stop), or the next start does.
                    cur.closing, cur.close_started = flags
                    log.warning(
                        "task %d stopped; its round %d is abandoned at its close (the "
                        "database refused it now: %s)",
                        task_id,
                        cur.round_id,
                        exc,
                    )
                else:
                    self.finish_close(rt, outcome)
            self._release_if_finished(rt)  # else at its round's close
        log.warning("task %d stopped by the operator", task_id)
        return self.task_status(task_id)

    def _abandon_stopped(
        self, rt: TaskRuntime, cur: ActiveRound, closed: bool = False
    ) -> RoundOutcome:
        """Abandon a stopped task's round in the store (the model is not touched); `closed`:
        its engine round was already closed (aggregated), so the engine has nothing to let
        go."""
        meas: dict[str, Any] = {"abandoned": STOP_REASON}
        if cur.pending_dp is not None:
            meas["dp"] = cur.pending_dp  # its sums may have been unmasked: they count
        self.store.abandon(cur.round_id, rt.task_id, meas, rt.state, self.clock())
        if not closed:
            rt.engine.abandon_round(cur.engine_round)  # its decoded updates are let go
        return RoundOutcome(cur.engine_round, False, cur.reports, rt.version, meas)

    def export_model(
        self, task_id: int, version: int | None, base: int | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """(body, headers) of a task's model for the operator, running, done or stopped.

        Without `base`: the fp32 snapshot of the current version (`version`, if given, must
        be it). With `base`: the delta chain from version `base` to `version` (default the
        current one), the stored downlink frames a device applies, with both versions'
        digests; the operator applies it to their own copy of version `base` (the initial
        model for `base=0`). Another published `version` without `base` is 410
        `version_gone` here; the admin route (app.py `_older_version`) answers it with the
        version rebuilt from the initial model the store keeps (schema 4) when it can."""
        if (err := self._not_running(task_id)) is not None:
            raise err
        rt = self.runtimes.get(task_id)
        if rt is None:
            row = self.store.task(task_id)
            if row is None:
                raise ApiError(404, Reason.UNKNOWN_TASK, f"no task {task_id}")
            raise ApiError(
                409,
                Reason.INVALID_STATE,
                f"task {task_id} is {row.state} and has no model"
                + ("" if row.state == TaskState.STOPPED else " yet (PUT its initial model)"),
            )
        current = rt.version
        want = current if version is None else version
        digest = self._published_digest(rt, want)
        if base is not None:
            return self._export_chain(rt, base, want, digest)
        if want != current:
            # An older version: app.py's route rebuilds it from Store.initial_params (schema 4)
            # and answers this 410 unchanged for a task stored before schema 4.
            raise ApiError(
                410,
                Reason.VERSION_GONE,
                f"version {want} of task {task_id} was published (digest {digest}) but is not "
                f"the current one ({current}), and the store keeps only the current model: "
                f"rebuild it from your copy of the initial model with the delta chain "
                f"?version={want}&base=0 (plume coordinator get-model --version {want})",
            )
        headers: dict[str, str] = {
            Header.MODEL_VERSION: str(current),
            Header.MODEL_DIGEST: rt.digest,
            Header.MODEL_ENCODING: str(ModelEncoding.SNAPSHOT),
            Header.MODEL_EXACT: "1",
        }
        return rt.snapshot(SnapshotDType.FP32), headers

    def _published_digest(self, rt: TaskRuntime, version: int) -> str:
        """The digest of a version the task published, else 404 `unknown_version`."""
        if version == rt.version:
            return rt.digest
        digest = self.store.version_digest(rt.task_id, version) if version < rt.version else None
        if digest is None:
            raise ApiError(
                404,
                Reason.UNKNOWN_VERSION,
                f"task {rt.task_id} never published version {version}; its latest is {rt.version}",
            )
        return digest

    def _chain_frames(self, task_id: int, after: int, upto: int) -> tuple[list[bytes], int | None]:
        """The stored delta frames taking version `after` to `upto`, and the first version on
        the way whose frame is gone (emptied by `--keep-frames`, or a row missing), None when
        the chain is whole. Reads only those versions."""
        rows = self.store.chain(task_id, after, upto)
        stored = dict(rows)
        for v in range(after + 1, upto + 1):
            if stored.get(v) is None:
                return [], v
        return [f for _, f in rows if f is not None], None

    def _export_chain(
        self, rt: TaskRuntime, base: int, version: int, digest: str
    ) -> tuple[bytes, dict[str, str]]:
        """The delta chain from `base` to `version` (see `export_model`); empty when they are
        the same version (its digest, to check a copy of it against)."""
        task_id = rt.task_id
        if base > version:
            raise ApiError(
                422, Reason.VALIDATION, f"base {base} must not be above the version {version}"
            )
        if version - base > MAX_EXPORT_CHAIN:
            raise ApiError(
                422,
                Reason.VALIDATION,
                f"a chain of {version - base} versions; at most {MAX_EXPORT_CHAIN} a request "
                "(ask in steps, each from the version the last one reached)",
            )
        base_digest = self._published_digest(rt, base)
        frames, gone = self._chain_frames(task_id, base, version)
        if gone is not None:
            raise ApiError(
                410,
                Reason.VERSION_GONE,
                f"version {version} of task {task_id} cannot be rebuilt from version {base}: "
                f"the delta frame of version {gone} is no longer stored (`serve --keep-frames` "
                "empties the frames of versions older than the newest max(N, max_chain))",
            )
        headers: dict[str, str] = {
            Header.MODEL_VERSION: str(version),
            Header.MODEL_DIGEST: digest,
            Header.MODEL_ENCODING: str(ModelEncoding.DELTA_CHAIN),
            Header.MODEL_EXACT: "1",
            Header.MODEL_BASE_VERSION: str(base),
            Header.MODEL_BASE_DIGEST: base_digest,
        }
        return pack_chain(frames), headers

    def task_status(self, task_id: int) -> TaskStatus:
        if task_id in self.unloaded:
            err = self.refusal(task_id)  # rebuilt here when due
            if err is not None and task_id in self.unloaded:
                raise err  # not running, whatever its stored row says
        refused = self.refused.get(task_id)
        if refused is not None:
            return self._refused_status(refused)
        row = self.store.task(task_id)
        if row is None:
            raise ApiError(404, Reason.UNKNOWN_TASK, f"no task {task_id}")
        rt = self.runtimes.get(task_id)
        cfg = from_json(TaskConfig, row.config)
        state = rt.state if rt else row.state
        # A done or stopped task opens no round again: no device waits for one and none is
        # needed (0, as for a task this coordinator does not run). Its pool was dropped when
        # it finished (`_done_task_ends`, `stop_task`).
        live = rt if rt and state not in (TaskState.DONE, TaskState.STOPPED) else None
        return TaskStatus(
            task_id=task_id,
            state=state,
            version=rt.version if rt else row.version,
            rounds_closed=rt.rounds_closed if rt else 0,
            rounds_committed=rt.rounds_committed if rt else 0,
            current_round=rt.current.round_id if rt and rt.current else None,
            model_digest=rt.digest if rt else row.digest,
            config=cfg,
            pool=len(self._expire_pool(live, self.clock())) if live else 0,
            pool_needed=max(live.engine.config.cohort_size, live.dp_pool) if live else 0,
        )

    def _refused_status(self, refused: RefusedTask) -> TaskStatus:
        """A refused task's status from its row as stored (its config as far as it parses)."""
        raw = self.store.task_raw(refused.task_id)
        if raw is None:
            raise ApiError(404, Reason.UNKNOWN_TASK, f"no task {refused.task_id}")
        config_json, _state, version, digest = raw
        config: TaskConfig | dict[str, Any]
        try:
            doc = json.loads(config_json)
        except ValueError:
            doc = {}  # not JSON at all: the reason says so
        try:
            config = from_json(TaskConfig, doc)
        except ValueError:
            config = doc if isinstance(doc, dict) else {}
        closed, committed = self.store.round_counts(refused.task_id)
        return TaskStatus(
            task_id=refused.task_id,
            state=TaskState.REFUSED,
            version=version,
            rounds_closed=closed,
            rounds_committed=committed,
            current_round=None,
            model_digest=digest,
            config=config,
            refused=refused.reason,
        )

    def task_statuses(self) -> list[TaskStatus]:
        """Every task in the store, refused ones included, by id."""
        return [self.task_status(task_id) for task_id, _ in self.store.task_versions()]

    # -- check-in and selection -----------------------------------------------------------

    def _maybe_open(self, rt: TaskRuntime, now: float) -> bool:
        if rt.state != TaskState.ACTIVE or rt.current is not None or rt.engine.stopped:
            return False
        if rt.rounds_closed >= rt.config.rounds:
            return False
        # Called at every check-in and tick while a task waits, with up to a dp population of
        # devices in the pool: sizes are compared first, and the pool is listed only to open.
        waiting = len(self._expire_pool(rt, now))
        need = rt.engine.config.cohort_size
        timed_out = now - rt.waiting_since >= rt.config.selection_timeout_s
        # SecAgg needs three devices: with two, the sum minus one's own is the other's.
        least = max(rt.config.min_reports, 3) if rt.secure is not None else rt.config.min_reports
        if not (waiting >= need or (timed_out and waiting >= least)):
            return False
        if waiting < rt.dp_pool:
            if timed_out and not rt.pool_short_logged:
                rt.pool_short_logged = True
                log.info(
                    "task %d: waiting for %d devices in the selection pool, %d are (its dp "
                    "stage accounts population=%d: a cohort from fewer would make its "
                    "epsilon a lie; docs/privacy.md)",
                    rt.task_id,
                    rt.dp_pool,
                    waiting,
                    rt.dp_pool,
                )
            return False
        fresh = sorted(rt.pool)
        rng = np.random.default_rng(secrets.randbits(128)) if rt.secret_selection else None
        plan = rt.engine.open_round(fresh, rng=rng)
        rt.pool_short_logged = False
        deadline = now + rt.config.deadline_s
        target = plan.target_reports
        if rt.secure is not None:
            target = len(plan.selected)  # every selected device is in the SecAgg cohort
        min_reports = min(rt.config.min_reports, target)
        try:
            round_id = self.store.open_round(
                rt.task_id, rt.seq + 1, rt.version, plan.selected, target, min_reports, now,
                deadline,
            )  # fmt: skip
        except BaseException:
            # Not recorded (a full disk, a lock held too long): the engine forgets the round, so
            # the next open takes the same round number and seeded cohort, and holds no orphan.
            rt.engine.cancel_open(plan.round_id)
            raise
        rt.seq += 1
        if rt.secure is not None:
            try:
                secure_task = rt.secure.registry.open_round(plan.selected, round_id, min_reports)
                secure_task.on_unmask_request = self._pending_dp_writer(rt, round_id)
            except ValueError as exc:  # e.g. RingOverflow: refused now, not mid-protocol
                log.error("task %d secure round %d cannot open: %s", rt.task_id, round_id, exc)
                rt.engine.close_round(plan.round_id)
                rt.rounds_closed += 1
                meas: dict[str, Any] = {"error": str(exc)}
                if isinstance(exc, BudgetExhausted):
                    # No round fits the epsilon budget any more: the task ends here, as on a
                    # round marked budget_exhausted, instead of opening one a tick to refuse.
                    rt.engine.stopped = True
                    rt.privacy_metrics.budget_exhausted.set(1.0)
                    meas["budget_exhausted"] = True
                if rt.rounds_closed >= rt.config.rounds or rt.engine.stopped:
                    if rt.state == TaskState.ACTIVE:
                        rt.state = TaskState.DONE
                self.store.abandon(round_id, rt.task_id, meas, rt.state, now)
                self.metrics.rounds.labels("abandoned").inc()
                if rt.state == TaskState.DONE:
                    self._done_task_ends(rt)
                return False
        rt.current = ActiveRound(
            round_id=round_id,
            engine_round=plan.round_id,
            selected=frozenset(plan.selected),
            target=target,
            min_reports=min_reports,
            opened=now,
            deadline=deadline,
            base_version=rt.version,
        )
        for d in plan.selected:
            rt.pool.pop(d, None)
        log.info(
            "task %d round %d opened with %d of %d checked-in devices",
            rt.task_id,
            round_id,
            len(plan.selected),
            len(fresh),
        )
        return True

    def _expire_pool(self, rt: TaskRuntime, now: float) -> OrderedDict[str, float]:
        """`rt.pool` without the devices that have not checked in for `pool_ttl_s`. The pool
        is ordered by last check-in, so only the expired entries are looked at, not the
        whole pool (a dp task's pool grows to its population, e.g. 30,000 devices)."""
        pool, ttl = rt.pool, self.config.pool_ttl_s
        while pool:
            device, seen = next(iter(pool.items()))
            if now - seen <= ttl:
                break
            del pool[device]
        return pool

    def _assignment(self, rt: TaskRuntime, cur: ActiveRound) -> Assignment:
        cfg = rt.config
        return Assignment(
            task_id=rt.task_id,
            round_id=cur.round_id,
            base_version=cur.base_version,
            model_name=cfg.model_name,
            spec=[TensorShape(t.name, list(t.shape)) for t in cfg.spec],
            codec=cfg.codec,
            training=cfg.training,
            deadline_unix=cur.deadline,
            model_path=Path.MODEL.format(task_id=rt.task_id),
            upload_path=(
                SecAggPath.SETUP.format(round_id=cur.round_id)
                if rt.secure is not None
                else Path.UPLOAD.format(round_id=cur.round_id)
            ),
            max_upload_bytes=(
                rt.secure.upload_cap(cur.round_id, Stage.MASKED_INPUT)
                if rt.secure is not None
                else rt.max_upload_bytes
            ),
            seed=cfg.seed,
            secure=rt.secure is not None,
            # Left out (None) without DP: the assignment is the bytes it was before the field.
            return_refused=None if rt.return_refused else False,
            # Left out (None) with DP or SecAgg: the device sends no training loss.
            report_loss=True if rt.report_loss else None,
        )

    def upload_outcome(self, round_id: int, device_id: str) -> UploadOutcome:
        """What became of `device_id`'s accepted upload (plain frame or SecAgg+ masked input)
        in round `round_id`, for the check-in's `round_outcome`.

        Nothing a device cannot read already: the round's state (`GET /v1/rounds/{id}`), and
        whether its own upload is in the published model, which the round's ledger rows and a
        secure round's `dropped` list show too. A round whose stored row does not parse is
        `pending` (its outcome cannot be read; the device asks again), never `unknown`.
        """
        if self._runtime_for_round(round_id) is not None:
            return UploadOutcome.PENDING  # open, or closing until its model is served
        head = self.store.round_state(round_id)
        if head is None:
            return UploadOutcome.UNKNOWN
        owner, state = head
        if state == RoundState.ABANDONED:
            return UploadOutcome.ABANDONED
        if state != RoundState.COMMITTED:
            # Open or aggregating in the store but not running here: a refused task's round,
            # which stays as stored until a coordinator that runs the task closes it.
            return UploadOutcome.PENDING
        rt = self.runtimes.get(owner)
        if rt is not None and rt.secure is None:
            # A plain task's round: its upload row says it all. Every device of the round asks
            # once, so the round's selection and measurements (both as large as its cohort)
            # are not parsed here.
            inside = self.store.has_update(round_id, device_id)
            return UploadOutcome.COMMITTED if inside else UploadOutcome.EXCLUDED
        # A secure task's round (or a refused task's): its `dropped` list says it, so the row
        # is read, once per round like `_stored_round`'s (the same kept rounds), not at each
        # of its devices' check-ins. A row damaged in the store is not kept: `pending`.
        try:
            r = self._stored_round(round_id)
        except (DamagedRow, ApiError):  # a damaged row (`_raise_damaged`): not kept, pending
            return UploadOutcome.PENDING
        if r is None:
            return UploadOutcome.UNKNOWN
        if r.measurements.get("secure"):
            # The masked inputs in the sum: the selected devices not listed as dropped. Not
            # kept if not closed after all (round_state said committed): as stored.
            kept = self._kept(r) or _ClosedRound(r, frozenset(r.selected))
            inside = kept.in_secure_sum(device_id)
        else:
            inside = self.store.has_update(round_id, device_id)
        return UploadOutcome.COMMITTED if inside else UploadOutcome.EXCLUDED

    def check_in(
        self,
        device_id: str,
        task_id: int | None = None,
        awaiting_round: int | None = None,
        features: frozenset[str] = frozenset(),
        max_model_bytes: int | None = None,
        model_layouts: Collection[str] | None = None,
        model_names: Collection[str] | None = None,
    ) -> CheckInResponse:
        """Assign a round or tell the device when to come back (pace steering). With
        `awaiting_round`, the answer carries that round's `upload_outcome` for the device.

        `features`: what the device's SDK declared it honours (`check_features`). A task that
        needs one it did not declare (`TaskRuntime.requires`) is never given to it: naming the
        task is 409 `sdk_unsupported`, unless the task is over ("end" as for anyone); naming
        none passes the task over. Both are counted in `plume_check_ins_sdk_unsupported`.

        `max_model_bytes`: the largest model the device declared it takes
        (`protocol.messages.check_max_model_bytes`; None: none declared, no limit). A task
        whose model is larger (`ModelSpec.dense_bytes`, 4 bytes a parameter: the measure the
        SDK's own check uses) is never given to it, in the same way: naming the task is 409
        `model_too_large` unless the task is over; naming none passes it over (a "wait" whose
        detail names it when no other task takes the device). Either way the device leaves
        the task's selection pool, so no round of it selects the device.

        `model_layouts`: the layouts the device declared it trains (hex `ModelSpec.fingerprint`
        values, `protocol.messages.check_model_layouts`; None: none declared, any layout). A
        task whose layout (`TaskRuntime.layout`) is not one of them is never given to it, in
        the same way as a model over `max_model_bytes`: naming the task is 409
        `model_layout_mismatch`, naming none passes it over, counted in
        `plume_check_ins_model_layout_mismatch`. So is a task with a `model_name` that is not
        one of `model_names` (`check_model_names`; None: none declared, any name): two tasks
        may share a layout and differ in their layers."""
        over = self.refused.get(task_id) if task_id is not None else None
        if over is not None and over.state in (TaskState.DONE, TaskState.STOPPED):
            # Stored as over: final, whatever this coordinator makes of its config.
            answer = self._end(over.task_id, f"is {over.state}: it runs no more rounds")
        elif task_id is not None and (refusal := self._not_running(task_id)) is not None:
            raise refusal  # refused or unloaded: an operator may bring it back
        elif task_id is not None and task_id in self.stopped_tasks:
            # Final, as a done task is: the device stops checking in for it.
            answer = self._end(task_id, "was stopped by the operator; it runs no more rounds")
        else:
            answer = self._check_in(
                device_id, task_id, features, max_model_bytes, model_layouts, model_names
            )
        if awaiting_round is not None:
            answer.round_outcome = str(self.upload_outcome(awaiting_round, device_id))
        return answer

    def _check_in(
        self,
        device_id: str,
        task_id: int | None,
        features: frozenset[str],
        max_model_bytes: int | None = None,
        model_layouts: Collection[str] | None = None,
        model_names: Collection[str] | None = None,
    ) -> CheckInResponse:
        now = self.clock()
        retry: float | None = None
        pace = 0.0
        # Why each task the device's SDK cannot run (it lacks a feature) was passed over.
        passed_over: list[str] = []
        # Why each task whose model is over the device's max_model_bytes, or of a layout it did
        # not declare, was passed over.
        too_large: list[str] = []
        for rt in sorted(self.runtimes.values(), key=lambda r: r.task_id):
            if task_id is not None and rt.task_id != task_id:
                continue
            if rt.requires and not rt.requires <= features:
                # Before the assignment of a selected device too: one selected before this
                # check existed (a coordinator upgraded mid-round) gets none from such a
                # check-in. A task named: refused (a done one goes on to its "end", as for
                # any device). None named: passed over, and said and counted only for a task
                # that would take devices now (not a paused or stopped one).
                if task_id is not None and rt.state != TaskState.DONE:
                    raise ApiError(409, Reason.SDK_UNSUPPORTED, self._unsupported(rt, features))
                if task_id is None:
                    if self._takes_devices(rt):
                        passed_over.append(self._unsupported(rt, features))
                    continue
            if max_model_bytes is not None and rt.spec.dense_bytes > max_model_bytes:
                # As a missing feature, before a selected device's assignment too (one
                # selected while it declared a larger limit, or none, gets no assignment it
                # would refuse). Out of the pool as well: it may be there from such a check-in,
                # and a round opened by another device's check-in must not select it.
                rt.pool.pop(device_id, None)
                if task_id is not None and rt.state != TaskState.DONE:
                    raise ApiError(
                        409, Reason.MODEL_TOO_LARGE, _too_large(rt, max_model_bytes, self.metrics)
                    )
                if task_id is None:
                    if self._takes_devices(rt):
                        too_large.append(_too_large(rt, max_model_bytes, self.metrics))
                    continue
            other_layout = model_layouts is not None and rt.layout not in model_layouts
            other_name = (
                model_names is not None
                and bool(rt.config.model_name)
                and rt.config.model_name not in model_names
            )
            if other_layout or other_name:
                # As a model over max_model_bytes: the device cannot train this task's model
                # (an app whose trainer's model is fixed, such as an ONNX Runtime device's
                # artifacts). Selected, it would refuse the assignment and leave its slot empty
                # till the round's deadline; so not in the pool either. The name too: a task
                # of the same layout and another model name has other layers (helper-338: an
                # ONNX device was given such a task at every check-in, never its own).
                rt.pool.pop(device_id, None)
                named = task_id is not None and rt.state != TaskState.DONE
                if named or (task_id is None and self._takes_devices(rt)):
                    why = (
                        _other_layout(rt, model_layouts, self.metrics)
                        if other_layout and model_layouts is not None
                        else _other_model(rt, model_names or (), self.metrics)
                    )
                    if named:
                        raise ApiError(409, Reason.MODEL_LAYOUT_MISMATCH, why)
                    too_large.append(why)
                if task_id is None:
                    continue
            cur = rt.current
            if cur is not None and not cur.closing and now < cur.deadline:
                # Before the state check: a task paused after this round opened still lets
                # its selected devices learn their assignment (the round in flight closes as
                # usual; a pause only stops new rounds and new devices joining the pool).
                # A secure round takes a device only while its advertise-keys stage is open:
                # past it, an assignment would have it download and train for nothing.
                if (
                    device_id in cur.selected
                    and device_id not in cur.uploaded
                    and (rt.secure is None or rt.secure.registry.joinable(cur.round_id, device_id))
                ):
                    self.metrics.check_ins.labels(CheckInAction.TRAIN).inc()
                    return CheckInResponse(CheckInAction.TRAIN, 0.0, self._assignment(rt, cur))
            if not self._takes_devices(rt):
                continue
            if not self._expire_pool(rt, now):
                rt.waiting_since = now  # the selection timeout runs from the first device
            rt.pool[device_id] = now
            rt.pool.move_to_end(device_id)  # the pool stays ordered by last check-in
            if cur is None and self._maybe_open(rt, now):
                cur = rt.current
                assert cur is not None
                if device_id in cur.selected:
                    self.metrics.check_ins.labels(CheckInAction.TRAIN).inc()
                    return CheckInResponse(CheckInAction.TRAIN, 0.0, self._assignment(rt, cur))
            if cur is None or cur.closing:
                wait = self.config.poll_s
            else:
                # The round in flight ends by its deadline; come back around then.
                wait = min(max(cur.deadline - now, self.config.poll_s), rt.config.retry_after_s)
            retry = wait if retry is None else min(retry, wait)
            # Pace steering: spread each pool's check-ins so that together they stay under
            # `max_checkin_rate` per second, however many devices there are. A device in
            # several pools (a check-in naming no task) is paced by the largest: the soonest
            # wait of another task must not undo it.
            pace = max(pace, len(rt.pool) / self.config.max_checkin_rate)
        if retry is None and task_id is not None and self._task_done(task_id):
            # Final: a "wait" here had the device poll for as long as its app let it.
            return self._end(task_id, "is done: it runs no more rounds")
        self.metrics.check_ins.labels(CheckInAction.WAIT).inc()
        if retry is None:
            # No task named, or one paused or awaiting its model: any of them may run later.
            # A device whose SDK cannot run the tasks there are: so may one it can, and its
            # check-ins stay as slow as an idle device's (counted for the operator).
            detail = "no active task"
            if too_large:
                detail = f"no active task this device can run: {'; '.join(passed_over + too_large)}"
            elif passed_over:
                detail = f"no active task this device's SDK can run: {'; '.join(passed_over)}"
            idle = min(self.config.idle_retry_s, MAX_RETRY_AFTER_S)
            return CheckInResponse(CheckInAction.WAIT, idle, None, detail)
        # Whatever the pool and the rate, a device is not told to sleep longer than a week.
        retry = min(max(retry, pace), MAX_RETRY_AFTER_S)
        return CheckInResponse(CheckInAction.WAIT, round(retry, 3), None, "not selected yet")

    @staticmethod
    def _takes_devices(rt: TaskRuntime) -> bool:
        """Whether `rt` takes devices into its pool now: active, with rounds left to run."""
        return (
            rt.state == TaskState.ACTIVE
            and rt.rounds_closed < rt.config.rounds
            and not rt.engine.stopped
        )

    def _unsupported(self, rt: TaskRuntime, features: frozenset[str]) -> str:
        """Count a check-in that cannot be given `rt`'s rounds (its features lack some of
        `rt.requires`) and say why, for the device's app."""
        missing = sorted(rt.requires - features)
        for name in missing:
            self.metrics.check_ins_sdk_unsupported.labels(str(rt.task_id), name).inc()
        what = "; ".join(f"{name}: {_FEATURE_WHY.get(name, name)}" for name in missing)
        return (
            f"task {rt.task_id} needs feature {', '.join(missing)}, which this device's SDK "
            f"did not declare in its check-in ({what}): update the app's SDK"
        )

    def _end(self, task_id: int, why: str) -> CheckInResponse:
        """The "end" answer to a check-in naming a task that runs no more rounds."""
        self.metrics.check_ins.labels(CheckInAction.END).inc()
        # At most a week, as every check-in wait is (the idle "wait" answer caps it alike).
        wait = min(self.config.idle_retry_s, MAX_RETRY_AFTER_S)
        return CheckInResponse(CheckInAction.END, wait, None, f"task {task_id} {why}")

    def _task_done(self, task_id: int) -> bool:
        """Whether the task a check-in named, and found nothing to do in, is done; a 404
        `unknown_task` when there is no such task. (`check_in` has already answered stopped
        tasks "end" and refused or unloaded ones with `_not_running`'s error.) The store is read only for a task with no runtime: one awaiting
        its model, or none."""
        rt = self.runtimes.get(task_id)
        if rt is not None:
            return rt.state == TaskState.DONE
        if self.store.task(task_id) is None:
            raise ApiError(404, Reason.UNKNOWN_TASK, f"no task {task_id}")
        return False

    def tick(self) -> list[TaskRuntime]:
        """Periodic work: open rounds whose selection timed out, close secure stages whose
        deadline passed, rebuild unloaded tasks whose retry is due; return rounds due to
        close."""
        now = self.clock()
        if self.unloaded or self._rebuild_at:
            self._reload_due(now)
        for rt in self.runtimes.values():
            if rt.current is None:
                self._maybe_open(rt, now)
            elif rt.secure is not None and not rt.current.closing:
                st = rt.secure.settings
                rt.secure.registry.close_due(
                    rt.current.round_id, st.stage_timeout_s, st.stage_idle_s
                )
        return [rt for rt in self.pending_closes() if rt.current and not rt.current.close_started]

    # -- model download --------------------------------------------------------------------

    def model(
        self, task_id: int, have: int | None, fmt: str, dtype: str, device_id: str | None = None
    ) -> tuple[bytes, dict[str, str], TaskRuntime]:
        """(body, headers, runtime) of a model download; see docs/http-api.md. The route
        reads a chain's frames off the event loop instead (`plan_model`, `read_chain`,
        `chain_answer`); this does all three in the caller's thread."""
        answer = self.plan_model(task_id, have, fmt, dtype, device_id)
        if answer.body is None:
            answer = self.chain_answer(answer, self.read_chain(answer))
        assert answer.body is not None
        return answer.body, answer.headers, answer.rt

    def plan_model(
        self, task_id: int, have: int | None, fmt: str, dtype: str, device_id: str | None = None
    ) -> ModelAnswer:
        """What a model download sends, decided from the stored frames' lengths before any
        frame is read: the snapshot (its body), or the delta chain from `have` (body None: the
        caller reads it with `read_chain`). A chain is sent only when it is smaller than the
        fp32 snapshot: `auto` sends the snapshot otherwise, and `format=delta` is 409
        `unknown_version` asking for the snapshot (a forced chain was sent at any size, up to
        `max_chain` frames: 14-45x the snapshot's bytes, helper-202's amplify.py). A snapshot
        for `device_id` counts against its `snapshots_per_version` (`_count_snapshot`)."""
        rt = self.runtimes.get(task_id)
        if rt is None:
            if (refusal := self.refusal(task_id)) is not None:
                raise refusal
            rt = self.runtimes.get(task_id)  # an unloaded task rebuilt just now
        if rt is None:
            raise ApiError(404, Reason.UNKNOWN_TASK, f"no task {task_id} with a model")
        v = rt.version
        chain_ok = have is not None and 0 <= have <= v and v - have <= rt.config.max_chain
        if fmt == "delta" and not chain_ok:
            if have is None:
                why = "ask with ?have=<the version you hold>, or for the snapshot"
            elif have > v:
                # Ahead of the coordinator (a restored backup, another task's version): no
                # chain leads back; "max chain" would point the wrong way.
                why = f"the task is at version {v}, older than {have}; ask for the snapshot"
            else:
                why = f"max chain {rt.config.max_chain}; ask for the snapshot"
            start = "no version named (?have=)" if have is None else f"version {have}"
            raise ApiError(
                409, Reason.UNKNOWN_VERSION, f"no delta chain from {start} to {v} ({why})"
            )
        if fmt in ("auto", "delta") and chain_ok:
            assert have is not None
            size, gone = self._chain_size(task_id, have, v)
            if gone is not None:
                # A version's frame is gone (`--keep-frames` empties those outside the chain
                # window; a hand edit): a chain that skips it would not make version v.
                if fmt == "delta":
                    raise _chain_gone(have, v)
            else:
                # A chain from the version itself (no frame) is smaller than any snapshot, whose
                # size is then not looked at: for a finished task it is read back from the store
                # and encoded (helper-381: each such request did, 66 ms for 2M parameters).
                snap = 0 if have == v else rt.snapshot_bytes()
                if have == v or size < snap:
                    headers = _model_headers(v, rt.digest, ModelEncoding.DELTA_CHAIN, True)
                    return ModelAnswer(rt, headers, None, have, fmt, dtype, device_id)
                if fmt == "delta":
                    raise ApiError(
                        409,
                        Reason.UNKNOWN_VERSION,
                        f"the delta chain from version {have} to {v} would be {size} bytes, "
                        f"no smaller than the fp32 snapshot ({snap} bytes); fetch the snapshot",
                    )
        body = rt.snapshot(dtype)
        counted = device_id is not None and self._count_snapshot(rt, device_id)
        exact = dtype == SnapshotDType.FP32
        headers = _model_headers(v, rt.digest, ModelEncoding.SNAPSHOT, exact)
        return ModelAnswer(rt, headers, body, 0, fmt, dtype, device_id, counted)

    def _count_snapshot(self, rt: TaskRuntime, device_id: str) -> bool:
        """Count one snapshot of `rt`'s current version for `device_id` (True; False when
        there is no limit), or refuse it (429 `rate_limited`) past `snapshots_per_version`
        within `SNAPSHOT_WINDOW_S`. One device pulled 735 snapshots in 4 s before (helper-202);
        the counts are per task, and dropped whole when its version changes. Counted as the
        answer is planned, so that concurrent requests cannot all pass; `uncount_snapshot`
        gives it back when none of the answer went out."""
        cap = self.config.snapshots_per_version
        if not cap:
            return False
        version, counts = self._snapshot_counts.get(rt.task_id, (-1, {}))
        if version != rt.version:
            counts = {}
            self._snapshot_counts[rt.task_id] = (rt.version, counts)
        now = self.clock()
        start, n = counts.get(device_id, (now, 0))
        if now - start >= SNAPSHOT_WINDOW_S:
            start, n = now, 0
        if n >= cap:
            wait = max(1, math.ceil(start + SNAPSHOT_WINDOW_S - now))
            self.metrics.model_snapshots_rate_limited.inc()
            raise ApiError(
                429,
                Reason.RATE_LIMITED,
                f"this device fetched {n} snapshots of version {rt.version} of task "
                f"{rt.task_id} within {SNAPSHOT_WINDOW_S:g} s, the limit: keep the model and ask "
                f"with have=<its version> (a delta chain, or nothing new); retry in {wait} s or "
                "at the next version",
                headers={Header.RETRY_AFTER: str(wait)},
            )
        if device_id not in counts and len(counts) >= 1024 and not len(counts) & (len(counts) - 1):
            # At each power of two from 1,024: drop the devices whose window has passed, so a
            # version served for long holds about the devices of one window, not every device
            # that ever fetched it (amortized O(1) a snapshot).
            for dev in [d for d, (t0, _) in counts.items() if now - t0 >= SNAPSHOT_WINDOW_S]:
                del counts[dev]
        counts[device_id] = (start, n + 1)
        return True

    def uncount_snapshot(self, answer: ModelAnswer) -> None:
        """Give back the snapshot `answer` counted (`_count_snapshot`): nothing of it went out,
        the device's connection having closed first (the wire middleware's `on_dropped`, when
        the ledger counts the exchange nowhere either). Before, such answers spent the device's
        limit: one on a link that kept dropping was refused its first real download for up to
        `SNAPSHOT_WINDOW_S` (helper-408)."""
        if not answer.counted or answer.device_id is None:
            return
        version, counts = self._snapshot_counts.get(answer.rt.task_id, (-1, {}))
        start_n = counts.get(answer.device_id)
        if version != int(answer.headers[Header.MODEL_VERSION]) or start_n is None:
            return  # a new version since: its counts started again
        start, n = start_n
        if n > 0:
            counts[answer.device_id] = (start, n - 1)

    def read_chain(self, answer: ModelAnswer) -> bytes | None:
        """The delta chain `plan_model` chose, packed; None when a frame on the way was
        emptied since (`--keep-frames` ran in between). Only store reads: the route runs it in
        a worker thread, so a long chain's reads do not hold the event loop."""
        frames, gone = self._chain_frames(
            answer.rt.task_id, answer.have, int(answer.headers[Header.MODEL_VERSION])
        )
        return None if gone is not None else pack_chain(frames)

    def chain_answer(self, answer: ModelAnswer, chain: bytes | None) -> ModelAnswer:
        """`answer` with the chain `read_chain` read; when it found a frame gone, what
        `plan_model` answers without a chain (the current snapshot under `auto`)."""
        if chain is not None:
            return dataclasses.replace(answer, body=chain)
        v = int(answer.headers[Header.MODEL_VERSION])
        if answer.fmt == "delta":
            raise _chain_gone(answer.have, v)
        return self.plan_model(answer.rt.task_id, None, answer.fmt, answer.dtype, answer.device_id)

    def _chain_size(self, task_id: int, after: int, upto: int) -> tuple[int, int | None]:
        """The bytes of the delta chain taking version `after` to `upto` (its header, length
        table and frames), and the first version on the way whose frame is gone (None: the
        chain is whole), from the stored frames' lengths: no frame is read (SQLite keeps a
        blob's length in its record header)."""
        stored = self.store.frame_lengths(task_id, after, upto)
        versions = range(after + 1, upto + 1)
        gone = next((ver for ver in versions if ver not in stored), None)
        if gone is not None:
            return 0, gone
        return chain_bytes(stored[ver] for ver in versions), None

    # -- uploads ---------------------------------------------------------------------------

    def _runtime_for_round(self, round_id: int) -> tuple[TaskRuntime, ActiveRound] | None:
        for rt in self.runtimes.values():
            if rt.current is not None and rt.current.round_id == round_id:
                return rt, rt.current
        return None

    def submit(
        self,
        round_id: int,
        device_id: str,
        idempotency_key: str,
        frame: bytes,
        train_loss: float | None = None,
    ) -> tuple[UploadReceipt, TaskRuntime | None]:
        """Accept one upload durably. Returns (UploadReceipt, runtime to close now or None).

        `train_loss`: the device's mean training loss sent with it (`?train_loss=`, checked by
        `check_train_loss`), stored with the update; 422 `train_loss_refused` to a round whose
        assignment did not ask for one (`TaskRuntime.report_loss`), the upload not taken."""
        found = self._runtime_for_round(round_id)
        if found is None and self.unloaded:
            # A round of an unloaded task: rebuilt here when due, so that its round takes the
            # upload; else the 503 below.
            owner = self.store.round_task(round_id)
            if owner is not None and owner in self.unloaded:
                self.refusal(owner)
                found = self._runtime_for_round(round_id)
        existing = self.store.find_update(round_id, device_id, frame)
        if existing is not None:
            key, size, same = existing
            if key == idempotency_key and not same:
                raise ApiError(
                    409,
                    Reason.DUPLICATE_UPLOAD,
                    "idempotency key already used for a different update in this round",
                )
            if key == idempotency_key or same:
                # The same bytes under another key are the stored upload too (a device whose
                # record of the key was damaged): refused as a duplicate, its SDK would put the
                # content back into its residual and send it again in a later round.
                reports = found[1].reports if found else self.store.count_updates(round_id)
                return UploadReceipt(round_id, device_id, True, True, size, reports), None
            raise ApiError(
                409, Reason.DUPLICATE_UPLOAD, f"device already reported in round {round_id}"
            )
        if found is None:
            owner = self.store.round_task(round_id)
            if owner is None:
                raise ApiError(404, Reason.UNKNOWN_ROUND, f"no round {round_id}")
            if (refusal := self.refusal(owner)) is not None:
                raise refusal  # its accepted updates stay stored; no new one is taken
            raise ApiError(409, Reason.ROUND_CLOSED, f"round {round_id} is closed")
        rt, cur = found
        if rt.secure is not None:
            # A plaintext frame would skip SecAgg's clip and reach the engine, whose close then
            # publishes it besides the unmasked sum (two versions, one stored delta frame).
            raise ApiError(
                409,
                Reason.INVALID_STATE,
                f"round {round_id} is secure: send the update through /v1/secure/rounds stages",
            )
        if device_id not in cur.selected:
            raise ApiError(403, Reason.NOT_SELECTED, f"device not selected for round {round_id}")
        if cur.closing or self.clock() >= cur.deadline or cur.reports >= cur.target:
            raise ApiError(409, Reason.ROUND_CLOSED, f"round {round_id} is closed (straggler)")
        if train_loss is not None and not rt.report_loss:
            # Not stored and not taken: a device's loss is data-dependent, and this task's
            # privacy (a dp stage) does not account for it.
            raise ApiError(
                422,
                Reason.TRAIN_LOSS_REFUSED,
                f"round {round_id}'s task takes no training loss with an upload (it has "
                "differential privacy; its assignment did not set report_loss): send the "
                "update without train_loss",
            )
        held = False  # whether the engine took the frame
        try:
            with self.store.transaction() as db:
                state = db.execute(
                    "SELECT state FROM rounds WHERE round_id=?", (round_id,)
                ).fetchone()
                if state is None or state[0] != RoundState.OPEN:
                    raise RoundClosed(f"round {round_id} is not open")
                self.store.insert_update(
                    db, round_id, device_id, idempotency_key, frame, self.clock(), train_loss
                )
                # Decoding inside the transaction: a frame the engine refuses is never stored.
                rt.engine.submit(cur.engine_round, device_id, frame)
                held = True
        except (sqlite3.Error, OSError):
            if held:
                # The COMMIT failed (a full disk) after the engine took the frame: memory
                # must not hold an update the store lost (the device's retry would be called
                # a duplicate, and a restart would drop it). Rebuild from the store.
                self._reload(rt.task_id)
            raise
        except CodecError as exc:
            raise ApiError(422, Reason.BAD_FRAME, f"update frame refused: {exc}") from None
        except NotSelected as exc:
            raise ApiError(403, Reason.NOT_SELECTED, str(exc)) from None
        except DuplicateUpload as exc:
            raise ApiError(409, Reason.DUPLICATE_UPLOAD, str(exc)) from None
        except RoundClosed as exc:
            raise ApiError(409, Reason.ROUND_CLOSED, str(exc)) from None
        except UnknownRound as exc:
            raise ApiError(404, Reason.UNKNOWN_ROUND, str(exc)) from None
        fault_point("after_accept")
        cur.reports += 1
        cur.uploaded.add(device_id)
        cur.upload_bytes += len(frame)
        if train_loss is not None:
            cur.losses[device_id] = train_loss
        self.metrics.updates_accepted.inc()
        receipt = UploadReceipt(round_id, device_id, True, False, len(frame), cur.reports)
        return receipt, (rt if cur.reports >= cur.target else None)

    # -- close: aggregate + publish --------------------------------------------------------

    def begin_close(self, rt: TaskRuntime) -> ActiveRound | None:
        """Freeze the round (no more uploads); None if it is already closing elsewhere."""
        cur = rt.current
        if cur is None:
            return None
        if cur.close_started:
            return None
        # Durable first: if the store refuses, the round stays open and the next tick retries
        # (flags set before a failed write would leave it closing forever).
        self.store.set_round_state(cur.round_id, RoundState.AGGREGATING)
        cur.closing = True
        cur.close_started = True
        return cur

    def _pending_dp_writer(
        self, rt: TaskRuntime, round_id: int
    ) -> Callable[[dict[str, Any]], None]:
        """What a secure DP round (`round_id`) calls before a group's unmask request goes out
        (`SecureTask.on_unmask_request`): it stores the round's `pending_dp` durably, and keeps
        it on the round. Once that group's survivors answer, the server holds t shares of every
        secret its unmask needs and a curious server can unmask the sum, so a stop or a crash
        from then on counts the release (`_released_dp`, `_abandon_stopped`). A write that
        fails, or finds the round finished, raises: the group aborts, no request sent."""

        def write(dp: dict[str, Any]) -> None:
            if not self.store.set_round_measurements(round_id, {"pending_dp": dp}):
                raise RuntimeError(f"round {round_id} is no longer open")
            cur = rt.current
            if cur is not None and cur.round_id == round_id:
                cur.pending_dp = dp

        return write

    def _close_secure(self, rt: TaskRuntime, cur: ActiveRound) -> RoundOutcome:
        """Unmask, then publish the group mean through the same downlink path as plain rounds."""
        assert rt.secure is not None
        t0 = time.perf_counter()
        reasons = rt.secure.registry.abort_reasons(cur.round_id)

        def before_unmask(dp: dict[str, Any]) -> None:
            # Durable before any sum is unmasked: a crash or a failed publish after the
            # unmask must not drop a release the server has seen from epsilon.
            cur.pending_dp = dp
            self.store.set_round_measurements(cur.round_id, {"pending_dp": dp})

        secure = rt.secure.registry.finish(
            cur.round_id, before_unmask, min_contributors=cur.min_reports
        )
        rt.engine.close_round(cur.engine_round)  # its bookkeeping only: it holds no updates
        meas: dict[str, Any] = dict(secure.measurements)
        meas["secure"] = True
        meas["dropped"] = sorted(secure.dropped)
        if suspects := rt.secure.registry.suspect_devices(cur.round_id):
            # Also those of a group that aborted on too many corrected secrets (its reason
            # names their node numbers only).
            meas["suspect_devices"] = sorted({*meas.get("suspect_devices", ()), *suspects})
        if reasons:
            meas["aborted"] = reasons
        if find_measurement(meas, "budget_exhausted") is True:
            rt.engine.stopped = True  # its epsilon budget is spent: no round opens again
        version = rt.engine.version
        if secure.committed:
            rt.strategy.round_key = cur.round_id
            rt.strategy.publish(
                rt.engine, cur.engine_round, AggregateOutput(None, secure.update, meas)
            )
            rt.engine.version += 1
            version = rt.engine.version
        else:
            meas.setdefault("abandoned", _secure_abandon_reason(meas.get("abort_reasons")))
        outcome = RoundOutcome(
            cur.engine_round, secure.committed, len(secure.contributors), version, meas
        )
        outcome = self._store_close(rt, cur, outcome, meas)
        self.metrics.aggregate_seconds.observe(time.perf_counter() - t0)
        return outcome

    def close_blocking(self, rt: TaskRuntime, cur: ActiveRound) -> RoundOutcome:
        """Aggregate and publish durably (runs in a worker thread); a stopped task's round is
        abandoned instead (its stop's own abandon did not reach the store, or the stop landed
        as this close began)."""
        if rt.state == TaskState.STOPPED:
            return self._abandon_stopped(rt, cur)
        if rt.secure is not None:
            return self._close_secure(rt, cur)
        t0 = time.perf_counter()
        rt.strategy.round_key = cur.round_id
        outcome = rt.engine.close_round(cur.engine_round)
        measurements = dict(outcome.measurements)
        if outcome.committed:
            # Only a committed round's: one abandoned below min_reports may hold a single
            # report, whose loss any registered device could then read in the round's status
            measurements.update(loss_measurements(cur.losses.values()))
        outcome = self._store_close(rt, cur, outcome, measurements)
        self.metrics.aggregate_seconds.observe(time.perf_counter() - t0)
        return outcome

    def _store_close(
        self, rt: TaskRuntime, cur: ActiveRound, outcome: RoundOutcome, meas: dict[str, Any]
    ) -> RoundOutcome:
        """Write a close's outcome to the store (worker thread): publish the engine's new
        model if `outcome.committed`, else abandon the round with `meas`. A stop answered
        since the aggregation began wins: the aggregate is discarded (the engine's copy of it
        is never served: a stopped task runs no round again, and a start rebuilds it from the
        store) and the round abandoned as stopped, its accepted updates kept."""
        with self._close_lock:
            if rt.state == TaskState.STOPPED:
                outcome = self._abandon_stopped(rt, cur, closed=True)
                if rt.secure is None:
                    # A secure round's unmasked sums do count, in its pending dp record.
                    self._dp_gauges_to_last_release(rt)
            else:
                now = self.clock()
                done = rt.rounds_closed + 1 >= rt.config.rounds or rt.engine.stopped
                task_state = TaskState.DONE if done and rt.state == TaskState.ACTIVE else rt.state
                if outcome.committed:
                    self._publish(rt, cur, outcome.version, meas, task_state, now)
                    if rt.secure is not None:
                        rt.secure.set_params(rt.engine.params)
                else:
                    self.store.abandon(cur.round_id, rt.task_id, meas, task_state, now)
            cur.stored = outcome
        if outcome.committed and cur.published is not None:
            # Out of the lock and off the event loop: the first model download of each
            # version weighs a chain against this snapshot, or sends it (177 ms for 6 M
            # parameters, on the event loop before; helper-408).
            cur.published.fp32 = encode_snapshot(cur.published.params, rt.spec, SnapshotDType.FP32)
        return outcome

    def _publish(
        self,
        rt: TaskRuntime,
        cur: ActiveRound,
        version: int,
        measurements: dict[str, Any],
        task_state: str,
        now: float,
    ) -> None:
        """Commit the engine's new model, its downlink delta and residual in one transaction
        (plain and secure rounds alike)."""
        frame = rt.strategy.last_frame
        assert frame is not None and not rt.released
        params = rt.engine.params
        measurements["downlink_frame_bytes"] = len(frame)
        if rt.strategy.last_fallback is not None:
            # The step was beyond the downlink codec's range: its frame carries fp32 values.
            measurements["downlink_bits"] = 32
        # A secure task aggregates inside SecAgg (its engine's aggregator never runs); what it
        # carries between rounds is the secure coordinator's scores and group aggregator state.
        carried = (
            rt.secure.coordinator.carried_state()
            if rt.secure is not None
            else rt.engine.aggregator_state
        )
        agg_state = encode_state(carried)
        digest = model_digest(params).hex()
        self.store.publish(
            task_id=rt.task_id,
            round_id=cur.round_id,
            version=version,
            delta_frame=frame,
            digest=digest,
            params=params.astype("<f4").tobytes(),
            residual=rt.strategy.feedback.to_bytes(),
            measurements=measurements,
            task_state=task_state,
            now=now,
            agg_state=agg_state,
            before_commit=lambda: fault_point("during_publish"),
        )
        cur.published = PublishedModel(np.array(params, dtype=np.float32, copy=True), digest)
        if rt.secure is None:
            rt.committed_state = carried  # committed: the round's release counts from now

    def finish_close(self, rt: TaskRuntime, outcome: RoundOutcome) -> None:
        """Make the published model visible and reset for the next round (event-loop side)."""
        now = self.clock()
        was_active = rt.state == TaskState.ACTIVE
        rt.rounds_closed += 1
        if outcome.committed:
            rt.rounds_committed += 1
            pub = rt.current.published if rt.current is not None else None
            if pub is None:  # not through `_publish` (never so today)
                params = np.array(rt.engine.params, dtype=np.float32, copy=True)
                pub = PublishedModel(params, model_digest(params).hex())
            rt.set_published(pub.params, outcome.version, pub.digest, pub.fp32)
            self.metrics.rounds.labels("committed").inc()
            if rt.current is not None and rt.secure is None:
                # The figures its close stored (`close_blocking`), from the same losses.
                self.metrics.observe_train_loss(
                    rt.task_id, loss_measurements(rt.current.losses.values())
                )
        else:
            self.metrics.rounds.labels("abandoned").inc()
        if rt.rounds_closed >= rt.config.rounds or rt.engine.stopped:
            if rt.state == TaskState.ACTIVE:
                rt.state = TaskState.DONE
                self._store_done(rt)
        if rt.secure is not None and rt.current is not None:
            rt.secure.registry.discard(rt.current.round_id)  # drop keys, shares, masked sum
            dp = outcome.measurements.get("dp")
            if isinstance(dp, dict):  # also an uncommitted round whose sum was unmasked
                rt.privacy_metrics.observe(
                    epsilon=float(dp["epsilon"]),
                    delta=float(dp["delta"]),
                    rounds=int(dp["rounds"]),
                    noise_multiplier=float(dp["noise_multiplier"]),
                    clip=rt.secure.settings.config.clip_norm,
                    budget_exhausted=bool(dp.get("budget_exhausted", False)),
                )
            if find_measurement(outcome.measurements, "budget_exhausted") is True:
                rt.privacy_metrics.budget_exhausted.set(1.0)  # also a round refused unreleased
        if rt.current is not None:
            self._log_outcome(rt, rt.current, outcome, now)
        if was_active and rt.state == TaskState.DONE:
            self._done_task_ends(rt)
        rt.current = None
        rt.waiting_since = now
        self.metrics.model_version.labels(str(rt.task_id)).set(rt.version)
        self._release_if_finished(rt)

    def _log_outcome(
        self, rt: TaskRuntime, cur: ActiveRound, outcome: RoundOutcome, now: float
    ) -> None:
        """A closed round's line, as its "opened" line: the version it published, or why it
        was abandoned (the reason its status records). Counts and sizes only, no content."""
        kind = "secure round" if rt.secure is not None else "round"
        closed = f"{rt.rounds_closed} of the task's {rt.config.rounds} rounds closed"
        meas = outcome.measurements
        if outcome.committed:
            frame = rt.strategy.last_frame  # the delta this close published
            down = "?" if frame is None else str(len(frame))
            if rt.secure is not None:
                detail = f"{len(meas.get('dropped', ()))} dropped"
            else:
                detail = f"{cur.upload_bytes} update bytes"
            log.info(
                "task %d %s %d committed model version %d from %d reports of %d selected "
                "devices (%s, a %s-byte downlink delta); %s",
                rt.task_id, kind, cur.round_id, outcome.version, outcome.reports,
                len(cur.selected), detail, down, closed,
            )  # fmt: skip
            return
        reason = meas.get("abandoned") or meas.get("error") or "no reason recorded"
        log.info(
            "task %d %s %d abandoned: %s (%d reports of %d selected devices%s); %s",
            rt.task_id, kind, cur.round_id, reason, outcome.reports, len(cur.selected),
            ", at its deadline" if now >= cur.deadline else "", closed,
        )  # fmt: skip

    def _store_done(self, rt: TaskRuntime) -> None:
        """Store `done` for a task its last round's close finished in memory. The close's
        commit turns only a task stored `active` into `done`, from the state it read before:
        a resume that landed while the close ran (the task paused when the close read it, or
        the resume after the commit) stored `active`, and the task read `active` after a
        restart with no round left to run, its devices told to wait for good (s44 review).
        Here, on the event loop as pause and resume are, memory's `active` means the store
        holds `active` or `done`."""
        try:
            self.store.finish_task(rt.task_id)
        except (sqlite3.Error, OSError) as exc:
            log.warning(
                "task %d is done, but the database refused to record it (%s); it reads "
                "active after a restart until a pause and resume",
                rt.task_id,
                exc,
            )

    def _done_task_ends(self, rt: TaskRuntime) -> None:
        """A task that has closed its last round (or spent its privacy budget): its selection
        pool is dropped (no round opens again, and nothing else would expire its entries:
        check-ins and round opening skip a done task) and its line is logged."""
        rt.pool.clear()
        spent = rt.engine.stopped and rt.rounds_closed < rt.config.rounds
        log.info(
            "task %d done%s: %d of its %d rounds closed, %d committed; model version %d is final",
            rt.task_id, " (its privacy budget is spent)" if spent else "", rt.rounds_closed,
            rt.config.rounds, rt.rounds_committed, rt.version,
        )  # fmt: skip

    def fail_close(self, rt: TaskRuntime, cur: ActiveRound, exc: BaseException) -> None:
        """An aggregation or publish error abandons the round (and ends the task if it was
        its last) and rebuilds the task from the store. If the store cannot record that
        either, the round stays `aggregating` (its devices told to wait) until a tick
        RELOAD_RETRY_S later rebuilds the task from the store as a start does, which closes
        that round (a plain round re-aggregated from its stored frames and published; a
        secure one abandoned, counting its `pending_dp`). A close that stored its outcome
        before it failed writes nothing: the round counts as stored (committed), once (not
        again if a stop finished the close meanwhile); one the store held finished before
        this close could write it (abandoned behind memory's back) is not counted."""
        log.error("round %d failed to aggregate or publish: %r", cur.round_id, exc)
        if rt.secure is None:
            # Unless the publish was stored, as for a stop's discarded aggregate
            # (`_store_close`). Now, not at the rebuild: a refused abandonment defers that,
            # and an unloaded task's series stay served until it loads again. A store that
            # cannot be read leaves them to the rebuild.
            with contextlib.suppress(sqlite3.Error, OSError):
                self._dp_gauges_to_last_release(rt)
        meas: dict[str, Any] = {"error": repr(exc)}
        if cur.pending_dp is not None:
            meas["dp"] = cur.pending_dp  # its sums may have been unmasked: they count
        # Its last round failing ends the task, as its abandonment at the deadline does (it
        # stayed `active` with no round left to open, its devices told to wait, for good).
        done = rt.rounds_closed + 1 >= rt.config.rounds or rt.engine.stopped
        task_state = TaskState.DONE if done and rt.state == TaskState.ACTIVE else rt.state
        # What the store records of the round, counted as such: "committed", "abandoned", or
        # None for a round the store held finished before this close could write it.
        outcome: str | None
        try:
            if cur.stored is not None:
                # Its close stored the round's outcome before it failed (a publish committed,
                # then encoding the new version's snapshot failed): that record is final, and
                # nothing is written (`Store.abandon` would leave it alone; a store refusing
                # the write would leave the round uncounted, the rebuild 5 s later finding
                # nothing to close).
                outcome = "committed" if cur.stored.committed else "abandoned"
            elif self.store.abandon(cur.round_id, rt.task_id, meas, task_state, self.clock()):
                outcome = "abandoned"
            else:
                # Finished in the store already (`Store.abandon` changes only an unfinished
                # round): committed by this close's publish, which failed after its commit, or
                # abandoned behind memory's back (its publish then refused: `RoundStateError`).
                found = self.store.round_state(cur.round_id)
                committed = found is not None and found[1] == RoundState.COMMITTED
                outcome = "committed" if committed else None
        except (sqlite3.Error, OSError) as store_exc:
            log.error(
                "round %d: the store refused its abandonment too: %r; task %d is rebuilt from "
                "the store in %g s, which closes the round",
                cur.round_id,
                store_exc,
                rt.task_id,
                RELOAD_RETRY_S,
            )
            # The engine in memory may hold the aggregate the store refused: it is dropped at
            # the rebuild, never published. Not rebuilt at once: the store has just failed
            # twice. Meanwhile the runtime answers as for any round while it aggregates.
            self._rebuild_at[rt.task_id] = self.clock() + RELOAD_RETRY_S
            return
        kind = "secure round" if rt.secure is not None else "round"
        if rt.current is not cur:
            # A stop finished the close meanwhile from what it stored (`stop_task`), which
            # counted and logged the round, and ended the task if it was done.
            log.warning(
                "task %d %s %d: its close failed after a stop finished it: %s (the task is "
                "rebuilt from the store)",
                rt.task_id, kind, cur.round_id, meas["error"],
            )  # fmt: skip
        elif outcome == "abandoned":
            self.metrics.rounds.labels("abandoned").inc()
            log.info(
                "task %d %s %d abandoned: %s (its close failed; the task is rebuilt from the store)",
                rt.task_id, kind, cur.round_id, meas["error"],
            )  # fmt: skip
        elif outcome is None:
            # Not closed by this process: not counted (as `close_round`'s `RoundStateError`).
            log.error(
                "task %d %s %d: its close failed (%s); the store holds the round finished "
                "already, not by this close (the task is rebuilt from the store)",
                rt.task_id, kind, cur.round_id, meas["error"],
            )  # fmt: skip
        else:
            # Its publish had committed (the close failed after it: the snapshot encoding), so
            # the store keeps the round committed and the rebuild serves its version: counted
            # and logged as committed.
            self.metrics.rounds.labels("committed").inc()
            log.warning(
                "task %d %s %d committed, then its close failed: %s (the task is rebuilt from "
                "the store, which serves the round's version)",
                rt.task_id, kind, cur.round_id, meas["error"],
            )  # fmt: skip
        # A last round's: the rebuild ends the task (`_build`'s `was_active`), here or once an
        # unloaded task loads again.
        self._reload(rt.task_id)

    def _dp_gauges_to_last_release(self, rt: TaskRuntime) -> None:
        """A plain task's dp gauges back to its last committed round's: DPMean set them while
        aggregating a noised sum that is never released (a stop discarded it, or its close
        failed). Store errors propagate."""
        newest = self.store.last_round(rt.task_id, RoundState.COMMITTED)
        _observe_stored_dp(rt.privacy_metrics, rt.config, [newest] if newest else [])

    def _held_active(self, task_id: int) -> bool:
        """Whether memory holds a task active: its runtime's state, or for an unloaded task
        the state its runtime had when it was unloaded."""
        old = self.runtimes.get(task_id)
        if old is not None:
            return old.state == TaskState.ACTIVE
        unloaded = self.unloaded.get(task_id)
        return unloaded is not None and unloaded.active

    def _reload(self, task_id: int) -> bool:
        """Rebuild a running task from the store (after a failed publish or upload commit, or
        when an unloaded task's retry is due); whether it runs now. A store error (the store
        cannot be read yet) unloads it (`unloaded`), to be tried again; a task whose stored
        rows no longer load is refused until the next start, with the reason, as at start."""
        try:
            rt = self._build(task_id, rebuild=True, was_active=self._held_active(task_id))
        except (sqlite3.Error, OSError) as exc:
            self._unload(task_id, exc)
            return False
        except Exception as exc:  # noqa: BLE001 - as at start: this task only
            self._refuse(task_id, exc)
            return False
        if self.unloaded.pop(task_id, None) is not None:
            self.metrics.tasks_unloaded.set(len(self.unloaded))
            log.info("task %d: loaded again from the store", task_id)
        self.runtimes[task_id] = rt
        return True

    def _unload(self, task_id: int, exc: BaseException) -> None:
        """Stop running a task after a store error; it is rebuilt after RELOAD_RETRY_S."""
        active = self._held_active(task_id)
        old = self.runtimes.pop(task_id, None)
        before = self.unloaded.get(task_id)
        cap: int | None
        if old is not None:
            cap, dense = old.max_upload_bytes, old.spec.dense_bytes
        else:
            cap = before.upload_cap if before is not None else None
            dense = before.dense_bytes if before is not None else 0
        reason = f"{type(exc).__name__}: {exc}"
        self.unloaded[task_id] = UnloadedTask(
            task_id, reason, self.clock() + RELOAD_RETRY_S, cap, dense, active
        )
        self.metrics.tasks_unloaded.set(len(self.unloaded))
        log.error(
            "task %d is not running: the store failed while it was loaded (%s); tried again "
            "in %g s (its requests get 503 store_unavailable meanwhile)",
            task_id,
            reason,
            RELOAD_RETRY_S,
        )

    def _replaced(self, task_id: int) -> str:
        """What became of a task whose runtime a close was begun for, now that memory holds
        another runtime of it or none (unloaded or refused, `_reload`), for that close's log
        line: the close rebuilds nothing then."""
        if task_id in self.unloaded:
            return (
                "the task was unloaded meanwhile (the store failed while it was rebuilt); it is "
                "rebuilt from the store when its retry is due"
            )
        if task_id in self.refused:
            return (
                "the task was refused meanwhile (its stored rows no longer load); it does not "
                "run until the next start"
            )
        return "its runtime was rebuilt from the store meanwhile; that one is left as it is"

    def _reload_due(self, now: float) -> None:
        """Rebuild the unloaded and stalled tasks whose retry is due."""
        for task_id, at in sorted(self._rebuild_at.items()):
            if now >= at:
                del self._rebuild_at[task_id]
                if task_id in self.runtimes:  # not refused or unloaded meanwhile
                    self._reload(task_id)
        for task_id in sorted(self.unloaded):
            unloaded = self.unloaded.get(task_id)
            if unloaded is not None and now >= unloaded.retry_at:
                self._reload(task_id)

    async def close_round(self, rt: TaskRuntime) -> RoundOutcome | None:
        try:
            cur = self.begin_close(rt)
        except (sqlite3.Error, OSError) as exc:
            log.error("task %d: cannot start closing its round (%r); retried", rt.task_id, exc)
            return None
        except RoundStateError as exc:
            # The store holds the round finished (or not at all) while memory holds it open:
            # the store is the record. Nothing is written (an abandon or a publish here would
            # overwrite the round's final record, and a retry meets the same refusal at every
            # tick): the task is rebuilt from the store, as after a failed close, which serves
            # the stored model and holds no such round. Its accepted frames stay stored.
            current = self.runtimes.get(rt.task_id) is rt
            log.error(
                "task %d: cannot close its round (%s); %s",
                rt.task_id, exc,
                "the task is rebuilt from the store" if current else self._replaced(rt.task_id),
            )  # fmt: skip
            if current:  # not one a rebuild replaced meanwhile, whose successor may be closing
                self._reload(rt.task_id)
            return None
        if cur is None:
            return None
        try:
            outcome = await asyncio.to_thread(self.close_blocking, rt, cur)
        except (EngineError, ValueError, ArithmeticError, sqlite3.Error, OSError) as exc:
            # OSError and sqlite3.Error: the publish transaction failed (a full disk, a lock
            # held too long); it rolled back, so nothing of the round is visible.
            self.fail_close(rt, cur, exc)
            return None
        except Exception as exc:
            # A bug (e.g. a `PrivacyBudgetExhausted`, which validate_task and the engine's
            # stop on `budget_exhausted` should make impossible): abandon the round, logged
            # with its traceback, instead of leaving it aggregating forever with its devices
            # waiting, as an exception of a task nobody awaits.
            log.exception("round %d: unexpected error while closing", cur.round_id)
            self.fail_close(rt, cur, exc)
            return None
        if rt.current is cur:  # else a stop that landed meanwhile finished it
            self.finish_close(rt, outcome)
        # After the publish has committed, in its own transactions, off the event loop.
        await asyncio.to_thread(self.prune_frames, rt.task_id)
        return outcome

    def schedule_close(self, rt: TaskRuntime) -> None:
        task = asyncio.get_running_loop().create_task(self.close_round(rt))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for closes in flight (shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def upload_cap_for_round(self, round_id: int) -> int | None:
        """Largest legal frame for the model of a round's task (None for an unknown round)."""
        found = self._runtime_for_round(round_id)
        if found is not None:
            return found[0].max_upload_bytes
        owner = self.store.round_task(round_id)  # no JSON parsed: a damaged round has a cap
        if owner is not None and owner in self.refused:
            return self.refused[owner].upload_cap
        if owner is not None and owner in self.unloaded:
            return self.unloaded[owner].upload_cap
        rt = self.runtimes.get(owner) if owner is not None else None
        return rt.max_upload_bytes if rt is not None else None

    def attributable(
        self,
        round_id: int,
        device_id: str,
        task_id: int | None = None,
        url_round: int | None = None,
    ) -> bool:
        """Whether an exchange a device signed with `round_id` counts in that round's ledger:
        the device was selected for it, the round is open or closed at most `LEDGER_GRACE_S`
        ago, and it is the round of the request's URL (`url_round`) and a round of the task of
        the URL (`task_id`) when the URL names one. Anyone can sign any round id: without
        these a device of an old round charged any later traffic, another task's model
        downloads too, to that round. False (control traffic) when the round's stored row
        does not parse."""
        if url_round is not None and url_round != round_id:
            return False
        found = self._runtime_for_round(round_id)
        if found is not None:
            return (task_id is None or found[0].task_id == task_id) and (
                device_id in found[1].selected
            )
        try:
            r = self._stored_round(round_id)
        except (DamagedRow, ApiError):
            return False  # called while the response starts: an error here would cut it
        if r is None or (task_id is not None and r.task_id != task_id):
            return False
        if r.closed_unix is None:
            # Open in the store but not running: live only while its task waits to be rebuilt
            # after a store error (the round's requests meet 503s on its behalf meanwhile, as
            # before 324831c), not for a task refused at start.
            if r.task_id not in self.unloaded:
                return False
        elif self.clock() - r.closed_unix > LEDGER_GRACE_S:
            return False  # closed too long ago
        return self.in_round(round_id, device_id)

    def in_round(self, round_id: int, device_id: str) -> bool:
        """Whether `device_id` was selected for round `round_id` (open or closed); False when
        the round's stored selection does not parse."""
        found = self._runtime_for_round(round_id)
        if found is not None:
            return device_id in found[1].selected
        try:
            r = self._stored_round(round_id)
        except (DamagedRow, ApiError):
            return False  # called while the response starts: an error here would cut it
        if r is None:
            return False
        kept = self._kept(r)
        if kept is not None:
            return device_id in kept.cohort  # a set: no scan of the cohort
        return device_id in r.selected

    def dense_bytes_for_round(self, round_id: int) -> int:
        """Dense fp32 bytes of the model of a round's task (0 for an unknown round)."""
        found = self._runtime_for_round(round_id)
        if found is not None:
            return found[0].spec.dense_bytes
        owner = self.store.round_task(round_id)
        if owner is not None and owner in self.unloaded:
            return self.unloaded[owner].dense_bytes
        rt = self.runtimes.get(owner) if owner is not None else None
        return rt.spec.dense_bytes if rt is not None else 0

    # -- secure rounds (SecAgg+ stage endpoints) ------------------------------------------

    def _secure_round(self, round_id: int) -> tuple[TaskRuntime, ActiveRound, SecureTaskState]:
        """The open secure round `round_id`, or the ApiError that says why not."""
        found = self._runtime_for_round(round_id)
        if found is None or found[0].secure is None:
            owner = self.store.round_task(round_id)
            if owner is not None and (refusal := self.refusal(owner)) is not None:
                raise refusal
            r = self.store.round(round_id)
            rt = self.runtimes.get(r.task_id) if r is not None else None
            if r is None or rt is None or rt.secure is None:
                raise ApiError(404, Reason.UNKNOWN_ROUND, f"no secure round {round_id}")
            raise ApiError(409, Reason.ROUND_CLOSED, f"secure round {round_id} is {r.state}")
        rt, cur = found
        assert rt.secure is not None
        if cur.closing:
            raise ApiError(409, Reason.ROUND_CLOSED, f"secure round {round_id} is closing")
        return rt, cur, rt.secure

    def _secure_admits(self, cur: ActiveRound, round_id: int, device_id: str) -> None:
        """The ApiError for a setup or stage upload by a device not selected for the round
        (403) or after the round's deadline, before a tick closed it (409 `round_closed`)."""
        if device_id not in cur.selected:
            raise ApiError(403, Reason.NOT_SELECTED, f"device not selected for round {round_id}")
        if self.clock() >= cur.deadline:
            raise ApiError(409, Reason.ROUND_CLOSED, f"round {round_id} is past its deadline")

    @staticmethod
    def _secure_error(exc: Exception) -> ApiError:
        """A SecAgg refusal as an API error; the detail names the refusal's type."""
        detail = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, LookupError):
            return ApiError(404, Reason.UNKNOWN_ROUND, detail)
        if isinstance(exc, PermissionError):
            return ApiError(403, Reason.NOT_SELECTED, detail)
        if isinstance(exc, RoundAborted):
            return ApiError(410, Reason.ROUND_CLOSED, detail)
        if isinstance(exc, MalformedMessage):
            return ApiError(422, Reason.BAD_FRAME, detail)
        if isinstance(exc, DuplicateStageUpload):
            return ApiError(409, Reason.DUPLICATE_UPLOAD, detail)
        if isinstance(exc, WrongStage):
            return ApiError(409, Reason.INVALID_STATE, detail)
        return ApiError(422, Reason.BAD_FRAME, detail)  # ProtocolViolation and the rest

    def secure_setup(self, round_id: int, device_id: str) -> tuple[bytes, dict[str, str]]:
        """(plan bytes, headers with the (model, plan) digest and the device's node index).
        Refused as the device's stage upload would be: past the round's deadline too, so that
        no device trains for a round whose first upload it would be refused."""
        rt, cur, sec = self._secure_round(round_id)
        self._secure_admits(cur, round_id, device_id)
        try:
            body, digest, node = sec.registry.setup(round_id, device_id)
        except (LookupError, PermissionError, SecAggError) as exc:
            raise self._secure_error(exc) from None
        headers = {
            str(SecAggHeader.DIGEST): digest.hex(),
            str(SecAggHeader.NODE): str(node),
            "x-plume-model-version": str(cur.base_version),
        }
        return body, headers

    def secure_upload(
        self, round_id: int, stage: Stage, device_id: str, body: bytes
    ) -> tuple[bool, int, TaskRuntime | None]:
        """Accept one stage upload: (duplicate, masked inputs held, runtime to close or None).

        A refused upload changes nothing (the SecAgg server checks before it stores)."""
        rt, cur, sec = self._secure_round(round_id)
        self._secure_admits(cur, round_id, device_id)
        try:
            fresh = sec.registry.upload(round_id, stage, device_id, body)
        except (LookupError, PermissionError, SecAggError) as exc:
            raise self._secure_error(exc) from None
        if fresh and stage == Stage.ADVERTISE_KEYS:
            cur.uploaded.add(device_id)  # it has joined: a new check-in cannot restart it
        if fresh and stage == Stage.MASKED_INPUT:
            cur.reports += 1
            # Its accepted figures (`bandwidth`), durable as a plain round's frame is: once per
            # device (a byte-for-byte retry is not fresh), whether or not it answers the unmask
            # request or its group's sum is released, as a plain round's accepted frame counts
            # in a round that is then abandoned.
            self.store.ledger_add([(round_id, device_id, MASKED_INPUT_LEDGER, len(body), 0, 0)])
        return (not fresh), cur.reports, (rt if sec.registry.ready(round_id) else None)

    def secure_download(self, round_id: int, stage: Stage, device_id: str) -> bytes | None:
        """What follows `stage` for this device, or None while the stage is still open."""
        _rt, cur, sec = self._secure_round(round_id)
        if device_id not in cur.selected:
            raise ApiError(403, Reason.NOT_SELECTED, f"device not selected for round {round_id}")
        try:
            return sec.registry.download(round_id, stage, device_id)
        except (LookupError, PermissionError, SecAggError) as exc:
            raise self._secure_error(exc) from None

    def secure_upload_cap(self, round_id: int, stage: Stage) -> int | None:
        """Largest legal upload of `stage` in an open secure round (None if there is none)."""
        found = self._runtime_for_round(round_id)
        if found is None or found[0].secure is None or stage not in SECURE_STAGES:
            return None
        sec = found[0].secure
        return sec.upload_cap(round_id, stage) if sec.registry.has_round(round_id) else None

    # -- reads -----------------------------------------------------------------------------

    def round_status(self, round_id: int, only: str | None = None) -> RoundStatus:
        """A round's status (404 unknown; 409 `task_refused` for a refused task's round whose
        stored JSON does not parse). With `only` (the device asking), the measurements keep
        no other device of the round: see `_own_view`."""
        r = self._stored_round(round_id)
        if r is None:
            raise ApiError(404, Reason.UNKNOWN_ROUND, f"no round {round_id}")
        status = self._round_status(r)
        if only is not None:
            kept = self._kept(r)
            if kept is not None and status.measurements is r.measurements:
                status.measurements = kept.own_view(only)  # the same view, from its index
            else:
                # A running round's cohort is its selection in memory (the set `in_round`
                # reads, from the same stored list), not a set built again at each read.
                found = self._runtime_for_round(round_id)
                cohort = found[1].selected if found is not None else frozenset(r.selected)
                status.measurements = _own_view(status.measurements, cohort, only)
        return status

    def _round_status(self, r: RoundRow) -> RoundStatus:
        round_id = r.round_id
        found = self._runtime_for_round(round_id)
        measurements = r.measurements
        if found is not None and found[0].secure is not None:
            reg = found[0].secure.registry
            counts = reg.stage_counts(round_id) if reg.has_round(round_id) else {}
            stage = reg.current_stage(round_id) if reg.has_round(round_id) else None
            reports = counts.get(str(Stage.MASKED_INPUT), 0)
            measurements = {
                **measurements,
                "secure": True,
                "stage": str(stage) if stage is not None else "finishing",
                "stage_uploads": counts,
            }
        elif found is not None:
            reports = found[1].reports
        elif measurements.get("secure"):
            reports = int(measurements.get("contributors", 0))
        elif (kept := self._kept(r)) is not None:
            if kept.reports is None:  # a closed round takes no more updates: counted once
                kept.reports = self.store.count_updates(round_id)
            reports = kept.reports
        else:
            reports = self.store.count_updates(round_id)
        return RoundStatus(
            round_id=r.round_id,
            task_id=r.task_id,
            seq=r.seq,
            # Until the event loop swaps in the published model the round still counts as
            # aggregating, so "committed" always means its version is the one being served.
            state=RoundState.AGGREGATING
            if found is not None and r.state in (RoundState.COMMITTED, RoundState.ABANDONED)
            else r.state,
            base_version=r.base_version,
            selected=len(r.selected),
            target=r.target,
            min_reports=r.min_reports,
            reports=reports,
            opened_unix=r.opened_unix,
            deadline_unix=r.deadline_unix,
            closed_unix=r.closed_unix,
            version_after=r.version_after,
            measurements=measurements,
        )

    def task_rounds(
        self, task_id: int, last: int | None = None, before: int | None = None
    ) -> list[RoundStatus]:
        """A task's rounds by sequence: every one, or those older than round `before`, or
        the `last` newest of these (404 unknown task, or `before` not one of its rounds; 409
        `task_refused` when a refused task's round does not parse). Only the rounds answered
        are read from the store."""
        if self.store.task_raw(task_id) is None:  # not parsed: a refused config may not be
            raise ApiError(404, Reason.UNKNOWN_TASK, f"no task {task_id}")
        if before is not None and self.store.round_task(before) != task_id:
            raise ApiError(
                404, Reason.UNKNOWN_ROUND, f"round {before} is not one of task {task_id}'s rounds"
            )
        try:
            rounds = self.store.rounds(task_id, last=last, before=before)
        except DamagedRow as exc:
            self._raise_damaged(exc)
        return [self._round_status(r) for r in rounds]

    def bandwidth(self, round_id: int, only: str | None = None) -> BandwidthReport:
        """A round's ledger (rows only: readable even when its stored JSON is damaged); with
        `only`, that device's rows and their totals.

        The rows count what the round's devices sent and received in it, refused uploads
        included (422 `bad_frame`, 409 `duplicate_upload` or `round_closed`, ...: their bytes
        crossed the network, and the device's SDK counts them the same way). The totals'
        `up_accepted_payload_bytes` and `up_accepted_updates` are the update frames the round
        accepted, each once, and nothing else (docs/http-api.md, "Round status and
        bandwidth"); a secure round's are its accepted masked inputs (`MASKED_INPUT_LEDGER`
        rows), each once: its other stages' messages are protocol traffic, in the rows only."""
        if self.store.round_task(round_id) is None:
            raise ApiError(404, Reason.UNKNOWN_ROUND, f"no round {round_id}")
        stored = [LedgerRow(*r) for r in self.store.ledger_rows(round_id)]
        if only is not None:
            stored = [r for r in stored if r.device_id == only]
        rows = [r for r in stored if r.direction != MASKED_INPUT_LEDGER]
        masked = [r for r in stored if r.direction == MASKED_INPUT_LEDGER]
        totals: dict[str, int] = {}
        for d in ("up", "down"):
            sel = [r for r in rows if r.direction == d]
            totals[f"{d}_payload_bytes"] = sum(r.payload_bytes for r in sel)
            totals[f"{d}_wire_bytes"] = sum(r.wire_bytes for r in sel)
            totals[f"{d}_dense_bytes"] = sum(r.dense_bytes for r in sel)
            totals[f"{d}_requests"] = sum(r.requests for r in sel)
        accepted = [
            size
            for device, size in self.store.accepted_frame_sizes(round_id)
            if only is None or device == only
        ]
        totals["up_accepted_payload_bytes"] = sum(accepted) + sum(r.payload_bytes for r in masked)
        totals["up_accepted_updates"] = len(accepted) + sum(r.requests for r in masked)
        return BandwidthReport(round_id, rows, totals)
