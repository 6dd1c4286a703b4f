"""Secure-mode simulation: SecAgg+ rounds over compressed updates, in process, with real training.

`run_secure_round` drives one round of a `SecureCoordinator` against `SecureParticipant`s with
every message passed as wire bytes, injecting dropouts at chosen stages and timing each
device's work per stage. `run_secure_simulation` runs a whole task on a dataset with the same
data, partition, model and local training as `mobile_sim.runner.run_simulation` (plain mode).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from coordinator.engine import find_measurement
from coordinator.ledger import BandwidthLedger
from coordinator.secure import SecureConfig, SecureCoordinator, SecureOutcome
from protocol.names import CheckInAction
from protocol.secagg import CtrRandom, RoundAborted, SecAggError, Stage
from sdk.secure import SecureParticipant, SecureSession

from ._residuals import ParticipantStore, budget_bytes
from .clock import COORDINATOR_MAX_S
from .partition import partition_stats
from .runner import (
    RoundRecord,
    RunInterrupted,
    SimConfig,
    SimResult,
    _jsonable,
    _recorded_config,
    _wall_split,
)

log = logging.getLogger(__name__)

__all__ = [
    "STAGES",
    "RoundStats",
    "HttpSecureFleet",
    "TaskEnded",
    "run_secure_round",
    "run_secure_simulation",
    "draw_dropouts",
]

STAGES = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)


class TaskEnded(RuntimeError):
    """`HttpSecureFleet.run_round`: the coordinator answered the round's devices "end" (the
    task runs no more rounds) before any of them was assigned one."""


@dataclass
class RoundStats:
    """Timings and bytes of one secure round.

    client_s[stage]: device seconds per stage, one entry per device that ran it.
    server_s[stage]: server seconds to receive that stage's uploads and close it.
    server_wall_s: the server's wall seconds in the round: every upload's receive and stage's
    close, and the coordinator's `close_round` (the unmask and the published step).
    """

    client_s: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    server_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    refused: dict[str, str] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)
    server_wall_s: float = 0.0


# A simulated secure round commits only with at least this many masked inputs, in process as
# over HTTP (the task `HttpSecureFleet` creates; the service opens a secure round with no fewer
# than three devices). In process, until stop 50, one or two sufficed where HTTP aborted.
SECURE_MIN_REPORTS = 3


def draw_dropouts(device_ids: list[str], rate: float, rng: np.random.Generator) -> dict[str, Stage]:
    """Each device drops with probability `rate`, at a stage drawn uniformly from the four."""
    out = {}
    for d in device_ids:
        if rng.random() < rate:
            out[d] = STAGES[int(rng.integers(0, len(STAGES)))]
    return out


def run_secure_round(
    coord: SecureCoordinator,
    participants: Mapping[str, SecureParticipant],
    updates: Mapping[str, tuple[npt.NDArray[np.float32], int]],
    drop_at: Mapping[str, Stage] | None = None,
    rng_for: Callable[[str], np.random.Generator] | None = None,
    round_id: int | None = None,
    min_reports: int = 1,
) -> tuple[SecureOutcome, RoundStats]:
    """One secure round over the devices in `updates` (device -> (delta float32[d], weight)).

    A device in `drop_at` goes silent from that stage on. A device whose client refuses
    (a `SecAggError`) also goes silent; the refusal is kept in `stats.refused`. `round_id`
    names the round (default: the coordinator's next), e.g. to replay a service's round.
    `min_reports`: a round left with fewer masked inputs is not committed, as the service's
    task `min_reports` does (`SecureCoordinator.open_round`/`close_round`'s `min_contributors`).
    """
    drops = dict(drop_at or {})
    stats = RoundStats()
    task = coord.open_round(list(updates), round_id, min_contributors=min_reports)
    params = coord.params
    sessions: dict[str, SecureSession] = {}
    for sr in task.groups:
        for dev, plan_bytes in sr.announce().items():
            sessions[dev] = participants[dev].join(plan_bytes, sr.digest, params, sr.node_of(dev))

    def alive(dev: str, stage: Stage) -> bool:
        s = drops.get(dev)
        return dev not in stats.refused and (s is None or STAGES.index(s) > STAGES.index(stage))

    def client_step(dev: str, stage: Stage, down: bytes) -> bytes | None:
        sess = sessions[dev]
        t0 = time.perf_counter()
        try:
            if stage == Stage.ADVERTISE_KEYS:
                body = sess.advertise()
            elif stage == Stage.SHARE_KEYS:
                body = sess.share_keys(down)
            elif stage == Stage.MASKED_INPUT:
                delta, weight = updates[dev]
                rng = rng_for(dev) if rng_for else np.random.default_rng()
                body = sess.masked_input(down, delta, weight, rng)
            else:
                body = sess.unmask(down)
        except SecAggError as exc:
            stats.refused[dev] = f"{type(exc).__name__}: {exc}"
            return None
        stats.client_s[str(stage)].append(time.perf_counter() - t0)
        return body

    for sr in task.groups:
        inbox: dict[str, bytes] = dict.fromkeys(sr.device_ids, b"")
        try:
            for stage in STAGES:
                for dev, down in inbox.items():
                    if not alive(dev, stage):
                        continue
                    body = client_step(dev, stage, down)
                    if body is not None:
                        t0 = time.perf_counter()
                        sr.receive(stage, dev, body)
                        spent = time.perf_counter() - t0
                        stats.server_s[str(stage)] += spent
                        stats.server_wall_s += spent
                if stage != Stage.UNMASK:
                    t0 = time.perf_counter()
                    inbox = sr.close(stage)
                    spent = time.perf_counter() - t0
                    stats.server_s[str(stage)] += spent
                    stats.server_wall_s += spent
        except RoundAborted:
            continue
    t0 = time.perf_counter()
    outcome = coord.close_round(task, min_contributors=min_reports)
    stats.server_wall_s += time.perf_counter() - t0
    _settle_inputs(participants, sessions, outcome, coord.config.dp)
    stats.server_s["unmask"] += float(outcome.measurements.get("unmask_s", 0.0))
    for sr in task.groups:
        stats.bytes_up.update(sr.bytes_up)
        stats.bytes_down.update(sr.bytes_down)
    return outcome, stats


def _settle_inputs(
    participants: Mapping[str, SecureParticipant],
    devices: Iterable[str],
    outcome: SecureOutcome,
    noised: bool,
) -> None:
    """Settle each device's masked input once the round's outcome is known: what it stood for
    stays sent if the published sum holds it, and goes back into the device's residual if the
    round aborted or was abandoned, or its group was left out (as the SDK does on the check-in's
    `abandoned` / `excluded`). A device that sent no masked input has nothing to settle.

    With distributed DP noise (`noised`) nothing goes back, as the SDK does for such a task
    (`return_refused` false): whether a device's input is taken can depend on other devices
    (when a stage closes, whether a group aborts), so a returned input would let one device's
    data move other devices' later inputs, past the one-device bound the accounting assumes
    (docs/privacy.md). The content is lost to error feedback instead."""
    inside = set(outcome.contributors) if outcome.committed else set()
    for dev in devices:
        if noised or dev in inside:
            participants[dev].forget_sent()
        else:
            participants[dev].return_sent()


class HttpSecureFleet:
    """Secure rounds over real HTTP against the durable coordinator service.

    A coordinator (`coordinator.service.ServerThread`, SQLite in a temporary folder) runs on
    loopback with one secure task whose initial model, `SecureConfig` and seed are `coord`'s.
    Each simulated device is an `sdk.client.Client` with its own Ed25519 identity; in
    `run_round` every device checks in, is selected, downloads the model, and runs the four
    SecAgg+ stages as signed requests, one thread per device. The service closes each stage
    when every device still in it has uploaded, `stage_idle_s` after its latest upload, or
    `stage_cap_s` after it opened, then unmasks and publishes the mean as a new model version
    (dense fp32 downlink, so the published step is exactly the mean). `coord.params` follows
    the published model, so callers read it as in the in-process driver.

    The task's round deadline is `deadline_s` (wall seconds: every stage's cap and a minute)
    and its selection timeout `SELECTION_TIMEOUT_S` (a week: a round opens with the whole
    cohort); `settings()` is what a run's results record of them.

    `last_bandwidth` is the round's ledger as the service counted it; `last_control` the
    devices' exchanges in no round's ledger during `run_round` (`control_since`), which a
    run's rounds record as `measurements["control_traffic"]`.
    """

    # The task's selection timeout: the longest the service takes (a week), so a round opens
    # only once the whole cohort has checked in.
    SELECTION_TIMEOUT_S = COORDINATOR_MAX_S

    def __init__(
        self,
        coord: SecureCoordinator,
        stage_idle_s: float = 1.0,
        stage_cap_s: float = 60.0,
        *,
        spec: Any = None,
        max_rounds: int = 1_000_000,
    ) -> None:
        import os
        import secrets
        import tempfile

        from compression import ModelSpec
        from coordinator.service import AdminClient, ServerThread, ServiceConfig
        from sdk.client import Client

        self.coord = coord
        self.stage_idle_s = stage_idle_s
        self.stage_cap_s = stage_cap_s
        self.max_rounds = max_rounds
        self.spec: ModelSpec = spec or ModelSpec.from_shapes([("params", (coord.size,))])
        if self.spec.size != coord.size:
            raise ValueError(f"spec of size {self.spec.size}, model of size {coord.size}")
        self._tmp = tempfile.TemporaryDirectory(prefix="plume-secure-")
        self._token = secrets.token_hex(16)
        self._server = ServerThread(
            ServiceConfig(
                db_path=os.path.join(self._tmp.name, "coordinator.db"),
                admin_token=self._token,
                poll_s=0.02,
                tick_s=0.02,
            )
        )
        self.url = self._server.start()
        self.admin = AdminClient(self.url, self._token)
        self.observer = Client(self.url, os.path.join(self._tmp.name, "observer"))
        self.observer.register()
        self._clients: dict[str, Client] = {}
        self.task_id: int | None = None
        self._cohort = 0
        self.last_round_id = 0
        self.last_bandwidth: dict[str, Any] = {}
        self.last_control: dict[str, int] = {}
        self._control_counted = {"up_wire_bytes": 0, "down_wire_bytes": 0, "requests": 0}

    @property
    def deadline_s(self) -> float:
        """The task's round deadline, wall seconds: the four stages' caps and a minute."""
        return 4 * self.stage_cap_s + 60.0

    def settings(self) -> dict[str, float]:
        """The fleet's wall-clock settings a run's results record (rounds.json's `http`; the
        selection timeout goes in its config, `selection_timeout_s`)."""
        return {
            "deadline_s": self.deadline_s,
            "stage_idle_s": float(self.stage_idle_s),
            "stage_cap_s": float(self.stage_cap_s),
        }

    def control_since(self) -> dict[str, int]:
        """The devices' control traffic since the last call (the first: since the fleet was
        made): the exchanges the service put in no round's ledger (their registrations, the
        check-ins answered without an assignment while a cohort gathers), as each device's SDK
        counted them (`Client.control_bandwidth`): `up_wire_bytes`, `down_wire_bytes` (HTTP/1.1
        requests and responses, heads and bodies) and `requests` (answered ones). As a plain
        HTTP run's (`http_fleet._Fleet.control_since`): not the observer's model fetches nor
        the admin client's polling, the simulation's machinery. Read between rounds, when no
        device thread runs."""
        from .http_fleet import _control_total

        now = _control_total(list(self._clients.values()))
        out = {k: now[k] - self._control_counted[k] for k in now}
        self._control_counted = now
        return out

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        self.observer.close()
        self.admin.close()
        self._server.stop()
        self._tmp.cleanup()

    def _client(self, name: str) -> Any:
        import os

        from sdk.client import Client

        c = self._clients.get(name)
        if c is None:
            c = Client(self.url, os.path.join(self._tmp.name, f"device-{len(self._clients)}"))
            c.register()
            self._clients[name] = c
        return c

    def _create_task(self, cohort: int) -> int:
        import dataclasses

        from protocol.messages import CodecParams, TaskConfig, TensorShape

        cfg = self.coord.config
        secure: dict[str, Any] = {
            f.name: getattr(cfg, f.name)
            for f in dataclasses.fields(cfg)
            if f.name not in ("seed", "server_lr", "noise")
        }
        secure["noise"] = cfg.noise.name.lower()
        if not math.isfinite(cfg.epsilon_budget):
            # JSON has no infinity: no budget is the service's default, so leave the key out.
            del secure["epsilon_budget"]
        # The sketch needs the model's tensor shapes; without them the in-process coordinator
        # runs without it, and so does the service.
        secure["sketch"] = bool(self.coord.sketch_segments)
        secure["stage_timeout_s"] = self.stage_cap_s
        secure["stage_idle_s"] = self.stage_idle_s
        task = TaskConfig(
            name="secure-sim",
            model_name="sim",
            spec=[TensorShape(e.name, list(e.shape)) for e in self.spec.entries],
            rounds=self.max_rounds,
            clients_per_round=cohort,
            over_selection=1.0,
            deadline_s=self.deadline_s,
            min_reports=SECURE_MIN_REPORTS,
            # The round opens only once the whole cohort has checked in.
            selection_timeout_s=self.SELECTION_TIMEOUT_S,
            downlink=CodecParams(topk=1.0, bits=32),
            server_lr=cfg.server_lr,
            seed=cfg.seed,
            retry_after_s=0.2,
            secure=secure,
        )
        return self.admin.create_task(task, self.coord.params)

    def run_round(
        self,
        participants: Mapping[str, SecureParticipant],
        updates: Mapping[str, tuple[npt.NDArray[np.float32], int]],
        drop_at: Mapping[str, Stage] | None = None,
        rng_for: Callable[[str], np.random.Generator] | None = None,
    ) -> SecureOutcome:
        """One secure round over HTTP; same contract as `run_secure_round`. Every call must
        bring the same number of devices (the task's cohort size)."""
        drops = dict(drop_at or {})
        if self.task_id is None:
            self.task_id = self._create_task(len(updates))
            self._cohort = len(updates)
        elif len(updates) != self._cohort:
            raise ValueError(f"the fleet's task runs cohorts of {self._cohort}, got {len(updates)}")
        task_id = self.task_id
        clients = {dev: self._client(dev) for dev in updates}
        name_of = {c.device_id: dev for dev, c in clients.items()}
        before = self.coord.params.copy()
        errors: list[str] = []
        ended: list[str] = []
        rounds: set[int] = set()
        # Set once the round's wait is over: a device still waiting for an assignment stops.
        give_up_waiting = threading.Event()

        def device(dev: str) -> None:
            client = clients[dev]
            delta, weight = updates[dev]
            try:
                while True:
                    answer = client.check_in(task_id)
                    if answer.assignment is not None:
                        break
                    if answer.action == CheckInAction.END or give_up_waiting.is_set():
                        # "end": the task runs no more rounds (done, e.g. its epsilon budget
                        # spent, or stopped). Waiting on, as "wait", never ended: the device
                        # threads outlived the run and the process did not exit.
                        ended.append(f"{dev}: {answer.detail or answer.action}")
                        return
                    give_up_waiting.wait(answer.retry_after_s)
                a = answer.assignment
                rounds.add(a.round_id)
                client.secure_round(
                    a,
                    lambda params: (delta, weight, 0.0),
                    participant=participants[dev],
                    rng=rng_for(dev) if rng_for else None,
                    drop_at=drops.get(dev),
                )
            except Exception as exc:  # reported with the outcome; the round goes on without it
                errors.append(f"{dev}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=device, args=(d,)) for d in updates]
        for t in threads:
            t.start()
        # One wait for the whole cohort (each thread's own was up to n times as long).
        wait_until = time.monotonic() + 4 * self.stage_cap_s + 120
        for t in threads:
            t.join(max(0.0, wait_until - time.monotonic()))
        give_up_waiting.set()
        if not rounds and ended:
            raise TaskEnded(
                f"the coordinator ended task {task_id} before this round opened ({ended[0]}): "
                "it runs no more rounds"
            )
        if len(rounds) != 1:
            raise RuntimeError(f"devices were assigned rounds {sorted(rounds)}: {errors}")
        (round_id,) = rounds
        give_up = time.monotonic() + 4 * self.stage_cap_s + 120
        while True:
            status = self.admin.round(round_id)
            if status.state in ("committed", "abandoned"):
                break
            if time.monotonic() > give_up:
                raise RuntimeError(f"secure round {round_id} did not close")
            time.sleep(0.02)
        committed = status.state == "committed"
        if committed:
            # The round's row commits before the event loop swaps in the new model, so wait
            # until the model endpoint serves the version the round published.
            while True:
                params, version, _ = self.observer.fetch_current(task_id, self.spec)
                if version >= (status.version_after or 0):
                    break
                if time.monotonic() > give_up:
                    raise RuntimeError(f"version {status.version_after} was never served")
                time.sleep(0.01)
            self.coord.params = params
            self.coord.version += 1
        self.last_round_id = round_id
        self.last_bandwidth = self.admin.bandwidth(round_id)
        # The devices' threads are done (joined above): their exchanges are all counted.
        self.last_control = self.control_since()
        meas = dict(status.measurements)
        if errors:
            meas["device_errors"] = errors
        dropped = sorted(name_of.get(d, d) for d in meas.get("dropped", list(name_of)))
        # Devices the service left out that the simulation did not drop: a stage closed
        # `stage_idle_s` after its latest upload before theirs arrived (a loaded machine), so
        # this round's cohort is not the one the seed drew and the in-process run's differs
        late = [dev for dev in dropped if dev not in drops]
        if late:
            meas["late_devices"] = late
            log.warning(
                "secure round %d: %d device(s) the simulation did not drop were left out by "
                "the service's stage timing (a stage closes %g s after its latest upload; a "
                "loaded machine?): %s",
                round_id,
                len(late),
                self.stage_idle_s,
                ", ".join(late),
            )
        contributors = [dev for dev in updates if dev not in set(dropped)] if committed else []
        step = (self.coord.params - before) / np.float32(self.coord.config.server_lr)
        outcome = SecureOutcome(
            round_id,
            committed,
            contributors,
            dropped,
            int(meas.get("aborted_groups", 0)),
            step.astype(np.float32),
            meas,
        )
        # The devices' flows keep what an unsettled masked input stood for in their
        # participant (the simulator's, not an app directory): settle it as a check-in would.
        _settle_inputs(participants, updates, outcome, self.coord.config.dp)
        return outcome


def _noise_key(seed: int, index: int) -> bytes:
    """The 32-byte key of device `index`'s `--dp-noise` stream (an AES-CTR CtrRandom) in a run
    of `seed`: SeedSequence(seed, spawn_key=(0xD9, index))'s first 256 bits. Without it each
    device drew a key from os.urandom and no rerun repeated a noised run; the SDK on a phone
    still does. Not SeedSequence([seed, 0xD9, index]): numpy pads a short entropy list with
    zeros, so that key was the PCG64 seed of job_rng(round 217, device index, stream 0). With a
    spawn key `seed` is padded to four words before the key, a six-word sequence (for a seed
    below 2**32) that none of the run's default_rng([seed, ...]) lists makes."""
    seq = np.random.SeedSequence(seed, spawn_key=(0xD9, index))
    return seq.generate_state(8, np.uint32).tobytes()


def _job_stream(jobs: Mapping[str, Any], device_id: str) -> np.random.Generator:
    from .backends import job_rng

    return job_rng(jobs[device_id], stream=2)


def run_secure_simulation(
    cfg: SimConfig,
    secure: SecureConfig,
    *,
    dropout: float = 0.1,
    progress: bool = True,
    label: str = "secure",
    on_round: Callable[[RoundRecord], None] | None = None,
    transport: str = "inproc",
) -> SimResult:
    """`cfg.rounds` secure rounds with real local training; same data/model setup as plain mode.

    Each round `cfg.per_round` devices are drawn uniformly; each drops with probability
    `dropout` at a uniformly drawn stage. RoundRecord bytes are the real message bytes.
    `transport="http"` runs every round through the HTTP stage endpoints on loopback; its
    result's config records the task's selection timeout (`selection_timeout_s`, a week: a
    round opens with the whole cohort) and its `http` the task's round deadline in wall
    seconds and the stage timing (`HttpSecureFleet.settings`). There is no simulated clock
    (records carry no simulated seconds): `cfg.fleet` "realistic" and `cfg.deadline_s` raise
    `ValueError`, as do the plain-round settings it has no use for (`attack`, an `aggregator`
    other than fedavg, `over_selection`, `warmup_rounds`, `clip_norm`, ONNX devices, a
    compressed downlink: `downlink_topk`, `downlink_bits`).

    Each device's `SecureParticipant` (its error-feedback residual and `--dp-noise` stream)
    lives from round to round; those of devices outside the round are held up to
    `cfg.residual_memory_mb` and the rest spilled to a private temporary directory, removed at
    the end (`ParticipantStore`; results do not depend on the budget).
    """
    if transport not in ("inproc", "http"):
        raise ValueError(f"transport must be 'inproc' or 'http', not {transport!r}")
    if cfg.fleet == "realistic" or cfg.deadline_s is not None:
        # Silently ignored before: secure rounds have no simulated clock.
        raise ValueError(
            "secure runs draw their dropouts from `dropout` (--secure-dropout) and have no "
            "simulated clock; fleet='realistic' and deadline_s run in plain rounds"
        )
    plain_only = [
        name
        for name, asked in (
            ("attack", bool(cfg.attack)),
            ("aggregator", cfg.aggregator != "fedavg"),
            ("over_selection", cfg.over_selection != 1.0),
            ("warmup_rounds", bool(cfg.warmup_rounds)),
            ("clip_norm", cfg.clip_norm is not None),
            ("ort_fraction", bool(cfg.ort_fraction or cfg.ort_tier)),
            # a secure round publishes its unmasked mean as an exact fp32 model
            ("downlink_topk", cfg.downlink_topk is not None),
            ("downlink_bits", cfg.downlink_bits is not None),
        )
        if asked
    ]
    if plain_only:
        # Also silently ignored before. (The plain codec's fields are not checked here: a
        # benchmark may share one config between its plain and secure runs.)
        raise ValueError(
            f"{', '.join(plain_only)} only apply to plain rounds: secure devices are honest, "
            "the cohort is per_round, and robustness across groups is "
            "SecureConfig.group_aggregator"
        )
    from tqdm import tqdm

    from sdk.flat import get_flat_params

    from .backends import TrainJob
    from .runner import (
        _device_ids,
        _ray_cluster,
        backend_for,
        model_evaluator,
        prepare,
        train_context,
    )
    from .status import clear, note

    if transport == "http":
        # Seconds pass before round 1 (loading the data, starting the loopback coordinator,
        # registering the devices in round 1): one line in a log too (`note`).
        note(f"setting up: loading {cfg.dataset}, starting a loopback coordinator")
    setup = prepare(cfg)
    data, parts, model, eval_model = setup.data, setup.parts, setup.model, setup.eval_model
    started_at = setup.started_at
    ledger = BandwidthLedger()
    coord = SecureCoordinator(get_flat_params(model), secure, ledger=ledger, spec=setup.spec)
    d = coord.size
    ids = _device_ids(cfg.clients)
    index_of = {dev: i for i, dev in enumerate(ids)}
    # Every device's participant, resident up to the budget, the rest spilled to a private
    # temporary directory that the `finally` below removes (mobile_sim/_residuals.py).
    participants = ParticipantStore(d, budget_bytes(cfg.residual_memory_mb))
    drop_rng = np.random.default_rng([cfg.seed, 4])
    be = backend_for(cfg)
    evaluate_model = model_evaluator(be, eval_model, data)  # checks the test set: before start
    be.start(train_context(cfg, data))
    records: list[RoundRecord] = []
    last_params = coord.params.copy()  # the model of the last round in `records`
    try:
        fleet = HttpSecureFleet(coord, spec=setup.spec) if transport == "http" else None
    except BaseException:
        be.close()  # the `finally` below that closes it is not reached
        participants.close()
        raise
    # The config the results record: over HTTP with the task's selection timeout, the one its
    # rounds ran with (not the realistic fleet's simulated 900 s, unused). Its round deadline
    # is wall seconds, which `deadline_s` (simulated, refused above) is not: in `http`, so that
    # SimConfig.from_dict of the record runs again.
    ran = cfg
    if fleet is not None:
        ran = _recorded_config(cfg, selection_timeout_s=fleet.SELECTION_TIMEOUT_S)
    clear()  # the set-up's status line gives way to the bar
    bar = tqdm(total=cfg.rounds, desc=label, unit="round", disable=not progress, leave=False)

    # Why the run ended before cfg.rounds ("epsilon_budget"), rounds.json's `secure.stopped_by`.
    stopped_by: str | None = None

    def result(params: npt.NDArray[np.float32]) -> SimResult:
        settings = _settings(secure, dropout)
        if stopped_by is not None:
            settings["stopped_by"] = stopped_by
        return SimResult(
            ran,
            records,
            ledger,
            d,
            params,
            label,
            started_at,
            _jsonable(settings),
            partition_stats(parts, data.y_train),
            http=fleet.settings() if fleet is not None else None,
            ray_cluster=_ray_cluster(be),
        )

    try:
        for r in range(1, cfg.rounds + 1):
            t0 = time.perf_counter()
            # The plain engine's default draw for round r (RoundEngine.open_round), so a plain
            # and a secure run of one config train the same cohorts and can be compared.
            pick = np.random.default_rng([cfg.seed, r])
            chosen = sorted(pick.choice(cfg.clients, cfg.per_round, replace=False).tolist())
            selected = [ids[i] for i in chosen]
            jobs = [
                TrainJob(dev, index_of[dev], r, cfg.seed, parts[index_of[dev]]) for dev in selected
            ]
            t_train = time.perf_counter()
            results = be.train(coord.params, jobs)
            train_s = time.perf_counter() - t_train
            updates = {res.device_id: (res.delta, int(res.num_examples)) for res in results}
            for dev in selected:
                if dev not in participants:
                    noise = CtrRandom(_noise_key(cfg.seed, index_of[dev]))
                    participants[dev] = SecureParticipant(d, noise_rng=noise)
            # The round's participants, in a plain dict: the HTTP fleet's device threads read
            # theirs at once, and the store is not for threads.
            cohort = {dev: participants[dev] for dev in selected}
            job_of = {j.device_id: j for j in jobs}
            drops = draw_dropouts(selected, dropout, drop_rng)
            if fleet is not None:
                outcome = fleet.run_round(
                    cohort, updates, drops, rng_for=partial(_job_stream, job_of)
                )
                stats = RoundStats()
                # Bytes as the service's ledger counts them (payload; wire bytes beside them).
                for row in fleet.last_bandwidth["rows"]:
                    ledger.record(
                        r, row["device_id"], row["direction"], row["payload_bytes"],
                        row["wire_bytes"], row["dense_bytes"],
                    )  # fmt: skip
                totals = fleet.last_bandwidth["totals"]
                stats.bytes_up = {"all": int(totals["up_payload_bytes"])}
                stats.bytes_down = {"all": int(totals["down_payload_bytes"])}
            else:
                outcome, stats = run_secure_round(
                    coord,
                    cohort,
                    updates,
                    drops,
                    rng_for=partial(_job_stream, job_of),
                    min_reports=SECURE_MIN_REPORTS,
                )
                # Every selected device downloaded the model first: one fp32 snapshot each, as
                # the plain in-process runner counts it (over HTTP the ledger has the real one).
                for dev in selected:
                    ledger.record(outcome.round_id, dev, "down", 4 * d, None, 4 * d)
                    stats.bytes_down[dev] = stats.bytes_down.get(dev, 0) + 4 * d
            participants.end_round()  # every input settled: idle state beyond the budget goes out
            # The epsilon budget (SecureConfig.epsilon_budget) is spent: this round was refused
            # before unmasking, or no round after it fits. The coordinator opens no more (in
            # process `open_round` raises BudgetExhausted; the service ends the task and
            # answers the devices' check-ins "end"), so the run ends here, its model evaluated.
            budget_spent = find_measurement(outcome.measurements, "budget_exhausted") is True
            acc: float | None = None
            loss: float | None = None
            eval_s = 0.0
            if r % cfg.eval_every == 0 or r == cfg.rounds or budget_spent:
                t_eval = time.perf_counter()
                acc, loss = evaluate_model(coord.params)
                eval_s = time.perf_counter() - t_eval
            up = sum(stats.bytes_up.values())
            down = sum(stats.bytes_down.values())
            # The dense baselines as the ledger holds them (one fp32 model per masked input
            # the server took, and per model download), so that rounds.json's rounds and its
            # ledger totals agree, as in plain runs: before, the rounds counted
            # 4 d x contributors while the ledger's upload rows said 0.
            dense = ledger.round_totals(outcome.round_id if fleet is None else r)
            dense_up = int(dense["up"]["dense_bytes"])
            meas: dict[str, Any] = dict(outcome.measurements)
            meas["client_s"] = {s: float(np.mean(v)) for s, v in stats.client_s.items() if v}
            meas["refused"] = len(stats.refused)
            if fleet is not None:
                # The devices' exchanges in no round's ledger during this round (registrations
                # of devices new to it, check-ins answered "wait" while the cohort gathered),
                # as a plain HTTP run records them.
                meas["control_traffic"] = dict(fleet.last_control)
            wall_s = time.perf_counter() - t0
            rec = RoundRecord(
                round=r,
                accuracy=acc,
                loss=loss,
                train_loss=float(np.mean([res.loss for res in results])),
                reports=len(outcome.contributors),
                committed=outcome.committed,
                bytes_up=up,
                bytes_down=down,
                dense_up=dense_up,
                dense_down=int(dense["down"]["dense_bytes"]),
                wire_up=up,
                wire_down=down,
                ratio_up=dense_up / up if up else None,
                wall_s=wall_s,
                available=cfg.clients,  # the cohort is drawn from the whole fleet, above
                measurements=meas,
            )
            if fleet is None:
                # In process every device's and the server's SecAgg step runs in turn in this
                # thread, so their timers split `wall_s` as `run_simulation`'s do: the masked
                # input (the devices' compression and masking) is the encoding, the server's
                # stages and its close (the unmask) the aggregation; the devices' key agreement and
                # unmask shares go to `wall_other_s`. Over HTTP the devices' steps and the
                # service's overlap in other threads: no split (None, as plain HTTP runs).
                masked = sum(stats.client_s.get(str(Stage.MASKED_INPUT), ()))
                split = _wall_split(wall_s, train_s, masked, stats.server_wall_s, eval_s)
                for name, seconds in split.items():
                    setattr(rec, name, seconds)
            params_now = coord.params.copy()
            records.append(rec)
            last_params = params_now
            if on_round is not None:
                on_round(rec)
            bar.update(1)
            bar.set_postfix(acc=f"{acc:.3f}" if acc is not None else "-", up=f"{up / 1e3:.1f} kB")
            if budget_spent and r < cfg.rounds:
                stopped_by = "epsilon_budget"
                log.info("secure run: the epsilon budget stopped it after %d rounds", r)
                break
    except KeyboardInterrupt as exc:
        # As `run_simulation`: the finished rounds are kept, with their ledger rows only (a
        # round cut short may have recorded uploads) and the model of the last of them: a
        # round cut short after its close (while it is evaluated, say) changed `coord.params`.
        # Over HTTP a round cut short may still commit on the service; it is not kept either.
        raise RunInterrupted.of(result(last_params)) from exc
    except Exception as exc:
        if records:
            # Any other error (a pool or Ray worker that failed, died or stalled, a failed
            # HTTP stage) goes on as it is, carrying the finished rounds as `run_simulation`'s
            # does, for `plume sim` to write (before, they were lost with it).
            RunInterrupted.attach(exc, result(last_params))
        raise
    finally:
        bar.close()
        participants.close()
        be.close()
        if fleet is not None:
            fleet.close()
    return result(coord.params.copy())


def _settings(secure: SecureConfig, dropout: float) -> dict[str, Any]:
    """The secure settings a `SimResult` records (rounds.json's `secure`)."""
    return {**asdict(secure), "noise": secure.noise.name.lower(), "dropout": dropout}
