"""HTTP endpoints of secure rounds: a FastAPI router over `coordinator.secure` (no other state).

    GET  /v1/secure/rounds/{round_id}/setup                plan bytes; digest + node in headers
    POST /v1/secure/rounds/{round_id}/stages/{stage}       a stage upload (octet-stream)
    GET  /v1/secure/rounds/{round_id}/stages/{stage}       the download that follows `stage`
                                                           (425 + Retry-After until it closes;
                                                           410 once it never will)
    GET  /v1/secure/rounds/{round_id}/result               JSON: committed, contributors, ...

`SecureRegistry` is the stage bookkeeping of open secure rounds; the durable service uses it
behind its own signed endpoints (`_secure_api.py`, docs/http-api.md "Secure tasks"). The router
here is the transport alone: the device is whoever `device_id` (a FastAPI dependency) says, by
default the `x-plume-device` header, so it is for tests and trusted loopback only. A stage
closes when every device still in it has uploaded, or when the orchestrator calls
`SecureRegistry.close_stage` (or `close_due`) at its deadline, or (with the registry's own
stage timeout, as the service sets it) at the first upload or setup after that deadline. A
setup is refused as the device's advertise-keys upload would be. Uploads are
capped per stage from the round's plans (`stage_cap`) before they are read.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import JSONResponse

from coordinator.secure import (
    BUNDLE_BYTES,
    SecureCoordinator,
    SecureOutcome,
    SecureRound,
    SecureTask,
    group_reason,
)
from protocol.names import Reason
from protocol.secagg import (
    RoundAborted,
    SecAggError,
    SecAggHeader,
    SecAggPath,
    SecurePlan,
    Stage,
    WrongStage,
)

from .wire import declares_above

__all__ = [
    "DuplicateStageUpload",
    "GroupCutShort",
    "SecureRegistry",
    "StageClosedWithout",
    "secagg_router",
    "header_device_id",
    "stage_cap",
]

_ORDER = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)
# Bytes of the message header ("PSA1" | kind u8 | round_id u64) plus slack for counts.
_HEAD = 64


def stage_cap(plans: list[SecurePlan], stage: Stage) -> int:
    """Largest legal upload of `stage` (bytes) in a round with these group plans.

    The decoders check every count and length exactly; this cap only bounds what the service
    reads into memory before decoding. A node sends at most one bundle or share per graph
    neighbour (`degree` of them); a bundle has one legal length (`BUNDLE_BYTES`), and a share a
    holder relays came out of one, so it is shorter than the bundle.
    """
    k = max(p.degree for p in plans)
    if stage == Stage.ADVERTISE_KEYS:
        return _HEAD + 4 + 64
    if stage == Stage.SHARE_KEYS:
        return _HEAD + k * (8 + BUNDLE_BYTES)
    if stage == Stage.MASKED_INPUT:
        return _HEAD + max(int(math.ceil(p.vector_len * p.ring_bits / 8)) for p in plans)
    if stage == Stage.UNMASK:
        return _HEAD + k * (9 + BUNDLE_BYTES)
    raise ValueError(f"no uploads in stage {stage}")


class DuplicateStageUpload(SecAggError):
    """A second, different upload of the same stage by the same device."""


class GroupCutShort(RoundAborted, WrongStage):
    """A stage upload or download of a group that `finish` cut short: the round's unmask stage
    closed while the group was still in an earlier stage, which will never close now (the round
    is sealed) and whose sum is not in the round's. A `RoundAborted`, so the HTTP answer is 410
    `round_closed`, as for a group that aborted (before, a poll of that stage was 425 until the
    round was discarded, and an upload 409 `WrongStage`); still a `WrongStage` for the
    registry's callers, as that upload's refusal was."""


class StageClosedWithout(WrongStage, PermissionError):
    """An upload of a stage that closed without the device (its deadline passed, whether the
    orchestrator's `close_due` closed it first or this upload did): the device is out of the round.
    A `PermissionError`, so the HTTP answer is 403 `not_selected`, as for any later request of
    a device that missed a stage; still a `WrongStage` for the registry's callers."""

    @classmethod
    def of(cls, stage: Stage, device_id: str) -> StageClosedWithout:
        """The refusal of `device_id`, which `stage` closed without."""
        return cls(
            f"stage {stage} is closed: it closed without device {device_id}, which is no "
            "longer in the round"
        )


@dataclass(slots=True)
class _Group:
    rounds: Sequence[SecureRound]  # the round's groups (`SecureTask.groups`), this one at index
    uploaded: dict[Stage, set[str]] = field(default_factory=dict)
    downloads: dict[Stage, dict[str, bytes]] = field(default_factory=dict)
    expected: set[str] = field(default_factory=set)  # devices still in the current stage
    closed: set[Stage] = field(default_factory=set)
    aborted: str = ""
    stage_started: float = 0.0  # when the group's current stage opened (registry clock)
    last_upload: float | None = None  # the current stage's latest upload
    digests: dict[tuple[Stage, str], bytes] = field(default_factory=dict)
    index: int = 0  # in the round's groups
    # Bumped whenever stage_started is reset: a deadline-queue entry of an older epoch is
    # stale. idle_key is the key of this epoch's live idle-queue entry (<= last_upload).
    epoch: int = 0
    idle_key: float | None = None

    @property
    def sr(self) -> SecureRound:
        """This group's SecAgg, planned when first asked for (`SecureTask.groups`)."""
        return self.rounds[self.index]

    @property
    def stage(self) -> Stage | None:
        """The first stage this group has not closed; None once unmask closed or aborted."""
        if self.aborted:
            return None
        return next((s for s in _ORDER if s not in self.closed), None)


@dataclass
class _Entry:
    task: SecureTask
    groups: list[_Group]
    caps: dict[Stage, int]  # `stage_cap` of the round's plans, per upload stage
    outcome: SecureOutcome | None = None
    # Set (under the registry lock) when `finish` closes the unmask stage, and kept: from
    # then on no upload or stage close changes a group's SecAgg, so `finish` can unmask
    # outside the lock (and a close that raised leaves the round as it was, to try again).
    # A group still at an earlier stage then (cut short) answers as an aborted one.
    sealed: bool = False
    # Kept as groups change, so that a tick or a status request does not look at every
    # group (a cohort of 30,000 in groups of 3 is 10,000 groups): accepted uploads per stage,
    # running groups per current stage, `pending`'s two sums per stage, the abort reasons by
    # group, and two min-queues of (time, group, epoch) for `close_due`: when each group's
    # current stage opened, and (lazily, one entry a group, refreshed when it comes up) its
    # latest upload.
    uploads: dict[Stage, int] = field(default_factory=lambda: dict.fromkeys(_ORDER, 0))
    at_stage: dict[Stage, int] = field(default_factory=lambda: dict.fromkeys(_ORDER, 0))
    open_done: dict[Stage, int] = field(default_factory=lambda: dict.fromkeys(_ORDER, 0))
    open_expected: dict[Stage, int] = field(default_factory=lambda: dict.fromkeys(_ORDER, 0))
    reasons: dict[int, str] = field(default_factory=dict)
    by_start: list[tuple[float, int, int]] = field(default_factory=list)
    by_upload: list[tuple[float, int, int]] = field(default_factory=list)


class SecureRegistry:
    """Open secure rounds of one `SecureCoordinator`, safe to call from request threads.

    `clock` (seconds, monotonic) times each group's stages for `close_due`. With
    `stage_timeout_s` (and optionally `stage_idle_s`, as in `close_due`) an upload or a setup
    first closes its group's stage if that stage's deadline has passed, so a request after the
    deadline is refused even before the orchestrator's next `close_due` runs.

    The registry lock guards bookkeeping only and is held for short steps: `finish` unmasks
    (secret reconstruction, unmask, decode, `before_unmask`'s write) outside it, the round
    sealed first, so that a status read or an upload's size cap asked on the event loop never
    waits for an unmask. `_coord_lock` keeps the coordinator's own calls (`open_round`,
    `close_round`) one at a time, as they were when the registry lock covered both.
    """

    def __init__(
        self,
        coordinator: SecureCoordinator,
        clock: Callable[[], float] = time.monotonic,
        stage_timeout_s: float | None = None,
        stage_idle_s: float | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.clock = clock
        self.stage_timeout_s = stage_timeout_s
        self.stage_idle_s = stage_idle_s
        self._rounds: dict[int, _Entry] = {}
        self._lock = threading.Lock()
        self._coord_lock = threading.Lock()  # taken before `_lock`, never while holding it

    def open_round(
        self,
        device_ids: Sequence[str],
        round_id: int | None = None,
        min_contributors: int = 1,
    ) -> SecureTask:
        """Plan a round over `device_ids` (named `round_id`, default the coordinator's next);
        `min_contributors`: the task's `min_reports`, below which a group aborts at its
        masked-input close instead of running an unmask stage for a round that cannot commit
        (`SecureCoordinator.open_round`).

        Raises ValueError, changing nothing (the coordinator's round counter included), if a
        round of that id is open here: it would have replaced that round, whose groups' key
        material and stage bookkeeping were then lost mid-protocol."""
        with self._coord_lock, self._lock:
            # The coordinator's default id, taken here so that it is checked before it is used.
            rid = self.coordinator.round_id + 1 if round_id is None else round_id
            if rid in self._rounds:
                raise ValueError(
                    f"secure round {rid} is already open: discard it (after it committed or "
                    "was abandoned) before opening a round of that id again"
                )
            task = self.coordinator.open_round(device_ids, rid, min_contributors)
            now = self.clock()
            groups = [
                _Group(task.groups, expected=set(ids), stage_started=now, index=i)
                for i, ids in enumerate(task.members)
            ]
            # Asked at every upload: kept here, not recomputed over every group each time
            # (a cohort of 30,000 in groups of 3 spent 8 ms of the event loop per upload).
            # The plans of one group per size are those of every group (`SecureTask.by_size`).
            plans = [sr.plan for sr in task.by_size().values()]
            caps = {s: stage_cap(plans, s) for s in _ORDER}
            entry = _Entry(task, groups, caps)
            entry.at_stage[Stage.ADVERTISE_KEYS] = len(groups)
            entry.open_expected = dict.fromkeys(_ORDER, len(task.group_of))
            entry.by_start = [(now, i, 0) for i in range(len(groups))]  # already a heap
            self._rounds[task.round_id] = entry
            return task

    def has_round(self, round_id: int) -> bool:
        with self._lock:
            return round_id in self._rounds

    def discard(self, round_id: int) -> None:
        """Forget a round and its key material (after it committed or was abandoned)."""
        with self._lock:
            self._rounds.pop(round_id, None)

    def plans(self, round_id: int) -> list[SecurePlan]:
        with self._lock:
            return [g.sr.plan for g in self._entry(round_id).groups]

    def upload_cap(self, round_id: int, stage: Stage) -> int:
        """`stage_cap` of the round's plans (set when it opened); LookupError for an unknown
        round, ValueError for a stage without uploads."""
        with self._lock:
            caps = self._entry(round_id).caps
        if stage not in caps:
            raise ValueError(f"no uploads in stage {stage}")
        return caps[stage]

    def in_round(self, round_id: int, device_id: str) -> bool:
        with self._lock:
            return device_id in self._entry(round_id).task.group_of

    def joinable(self, round_id: int, device_id: str) -> bool:
        """Whether `device_id` can still join the round: its group's advertise-keys stage is
        open (and not past its deadline) and the device is in it. Every later stage refuses
        a device that did not advertise its keys."""
        with self._lock:
            entry = self._rounds.get(round_id)
            g = None if entry is None else entry.task.group_of.get(device_id)
            if entry is None or g is None or entry.sealed:
                return False
            grp = entry.groups[g]
            if grp.stage != Stage.ADVERTISE_KEYS or device_id not in grp.expected:
                return False
            return self.stage_timeout_s is None or not self._due(
                grp, self.clock(), self.stage_timeout_s, self.stage_idle_s
            )

    def stage_counts(self, round_id: int) -> dict[str, int]:
        """Uploads accepted per stage over all groups (for round status)."""
        with self._lock:
            return {str(s): n for s, n in self._entry(round_id).uploads.items()}

    def abort_reasons(self, round_id: int) -> list[str]:
        """Why each aborted group aborted (empty if none did), in group order; with more than
        one group each reason names its group ("group 2 of 4: ...", `group_reason`)."""
        with self._lock:
            entry = self._entry(round_id)
            n = len(entry.groups)
            return [group_reason(g, n, entry.reasons[g]) for g in sorted(entry.reasons)]

    def current_stage(self, round_id: int) -> Stage | None:
        """The earliest stage still open in some group; None when every group is done, or
        once `finish` sealed the round (unmasking, or finished): a group the close cut short
        still sits at an earlier stage (`at_stage`), but that stage takes nothing more, so the
        round's status says it is finishing, not that stage."""
        with self._lock:
            entry = self._entry(round_id)
            if entry.sealed:
                return None
            return next((s for s in _ORDER if entry.at_stage[s]), None)

    def ready(self, round_id: int) -> bool:
        """Every group closed its unmask stage or aborted, or the round is sealed (`finish`
        closed every stage that will close): the round can be finished. Always
        `current_stage(round_id) is None`."""
        with self._lock:
            entry = self._entry(round_id)
            # No group is at any stage: each closed its unmask stage or aborted.
            return entry.sealed or not any(entry.at_stage.values())

    def close_due(self, round_id: int, timeout_s: float, idle_s: float | None = None) -> int:
        """Close each group's current stage whose deadline passed: `timeout_s` after the stage
        opened, or `idle_s` after its latest upload (if set and it has one). Returns how many
        stages closed.

        It looks only at groups whose deadline may have passed (the heads of two min-queues),
        not at every group, and closes them in group order, as a scan of every group would.
        """
        now = self.clock()
        with self._lock:
            entry = self._entry(round_id)
            if entry.sealed:  # `finish` closed every stage that will close
                return 0
            due = self._due_groups(entry, now, timeout_s, idle_s)
            for g in sorted(due):
                grp = entry.groups[g]
                stage = grp.stage
                assert stage is not None  # _due_groups keeps running groups only
                self._close(entry, grp, stage)
            return len(due)

    @staticmethod
    def _due_groups(entry: _Entry, now: float, timeout_s: float, idle_s: float | None) -> set[int]:
        """The groups `_due` at `now`, found from the queues' heads. Stale entries (an older
        epoch, or a group no longer running) are dropped as they come up; an idle entry whose
        group has uploaded since is pushed again at its latest upload."""
        due: set[int] = set()
        heap = entry.by_start
        while heap and now >= heap[0][0] + timeout_s:
            _, g, epoch = heapq.heappop(heap)
            grp = entry.groups[g]
            if epoch == grp.epoch and grp.stage is not None:
                due.add(g)
        heap = entry.by_upload
        while idle_s is not None and heap and now >= heap[0][0] + idle_s:
            key, g, epoch = heapq.heappop(heap)
            grp = entry.groups[g]
            if epoch != grp.epoch or key != grp.idle_key or grp.stage is None:
                continue
            assert grp.last_upload is not None  # set with idle_key in this epoch
            if now >= grp.last_upload + idle_s:
                due.add(g)
                grp.idle_key = None  # consumed: the group's stage closes now
            else:
                grp.idle_key = grp.last_upload
                heapq.heappush(heap, (grp.last_upload, g, epoch))
        return due

    @staticmethod
    def _due(grp: _Group, now: float, timeout_s: float, idle_s: float | None) -> bool:
        """Whether the group's current stage has reached its deadline at `now`."""
        due = now >= grp.stage_started + timeout_s
        if idle_s is not None and grp.last_upload is not None:
            due = due or now >= grp.last_upload + idle_s
        return due

    def _entry(self, round_id: int) -> _Entry:
        try:
            return self._rounds[round_id]
        except KeyError:
            raise LookupError(f"no secure round {round_id}") from None

    def _entry_group(self, round_id: int, device_id: str) -> tuple[_Entry, _Group]:
        entry = self._entry(round_id)
        g = entry.task.group_of.get(device_id)
        if g is None:
            raise PermissionError(f"device {device_id} is not in secure round {round_id}")
        return entry, entry.groups[g]

    def setup(self, round_id: int, device_id: str) -> tuple[bytes, bytes, int]:
        """(plan bytes, (model, plan) digest, node index) of the device's group. Refused as
        the device's advertise-keys upload would be, so that no device trains for a round it
        cannot join: `RoundAborted` for a group that aborted, `GroupCutShort` for one the
        round's close cut short, `StageClosedWithout` once advertise-keys closed without the
        device. A group stage past its deadline (the registry's stage timeout) is closed
        first, as `upload` closes it: the answer does not hang on whether the orchestrator's
        `close_due` ran before the request."""
        with self._lock:
            entry, grp = self._entry_group(round_id, device_id)
            self._close_if_due(entry, grp)
            self._refuse_if_over(entry, grp)
            joined = device_id in grp.uploaded.get(Stage.ADVERTISE_KEYS, set())
            if Stage.ADVERTISE_KEYS in grp.closed and not joined:
                raise StageClosedWithout.of(Stage.ADVERTISE_KEYS, device_id)
            body = grp.sr.announce_one(device_id)
            return body, grp.sr.digest, grp.sr.node_of(device_id)

    def _close_if_due(self, entry: _Entry, grp: _Group) -> None:
        """With the registry's stage timeout: close the group's current stage if its deadline
        has passed (a request after it finds it closed, as after `close_due`)."""
        current = grp.stage
        if (
            self.stage_timeout_s is not None
            and current is not None
            and not entry.sealed
            and self._due(grp, self.clock(), self.stage_timeout_s, self.stage_idle_s)
        ):
            self._close(entry, grp, current)

    def upload(self, round_id: int, stage: Stage, device_id: str, body: bytes) -> bool:
        """Accept one stage upload; False if it repeats the device's accepted upload byte for
        byte (an idempotent retry, nothing changes). Raises `RoundAborted` for a group that
        aborted and `GroupCutShort` for one the round's close cut short (whatever the stage or
        body, a retry included), `DuplicateStageUpload` for a different second upload,
        `StageClosedWithout` for a stage that closed without the device, and any `SecAggError`
        the round refuses (state unchanged)."""
        digest = hashlib.sha256(body).digest()
        with self._lock:
            entry, grp = self._entry_group(round_id, device_id)
            self._close_if_due(entry, grp)  # its deadline passed: the upload is late
            self._refuse_if_over(entry, grp)
            if device_id in grp.uploaded.get(stage, set()):
                if grp.digests.get((stage, device_id)) == digest:
                    return False
                raise DuplicateStageUpload(f"device {device_id} already uploaded stage {stage}")
            if stage in grp.closed:
                # Not uploaded by this device (a repeat is answered above): it missed the stage
                # and is out of the round, as a download or a later stage tells it too.
                raise StageClosedWithout.of(stage, device_id)
            if device_id not in grp.expected:
                raise PermissionError(f"device {device_id} is no longer in stage {stage}")
            if grp.stage != stage:
                # Before the body is decoded: a stage not open yet is 409 whatever the body
                # holds (a malformed one was 422, a well-formed one 409).
                raise WrongStage(f"stage {stage} is not open: the group is in stage {grp.stage}")
            grp.sr.receive(stage, device_id, body)
            grp.uploaded.setdefault(stage, set()).add(device_id)
            entry.uploads[stage] += 1
            entry.open_done[stage] += 1  # `stage` is open in this running group
            grp.digests[(stage, device_id)] = digest
            grp.last_upload = now = self.clock()
            if grp.idle_key is None or now < grp.idle_key:
                grp.idle_key = now
                heapq.heappush(entry.by_upload, (now, grp.index, grp.epoch))
            if grp.expected <= grp.uploaded[stage]:
                self._close(entry, grp, stage)
            return True

    def close_stage(self, round_id: int, stage: Stage) -> None:
        """Close `stage` in every group with whoever uploaded (the stage deadline).

        Raises `WrongStage`, closing nothing, if a running group has not reached `stage` yet;
        the unmask stage excepted: closing it is the round's deadline, which cuts short the
        groups behind. Each is aborted here, naming the stage it was in: it takes no more
        uploads and sends no download (until stop 62 it went on through its stages, its
        devices told to train and, past its masked-input close, asked to unmask for an
        unmask stage already closed). `finish` closes it the same way, and seals the round
        instead of aborting those groups; either way they count as aborted in the outcome."""
        with self._lock:
            self._close_stage_locked(self._entry(round_id), stage)

    def _close_stage_locked(self, entry: _Entry, stage: Stage, sealing: bool = False) -> None:
        """`close_stage`; `sealing` (from `finish`, which seals the round next): the groups
        behind are left as they are, not aborted; the seal makes their requests refused as an
        aborted group's are (`GroupCutShort`)."""
        groups = [g for g in entry.groups if stage not in g.closed and not g.aborted]
        if entry.sealed and groups:
            # Only a group `finish` cut short can still be behind: it stays as it was.
            raise WrongStage(f"secure round {entry.task.round_id} is closed")
        if stage != Stage.UNMASK:
            for grp in groups:
                self._check_current(grp, stage)
        for grp in groups:
            behind = stage == Stage.UNMASK and grp.stage != Stage.UNMASK and not sealing
            cut = (
                f"cut short in stage {grp.stage}: the round's unmask stage closed" if behind else ""
            )
            self._close(entry, grp, stage, cut)

    @staticmethod
    def _refuse_if_over(entry: _Entry, grp: _Group) -> None:
        """Refuse any stage request of a group that is over without its sum: `RoundAborted` if
        it aborted, `GroupCutShort` if `finish` sealed the round while it was still at an
        earlier stage (the only group then with a stage: one that completed has none)."""
        if grp.aborted:
            raise RoundAborted(grp.aborted)
        if entry.sealed and grp.stage is not None:
            raise GroupCutShort(
                f"secure round {entry.task.round_id} is closed: cut short in stage {grp.stage}: "
                "the round's unmask stage closed"
            )

    @staticmethod
    def _check_current(grp: _Group, stage: Stage) -> None:
        if grp.stage != stage:
            raise WrongStage(f"group {grp.index} is in stage {grp.stage}, not {stage}")

    def _close(self, entry: _Entry, grp: _Group, stage: Stage, cut: str = "") -> None:
        """Close `stage` in one group and keep the round's counts and queues. Raises (changing
        nothing) if the group is not in `stage` (unmask excepted, as in `close_stage`).
        `cut`: the unmask stage closes in a group behind, aborted with this reason."""
        before = grp.stage
        was = self._open_counts(grp)
        self._close_stage(grp, stage)
        if cut:
            grp.aborted = cut
        after = grp.stage
        for s, (d0, e0), (d1, e1) in zip(_ORDER, was, self._open_counts(grp), strict=True):
            entry.open_done[s] += d1 - d0
            entry.open_expected[s] += e1 - e0
        if grp.aborted:
            entry.reasons[grp.index] = grp.aborted
        # stage_started and last_upload were reset: a new epoch for the deadline queues.
        grp.epoch += 1
        grp.idle_key = None
        if after is not None:
            heapq.heappush(entry.by_start, (grp.stage_started, grp.index, grp.epoch))
        if before != after:
            if before is not None:
                entry.at_stage[before] -= 1
            if after is not None:
                entry.at_stage[after] += 1

    @staticmethod
    def _open_counts(grp: _Group) -> list[tuple[int, int]]:
        """Per stage, what this group adds to `pending`: (uploads of it, devices expected) if
        the stage is open in the group (not closed, not aborted), else (0, 0)."""
        return [
            (0, 0)
            if s in grp.closed or grp.aborted
            else (len(grp.uploaded.get(s, ())), len(grp.expected))
            for s in _ORDER
        ]

    def _close_stage(self, grp: _Group, stage: Stage) -> None:
        """Close `stage` in the group. SecAgg closes it first: a refusal (a stage the group is
        not in) leaves the group as it was; an abort is an outcome, recorded with the close."""
        downloads: dict[str, bytes] | None = None
        if stage != Stage.UNMASK:
            self._check_current(grp, stage)
            try:
                downloads = grp.sr.close(stage)
            except RoundAborted as exc:
                grp.aborted = str(exc)
        grp.closed.add(stage)
        grp.stage_started, grp.last_upload = self.clock(), None
        if downloads is None:  # the unmask stage, or an abort
            grp.expected = set(grp.uploaded.get(stage, set()))
        else:
            grp.downloads[stage] = downloads
            grp.expected = set(downloads)

    def pending(self, round_id: int, stage: Stage) -> tuple[int, int]:
        """(uploads so far, devices still expected) for `stage`, over the running groups that
        have not closed it (kept as groups change: no group is looked at)."""
        with self._lock:
            entry = self._entry(round_id)
            return entry.open_done[stage], entry.open_expected[stage]

    def download(self, round_id: int, stage: Stage, device_id: str) -> bytes | None:
        """The bytes that follow `stage` for this device, or None while it is open. Raises
        `RoundAborted` for a group that aborted and `GroupCutShort` for one the round's close
        cut short (its stage will never close: a None would have it polled until the round is
        discarded), whatever the stage; PermissionError for a device the stage closed
        without."""
        if stage not in _ORDER[:-1]:
            raise WrongStage(f"nothing follows stage {stage}")
        with self._lock:
            entry, grp = self._entry_group(round_id, device_id)
            self._refuse_if_over(entry, grp)
            if stage not in grp.closed:
                return None
            try:
                return grp.downloads[stage][device_id]
            except KeyError:
                raise PermissionError(f"device {device_id} is no longer in the round") from None

    def finish(
        self,
        round_id: int,
        before_unmask: Callable[[dict[str, Any]], None] | None = None,
        min_contributors: int = 1,
    ) -> SecureOutcome:
        """Close the unmask stage, unmask every group and update the model (`before_unmask`
        and `min_contributors`: see `SecureCoordinator.close_round`)."""
        if min_contributors < 1:
            raise ValueError(f"min_contributors must be >= 1, got {min_contributors}")
        with self._coord_lock:
            # `_coord_lock` makes a second `finish` wait for this one and return its outcome.
            with self._lock:
                entry = self._entry(round_id)
                if entry.outcome is not None:  # a round closes once
                    return entry.outcome
                if not entry.sealed:
                    self._close_stage_locked(entry, Stage.UNMASK, sealing=True)
                    entry.sealed = True
            # The slow part, outside the registry lock: every group's unmask stage is closed
            # and the round sealed, so no request changes what it reads meanwhile. If it
            # raises, the entry has no outcome, as before, and a later `finish` tries again.
            outcome = self.coordinator.close_round(entry.task, before_unmask, min_contributors)
            with self._lock:
                entry.outcome = outcome
            return outcome

    def suspect_devices(self, round_id: int) -> list[str]:
        """Devices any group's unmask found with a share off its dealer's polynomial, those of
        groups that aborted included (a group that needed error correction for too many
        secrets aborts naming its suspects' nodes; these are their device ids). Asked after
        `finish`; a group never planned has none."""
        with self._lock:
            rounds = self._entry(round_id).task.groups
        planned: Callable[[int], bool] = getattr(rounds, "built", lambda g: True)
        groups = [rounds[g] for g in range(len(rounds)) if planned(g)]
        return sorted({sr.device_ids[i] for sr in groups for i in sr.server.state.suspects})

    def result(self, round_id: int) -> SecureOutcome | None:
        with self._lock:
            return self._entry(round_id).outcome


def header_device_id(x_plume_device: str = Header(..., description="device id")) -> str:  # noqa: B008
    """Device id from the `x-plume-device` header: for tests and trusted loopback only."""
    return x_plume_device


class _TooLarge(Exception):
    """A stage body above the round's cap for that stage."""


def _error(exc: Exception) -> JSONResponse:
    """Error bodies as in the main API; a protocol refusal's reason is its SecAggError type,
    with the main API's status: 409 for a stage that is not open yet or a second, different
    upload, 422 for a message the round refuses; 403 for a stage that closed without the
    device (`StageClosedWithout`, a `PermissionError`); 410 `round_closed` for a group that
    aborted or that the round's close cut short (`GroupCutShort`, a `RoundAborted`), the
    detail "aborted: " and why."""
    if isinstance(exc, LookupError):
        return JSONResponse({"reason": str(Reason.UNKNOWN_ROUND), "detail": str(exc)}, 404)
    if isinstance(exc, PermissionError):
        return JSONResponse({"reason": str(Reason.NOT_SELECTED), "detail": str(exc)}, 403)
    if isinstance(exc, RoundAborted):
        return JSONResponse({"reason": str(Reason.ROUND_CLOSED), "detail": f"aborted: {exc}"}, 410)
    if isinstance(exc, _TooLarge):
        return JSONResponse({"reason": str(Reason.TOO_LARGE), "detail": str(exc)}, 413)
    status = 409 if isinstance(exc, WrongStage | DuplicateStageUpload) else 422
    return JSONResponse({"reason": type(exc).__name__, "detail": str(exc)}, status)


async def _read_capped(request: Request, cap: int) -> bytes:
    """The request body, refused (`_TooLarge`) once it passes `cap` bytes or declares more."""
    declared = request.headers.get("content-length")
    if declares_above(declared, cap):
        # Its digits as sent when they are few; a longer one is not echoed whole.
        said = declared if declared is not None and len(declared) <= 20 else "more"
        raise _TooLarge(f"upload declares {said} bytes, the cap is {cap}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise _TooLarge(f"upload above the {cap}-byte cap")
        chunks.append(chunk)
    return b"".join(chunks)


def secagg_router(
    registry: SecureRegistry | Callable[[], SecureRegistry],
    device_id: Callable[..., Any] = header_device_id,
    retry_after_s: float = 0.2,
) -> APIRouter:
    """The router; `registry` may be a zero-argument callable resolved per request."""
    router = APIRouter(tags=["secure"])

    def reg() -> SecureRegistry:
        return (
            registry()
            if callable(registry) and not isinstance(registry, SecureRegistry)
            else registry
        )  # type: ignore[return-value]

    @router.get(SecAggPath.SETUP, response_class=Response)
    def setup(round_id: int, dev: str = Depends(device_id)) -> Response:  # noqa: B008
        try:
            body, digest, node = reg().setup(round_id, dev)
        except (LookupError, PermissionError, SecAggError) as exc:
            return _error(exc)
        headers = {str(SecAggHeader.DIGEST): digest.hex(), str(SecAggHeader.NODE): str(node)}
        return Response(body, media_type="application/octet-stream", headers=headers)

    @router.post(SecAggPath.STAGE, status_code=204, response_class=Response)
    async def upload(
        round_id: int,
        stage: Stage,
        request: Request,
        dev: str = Depends(device_id),  # noqa: B008
    ) -> Response:
        try:
            if stage not in _ORDER:
                raise WrongStage(f"no uploads in stage {stage}")
            body = await _read_capped(request, reg().upload_cap(round_id, stage))
            reg().upload(round_id, stage, dev, body)
        except (LookupError, PermissionError, SecAggError, _TooLarge) as exc:
            return _error(exc)
        return Response(status_code=204)

    @router.get(SecAggPath.STAGE, response_class=Response)
    def download(round_id: int, stage: Stage, dev: str = Depends(device_id)) -> Response:  # noqa: B008
        try:
            body = reg().download(round_id, stage, dev)
        except (LookupError, PermissionError, SecAggError) as exc:
            return _error(exc)
        if body is None:
            return Response(status_code=425, headers={"retry-after": f"{retry_after_s:g}"})
        return Response(body, media_type="application/octet-stream")

    @router.get(SecAggPath.RESULT)
    def result(round_id: int) -> JSONResponse:
        try:
            out = reg().result(round_id)
        except LookupError as exc:
            return _error(exc)
        if out is None:
            return JSONResponse({"round_id": round_id, "state": "open"})
        return JSONResponse(
            {
                "round_id": round_id,
                "state": "committed" if out.committed else "aborted",
                "contributors": len(out.contributors),
                "aborted_groups": out.aborted_groups,
            }
        )

    return router
