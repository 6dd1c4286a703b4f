"""Simulator throughput: client updates/s per backend next to a plain torch loop, same run.

Sections (default: all, at the settings docs/benchmarks.md publishes):
  million  10^6 registered devices (lazy population), 1,000 a round, 100 rounds (its memory
           levels off only once the residuals fill --million-residual-mb, late in the run):
           RSS and time per round.
  digits   digits-many: sklearn digits, MLP 64-32-10, 1,000 clients a round x 20 samples,
           2 epochs, B=10; every update encoded (top-k + 4-bit + zstd, error feedback) and
           decoded by the coordinator's round engine. Every backend, 3 runs each (median kept).
  mnist    the MNIST-CNN 20-round config (`plume sim` defaults) through `run_simulation` per
           backend (pool and sequential by default), and a plain sequential torch loop over
           the same cohorts. Each backend's `start_s` is its start() alone (the pool's worker
           start-up), timed apart from data loading and the rounds.

Each section merges its results into bench/results/sim_throughput.json, so a long section can
run separately (e.g. `--sections mnist` in the background) without losing the others. Each
section records its own `machine`, `date`, `measured_at`, `command`, `git_commit` and
`git_dirty`; the file's top-level ones are those of the last section written (not a --quick
one). A section written before sections recorded their own machine keeps what it has: its
machine is never filled in from the file's current one. A --quick run merges into
bench/results/sim_throughput_quick.json instead (unless --out is given), under `<section>_quick`.

The plain torch loop is what a user writes without a simulator: per client, deepcopy the global
model, `DataLoader(TensorDataset, shuffle=True)`, `torch.optim.SGD`, then flatten the delta,
encode it with the same codec and error feedback, decode it, and average; evaluate every round.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    RESULTS,
    command_line,
    git_provenance,
    is_quick,
    out_file,
    write_results,
)
from mobile_sim._residuals import DEFAULT_RESIDUAL_MEMORY_MB  # noqa: E402

RESULT = RESULTS / "sim_throughput.json"
SECTIONS = ("million", "digits", "mnist")
# The backends each section times by default, as the published sections ran them
# (bench/results/sim_throughput.json's `digits` and `mnist` sections' commands).
DIGITS_BACKENDS = ("sequential", "vectorized", "pool", "ray")
MNIST_BACKENDS = ("pool", "sequential")


def _rss_gb() -> float:
    """Current resident set size of this process in GB of 10^9 bytes, as the fields' names say
    (from /proc, else the peak from rusage). Before 2026-12-03 these figures were GiB (2^30
    bytes, 7% more bytes than they said)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / 1e9  # "kB" there is KiB
    except OSError:
        pass
    return _peak_rss_gb()


def _peak_rss_gb() -> float:
    """Peak resident set size of this process, GB of 10^9 bytes (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


_INNER = {"inner": "vectorized"}  # what pool / Ray workers run inside (--worker-inner)
# With "auto": vmap inside the workers for the tiny digits MLP; plain per-client training for
# the compute-bound CNN, where one thread per worker process beats vmap (see docs/simulator.md).
_AUTO_INNER = {"million": "vectorized", "digits": "vectorized", "mnist": "sequential"}


def _backend(name: str, workers: int) -> Any:
    from mobile_sim.backends import build_backend

    if name in ("pool", "ray"):
        return build_backend(name, workers=workers, inner=_INNER["inner"])
    return build_backend(name)


# --- (c) a million registered devices ---------------------------------------------------------


def bench_million(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    from compression import CodecConfig
    from coordinator.aggregators import FedAvg
    from coordinator.engine import EngineConfig, RoundEngine
    from mobile_sim._residuals import ResidualStore, budget_bytes
    from mobile_sim.backends import TrainContext, TrainJob, job_rng
    from mobile_sim.data import load_digits_data
    from mobile_sim.fleet import SimFleet
    from mobile_sim.models import build_model
    from sdk.device import UpdateEncoder
    from sdk.flat import get_flat_params, spec_from_module

    rss_start = _rss_gb()
    devices, per_round, rounds = args.million_devices, args.digits_clients, args.million_rounds
    over = 1.3
    fleet = SimFleet(devices, seed=0, deadline_s=600.0, cost_per_sample=0.02)
    data = load_digits_data()
    model = build_model("digits_mlp")
    spec = spec_from_module(model)
    codec = CodecConfig(topk=0.05, bits=4)
    engine = RoundEngine(
        spec,
        get_flat_params(model),
        FedAvg(),
        EngineConfig(clients_per_round=per_round, over_selection=over, codec=codec, seed=0),
    )
    backend = _backend("vectorized", args.workers)
    backend.start(TrainContext("digits_mlp", data.x_train, data.y_train, 2, 10, 0.1))
    # As `plume sim` holds them: resident up to the budget, the rest in a temporary directory.
    encoders = ResidualStore(spec, budget_bytes(args.million_residual_mb))
    rng = np.random.default_rng(0)
    per_round_s, phases = [], []
    for _ in tqdm(range(rounds), desc="million: rounds", unit="round"):
        t0 = time.perf_counter()
        idx = fleet.wait_for(int(per_round * over), rng)
        t_pop = time.perf_counter()
        plan = engine.open_round([str(i) for i in idx.tolist()])
        jobs = [
            TrainJob(d, int(d), plan.round_id, 0, _digits_indices(int(d), len(data.x_train), 20))
            for d in plan.selected
        ]
        drop = fleet.dropped(plan.round_id, [int(j.device_id) for j in jobs])
        alive = [j for j, dropped in zip(jobs, drop, strict=True) if not dropped]
        results = backend.train(engine.params, alive)
        t_train = time.perf_counter()
        by_id: dict[str, bytes] = {}
        for job, res in zip(alive, results, strict=True):
            enc = encoders.get(job.device_id)
            if enc is None:
                enc = encoders[job.device_id] = UpdateEncoder(spec, plan.codec)
            frame, _ = enc.encode(res.delta, job_rng(job, stream=2), float(res.num_examples))
            by_id[job.device_id] = frame
        timing = fleet.time_round(
            plan.round_id,
            [int(j.device_id) for j in jobs],
            down_bytes=spec.size * 4,
            up_bytes=[len(by_id.get(j.device_id, b"")) for j in jobs],
            samples=20,
            epochs=2,
            per_round=per_round,
        )
        kept = {str(dev) for dev in timing.kept.tolist()}
        for dev in kept:
            engine.submit(plan.round_id, dev, by_id[dev])
        outcome = engine.close_round(plan.round_id)
        # Each upload settled as the runner settles it (before, each encoder kept its u).
        for dev in by_id:
            if dev in kept and outcome.committed:
                encoders[dev].accepted()
            else:
                encoders[dev].refused()
        encoders.end_round()
        fleet.advance(timing)
        t_end = time.perf_counter()
        per_round_s.append(t_end - t0)
        phases.append(
            {
                "select_s": t_pop - t0,
                "train_s": t_train - t_pop,
                "encode_time_aggregate_s": t_end - t_train,
                "kept": int(timing.kept.size),
                "dropped": int(timing.dropped.size),
                "stragglers": int(timing.stragglers.size),
                "sim_round_s": timing.duration_s,
                "rss_gb": round(_rss_gb(), 3),
                "residuals_resident_mb": round(encoders.idle_bytes / 1e6, 1),
                "residuals_on_disk": encoders.spilled,
            }
        )
    backend.close()
    disk_bytes, spilled = encoders.disk_bytes, encoders.spilled
    encoders.close()
    gc.collect()
    return {
        "registered_devices": devices,
        "per_round": per_round,
        "selected_per_round": int(per_round * over),
        "rounds": rounds,
        "rss_unit": "GB (10^9 bytes)",
        "residual_memory_mb": args.million_residual_mb,
        "residuals_on_disk_at_end": spilled,
        "residual_spill_file_bytes": disk_bytes,
        "rss_gb_before": round(rss_start, 3),
        "rss_gb_after": round(_rss_gb(), 3),
        "peak_rss_gb": round(_peak_rss_gb(), 3),
        "wall_s_per_round_median": float(np.median(per_round_s)),
        "wall_s_per_round": per_round_s,
        "sim_idle_s": fleet.idle_s,
        "sim_now_s": fleet.now_s,
        "phases": phases,
    }


def _digits_indices(device: int, pool: int, n: int) -> np.ndarray:
    """A device's 20 examples, drawn from the digits pool by its own seed (devices overlap:
    1,000 x 20 examples exceed the 1,438 training digits)."""
    rng = np.random.default_rng([7, device])
    return np.sort(rng.choice(pool, size=n, replace=False)).astype(np.int64)


# --- (b) digits-many -------------------------------------------------------------------------


def bench_digits(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from compression import CodecConfig, UpdateCodec
    from coordinator.aggregators import FedAvg
    from coordinator.engine import EngineConfig, RoundEngine
    from mobile_sim.backends import TrainContext, TrainJob, job_rng
    from mobile_sim.backends._seeding import RngPool
    from mobile_sim.data import load_digits_data
    from mobile_sim.models import build_model
    from mobile_sim.runner import encode_reports
    from sdk.device import UpdateEncoder
    from sdk.flat import get_flat_params, set_flat_params, spec_from_module

    data = load_digits_data()
    clients, rounds = args.digits_clients, args.digits_rounds
    epochs, batch, lr = 2, 10, 0.1
    model = build_model("digits_mlp")
    spec = spec_from_module(model)
    codec_cfg = CodecConfig(topk=0.05, bits=4)
    ids = [str(i) for i in range(clients)]
    # Each device's 20 examples, drawn once at setup (as `run_simulation` partitions the data).
    parts = {d: _digits_indices(int(d), len(data.x_train), 20) for d in ids}
    init = get_flat_params(model)
    ctx = TrainContext("digits_mlp", data.x_train, data.y_train, epochs, batch, lr)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.digits_threads)

    def through_engine(
        train: Callable[[np.ndarray, list[Any]], list[Any]], label: str, batched: bool
    ) -> dict[str, Any]:
        """Rounds through the real engine. `batched`: the cohort is encoded as one batch and
        submitted with `submit_many` (what `plume sim` does); else one `UpdateEncoder.encode`
        and one `engine.submit` per device. Either way every update is a real v1 frame,
        decoded under the engine's limits before FedAvg."""
        engine = RoundEngine(spec, init.copy(), FedAvg(), EngineConfig(clients, codec=codec_cfg))
        encoders: dict[str, UpdateEncoder] = {}
        rng_pool = RngPool()
        times, train_s, encode_s, decode_s = [], 0.0, 0.0, 0.0
        frame_bytes = 0
        for _ in tqdm(range(rounds), desc=f"digits: {label}", unit="round", leave=False):
            t0 = time.perf_counter()
            plan = engine.open_round(ids)
            jobs = [TrainJob(d, int(d), plan.round_id, 0, parts[d]) for d in plan.selected]
            results = train(engine.params, jobs)
            t1 = time.perf_counter()
            if batched:
                frames = encode_reports(
                    encoders, jobs, results, spec, plan.codec, rng_pool=rng_pool
                )
                t2 = time.perf_counter()
                for receipt in engine.submit_many(plan.round_id, list(frames.items())):
                    if isinstance(receipt, Exception):
                        raise receipt
            else:
                frames = {}
                for job, res in zip(jobs, results, strict=True):
                    enc = encoders.setdefault(job.device_id, UpdateEncoder(spec, plan.codec))
                    frames[job.device_id], _ = enc.encode(
                        res.delta, job_rng(job, stream=2), float(res.num_examples)
                    )
                t2 = time.perf_counter()
                for dev, frame in frames.items():
                    engine.submit(plan.round_id, dev, frame)
            engine.close_round(plan.round_id)
            t3 = time.perf_counter()
            frame_bytes += sum(len(f) for f in frames.values())
            times.append(t3 - t0)
            train_s += t1 - t0
            encode_s += t2 - t1
            decode_s += t3 - t2
        total = sum(times)
        return {
            "updates_per_s": clients * rounds / total,
            "train_only_updates_per_s": clients * rounds / train_s,
            "wall_s": total,
            "train_s": train_s,
            "encode_s": encode_s,
            "decode_aggregate_s": decode_s,
            "encode_decode_aggregate_s": encode_s + decode_s,
            "codec_path": "batched" if batched else "per update",
            "mean_frame_bytes": frame_bytes / (clients * rounds),
            "final_params_l2": round(float(np.linalg.norm(engine.params.astype(np.float64))), 6),
        }

    out: dict[str, Any] = {}
    # The plain loop: a fresh module + optimizer + DataLoader per client, then the same codec.
    codec = UpdateCodec(spec, codec_cfg)

    def plain_train(params: np.ndarray, jobs: list[Any]) -> list[Any]:
        from mobile_sim.backends import JobResult

        global_model = build_model("digits_mlp")
        set_flat_params(global_model, params)
        res = []
        for job in jobs:
            local = copy.deepcopy(global_model)
            opt = torch.optim.SGD(local.parameters(), lr=lr)
            loader = torch.utils.data.DataLoader(
                torch.utils.data.TensorDataset(
                    torch.from_numpy(data.x_train[job.indices]),
                    torch.from_numpy(data.y_train[job.indices]),
                ),
                batch_size=batch,
                shuffle=True,
                generator=torch.Generator().manual_seed(int(job.device_index)),
            )
            for _ in range(epochs):
                for xb, yb in loader:
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(local(xb), yb).backward()
                    opt.step()
            delta = get_flat_params(local) - params
            res.append(JobResult(job.device_id, delta, len(job.indices), 0.0))
        return res

    # The baseline as a user writes it: per-client training, one encode and one submit each.
    runs: dict[str, list[dict[str, Any]]] = {}
    for rep in range(args.repeat):
        tag = f" ({rep + 1}/{args.repeat})" if args.repeat > 1 else ""
        load = os.getloadavg()[0]
        runs.setdefault("plain_torch_loop", []).append(
            through_engine(plain_train, "plain loop" + tag, batched=False) | {"load_1m": load}
        )
        for name in args.backends or DIGITS_BACKENDS:
            backend = _backend(name, args.workers)
            t0 = time.perf_counter()
            backend.start(ctx)
            backend.train(init, [TrainJob("w", 0, 0, 0, np.arange(20))])  # warm-up: spawn, trace
            startup = time.perf_counter() - t0
            load = os.getloadavg()[0]
            res = through_engine(backend.train, name + tag, batched=True)
            runs.setdefault(name, []).append(res | {"startup_s": startup, "load_1m": load})
            if name == "vectorized":
                # The same backend with the per-update codec path, for the batching's effect.
                runs.setdefault("vectorized_per_update_codec", []).append(
                    through_engine(backend.train, "vectorized, per-update codec" + tag, False)
                    | {"load_1m": os.getloadavg()[0]}
                )
            backend.close()
    for name, rs in runs.items():
        # The median run by rate, with every run's rate and load beside it.
        rates = [r["updates_per_s"] for r in rs]
        out[name] = sorted(rs, key=lambda r: r["updates_per_s"])[(len(rs) - 1) // 2] | {
            "updates_per_s_all_runs": rates,
            "load_1m_all_runs": [r["load_1m"] for r in rs],
        }
    del codec
    torch.set_num_threads(threads_before)
    return {
        "settings": {
            "clients_per_round": clients,
            "samples_per_client": 20,
            "epochs": epochs,
            "batch_size": batch,
            "rounds": rounds,
            "model": "digits_mlp (64-32-10, 2,410 params)",
            "codec": "topk 0.05, 4-bit, zstd, error feedback; decoded by RoundEngine",
            "torch_threads": args.digits_threads,
            "repeats": args.repeat,
            "figures": "each backend's median run (by updates/s) of `repeats`",
            "codec_path": "backends: batched (encode_reports + RoundEngine.submit_many, as "
            "plume sim); plain loop and vectorized_per_update_codec: one encode + submit each",
        },
        "results": out,
    }


# --- (a) MNIST CNN, 20 rounds ---------------------------------------------------------------


class _Recording:
    """Wraps a backend and remembers each round's cohort (device indices), in job order."""

    def __init__(self, inner: Any, evaluate_in_workers: bool = True) -> None:
        self.inner = inner
        self.name = inner.name
        self.cohorts: list[list[int]] = []
        self.start_s: float | None = None
        # The pool and Ray evaluate in their workers, so here too; --eval-in-driver hides
        # that, and the runner evaluates in this process as it did before they could.
        if evaluate_in_workers and hasattr(inner, "evaluate"):
            self.evaluate = inner.evaluate

    def start(self, ctx: Any) -> None:
        # The backend's own start-up (for the pool: spawning its workers and handing them the
        # training set), timed alone: not data loading, the rounds or the checkpoints.
        t0 = time.perf_counter()
        self.inner.start(ctx)
        self.start_s = time.perf_counter() - t0

    def train(self, params: np.ndarray, jobs: Any) -> Any:
        self.cohorts.append([j.device_index for j in jobs])
        return self.inner.train(params, jobs)

    def close(self) -> None:
        self.inner.close()


# The plain loop's phases: per-client training (deepcopy, DataLoader, SGD, the delta), the
# codec (encode with error feedback, decode, accumulate), the test evaluation, the rest.
PLAIN_PHASES = ("train", "codec", "eval", "other")
# `phase_wall_s`'s keys: RoundRecord's parts of wall_s (mobile_sim.runner.WALL_PHASES).
PHASES = {
    "train": "wall_train_s",
    "encode": "wall_encode_s",
    "aggregate": "wall_aggregate_s",
    "eval": "wall_eval_s",
    "other": "wall_other_s",
}


def phase_sums(records: list[Any]) -> dict[str, float | None]:
    """The rounds' wall seconds by phase, summed (`PHASES`); None for a phase no round
    measured (a backend whose records have no split)."""
    out: dict[str, float | None] = {}
    for key, field in PHASES.items():
        got = [getattr(r, field) for r in records if getattr(r, field) is not None]
        out[key] = float(sum(got)) if got else None
    return out


def plain_phase_sums(rounds: list[dict[str, float]]) -> dict[str, float]:
    """The plain loop's rounds' wall seconds by phase (`PLAIN_PHASES`), summed."""
    return {key: float(sum(r[key] for r in rounds)) for key in PLAIN_PHASES}


class _PlainLoop:
    """The loop a user writes without a simulator, over the runner's partition and cohorts:
    per client deepcopy + DataLoader(shuffle) + torch.optim.SGD, the same codec with error
    feedback, decode, FedAvg, and a test evaluation every round."""

    def __init__(self, cfg: Any) -> None:
        from compression import UpdateCodec
        from mobile_sim.data import load_mnist
        from mobile_sim.models import build_model
        from mobile_sim.partition import partition
        from sdk.flat import get_flat_params, spec_from_module

        self.cfg = cfg
        self.data = load_mnist(seed=cfg.seed)
        self.parts = partition(
            self.data.y_train,
            cfg.clients,
            cfg.partition,
            np.random.default_rng([cfg.seed, 1]),
            alpha=cfg.alpha,
            shards_per_client=cfg.shards_per_client,
        )
        self.model = build_model(cfg.model_name, seed=cfg.seed)
        self.spec = spec_from_module(self.model)
        self.params = get_flat_params(self.model)
        self.codec = UpdateCodec(self.spec, cfg.codec())
        self.encoders: dict[int, Any] = {}
        self.eval_model = build_model(cfg.model_name)
        self.round_wall: list[float] = []
        # Each round's wall seconds by phase (`PLAIN_PHASES`), summing to its round_wall.
        self.round_phases: list[dict[str, float]] = []
        self.accuracy = 0.0

    def round(self, r: int, cohort: list[int]) -> None:
        import torch

        from sdk.device import UpdateEncoder
        from sdk.flat import get_flat_params, set_flat_params
        from sdk.trainer import evaluate

        cfg, data = self.cfg, self.data
        t0 = time.perf_counter()
        train_s = codec_s = 0.0
        set_flat_params(self.model, self.params)
        acc_sum = np.zeros_like(self.params)
        weight = 0.0
        for dev in cohort:
            t_train = time.perf_counter()
            local = copy.deepcopy(self.model)
            opt = torch.optim.SGD(local.parameters(), lr=cfg.lr)
            idx = self.parts[dev]
            loader = torch.utils.data.DataLoader(
                torch.utils.data.TensorDataset(
                    torch.from_numpy(data.x_train[idx]), torch.from_numpy(data.y_train[idx])
                ),
                batch_size=cfg.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(1000 * r + dev),
            )
            for _ in range(cfg.local_epochs):
                for xb, yb in loader:
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(local(xb), yb).backward()
                    opt.step()
            delta = get_flat_params(local) - self.params
            t_codec = time.perf_counter()
            train_s += t_codec - t_train
            enc = self.encoders.setdefault(dev, UpdateEncoder(self.spec, cfg.codec()))
            frame, _ = enc.encode(delta, np.random.default_rng([r, dev]), float(len(idx)))
            self.codec.decode(frame).add_to(acc_sum, float(len(idx)))
            codec_s += time.perf_counter() - t_codec
            weight += len(idx)
        self.params = self.params + acc_sum / weight
        # torch's own max-pool kernel, as a plain loop has (the product's fast_pool is not
        # the baseline's); batching and inference_mode as in the product's evaluation.
        t_eval = time.perf_counter()
        self.accuracy, _ = evaluate(
            self.eval_model, self.params, data.x_test, data.y_test, fast_pool=False
        )
        t_end = time.perf_counter()
        eval_s = t_end - t_eval
        wall = t_end - t0
        self.round_wall.append(wall)
        other = max(0.0, wall - (train_s + codec_s + eval_s))
        phases = (train_s, codec_s, eval_s, other)
        self.round_phases.append(dict(zip(PLAIN_PHASES, phases, strict=True)))


class _AfterRound:
    """`on_round` hook: run the plain loop's matching round (if given), tick the bar, and
    checkpoint the figures so far (a long run that is stopped still leaves its numbers)."""

    def __init__(
        self,
        plain: _PlainLoop | None,
        backend: _Recording,
        bar: Any,
        checkpoint: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.plain, self.backend, self.bar = plain, backend, bar
        self.checkpoint = checkpoint
        self.walls: list[float] = []

    def __call__(self, rec: Any) -> None:
        self.walls.append(rec.wall_s)
        if self.plain is not None:
            self.plain.round(rec.round, self.backend.cohorts[-1])
            if self.checkpoint is not None:
                plain_wall = sum(self.plain.round_wall)
                self.checkpoint(
                    {
                        "backend": self.backend.name,
                        "rounds_done": len(self.walls),
                        "backend_round_wall_s": list(self.walls),
                        "plain_round_wall_s": list(self.plain.round_wall),
                        "wall_ratio_vs_plain_loop_so_far": sum(self.walls) / plain_wall,
                        "backend_accuracy": rec.accuracy,
                        "plain_accuracy": self.plain.accuracy,
                    }
                )
        self.bar.update(1)


def bench_mnist(args: argparse.Namespace) -> dict[str, Any]:
    """Backends through `run_simulation`; each backend's round r is followed by the plain
    loop's round r on the same cohort (a fresh plain loop per backend), so every ratio compares
    two arms that saw the same load on a shared machine."""
    import torch
    from tqdm import tqdm

    from mobile_sim.runner import SimConfig, run_simulation

    cfg = SimConfig(seed=0)  # the `plume sim` defaults: the MNIST-CNN 20-round config
    if args.quick:
        cfg = replace(cfg, rounds=2, local_epochs=1)
    if args.mnist_rounds:
        cfg = replace(cfg, rounds=args.mnist_rounds)
    order = list(args.backends or MNIST_BACKENDS)

    def checkpoint(progress: dict[str, Any]) -> None:
        progress["settings"] = {"rounds": cfg.rounds, "local_epochs": cfg.local_epochs}
        _merge(args.out, "mnist_in_progress", progress, args)

    out: dict[str, Any] = {}
    plains: dict[str, _PlainLoop] = {}
    for name in order:
        backend = _Recording(_backend(name, args.workers), not args.eval_in_driver)
        bar = tqdm(total=cfg.rounds, desc=f"mnist: {name} + plain loop", unit="round")
        plain = plains[name] = _PlainLoop(cfg)
        after_round = _AfterRound(plain, backend, bar, checkpoint if not args.quick else None)
        t0 = time.perf_counter()
        res = run_simulation(
            replace(cfg, backend=name),
            progress=False,
            backend=backend,
            label=name,
            on_round=after_round,
        )
        total = time.perf_counter() - t0
        bar.close()
        backend.close()
        rounds_wall = sum(r.wall_s for r in res.records)
        updates = sum(r.reports for r in res.records)
        out[name] = {
            "wall_s": rounds_wall,
            "wall_s_with_setup_and_plain_loop": total,
            # start() alone (the pool's and Ray's worker start-up); wall_s_with_setup_... less
            # both loops' wall time also holds data loading and the per-round checkpoints.
            "start_s": backend.start_s,
            "round_wall_s": [r.wall_s for r in res.records],
            # Where the rounds' wall_s went, summed over them (RoundRecord.wall_*_s).
            "phase_wall_s": phase_sums(res.records),
            "updates": updates,
            "updates_per_s": updates / rounds_wall,
            "final_accuracy": res.final_accuracy,
            "interleaved_with_plain_loop": True,
        }
        plain_wall = sum(plain.round_wall)
        out[name]["plain_loop_wall_s"] = plain_wall
        out[name]["plain_loop_round_wall_s"] = plain.round_wall
        out[name]["plain_loop_phase_wall_s"] = plain_phase_sums(plain.round_phases)
        out[name]["wall_ratio_vs_plain_loop"] = out[name]["wall_s"] / plain_wall
        # Per-round ratios' median: robust to a few rounds hit by other load.
        out[name]["median_round_ratio_vs_plain_loop"] = float(
            np.median(np.asarray(out[name]["round_wall_s"]) / np.asarray(plain.round_wall))
        )
    if not plains:
        raise SystemExit("run at least one backend")
    # The plain loop of the first backend's pass is the reference row of the table.
    plain = plains[order[0]]
    plain_wall = sum(plain.round_wall)
    updates = out[order[0]]["updates"]
    out["plain_torch_loop"] = {
        "wall_s": plain_wall,
        "round_wall_s": plain.round_wall,
        "phase_wall_s": plain_phase_sums(plain.round_phases),
        "updates": updates,
        "updates_per_s": updates / plain_wall,
        "final_accuracy": plain.accuracy,
        "note": "one plain pass per backend, interleaved with it; each backend's ratio uses its own",
    }
    return {
        "settings": {
            "quick": bool(args.quick),
            "dataset": cfg.dataset,
            "model": cfg.model_name,
            "clients": cfg.clients,
            "per_round": cfg.per_round,
            "rounds": cfg.rounds,
            "local_epochs": cfg.local_epochs,
            "batch_size": cfg.batch_size,
            "partition": f"{cfg.partition}({cfg.alpha})",
            "codec": f"topk {cfg.topk}, {cfg.bits}-bit, error feedback",
            "torch_threads": torch.get_num_threads(),
            "eval_where": "driver (--eval-in-driver)"
            if args.eval_in_driver
            else "the pool's or Ray's workers; the driver for the other backends",
            "wall_s": "sum of per-round wall times (train, encode, engine decode+aggregate, eval)",
            "start_s": "the backend's start() alone, timed around it (the pool's and Ray's "
            "worker start-up); not in wall_s",
            "phase_wall_s": "wall_s by phase, summed over the rounds: train (the backend, "
            "model attacks included), encode, aggregate (the engine's decode + aggregate), "
            "eval, other (selection, bookkeeping); the plain loop's: train, codec (encode + "
            "decode + accumulate), eval, other",
        },
        "results": out,
    }


def _digits_note(section: dict[str, Any], best: str) -> str:
    """One sentence for docs/benchmarks.md: the figure, its runs and load, and where the time
    of the best backend goes."""
    res, settings = section["results"], section["settings"]
    r = res[best]
    n = settings["clients_per_round"] * settings["rounds"]
    per_k = 1000 / n
    runs = ", ".join(f"{x:.0f}" for x in r.get("updates_per_s_all_runs", [r["updates_per_s"]]))
    loads = ", ".join(f"{x:.1f}" for x in r.get("load_1m_all_runs", []))
    met = "met" if r["updates_per_s"] >= 5000 else "MISSED"
    text = (
        f"digits-many target (>= 5,000 updates/s) {met}: {best} {r['updates_per_s']:.0f}/s, the "
        f"median of {settings.get('repeats', 1)} run(s) ({runs}/s; 1-minute load average "
        f"{loads or 'not recorded'}, 2 cores). Per 1,000 updates: training "
        f"{r['train_s'] * per_k:.3f} s, encoding {r.get('encode_s', 0.0) * per_k:.3f} s, "
        f"decoding under limits + FedAvg {r.get('decode_aggregate_s', 0.0) * per_k:.3f} s."
    )
    if "vectorized_per_update_codec" in res:
        text += (
            f" Same backend with one encode + submit per update: "
            f"{res['vectorized_per_update_codec']['updates_per_s']:.0f}/s."
        )
    return text


def results_path(args: argparse.Namespace) -> Path:
    """The file sections merge into (a --quick run never writes RESULT unless --out names it)."""
    return out_file(args.out, RESULT, args.quick)


def section_key(section: str, quick: bool) -> str:
    """The key a section's results go under: `<section>_quick` for a --quick run."""
    return f"{section}_quick" if quick else section


def _merge(
    path: Path, section: str, value: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Write `value` as `sections[section]` of the JSON at `path`, keeping the other sections
    as they are, and recompute the headline keys. The new section records its machine, date,
    command and code (`git_commit`, `git_dirty`). The top-level `machine`, `date` and code are
    the last section written's that is not a --quick one (a quick section written into the
    canonical file with --out made the published page name its machine and date;
    helper-352). An older section is never given the file's current machine: before this, one
    without a machine of its own was given the top-level one at the next write, which was by
    then another run's (sections measured on 2026-11-28 came to name a kernel of 2026-11-29)."""
    from mobile_sim.report import machine_info

    doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    machine = machine_info()
    git = git_provenance()
    now = time.gmtime()
    if not is_quick(value, section) or "date" not in doc:
        doc["machine"] = machine
        doc["date"] = time.strftime("%Y-%m-%d", now)
        doc.update(git)
    value["machine"] = machine
    value["date"] = time.strftime("%Y-%m-%d", now)
    value.update(git)
    value["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", now)
    value["command"] = command_line(__file__, getattr(args, "argv", None))
    value["load_average_at_end"] = os.getloadavg()
    doc.setdefault("sections", {})[section] = value
    s = doc["sections"]
    million = "million" if "million" in s else "million_quick" if "million_quick" in s else None
    if million is not None:
        doc["million_devices_rss_gb"] = s[million]["peak_rss_gb"]
        doc["million_devices_wall_s_per_round"] = s[million]["wall_s_per_round_median"]
        doc["million_from_section"] = million
    digits = "digits" if "digits" in s else "digits_quick" if "digits_quick" in s else None
    if digits is not None:
        doc["digits_many_from_section"] = digits
        res = s[digits]["results"]
        best = max(
            (k for k in res if k != "plain_torch_loop"),
            key=lambda k: res[k]["updates_per_s"],
            default=None,
        )
        if best is not None:
            doc["digits_many_updates_per_s"] = res[best]["updates_per_s"]
            doc["digits_many_best_backend"] = best
            doc["digits_many_target_met"] = res[best]["updates_per_s"] >= 5000
        doc["digits_many_plain_loop_updates_per_s"] = res["plain_torch_loop"]["updates_per_s"]
        if best is not None:
            doc["digits_many_note"] = _digits_note(s[digits], best)
    key = "mnist" if "mnist" in s else "mnist_quick" if "mnist_quick" in s else None
    if key is not None:
        res = s[key]["results"]
        ratios = {
            k: v["wall_ratio_vs_plain_loop"] for k, v in res.items() if k != "plain_torch_loop"
        }
        if ratios:
            best = min(ratios, key=lambda k: ratios[k])
            doc["mnist_cnn_wall_ratio_vs_plain_loop"] = ratios[best]
            doc["mnist_cnn_backend"] = best
            doc["mnist_cnn_target_met"] = ratios[best] <= 0.5
            doc["mnist_cnn_ratios_by_backend"] = ratios
        doc["mnist_cnn_from_section"] = key
        doc["mnist_cnn_quick"] = s[key]["settings"]["quick"]
    write_results(path, doc, stamp=False)
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer rounds and clients")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument(
        "--backends",
        nargs="+",
        default=None,
        help="backends to time (default: all four in the digits section, "
        f"{' and '.join(MNIST_BACKENDS)} in the mnist section)",
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="pool / Ray workers"
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads in this process"
    )
    parser.add_argument("--digits-clients", type=int, default=1000)
    parser.add_argument("--digits-rounds", type=int, default=5)
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="digits section: runs per backend, the median kept (default: %(default)s; 1 with "
        "--quick)",
    )
    parser.add_argument(
        "--digits-threads",
        type=int,
        default=1,
        help="torch threads in the digits section (vmap over tiny layers: one is fastest)",
    )
    parser.add_argument("--million-devices", type=int, default=1_000_000)
    parser.add_argument(
        "--million-rounds",
        type=int,
        default=100,
        help="million section: rounds (each trains about 1,000 new devices; its RSS settles "
        "only once their residuals fill --million-residual-mb, late in a 100-round run; "
        "default: %(default)s)",
    )
    parser.add_argument(
        "--million-residual-mb",
        type=float,
        default=DEFAULT_RESIDUAL_MEMORY_MB,
        help="million section: MiB of trained devices' residuals held in memory, the rest "
        "spilled to $TMPDIR (default: plume sim's --residual-memory-mb default)",
    )
    parser.add_argument("--mnist-rounds", type=int, default=0, help="override the 20 rounds")
    parser.add_argument(
        "--mnist-only-vectorized",
        action="store_true",
        help="in the mnist section time only the vectorized backend against the plain loop",
    )
    parser.add_argument(
        "--eval-in-driver",
        action="store_true",
        help="mnist section: evaluate each round in this process, not in the pool's or Ray's "
        "workers (their default since they evaluate there; for a before/after comparison)",
    )
    parser.add_argument(
        "--worker-inner",
        default="auto",
        choices=("auto", "sequential", "vectorized"),
        help="the inline backend pool / Ray workers run (auto: vmap for the tiny digits MLP, "
        "plain per-client training for the CNN)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results file (default bench/results/sim_throughput.json; with --quick "
        "bench/results/sim_throughput_quick.json)",
    )
    git_provenance()  # the code this run starts from, whatever the checkout does meanwhile
    args = parser.parse_args(argv)
    args.out = results_path(args)
    args.argv = argv
    if args.quick:
        args.digits_rounds = min(args.digits_rounds, 2)
        args.million_rounds = min(args.million_rounds, 2)
        args.repeat = 1

    import torch

    torch.set_num_threads(args.threads)
    runners = {"million": bench_million, "digits": bench_digits, "mnist": bench_mnist}
    # `million` first: its RSS figure should not include the other sections' allocations.
    for section in [s for s in SECTIONS if s in args.sections]:
        _INNER["inner"] = _AUTO_INNER[section] if args.worker_inner == "auto" else args.worker_inner
        value = runners[section](args)
        doc = _merge(args.out, section_key(section, args.quick), value, args)
    summary = {k: v for k, v in doc.items() if k not in ("sections", "machine")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
