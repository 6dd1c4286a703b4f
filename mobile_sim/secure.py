"""Secure-mode simulation: SecAgg+ rounds over compressed updates, in process, with real training.

`run_secure_round` drives one round of a `SecureCoordinator` against `SecureParticipant`s with
every message passed as wire bytes, injecting dropouts at chosen stages and timing each
device's work per stage. `run_secure_simulation` runs a whole task on a dataset with the same
data, partition, model and local training as `mobile_sim.runner.run_simulation` (plain mode).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from coordinator.ledger import BandwidthLedger
from coordinator.secure import SecureConfig, SecureCoordinator, SecureOutcome
from protocol.secagg import RoundAborted, SecAggError, Stage
from sdk.secure import SecureParticipant, SecureSession

from .runner import RoundRecord, SimConfig, SimResult

__all__ = [
    "STAGES",
    "RoundStats",
    "HttpSecureFleet",
    "run_secure_round",
    "run_secure_simulation",
    "draw_dropouts",
]

STAGES = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)


@dataclass
class RoundStats:
    """Timings and bytes of one secure round.

    client_s[stage]: device seconds per stage, one entry per device that ran it.
    server_s[stage]: server seconds to receive that stage's uploads and close it.
    """

    client_s: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    server_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    refused: dict[str, str] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)


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
) -> tuple[SecureOutcome, RoundStats]:
    """One secure round over the devices in `updates` (device -> (delta float32[d], weight)).

    A device in `drop_at` goes silent from that stage on. A device whose client refuses
    (a `SecAggError`) also goes silent; the refusal is kept in `stats.refused`. `round_id`
    names the round (default: the coordinator's next), e.g. to replay a service's round.
    """
    drops = dict(drop_at or {})
    stats = RoundStats()
    task = coord.open_round(list(updates), round_id)
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
                        stats.server_s[str(stage)] += time.perf_counter() - t0
                if stage != Stage.UNMASK:
                    t0 = time.perf_counter()
                    inbox = sr.close(stage)
                    stats.server_s[str(stage)] += time.perf_counter() - t0
        except RoundAborted:
            continue
    outcome = coord.close_round(task)
    stats.server_s["unmask"] += float(outcome.measurements.get("unmask_s", 0.0))
    for sr in task.groups:
        stats.bytes_up.update(sr.bytes_up)
        stats.bytes_down.update(sr.bytes_down)
    return outcome, stats


class HttpSecureFleet:
    """Secure rounds over real HTTP: the stage router on a loopback uvicorn server, one thread
    per device running `HttpSecureDevice.run_round`. Stages close when every device still in
    them has uploaded, or after `stage_idle_s` without a new upload (the stage deadline)."""

    def __init__(
        self, coord: SecureCoordinator, stage_idle_s: float = 1.0, stage_cap_s: float = 60.0
    ) -> None:
        import socket

        import uvicorn
        from fastapi import FastAPI

        from coordinator.service._secagg_routes import SecureRegistry, secagg_router

        self.registry = SecureRegistry(coord)
        self.stage_idle_s = stage_idle_s
        self.stage_cap_s = stage_cap_s
        app = FastAPI()
        app.include_router(secagg_router(self.registry, retry_after_s=0.01))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{port}"
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("secure-round server did not start")
            time.sleep(0.01)

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(20)

    def run_round(
        self,
        participants: Mapping[str, SecureParticipant],
        updates: Mapping[str, tuple[npt.NDArray[np.float32], int]],
        drop_at: Mapping[str, Stage] | None = None,
        rng_for: Callable[[str], np.random.Generator] | None = None,
    ) -> SecureOutcome:
        """One secure round over HTTP; same contract as `run_secure_round`."""
        import httpx

        from sdk.secure import HttpSecureDevice

        drops = dict(drop_at or {})
        task = self.registry.open_round(list(updates))
        params = self.registry.coordinator.params.copy()
        errors: list[str] = []

        def device(dev: str, client: httpx.Client) -> None:
            http_dev = HttpSecureDevice(client, dev, participants[dev], poll_s=0.01)
            rng = rng_for(dev) if rng_for else np.random.default_rng()
            delta, weight = updates[dev]
            try:
                http_dev.run_round(task.round_id, params, delta, weight, rng, 120.0, drops.get(dev))
            except SecAggError as exc:
                errors.append(f"{dev}: {exc}")

        with httpx.Client(base_url=self.url, timeout=60) as client:
            threads = [threading.Thread(target=device, args=(d, client)) for d in updates]
            for t in threads:
                t.start()
            for i, stage in enumerate(STAGES):
                # The simulation knows who drops where, so it closes a stage as soon as every
                # device still alive at it has uploaded; the idle timer (counted from the
                # stage's last upload, so a slow first upload under load cannot trip it) and
                # an overall cap stay as the backstop a real deployment's deadline would be.
                alive = sum(1 for d in updates if d not in drops or STAGES.index(drops[d]) > i)
                last, since, start = -1, time.monotonic(), time.monotonic()
                while True:
                    done, expected = self.registry.pending(task.round_id, stage)
                    if expected == 0:
                        break  # closed by the last upload (or every group aborted)
                    now = time.monotonic()
                    if done != last:
                        last, since = done, now
                    if done >= alive or (
                        (done > 0 and now - since > self.stage_idle_s)
                        or now - start > self.stage_cap_s
                    ):
                        self.registry.close_stage(task.round_id, stage)
                        break
                    time.sleep(0.005)
            for t in threads:
                t.join(120)
        return self.registry.finish(task.round_id)


def _ledger_totals(ledger: BandwidthLedger) -> dict[str, int]:
    out = {"up": 0, "down": 0}
    for row in ledger.rows():
        out[row.direction] += row.payload_bytes
    return out


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
    `transport="http"` runs every round through the HTTP stage endpoints on loopback.
    """
    if transport not in ("inproc", "http"):
        raise ValueError(f"transport must be 'inproc' or 'http', not {transport!r}")
    from tqdm import tqdm

    from sdk.flat import get_flat_params
    from sdk.trainer import evaluate

    from .backends import TrainContext, TrainJob, build_backend
    from .runner import _device_ids, prepare

    setup = prepare(cfg)
    data, parts, model, eval_model = setup.data, setup.parts, setup.model, setup.eval_model
    started_at = setup.started_at
    ledger = BandwidthLedger()
    coord = SecureCoordinator(get_flat_params(model), secure, ledger=ledger, spec=setup.spec)
    d = coord.size
    ids = _device_ids(cfg.clients)
    index_of = {dev: i for i, dev in enumerate(ids)}
    participants: dict[str, SecureParticipant] = {}
    drop_rng = np.random.default_rng([cfg.seed, 4])
    be = build_backend(cfg.backend)
    be.start(
        TrainContext(
            model=cfg.model_name,
            x_train=data.x_train,
            y_train=data.y_train,
            epochs=cfg.local_epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            momentum=cfg.momentum,
        )
    )
    records: list[RoundRecord] = []
    fleet = HttpSecureFleet(coord) if transport == "http" else None
    bar = tqdm(total=cfg.rounds, desc=label, disable=not progress, leave=False)
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
            results = be.train(coord.params, jobs)
            updates = {res.device_id: (res.delta, int(res.num_examples)) for res in results}
            for dev in selected:
                participants.setdefault(dev, SecureParticipant(d))
            job_of = {j.device_id: j for j in jobs}
            drops = draw_dropouts(selected, dropout, drop_rng)
            if fleet is not None:
                before = _ledger_totals(ledger)
                outcome = fleet.run_round(
                    participants, updates, drops, rng_for=partial(_job_stream, job_of)
                )
                stats = RoundStats()
                after = _ledger_totals(ledger)
                stats.bytes_up = {"all": after["up"] - before["up"]}
                stats.bytes_down = {"all": after["down"] - before["down"]}
            else:
                outcome, stats = run_secure_round(
                    coord, participants, updates, drops, rng_for=partial(_job_stream, job_of)
                )
            acc: float | None = None
            loss: float | None = None
            if r % cfg.eval_every == 0 or r == cfg.rounds:
                acc, loss = evaluate(eval_model, coord.params, data.x_test, data.y_test)
            up = sum(stats.bytes_up.values())
            down = sum(stats.bytes_down.values())
            dense_up = 4 * d * len(outcome.contributors)
            meas: dict[str, Any] = dict(outcome.measurements)
            meas["client_s"] = {s: float(np.mean(v)) for s, v in stats.client_s.items() if v}
            meas["refused"] = len(stats.refused)
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
                dense_down=4 * d * len(selected),
                wire_up=up,
                wire_down=down,
                ratio_up=dense_up / up if up else None,
                wall_s=time.perf_counter() - t0,
                measurements=meas,
            )
            records.append(rec)
            if on_round is not None:
                on_round(rec)
            bar.update(1)
            bar.set_postfix(acc=f"{acc:.3f}" if acc is not None else "-", up=up)
    finally:
        bar.close()
        be.close()
        if fleet is not None:
            fleet.close()
    return SimResult(cfg, records, ledger, d, coord.params.copy(), label, started_at)
