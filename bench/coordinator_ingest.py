"""Coordinator ingest benchmark: MNIST-CNN updates/s in-process and over HTTP, downlink bytes vs
dense fp32 for devices 1..5 versions behind, and a bounded load run (2,000 devices, 30% over-
selection, 20% dropouts) with zero-lost-update accounting and upload latency percentiles.

    python bench/coordinator_ingest.py                 # the issue's settings
    python bench/coordinator_ingest.py --wait-load 1.5 # ... once the shared machine is quiet
    python bench/coordinator_ingest.py --quick         # a smoke run in well under a minute

Over HTTP the coordinator runs in its own process and the uploads come from several client
processes (pre-encoded frames, signed before the timed phase with each device's own key, on
pre-opened keep-alive connections), so the figure is the server's: every upload still goes
through the signature, timestamp window, nonce cache, size cap, decode limits and SQLite commit.

Writes bench/results/coordinator_ingest.json (a --quick run: coordinator_ingest_quick.json
beside it, unless --out is given). Every figure is measured in this run on this machine; targets
are reported next to the measurements, never in their place.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    RESULTS,
    command_line,
    git_provenance,
    out_file,
    start_serve,
    stop_serve,
    write_results,
)
from compression import CodecConfig, ModelSpec, UpdateCodec  # noqa: E402
from coordinator.service import AdminClient, Coordinator, ServiceConfig, Store  # noqa: E402
from protocol.messages import CodecParams, TaskConfig, TensorShape  # noqa: E402

DEFAULT = CodecConfig(topk=0.01, bits=4)
TARGETS = {"inprocess_updates_per_s": 1000, "http_updates_per_s": 300, "downlink_ratio": 10}


def _spec_and_params() -> tuple[ModelSpec, npt.NDArray[np.float32]]:
    import torch

    from mobile_sim.models import build_model
    from sdk.flat import get_flat_params, spec_from_module

    torch.set_num_threads(1)
    model = build_model("mnist_cnn", seed=0)
    return spec_from_module(model), get_flat_params(model)


def _frames(spec: ModelSpec, config: CodecConfig, distinct: int, seed: int = 0) -> list[bytes]:
    """`distinct` update frames of synthetic training-like deltas (heavy-tailed, 1e-3 scale)."""
    codec = UpdateCodec(spec, config)
    rng = np.random.default_rng(seed)
    out = []
    for i in tqdm(range(distinct), desc=f"encode {config.topk:g}/{config.bits}b", leave=False):
        delta = (rng.standard_t(3, spec.size) * 1e-3).astype(np.float32)
        frame, _ = codec.encode(delta, rng, weight=float(50 + i % 50))
        out.append(frame)
    return out


def _task(
    spec: ModelSpec, clients: int, codec: CodecConfig, over: float = 1.0, **kw: Any
) -> TaskConfig:
    dense = codec.topk == 1.0
    return TaskConfig(
        name="bench",
        model_name="mnist_cnn",
        spec=[TensorShape(e.name, list(e.shape)) for e in spec.entries],
        rounds=kw.pop("rounds", 1),
        clients_per_round=clients,
        over_selection=over,
        deadline_s=kw.pop("deadline_s", 600.0),
        min_reports=1,
        selection_timeout_s=kw.pop("selection_timeout_s", 600.0),
        codec=CodecParams.from_config(codec),
        downlink=CodecParams(topk=1.0, bits=32) if dense else CodecParams(topk=0.02, bits=8),
        retry_after_s=kw.pop("retry_after_s", 1.0),
        **kw,
    )


# -- in-process ------------------------------------------------------------------------------


def _inprocess(
    spec: ModelSpec,
    params: npt.NDArray[np.float32],
    frames: list[bytes],
    n: int,
    codec: CodecConfig,
    tmp: str,
    label: str,
) -> dict[str, Any]:
    """Submit n frames through the durable Coordinator (decode + SQLite commit each), then close
    the round (FedAvg + downlink publish). No HTTP."""
    from compression import encode_snapshot

    store = Store(os.path.join(tmp, f"{label}.db"))
    coord = Coordinator(store, ServiceConfig(db_path=store.path, pool_ttl_s=1e9))
    task_id = coord.create_task(_task(spec, n, codec))
    coord.set_initial_model(task_id, encode_snapshot(params, spec, "fp32"))
    devices = [f"{i:032x}" for i in range(n)]
    for d in devices:
        coord.check_in(d, task_id)
    rt = coord.runtimes[task_id]
    assert rt.current is not None and len(rt.current.selected) == n
    round_id = rt.current.round_id
    t0 = time.perf_counter()
    for i, d in enumerate(tqdm(devices, desc=f"in-process {label}", leave=False)):
        coord.submit(round_id, d, f"k{i}", frames[i % len(frames)])
    t1 = time.perf_counter()
    cur = coord.begin_close(rt)
    assert cur is not None
    outcome = coord.close_blocking(rt, cur)
    coord.finish_close(rt, outcome)
    t2 = time.perf_counter()
    assert outcome.committed and outcome.reports == n
    store.close()
    return {
        "updates": n,
        "distinct_frames": len(frames),
        "mean_frame_bytes": float(np.mean([len(f) for f in frames])),
        "submit_s": t1 - t0,
        "aggregate_publish_s": t2 - t1,
        "updates_per_s": n / (t2 - t0),
    }


def _engine_only(
    spec: ModelSpec,
    params: npt.NDArray[np.float32],
    frames: list[bytes],
    n: int,
    codec: CodecConfig,
) -> dict[str, Any]:
    """The round engine alone (decode under limits + FedAvg + publish), no SQLite, no HTTP."""
    from coordinator.aggregators import FedAvg
    from coordinator.engine import EngineConfig, RoundEngine

    engine = RoundEngine(spec, params, FedAvg(), EngineConfig(clients_per_round=n, codec=codec))
    devices = [f"d{i}" for i in range(n)]
    plan = engine.open_round(devices)
    t0 = time.perf_counter()
    for i, d in enumerate(tqdm(devices, desc="engine only", leave=False)):
        engine.submit(plan.round_id, d, frames[i % len(frames)])
    t1 = time.perf_counter()
    outcome = engine.close_round(plan.round_id)
    t2 = time.perf_counter()
    assert outcome.committed and outcome.reports == n
    return {
        "updates": n,
        "submit_s": t1 - t0,
        "aggregate_s": t2 - t1,
        "updates_per_s": n / (t2 - t0),
    }


# -- over HTTP -------------------------------------------------------------------------------


class _Server:
    """`plume coordinator serve` in its own process (its own core, as in production)."""

    def __init__(self, db: str, token: str) -> None:
        self.url, self.proc = start_serve(db, token, poll_s=0.5)

    def stop(self) -> None:
        stop_serve(self.proc)


async def _fleet(
    url: str,
    n: int,
    task_id: int,
    tmp: str,
    concurrency: int,
    expected: int,
) -> tuple[list[Any], httpx.AsyncHTTPTransport, list[Any]]:
    """n registered async clients sharing one connection pool; `expected` of them get selected
    for the round (assignments[i] is None for the others)."""
    from sdk.client import AsyncClient

    transport = httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    )
    clients = [
        AsyncClient(url, os.path.join(tmp, f"dev{i:05d}"), transport=transport, timeout=300)
        for i in range(n)
    ]
    sem = asyncio.Semaphore(concurrency)

    async def bounded(coro: Any) -> Any:
        async with sem:
            return await coro

    bar = tqdm(total=3 * n, desc="register + check in", leave=False)

    async def one(c: Any) -> Any:
        await bounded(c.register())
        bar.update()
        await bounded(c.check_in(task_id))
        bar.update()
        return c

    await asyncio.gather(*(one(c) for c in clients))
    assignments: list[Any] = [None] * n
    everyone_placed = asyncio.Event()

    async def assigned(i: int) -> None:
        # Devices left out of the over-selected cohort keep polling until it is complete.
        while not everyone_placed.is_set():
            answer = await bounded(clients[i].check_in(task_id))
            if answer.assignment is not None:
                assignments[i] = answer.assignment
                bar.update()
                if sum(a is not None for a in assignments) >= expected:
                    everyone_placed.set()
                return
            await asyncio.sleep(min(answer.retry_after_s, 0.5))

    await asyncio.gather(*(assigned(i) for i in range(n)))
    bar.close()
    return clients, transport, assignments


_Job = tuple[int, str, int, int]  # (device index, app dir, round id, frame index)


def _upload_worker(
    url: str,
    jobs: list[_Job],
    frames: list[bytes],
    concurrency: int,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    """One load-generator process: signs its devices' uploads, then sends them when `go` is set.

    Each upload is signed here with the device's own key, a fresh nonce and the current
    timestamp before the timed phase starts (the run lasts well inside the server's 300 s
    window), so the timed phase measures the server's full check path: signature, timestamp
    window, nonce cache, size cap, decode limits and the durable commit.
    """
    from protocol import auth
    from protocol.names import Header
    from protocol.names import Path as ApiPath
    from sdk.device_store import DeviceStore

    host, port = url.removeprefix("http://").rsplit(":", 1)
    now_ms = int(time.time() * 1000)
    # (request head, body) per upload: plain HTTP/1.1 on keep-alive connections, so the client
    # side costs little CPU and the measurement is of the server, not of an HTTP library.
    prepared: list[tuple[bytes, bytes]] = []
    for _, app_dir, round_id, frame_index in jobs:
        key = DeviceStore(app_dir).private_key()
        body = frames[frame_index]
        target = ApiPath.UPLOAD.format(round_id=round_id)
        headers = {
            "host": f"{host}:{port}",
            "content-type": "application/octet-stream",
            "content-length": str(len(body)),
            Header.IDEMPOTENCY_KEY: secrets.token_hex(8),
        }
        headers.update(
            auth.sign_request(
                key, method="POST", target=target, round_id=round_id, body=body,
                timestamp_ms=now_ms,
            )
        )  # fmt: skip
        head = f"POST {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        prepared.append(((head + "\r\n").encode("latin-1"), body))

    async def exchange(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes
    ) -> tuple[int, bytes]:
        writer.write(head)
        writer.write(body)
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await reader.readexactly(length)

    async def run() -> dict[str, Any]:
        latencies: list[float] = []
        accepted: list[str] = []
        refused = 0
        errors: list[str] = []
        queue = list(reversed(prepared))
        # Open every connection before the timed phase, as a connected device fleet would.
        conns = [await asyncio.open_connection(host, int(port)) for _ in range(concurrency)]
        ready.put(os.getpid())
        await asyncio.to_thread(go.wait)

        async def lane(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal refused
            while queue:
                head, body = queue.pop()
                t0 = time.perf_counter()
                status, payload = await exchange(reader, writer, head, body)
                latencies.append(time.perf_counter() - t0)
                if status == 200:
                    receipt = json.loads(payload)
                    if receipt["accepted"]:
                        accepted.append(str(receipt["device_id"]))
                elif status == 409:
                    refused += 1
                else:
                    errors.append(f"{status} {payload[:200]!r}")

        await asyncio.gather(*(lane(r, w) for r, w in conns))
        for _, w in conns:
            w.close()
        return {"latencies": latencies, "accepted": accepted, "refused": refused, "errors": errors}

    results.put(asyncio.run(run()))


def _uploads(
    url: str,
    jobs: list[_Job],
    frames: list[bytes],
    concurrency: int,
    processes: int,
    on_start: Any,
) -> tuple[list[float], list[str], int]:
    """Send every job's upload from `processes` client processes (round-robin split, each with
    concurrency // processes connections). Calls `on_start()` the moment the uploads are
    released; returns (latencies s, accepted device ids, refused)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # no fork of a process that has loaded torch
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    per = max(1, concurrency // processes)
    workers = [
        ctx.Process(
            target=_upload_worker,
            args=(url, jobs[p::processes], frames, per, ready, go, results),
            daemon=True,
        )
        for p in range(processes)
    ]
    for w in workers:
        w.start()
    for _ in tqdm(workers, desc="client processes ready", leave=False):
        ready.get(timeout=300)
    on_start()
    go.set()
    out = [results.get(timeout=1800) for _ in tqdm(workers, desc="uploads", leave=False)]
    for w in workers:
        w.join(60)
    errors = [e for o in out for e in o["errors"]]
    if errors:
        raise RuntimeError(f"{len(errors)} uploads failed, first: {errors[0]}")
    latencies = [x for o in out for x in o["latencies"]]
    accepted = [d for o in out for d in o["accepted"]]
    return latencies, accepted, sum(o["refused"] for o in out)


def _http_run(
    spec: ModelSpec,
    params: npt.NDArray[np.float32],
    frames: list[bytes],
    n: int,
    clients_per_round: int,
    over: float,
    dropout: float,
    concurrency: int,
    processes: int,
    tmp: str,
    label: str,
) -> dict[str, Any]:
    """One round over loopback HTTP against `plume coordinator serve` in its own process; the
    timed span runs from releasing the uploads to the round being committed (aggregated and
    published), with the uploads sent from `processes` client processes."""
    token = secrets.token_hex(8)
    db = os.path.join(tmp, f"{label}.db")
    server = _Server(db, token)
    try:
        with AdminClient(server.url, token) as admin:
            task_id = admin.create_task(
                _task(
                    spec,
                    clients_per_round,
                    DEFAULT,
                    over,
                    deadline_s=3600.0,
                    selection_timeout_s=60.0,
                ),
                params,
            )

            async def setup() -> list[Any]:
                expected = min(n, math.ceil(clients_per_round * over - 1e-9))
                clients, transport, assignments = await _fleet(
                    server.url, n, task_id, os.path.join(tmp, label), concurrency, expected
                )
                # The upload workers, other processes, open these devices' app directories:
                # each client holds its directory's lock until it is closed.
                await asyncio.gather(*(c.aclose() for c in clients))
                await transport.aclose()
                return assignments

            # Untimed: register every device and place the cohort (check-ins).
            assignments = asyncio.run(setup())
            drop = np.random.default_rng(1).random(n) < dropout
            jobs: list[_Job] = [
                (i, os.path.join(tmp, label, f"dev{i:05d}"), a.round_id, i % len(frames))
                for i, a in enumerate(assignments)
                if a is not None and not drop[i]
            ]
            round_id = jobs[0][2]
            started: list[float] = []
            lat, acked_ids, refused = _uploads(
                server.url, jobs, frames, concurrency, processes,
                lambda: started.append(time.perf_counter()),
            )  # fmt: skip
            while True:  # until the round is aggregated and published
                st = admin.rounds(task_id)
                if st[0].state in ("committed", "abandoned"):
                    break
                time.sleep(0.02)
            out: dict[str, Any] = {
                "round_id": round_id,
                "latencies": lat,
                "acked": set(acked_ids),
                "refused": refused,
                "elapsed": time.perf_counter() - started[0],
                "state": st[0].state,
                "reports": st[0].reports,
                "selected": st[0].selected,
            }
    finally:
        server.stop()
    with sqlite3.connect(db) as con:
        stored = {
            r[0] for r in con.execute(
                "SELECT idempotency_key FROM updates WHERE round_id=?", (out["round_id"],)
            )
        }  # fmt: skip
        stored_devices = {
            r[0] for r in con.execute(
                "SELECT device_id FROM updates WHERE round_id=?", (out["round_id"],)
            )
        }  # fmt: skip
    acked = out["acked"]
    lost = len(acked - stored_devices)
    lat_ms = np.array(out["latencies"]) * 1000
    accepted = len(acked)
    return {
        "devices": n,
        "clients_per_round": clients_per_round,
        "selected": out["selected"],
        "dropout": dropout,
        "uploads_sent": len(out["latencies"]),
        "accepted": accepted,
        "refused_stragglers": out["refused"],
        "stored_updates": len(stored),
        "lost_updates": lost,
        "round_state": out["state"],
        "round_reports": out["reports"],
        "elapsed_s": out["elapsed"],
        "updates_per_s": accepted / out["elapsed"],
        "p50_upload_ms": float(np.percentile(lat_ms, 50)),
        "p99_upload_ms": float(np.percentile(lat_ms, 99)),
        "concurrency": concurrency,
        "client_processes": processes,
    }


# -- downlink --------------------------------------------------------------------------------


def _downlink(
    spec: ModelSpec,
    params: npt.NDArray[np.float32],
    frames: list[bytes],
    per_round: int,
    tmp: str,
) -> dict[str, Any]:
    """Publish 5 versions from real aggregates, then size the download for lags 1..5."""
    from compression import encode_snapshot

    store = Store(os.path.join(tmp, "downlink.db"))
    coord = Coordinator(store, ServiceConfig(db_path=store.path, pool_ttl_s=1e9))
    task_id = coord.create_task(_task(spec, per_round, DEFAULT, rounds=5))
    coord.set_initial_model(task_id, encode_snapshot(params, spec, "fp32"))
    rt = coord.runtimes[task_id]
    for r in tqdm(range(5), desc="downlink versions", leave=False):
        devices = [f"{r:08x}{i:024x}" for i in range(per_round)]
        for d in devices:
            coord.check_in(d, task_id)
        assert rt.current is not None
        for i, d in enumerate(devices):
            coord.submit(
                rt.current.round_id, d, f"k{r}-{i}", frames[(r * per_round + i) % len(frames)]
            )
        cur = coord.begin_close(rt)
        assert cur is not None
        coord.finish_close(rt, coord.close_blocking(rt, cur))
    v = rt.version
    out: dict[str, Any] = {"dense_bytes": spec.dense_bytes, "by_lag": {}}
    snapshot = len(rt.snapshot("fp32"))
    for lag in range(1, 6):
        body, headers, _ = coord.model(task_id, v - lag, "auto", "fp32")
        out["by_lag"][str(lag)] = {
            "bytes": len(body),
            "encoding": headers["x-plume-model-encoding"],
            "ratio_vs_dense": spec.dense_bytes / len(body),
        }
    out["snapshot_fp32_zstd_bytes"] = snapshot
    out["snapshot_fp16_zstd_bytes"] = len(rt.snapshot("fp16"))
    store.close()
    return out


CANONICAL = RESULTS / "coordinator_ingest.json"


def results_path(args: argparse.Namespace) -> Path:
    """Where this run's JSON goes (a --quick run never writes CANONICAL unless --out names it)."""
    return out_file(args.out, CANONICAL, args.quick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--updates", type=int, default=2000, help="in-process updates")
    parser.add_argument("--dense-updates", type=int, default=100, help="dense fp32 updates")
    parser.add_argument("--http-updates", type=int, default=1000, help="updates over HTTP")
    parser.add_argument("--load-devices", type=int, default=2000)
    parser.add_argument("--over-selection", type=float, default=1.3)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=64, help="HTTP requests in flight")
    parser.add_argument(
        "--client-processes", type=int, default=3, help="HTTP load-generator processes"
    )
    parser.add_argument("--distinct-frames", type=int, default=64)
    parser.add_argument(
        "--out",
        default=None,
        help="results file (default bench/results/coordinator_ingest.json; with --quick "
        "bench/results/coordinator_ingest_quick.json)",
    )
    parser.add_argument(
        "--wait-load",
        type=float,
        default=None,
        metavar="L",
        help="first wait (up to 30 min) until the 1-min load average is below L",
    )
    git_provenance()  # the code this run starts from
    args = parser.parse_args(argv)
    if args.wait_load is not None:
        give_up = time.monotonic() + 1800
        with tqdm(desc=f"waiting for load < {args.wait_load}", bar_format="{desc} {elapsed}") as w:
            while os.getloadavg()[0] >= args.wait_load and time.monotonic() < give_up:
                w.set_description(f"load {os.getloadavg()[0]:.2f}, waiting for < {args.wait_load}")
                time.sleep(5)
    load_at_start = os.getloadavg()
    if args.quick:
        args.updates, args.dense_updates, args.http_updates = 100, 10, 100
        args.load_devices, args.distinct_frames = 200, 16

    from mobile_sim.report import machine_info

    phases: dict[str, float] = {}
    clock = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = round(now - clock, 2)
        tqdm.write(f"{name}: {phases[name]:.1f} s")
        clock = now

    spec, params = _spec_and_params()
    frames = _frames(spec, DEFAULT, args.distinct_frames)
    dense_frames = _frames(spec, CodecConfig.dense(), min(8, args.distinct_frames), seed=1)
    phase("encode frames")
    result: dict[str, Any] = {
        "model": "mnist_cnn",
        "params": spec.size,
        "codec": {"topk": DEFAULT.topk, "bits": DEFAULT.bits},
        "quick": args.quick,
    }
    with tempfile.TemporaryDirectory(prefix="plume-bench-") as tmp:
        engine = _engine_only(spec, params, frames, args.updates, DEFAULT)
        engine_dense = _engine_only(
            spec, params, dense_frames, args.dense_updates, CodecConfig.dense()
        )
        phase("engine only")
        inproc = _inprocess(spec, params, frames, args.updates, DEFAULT, tmp, "compressed")
        phase("in-process")
        dense = _inprocess(
            spec, params, dense_frames, args.dense_updates, CodecConfig.dense(), tmp, "dense"
        )
        phase("in-process dense")
        http = _http_run(
            spec, params, frames, args.http_updates, args.http_updates, 1.0, 0.0,
            args.concurrency, args.client_processes, tmp, "http",
        )  # fmt: skip
        phase("http")
        n = args.load_devices
        # The largest cohort target whose over-selected cohort fits the fleet (2000 -> 1538).
        per_round = max(1, int(n / args.over_selection))
        load = _http_run(
            spec, params, frames, n, per_round, args.over_selection, args.dropout,
            args.concurrency, args.client_processes, tmp, "load",
        )  # fmt: skip
        phase("load")
        down = _downlink(spec, params, frames, 10, tmp)
        phase("downlink")
    ratios = [down["by_lag"][str(lag)]["ratio_vs_dense"] for lag in range(1, 6)]
    result.update(
        {
            "inprocess_updates_per_s": inproc["updates_per_s"],
            "http_updates_per_s": http["updates_per_s"],
            "dense_updates_per_s": dense["updates_per_s"],
            "speedup_vs_dense_inprocess": inproc["updates_per_s"] / dense["updates_per_s"],
            # The same decode + FedAvg through the RoundEngine alone (no SQLite, no HTTP).
            "engine_updates_per_s": engine["updates_per_s"],
            "engine_dense_updates_per_s": engine_dense["updates_per_s"],
            "downlink_ratio_vs_dense": ratios,
            "load_lost_updates": load["lost_updates"],
            "load_p50_upload_ms": load["p50_upload_ms"],
            "load_p99_upload_ms": load["p99_upload_ms"],
            "targets": TARGETS,
            "targets_met": {
                "inprocess_updates_per_s": inproc["updates_per_s"]
                >= TARGETS["inprocess_updates_per_s"],
                "http_updates_per_s": http["updates_per_s"] >= TARGETS["http_updates_per_s"],
                "downlink_ratio_vs_dense": min(ratios) >= TARGETS["downlink_ratio"],
                "load_lost_updates": load["lost_updates"] == 0,
            },
            "details": {
                "inprocess": inproc,
                "dense": dense,
                "engine": engine,
                "engine_dense": engine_dense,
                "http": http,
                "load": load,
                "downlink": down,
            },
            "machine": machine_info(),
            # 1, 5 and 15-min load averages of this shared machine, before and after the run.
            "load_avg_at_start": load_at_start,
            "load_average": os.getloadavg(),
            "phase_seconds": phases,
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "command": command_line(__file__, argv),
        }
    )
    write_results(results_path(args), result)
    print(json.dumps({k: result[k] for k in (
        "inprocess_updates_per_s", "http_updates_per_s", "dense_updates_per_s",
        "downlink_ratio_vs_dense", "load_lost_updates", "load_p99_upload_ms", "targets_met",
    )}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
