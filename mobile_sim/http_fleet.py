"""The simulated fleet over real HTTP: N devices as `sdk.AsyncClient`s against a coordinator.

`run_http_simulation(cfg)` starts an embedded coordinator on loopback (uvicorn in a thread,
SQLite in a temporary folder) unless a URL is given, creates the task through the admin API,
and runs every device as an async client: check in, download (delta chain or snapshot, digest
verified), train locally, encode with its own error feedback, upload with an idempotency key.
An observer device follows the published versions and evaluates each one on the test set.
The per-round records are the same as the in-process runner's, with bytes taken from the
coordinator's own bandwidth ledger (payload and real HTTP wire bytes). That ledger holds a
round's exchanges only: each selected device's check-in answered with its assignment, its
downloads and its uploads. The devices' other exchanges (registration, the check-ins answered
without an assignment while they wait, the check-in after an upload that learns the round's
outcome) are the coordinator's control traffic, in no round; each record's
`measurements["control_traffic"]` holds the fleet's (`_Fleet.control_since`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from compression import ModelSpec
from coordinator.ledger import BandwidthLedger
from protocol.messages import CodecParams, TaskConfig, TensorShape, TrainingParams
from protocol.names import CheckInAction, Reason

from .partition import partition_stats
from .runner import (
    RoundRecord,
    RunInterrupted,
    SimConfig,
    SimResult,
    _jsonable,
    _progress,
    _recorded_config,
    prepare,
)
from .status import note, say

__all__ = ["run_http_simulation", "HttpFleetOptions", "DOWNLINK", "DeviceFailed"]

log = logging.getLogger(__name__)

# Downlink codec of the published deltas (server-side error feedback keeps what it drops) of
# a run that sets none (`SimConfig.downlink_topk` / `downlink_bits`, `plume sim --downlink-topk
# / --downlink-bits`). Not create-task's default (2 %, 8-bit: `runner.TASK_DOWNLINK`): the
# committed HTTP results (bench/results/readme_http_mlp, `make demo`) ran with this one.
DOWNLINK = CodecParams(topk=0.05, bits=8)

# Seconds the devices have, once the run is over, to finish what they are doing (a check-in in
# flight is answered and counted) before they are cancelled. They stop at their next step: a
# pause between check-ins ends when the run does (`_Fleet.pause`).
WIND_DOWN_S = 10.0


class DeviceFailed(RuntimeError):
    """A simulated device stopped on an error that is not a network or coordinator failure."""


def _transient(exc: Exception) -> bool:
    """Whether a failed check-in is worth retrying: a connection not made or lost (httpx's own
    error, or `sdk.CoordinatorUnreachable`, a ClientError too), an answer slower than the
    client's max_response_s, an overload, a timeout or a server error. Other refusals are
    bugs."""
    import httpx

    from sdk.client import ClientError

    if isinstance(exc, httpx.TransportError):
        return True
    if not isinstance(exc, ClientError):
        return False
    return exc.reason == "too_slow" or exc.status in (408, 425, 429) or exc.status >= 500


@dataclass(frozen=True)
class HttpFleetOptions:
    """Knobs of the HTTP path that the in-process path does not have. Times in seconds.

    dropout: probability that a selected device silently drops the round (never uploads).
    deadline_s: round deadline; stragglers and dropouts are cut off by it.
    poll_s / retry_after_s: pace steering while a cohort gathers / while a round runs (they
    bound the check-in load: devices x 1/retry_after_s requests per second).
    downlink: the task's downlink when the config sets none (its `downlink_topk` /
    `downlink_bits`, which win; giving both, different, is a ValueError). The run's result
    records the one the task used, as its config's `downlink_topk` / `downlink_bits`, its
    selection timeout as its config's `selection_timeout_s`, and the others but
    `admin_token` in its `http` (rounds.json's `http`, `_recorded_options`).
    """

    dropout: float = 0.0
    deadline_s: float = 120.0
    selection_timeout_s: float = 2.0
    poll_s: float = 0.1
    retry_after_s: float = 0.5
    admin_token: str | None = None
    downlink: CodecParams = field(default_factory=lambda: DOWNLINK)


def run_http_simulation(
    cfg: SimConfig,
    *,
    coordinator_url: str | None = None,
    progress: bool = True,
    label: str = "",
    on_round: Callable[[RoundRecord], None] | None = None,
    options: HttpFleetOptions | None = None,
) -> SimResult:
    """Run `cfg` against a coordinator over HTTP; returns the same records as `run_simulation`.
    The result's `config` is `cfg` with the task's downlink and selection timeout, the ones it
    ran with (`_as_ran`: without `downlink_topk` / `downlink_bits`, the options' downlink).

    With `coordinator_url` None an embedded coordinator is started on 127.0.0.1 and stopped at
    the end; otherwise the admin token comes from `options.admin_token` or $PLUME_ADMIN_TOKEN.
    Rounds run in wall time: `cfg.fleet` "timing" adds no simulated seconds (records carry
    none), and settings only the in-process runner has raise `ValueError` rather than being
    ignored (attacks, ONNX devices, warm-up, clipping, `fleet="realistic"`, `deadline_s`, a
    backend other than sequential, `job_timeout_s`).

    Ctrl-C raises `RunInterrupted` (a KeyboardInterrupt) with the rounds recorded before it,
    their ledger rows and the model of the last of them, as `run_simulation` does. The
    embedded coordinator is shut down; on one at `coordinator_url` the run's task is stopped
    first (best effort), so that it does not wait for the gone fleet's check-ins for ever.
    """
    opts = options or HttpFleetOptions()
    if cfg.downlink_topk is not None and opts.downlink not in (DOWNLINK, _downlink_of(cfg)):
        raise ValueError(
            f"the config's downlink (downlink_topk {cfg.downlink_topk:g}, downlink_bits "
            f"{cfg.downlink_bits}) and the options' ({opts.downlink.topk:g}, "
            f"{opts.downlink.bits}-bit) differ: give one"
        )
    inproc_only = [
        what
        for what, asked in (
            ("attacks", bool(cfg.attack)),
            ("ONNX devices", bool(cfg.ort_fraction or cfg.ort_tier)),
            ("warm-up rounds", bool(cfg.warmup_rounds)),
            ("clipping", cfg.clip_norm is not None),
            ("the realistic fleet (availability, tier dropouts)", cfg.fleet == "realistic"),
            ("a simulated deadline", cfg.deadline_s is not None),
            (f"the {cfg.backend} backend", cfg.backend != "sequential"),
            ("a job timeout", cfg.job_timeout_s is not None),
        )
        if asked
    ]
    if inproc_only:
        # Each would otherwise be silently ignored: the HTTP fleet is one SDK client per
        # device, training in this process, in wall time (no simulated clock).
        raise ValueError(
            "--transport http runs benign torch devices with the plain codec, one SDK client "
            f"each, in wall time; {', '.join(inproc_only)} run with --transport inproc"
        )
    ensure_open_files(cfg.clients)  # before any task or client is made
    # Seconds pass before round 1 (loading the data, starting a loopback coordinator,
    # registering every device): one line in a log too, as a pool's workers get (`note`).
    where = "the coordinator" if coordinator_url is not None else "a loopback coordinator"
    note(f"setting up: loading {cfg.dataset}, registering {cfg.clients} devices with {where}")
    with tempfile.TemporaryDirectory(prefix="plume-http-") as tmp:
        if coordinator_url is not None:
            token = opts.admin_token or os.environ.get("PLUME_ADMIN_TOKEN")
            if not token:
                raise ValueError("--coordinator needs an admin token ($PLUME_ADMIN_TOKEN)")
            return _run(cfg, coordinator_url, token, tmp, progress, label, on_round, opts, True)
        from coordinator.service import ServerThread, ServiceConfig

        token = opts.admin_token or secrets.token_hex(16)
        say("starting the coordinator")
        server = ServerThread(
            ServiceConfig(
                db_path=os.path.join(tmp, "coordinator.db"),
                admin_token=token,
                poll_s=opts.poll_s,
                tick_s=0.02,
                # A simulation: a seeded dp stage (repeatable runs) is taken, as `plume sim`
                # takes it on its other transports.
                allow_seeded_dp=True,
            )
        )
        try:
            # Inside: a Ctrl-C while it starts stops it too (its thread starts first thing).
            url = server.start()
            return _run(cfg, url, token, tmp, progress, label, on_round, opts, False)
        finally:
            server.stop()


def _run(
    cfg: SimConfig,
    url: str,
    token: str,
    tmp: str,
    progress: bool,
    label: str,
    on_round: Callable[[RoundRecord], None] | None,
    opts: HttpFleetOptions,
    external: bool,
) -> SimResult:
    """The run against the coordinator at `url`; `external`: one that outlives the run (a
    Ctrl-C then stops the run's task on it)."""
    import torch

    from coordinator.service import AdminClient
    from sdk.flat import get_flat_params
    from sdk.trainer import TorchTrainer, evaluate

    from .backends.sequential import warm_torch
    from .models import build_model

    setup = prepare(cfg)
    data, parts, model, spec = setup.data, setup.parts, setup.model, setup.spec
    started_at = setup.started_at
    task = _task_config(cfg, spec, label, opts)
    # The results record the settings the task was created with (rounds.json's config), and
    # the options the config has no field for (rounds.json's `http`).
    ran = _as_ran(cfg, task)
    http = _recorded_options(opts, external)
    initial = get_flat_params(model)
    partition = partition_stats(parts, data.y_train)
    records: list[RoundRecord] = []
    task_id = 0
    fleet: _Fleet | None = None

    def finished() -> SimResult:
        """The rounds recorded so far, with the ledger rows read as each was recorded (what
        its bytes count) and the model of the last of them."""
        last = fleet.last_params if fleet is not None else None
        return SimResult(
            ran,
            records,
            fleet.ledger if fleet is not None else BandwidthLedger(),
            spec.size,
            last if last is not None else initial,
            label,
            started_at,
            partition=partition,
            http=http,
        )

    with AdminClient(url, token) as admin:
        try:
            task_id = admin.create_task(task, initial)
            fleet = _Fleet(cfg, url, task_id, spec, tmp, parts, data, opts)
            trainer = TorchTrainer(
                build_model(cfg.model_name, seed=cfg.seed), momentum=cfg.momentum
            )
            # Before the devices start, as the in-process backends' start() does: otherwise
            # round 1's wall s includes torch's first optimizer (importing torch._dynamo,
            # 1.5-3 s).
            say("warming up torch")
            warm_torch()
            eval_model = build_model(cfg.model_name, seed=cfg.seed)
            bar = _progress(cfg.rounds, label or ("dense" if cfg.dense else "compressed"), progress)

            def evaluate_version(params: npt.NDArray[np.float32]) -> tuple[float, float]:
                return evaluate(eval_model, params, data.x_test, data.y_test)

            def emit(rec: RoundRecord) -> None:
                records.append(rec)
                if on_round is not None:
                    on_round(rec)
                bar.update(rec)

            # Tiny per-device batches train fastest on one thread; more threads only spin
            # against the coordinator's thread in this process.
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                # A Ctrl-C cancels the fleet (asyncio's SIGINT handler), which closes every
                # client before asyncio.run raises KeyboardInterrupt.
                final = asyncio.run(fleet.run(trainer, admin, evaluate_version, emit))
            finally:
                torch.set_num_threads(threads)
                bar.close()
            # Read again at the end, not only when each round was recorded: the coordinator
            # writes an exchange's ledger row after its answer, so a round's last upload may
            # land after the round closed. Rows keyed by the task's round number (1..rounds),
            # like the in-process ledger; the coordinator's round ids are global across tasks.
            ledger = BandwidthLedger()
            for rec_round, seq in fleet.round_ids:
                for row in admin.bandwidth(rec_round)["rows"]:
                    _add_row(ledger, seq, row)
        except KeyboardInterrupt as exc:
            if external and task_id:
                _stop_task(admin, task_id)
            raise RunInterrupted.of(finished()) from exc
        except BaseException as exc:
            # Any other failure ends the run too: its fleet is gone, so the task it created on
            # a coordinator that outlives it is stopped (an embedded one stops with the run).
            if external and task_id:
                _stop_task(admin, task_id)
            if records and isinstance(exc, Exception):
                # It goes on as it is (a device that failed, a coordinator that refused the
                # task), carrying the rounds recorded before it as `run_simulation`'s errors
                # do, for `plume sim` to write (before, they were lost with it).
                RunInterrupted.attach(exc, finished())
            raise
    return SimResult(
        ran, records, ledger, spec.size, final, label, started_at, partition=partition, http=http
    )


def _add_row(ledger: BandwidthLedger, seq: int, row: dict[str, Any]) -> None:
    """One row of the coordinator's bandwidth answer, under the task's round number `seq`."""
    ledger.record(
        seq,
        row["device_id"],
        row["direction"],
        row["payload_bytes"],
        row["wire_bytes"],
        row["dense_bytes"],
    )


# Open files a simulated device needs at once: its app directory's lock, its connection, and
# the embedded coordinator's end of it; plus a margin for the process itself.
FILES_PER_DEVICE = 3
FILES_MARGIN = 256


def ensure_open_files(clients: int, resource_module: Any = None) -> None:
    """Raise this process's soft open-file limit to what `clients` devices need at once (up
    to the hard limit), before any is made; `ValueError` naming the numbers when even the hard
    limit is too low. No-op where the OS has no such limit (no `resource` module)."""
    if resource_module is None:
        try:
            import resource as resource_module
        except ImportError:
            return
    need = FILES_PER_DEVICE * clients + FILES_MARGIN
    soft, hard = resource_module.getrlimit(resource_module.RLIMIT_NOFILE)
    if soft == resource_module.RLIM_INFINITY or soft >= need:
        return
    if hard != resource_module.RLIM_INFINITY and hard < need:
        raise ValueError(
            f"{clients} devices over HTTP need about {need} open files at once (a lock, a "
            f"connection and the coordinator's end of it each), and this process may open "
            f"{hard} at most (ulimit -Hn): raise that limit, use fewer --clients, or simulate "
            "in process (no --transport http)"
        )
    resource_module.setrlimit(resource_module.RLIMIT_NOFILE, (need, hard))


def _stop_task(admin: Any, task_id: int) -> None:
    """Stop an interrupted or failed run's task on a coordinator that outlives the run: with no
    fleet left, it would keep the task running, waiting for check-ins, for ever. Best effort:
    an unreachable coordinator, a task already ended, or a second Ctrl-C leaves it as it is
    (quietly: the run's own line about the interrupt or error is the one said)."""
    import httpx

    from coordinator.service import AdminError

    try:
        admin.stop(task_id)
    except (AdminError, httpx.HTTPError, KeyboardInterrupt) as exc:
        log.debug("could not stop task %d after the interrupt: %r", task_id, exc)


def _downlink_of(cfg: SimConfig) -> CodecParams | None:
    """The downlink `cfg` sets (`downlink_topk` / `downlink_bits`) as a task's, or None."""
    if cfg.downlink_topk is None or cfg.downlink_bits is None:
        return None
    return CodecParams(topk=cfg.downlink_topk, bits=cfg.downlink_bits)


def _as_ran(cfg: SimConfig, task: TaskConfig) -> SimConfig:
    """`cfg` with the task's own values of the settings a `SimConfig` has but the HTTP fleet
    does not take from it: the config its results record (rounds.json's `config`).

    - `downlink_topk` / `downlink_bits`: the task's downlink. A config without them ran with
      `HttpFleetOptions.downlink` (`DOWNLINK`, top-k 0.05 at 8 bits, unless the options say
      otherwise), and recorded null, which in process means no downlink compression: a reader
      comparing runs took the run for one with exact downloads. A dense run keeps null: its
      downloads are the exact fp32 model (the task's downlink is top-k 1 at 32 bits), as a
      dense run's in process are, and a dense config with a downlink is refused.
    - `selection_timeout_s`: the task's (`HttpFleetOptions.selection_timeout_s`, 2 s of wall
      time by default), not the realistic fleet's simulated 900 s the config carries unused.

    `SimConfig.from_dict` of the recorded config reruns the same task over HTTP, and in process
    simulates the downlink the HTTP run used. A copy (`runner._recorded_config`), not
    `dataclasses.replace`, which would check the config again and import its plugins again.
    """
    values: dict[str, Any] = {"selection_timeout_s": float(task.selection_timeout_s)}
    if not cfg.dense:
        values["downlink_topk"] = float(task.downlink.topk)
        values["downlink_bits"] = int(task.downlink.bits)
    return _recorded_config(cfg, **values)


def _recorded_options(opts: HttpFleetOptions, external: bool) -> dict[str, Any]:
    """The options a run's result records beside its config (`SimResult.http`, rounds.json's
    `http`), those the config has no field for: the task's round deadline in wall seconds
    (`deadline_s`; the config's is simulated seconds, refused here, and stays None),
    `dropout` and `retry_after_s`, and the embedded coordinator's `poll_s` (None against a
    coordinator at a URL, which paces with its own). Not `admin_token` (a secret), nor the
    downlink and selection timeout (the config's own fields, `_as_ran`)."""
    return {
        "deadline_s": float(opts.deadline_s),
        "dropout": float(opts.dropout),
        "retry_after_s": float(opts.retry_after_s),
        "poll_s": None if external else float(opts.poll_s),
    }


def _task_config(cfg: SimConfig, spec: ModelSpec, label: str, opts: HttpFleetOptions) -> TaskConfig:
    """The task `cfg` runs as on the coordinator. `cfg.error_feedback` False reaches the devices
    as `codec.error_feedback` false (their SDK clients then keep no residual); the default
    leaves the field out, so the task's JSON is what it was before the setting existed. The
    downlink is `cfg`'s when it sets one, else `opts.downlink` (the dense baseline: fp32)."""
    codec = CodecParams.from_config(cfg.codec())
    if not cfg.error_feedback:
        codec.error_feedback = False
    return TaskConfig(
        name=label or f"sim-{cfg.dataset}-{cfg.model_name}",
        model_name=cfg.model_name,
        spec=[TensorShape(e.name, list(e.shape)) for e in spec.entries],
        rounds=cfg.rounds,
        clients_per_round=cfg.per_round,
        over_selection=cfg.over_selection,
        deadline_s=opts.deadline_s,
        min_reports=cfg.min_reports,
        selection_timeout_s=opts.selection_timeout_s,
        codec=codec,
        downlink=(
            CodecParams(topk=1.0, bits=32) if cfg.dense else _downlink_of(cfg) or opts.downlink
        ),
        aggregator=cfg.aggregator,
        server_lr=cfg.server_lr,
        seed=cfg.seed,
        training=TrainingParams(cfg.local_epochs, cfg.batch_size, cfg.lr),
        retry_after_s=opts.retry_after_s,
    )


def _counted(total: int) -> Callable[[Any], Awaitable[Any]]:
    """`client.register()` for each of `total` devices, the status line (`say`: on a
    terminal only, as the run's other set-up steps) counting them as they register: with
    thousands of devices this took minutes with nothing on screen. Rewritten at most about
    100 times, not once a device."""
    step = max(1, total // 100)
    done = 0

    async def register(client: Any) -> Any:
        nonlocal done
        answer = await client.register()
        done += 1
        if done % step == 0 or done == total:
            say(f"registering devices: {done:,} of {total:,}")
        return answer

    return register


def _control_total(clients: list[Any]) -> dict[str, int]:
    """`clients`' control traffic so far, together (`_Fleet.control_since`)."""
    cells = [c.control_bandwidth for c in clients]
    return {
        "up_wire_bytes": sum(c["up"]["wire_bytes"] for c in cells),
        "down_wire_bytes": sum(c["down"]["wire_bytes"] for c in cells),
        "requests": sum(c["up"]["requests"] for c in cells),
    }


class _Occupancy:
    """When each simulated device was busy with a round (holding an assignment, training,
    uploading, or sitting out a dropout), on this machine's `time.time()` clock.

    A busy device is not checking in, so it cannot be in the coordinator's selection pool: the
    devices available to a round are the fleet minus those busy when it opened.
    """

    def __init__(self, devices: int) -> None:
        self.devices = devices
        # Each device's busy spells: [start, end], end None while it lasts.
        self.spells: list[list[list[float | None]]] = [[] for _ in range(devices)]

    def begin(self, index: int, now: float) -> list[float | None]:
        spell: list[float | None] = [now, None]
        self.spells[index].append(spell)
        return spell

    def available_at(self, t: float) -> int:
        """Devices not busy at time `t` (the coordinator's `opened_unix` of a round)."""
        busy = 0
        for spells in self.spells:
            # A device's spells follow one another: the latest one begun by `t` decides.
            for start, end in reversed(spells):
                assert start is not None
                if start > t:
                    continue
                if end is None or end > t:
                    busy += 1
                break
        return self.devices - busy


class _Fleet:
    def __init__(
        self,
        cfg: SimConfig,
        url: str,
        task_id: int,
        spec: ModelSpec,
        tmp: str,
        parts: list[npt.NDArray[np.int64]],
        data: Any,
        opts: HttpFleetOptions,
    ) -> None:
        self.cfg = cfg
        self.url = url
        self.task_id = task_id
        self.spec = spec
        self.tmp = tmp
        self.parts = parts
        self.data = data
        self.opts = opts
        self.losses: dict[int, list[float]] = {}
        self.round_ids: list[tuple[int, int]] = []  # (coordinator round id, round number)
        # The recorded rounds' ledger rows as read when each was recorded (what its record's
        # bytes count), and the model of the last of them (None: no round changed it yet).
        self.ledger = BandwidthLedger()
        self.last_params: npt.NDArray[np.float32] | None = None
        # Requests that failed and were absorbed: "check_in" (retried), "round" (a dropout).
        self.failures: dict[str, int] = {}
        self.occupancy = _Occupancy(cfg.clients)
        self.done = asyncio.Event()
        # The fleet's devices (the observer, which only evaluates, is not one of them), their
        # control traffic counted into the rounds recorded so far, and the last such round.
        self.clients: list[Any] = []
        self.control_counted = _control_total([])
        self.last_record: RoundRecord | None = None

    def control_since(self) -> dict[str, int]:
        """The fleet's control traffic since the last call (the first: since the clients were
        made): the exchanges the coordinator put in no round's ledger, as each device's SDK
        counted them (`Client.control_bandwidth`): `up_wire_bytes`, `down_wire_bytes` (HTTP/1.1
        requests and responses, heads and bodies) and `requests` (answered ones).

        The devices' own count, not the coordinator's `plume_control_wire_bytes_total`: that
        one also holds this process's admin polling and the observer's model fetches (the
        simulation's machinery, not the fleet's traffic), and on a `--coordinator` shared with
        other tasks their devices' traffic too. The devices count on this event loop, as
        they get each answer, so the rounds' figures split the fleet's control traffic by
        the time of its answers, each exchange in one round's."""
        now = _control_total(self.clients)
        out = {k: now[k] - self.control_counted[k] for k in now}
        self.control_counted = now
        return out

    async def pause(self, seconds: float) -> None:
        """Sleep `seconds`, or until the run is over if that comes first."""
        try:
            await asyncio.wait_for(self.done.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def run(
        self,
        trainer: Any,
        admin: Any,
        evaluate_version: Callable[[npt.NDArray[np.float32]], tuple[float, float]],
        emit: Callable[[RoundRecord], None],
    ) -> npt.NDArray[np.float32]:
        from sdk.client import AsyncClient

        self.done = asyncio.Event()
        # Every client made is closed, also when making a later one fails (AppDirInUse, "too
        # many open files"): each holds its app directory's lock and an HTTP pool.
        made: list[AsyncClient] = []
        try:
            for i in range(self.cfg.clients):
                # Each device's retry waits from its own seeded generator, so a run's retries
                # are the seed's (the SDK's default draws them from os.urandom)
                rng = random.Random(f"plume-sim-retry:{self.cfg.seed}:{i}")
                path = os.path.join(self.tmp, f"device-{i:05d}")
                made.append(AsyncClient(self.url, path, retry_rng=rng))
            clients = made[:]
            self.clients = clients
            observer = AsyncClient(self.url, os.path.join(self.tmp, "observer"))
            made.append(observer)
            await asyncio.gather(observer.register(), *map(_counted(len(clients)), clients))
            devices = [
                asyncio.create_task(self._device(i, c, trainer)) for i, c in enumerate(clients)
            ]
            monitor = asyncio.create_task(self._monitor(observer, admin, evaluate_version, emit))
            try:
                final = await self._watch(monitor, devices)
                # The run is over: each device stops at its next step, a check-in in flight
                # answered (and counted) first.
                self.done.set()
                if devices:
                    await asyncio.wait(devices, timeout=WIND_DOWN_S)
            finally:
                self.done.set()
                monitor.cancel()
                for d in devices:
                    d.cancel()
                await asyncio.gather(monitor, *devices, return_exceptions=True)
        finally:
            await asyncio.gather(*(c.aclose() for c in made))
        if self.last_record is not None:
            # The devices' exchanges after the last round was recorded (their last check-ins,
            # answered "end") are its: the rounds' figures then sum to the run's.
            last = self.last_record.measurements["control_traffic"]
            for k, v in self.control_since().items():
                last[k] += v
        return final

    async def _watch(
        self, monitor: asyncio.Task[npt.NDArray[np.float32]], devices: list[asyncio.Task[None]]
    ) -> npt.NDArray[np.float32]:
        """The monitor's result, or a `DeviceFailed` as soon as any device task dies.

        A device only ends on its own by raising (network and coordinator failures are
        dropouts, handled in `_device`), so a device that ends first is a bug to surface, not
        a silently shrunken fleet that could leave the run waiting for rounds forever.
        """
        pending: set[asyncio.Task[Any]] = {monitor, *devices}
        while True:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                if task is monitor:
                    continue
                exc = None if task.cancelled() else task.exception()
                index = devices.index(task)
                raise DeviceFailed(f"simulated device {index} stopped: {exc!r}") from exc
            if monitor in finished:
                return monitor.result()

    async def _device(self, index: int, client: Any, trainer: Any) -> None:
        """One device's loop. A refused or failed request never ends it: a check-in that
        fails transiently is retried after `retry_after_s`, and a round whose download or
        upload fails (any 4xx/5xx, a timeout, a dropped connection) is a dropout, which the
        coordinator's deadline cuts off like any other."""
        import httpx

        from sdk.client import ClientError

        x = self.data.x_train[self.parts[index]]
        y = self.data.y_train[self.parts[index]]
        rng = np.random.default_rng([self.cfg.seed, 77, index])
        while not self.done.is_set():
            try:
                answer = await client.check_in(self.task_id)
            except (ClientError, httpx.TransportError) as exc:
                if isinstance(exc, ClientError) and exc.reason == Reason.TASK_REFUSED:
                    # Stopped by the operator (or refused): the monitor reads the task's state
                    # and ends the run (or raises); this device has nothing more to do.
                    await self.done.wait()
                    return
                if not _transient(exc):
                    raise
                self.failures["check_in"] = self.failures.get("check_in", 0) + 1
                log.debug("device %d: check-in failed (%r); retrying", index, exc)
                await self.pause(self.opts.retry_after_s)
                continue
            if answer.action == CheckInAction.END:
                # The task is done: the monitor sees it too and ends the run.
                await self.done.wait()
                return
            if answer.assignment is None:
                await self.pause(answer.retry_after_s)
                continue
            a = answer.assignment
            # Busy from the assignment until the round is done with (reported, refused, cut
            # off): no check-in in between, so no place in the next round's pool.
            spell = self.occupancy.begin(index, time.time())
            try:
                if self.opts.dropout > 0 and rng.random() < self.opts.dropout:
                    # A dropout: the device vanishes for this round (the deadline cuts it off).
                    await self.pause(max(a.deadline_unix - time.time(), 0.0) + 0.05)
                    continue
                try:
                    report = await client.train_round(a, trainer, x, y)
                except httpx.TransportError as exc:  # first: CoordinatorUnreachable is both
                    self.failures["round"] = self.failures.get("round", 0) + 1
                    log.debug("device %d: round %d failed (%r); a dropout", index, a.round_id, exc)
                    continue
                except ClientError as exc:
                    # Closed before we finished (or the client saw the deadline pass): a straggler
                    if exc.status in (403, 409) or exc.reason == "deadline_passed":
                        continue
                    self.failures["round"] = self.failures.get("round", 0) + 1
                    log.debug("device %d: round %d refused (%s); a dropout", index, a.round_id, exc)
                    continue
            finally:
                spell[1] = time.time()
            if not report.resent:
                # A re-sent report's loss was not kept (NaN, RoundReport.resent): the round's
                # train_loss is over the reports whose loss is known
                self.losses.setdefault(a.round_id, []).append(report.loss)
            # Trained devices yield so the event loop serves the others' I/O.
            await asyncio.sleep(0)

    async def _monitor(
        self,
        observer: Any,
        admin: Any,
        evaluate_version: Callable[[npt.NDArray[np.float32]], tuple[float, float]],
        emit: Callable[[RoundRecord], None],
    ) -> npt.NDArray[np.float32]:
        seen: set[int] = set()
        params: npt.NDArray[np.float32] | None = None
        while True:
            status = await asyncio.to_thread(admin.status, self.task_id)
            rounds = await asyncio.to_thread(admin.rounds, self.task_id)
            for r in rounds:
                if r.round_id in seen or r.state not in ("committed", "abandoned"):
                    continue
                seen.add(r.round_id)
                self.round_ids.append((r.round_id, r.seq))
                acc: float | None = None
                loss: float | None = None
                if r.state == "committed":
                    # The round's row commits before the service swaps in the new model:
                    # wait for the version it published, so the evaluation is of that model.
                    while True:
                        params, version, _ = await observer.fetch_current(self.task_id, self.spec)
                        if version >= (r.version_after or 0):
                            break
                        await asyncio.sleep(0.01)
                    if r.seq % self.cfg.eval_every == 0 or r.seq == self.cfg.rounds:
                        acc, loss = evaluate_version(params)
                bw = await asyncio.to_thread(admin.bandwidth, r.round_id)
                t = bw["totals"]
                losses = self.losses.get(r.round_id, [])
                for row in bw["rows"]:
                    _add_row(self.ledger, r.seq, row)
                if r.state == "committed":
                    self.last_params = params
                measurements = _jsonable(r.measurements)
                # The fleet's exchanges in no round since the previous round was recorded:
                # the idle check-ins of the devices this round did not select, the outcome
                # check-ins after the previous round's uploads (round 1: the registrations).
                measurements["control_traffic"] = self.control_since()
                rec = RoundRecord(
                    round=r.seq,
                    accuracy=acc,
                    loss=loss,
                    train_loss=float(np.mean(losses)) if losses else math.nan,
                    reports=r.reports,
                    committed=r.state == "committed",
                    bytes_up=t["up_payload_bytes"],
                    bytes_down=t["down_payload_bytes"],
                    dense_up=t["up_dense_bytes"],
                    dense_down=t["down_dense_bytes"],
                    wire_up=t["up_wire_bytes"],
                    wire_down=t["down_wire_bytes"],
                    ratio_up=(t["up_dense_bytes"] / t["up_payload_bytes"])
                    if t["up_payload_bytes"]
                    else None,
                    wall_s=(r.closed_unix or r.opened_unix) - r.opened_unix,
                    available=self.occupancy.available_at(r.opened_unix),
                    measurements=measurements,
                )
                self.last_record = rec
                emit(rec)
            if status.state == "refused":
                raise RuntimeError(
                    f"task {self.task_id} is refused by the coordinator: {status.refused}"
                )
            if status.state in ("done", "stopped") and all(r.round_id in seen for r in rounds):
                if status.state == "stopped":
                    log.warning(
                        "task %d was stopped by the operator after %d rounds",
                        self.task_id,
                        len(seen),
                    )
                break
            await asyncio.sleep(0.05)
        if params is None:
            params, _, _ = await observer.fetch_current(self.task_id, self.spec)
        return params
