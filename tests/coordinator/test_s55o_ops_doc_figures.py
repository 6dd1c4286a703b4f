"""The figures docs/operations.md gives, checked against what produces them (stop 55, audit
O): the Performance table's rows against bench/results/coordinator_ingest.json (its downlink
rows are tests/test_s49_docs_figures.py's), the upload-buffer simulation's table and prose
against the seeded simulation that prints them, the waiter-wakeup count, and the sizes the
doc derives by arithmetic (bytes per second to hold the budget, bodies the budget holds, a
pool's size, header lengths, a compressed body's size)."""

from __future__ import annotations

import gzip
import json
import logging
import math
import re
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from coordinator.service import ServiceConfig

from .test_h294_admission_at_first_part import MiB, Sim, simulate
from .test_h304_waiter_wakeups import storm

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "docs" / "operations.md").read_text()
PROSE = " ".join(TEXT.split())


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    # the budget's own "refused 503 busy" warnings, thousands in a simulation
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def _row(start: str) -> str:
    (line,) = [line for line in TEXT.splitlines() if line.startswith(start)]
    return line


def _ingest() -> dict[str, Any]:
    out: dict[str, Any] = json.loads(
        (ROOT / "bench" / "results" / "coordinator_ingest.json").read_text()
    )
    return out


# --- Performance ---------------------------------------------------------------------------


def test_the_performance_rows_are_the_committed_ingest_run() -> None:
    ingest = _ingest()
    details = ingest["details"]
    rows = {
        "| in-process: durable `Coordinator.submit`": f"**{ingest['inprocess_updates_per_s']:,.0f} "
        "updates/s** | >= 1,000",
        "| the same through the `RoundEngine` alone": f"{ingest['engine_updates_per_s']:,.0f} "
        "updates/s",
        "| dense fp32 FedAvg, same path": f"{ingest['dense_updates_per_s']:.0f} updates/s "
        f"({ingest['speedup_vs_dense_inprocess']:.0f}x slower)",
        "| over loopback HTTP: 1,000 signed uploads": f"**{ingest['http_updates_per_s']:,.0f} "
        "updates/s** | >= 300",
        "| load run: 2,000 devices, 30% over-selection, 20% dropouts": (
            f"{ingest['load_lost_updates']} lost; upload p50 {ingest['load_p50_upload_ms']:.0f} "
            f"ms, p99 {ingest['load_p99_upload_ms']:.0f} ms"
        ),
    }
    for start, figure in rows.items():
        assert figure in _row(start), (start, figure)
    # the runs the rows describe
    assert details["inprocess"]["updates"] == 2000
    assert details["http"]["uploads_sent"] == details["http"]["accepted"] == 1000
    load = details["load"]
    assert load["devices"] == 2000 and load["dropout"] == 0.2
    # a cohort of clients_per_round x 1.3, rounded up
    assert math.ceil(load["clients_per_round"] * 1.3) == load["selected"] == 2000
    assert ingest["targets"] == {
        "inprocess_updates_per_s": 1000,
        "http_updates_per_s": 300,
        "downlink_ratio": 10,
    }


def test_the_performance_prose_is_the_committed_ingest_run() -> None:
    ingest = _ingest()
    details = ingest["details"]
    codec = json.loads((ROOT / "bench" / "results" / "codec.json").read_text())
    http = details["http"]
    for phrase in (
        f"MNIST-CNN ({ingest['params']:,} parameters)",
        f"{details['inprocess']['distinct_frames']} distinct frames (`distinct_frames` in the JSON)",
        f"reused across the {details['inprocess']['updates']:,} updates",
        f"({details['inprocess']['mean_frame_bytes']:,.0f} bytes on average, `mean_frame_bytes`",
        f"against {codec['frame_bytes']:,} for a real MNIST-CNN delta",
        f"Measured {ingest['date']} on the 2-core AMD EPYC development VM, load average "
        f"{ingest['load_avg_at_start'][0]:.2f} at start",
        f"from {http['client_processes']} client processes ({http['concurrency']} connections "
        "in all)",
    ):
        assert phrase in PROSE, phrase
    assert ingest["machine"]["cpu"] == "AMD EPYC" and ingest["machine"]["cores"] == 2
    assert ingest["command"] == "python bench/coordinator_ingest.py --wait-load 1.5"
    assert ingest["codec"] == {"topk": 0.01, "bits": 4}


# --- Upload bodies in memory: the seeded simulation ------------------------------------------


def _figures(n: int, size_mib: int, limit_mib: int, declared: bool) -> str:
    r = simulate(n=n, size=size_mib * MiB, limit=limit_mib * MiB, declared=declared)
    return (
        f"{r.ratio:.3f}; {r.refusals} ({r.refused_late}); {statistics.mean(r.finish):.1f} s, "
        f"last {r.makespan:.1f} s"
    )


@pytest.mark.parametrize(
    ("n", "size", "limit"), [(200, 6, 256), (100, 6, 256), (256, 1, 16), (64, 4, 8)]
)
def test_the_admission_table_is_the_seeded_simulation(n: int, size: int, limit: int) -> None:
    # "`.venv/bin/python -m tests.coordinator.test_h294_admission_at_first_part` prints these
    # figures ... The simulation is seeded and deterministic"; columns: bytes sent per byte
    # delivered; refusals (of bodies more than half sent); when uploads were accepted
    row = _row(f"| {n} x {size} MiB | {limit} MiB |")
    before, now = (cell.strip() for cell in row.strip("|").split("|")[2:4])
    # the first row says "on average" once
    assert before.replace(" s on average,", " s,") == _figures(n, size, limit, False)
    assert now == _figures(n, size, limit, True)


def _hundred(**kw: Any) -> Sim:
    """100 honest 6 MiB uploads against 256 MiB, beside the connections `kw` describes."""
    return simulate(n=100, size=6 * MiB, limit=256 * MiB, horizon_s=3600.0, **kw)


def test_the_stalling_connections_figures_are_the_seeded_simulation() -> None:
    # "100 connections that each declare 6 MiB, send one byte and stall (or then trickle 10
    # kB/s) ... leave the honest figures those with no such connections (1.004, all accepted
    # by 9.6 s); without the pace rule ... (the first honest upload accepted at 120.7 s)"
    none = _hundred()
    stalled = _hundred(stallers=100)
    trickled = _hundred(stallers=100, staller_bytes_per_s=10_000)
    no_pace = _hundred(stallers=100, no_pace=True)
    for run in (none, stalled, trickled):
        assert f"{run.ratio:.3f}" == "1.004" and f"{run.makespan:.1f}" == "9.6"
        assert len(run.finish) == 100
    assert "(1.004, all accepted by 9.6 s)" in PROSE
    assert f"(the first honest upload accepted at {min(no_pace.finish):.1f} s)" in PROSE
    # "42 connections each sending 6 MiB per 120 s ... (simulated: 100 honest uploads, the
    # first accepted at 118.7 s, the last at 477.6 s; ... 4.3 bytes sent per byte delivered)"
    pace = 6 * MiB / 120.0
    kept = _hundred(
        stallers=42,
        staller_first=int(pace),
        staller_bytes_per_s=1.01 * pace,
    )
    assert (
        f"the first accepted at {min(kept.finish):.1f} s, the last at {kept.makespan:.1f} s; "
        "each attempt meanwhile costs its first part and what it has in flight while it "
        f"waits, {kept.ratio:.1f} bytes sent per byte delivered" in PROSE
    )
    # "uploads finish somewhat later on average (5.3 s instead of 4.3 s for 200 x 6 MiB above)"
    whole = simulate(n=200, size=6 * MiB, limit=256 * MiB)
    parts = simulate(n=200, size=6 * MiB, limit=256 * MiB, declared=False)
    assert (
        f"({statistics.mean(whole.finish):.1f} s instead of {statistics.mean(parts.finish):.1f}"
        " s for 200 x 6 MiB above)" in PROSE
    )


def test_the_waiter_wakeup_count() -> None:
    # "`tests/coordinator/test_h304_waiter_wakeups.py`: 64 waiting bodies beside 4 bodies on
    # pace, 10 s: 2,752 room checks"
    out = storm(64)
    assert out.waiters == 64 and out.kept == 4
    assert f"64 waiting bodies beside 4 bodies on pace, 10 s: {out.fits:,} room checks" in PROSE


# --- sizes derived by arithmetic ---------------------------------------------------------------


def test_holding_the_budget_costs_the_documented_rates() -> None:
    # "(256 MiB at 600 s: about 447 KB/s, against about 2.2 MB/s at 120 s)"
    cfg = ServiceConfig(db_path=":memory:")
    budget = cfg.upload_buffer_bytes
    assert budget == 256 * MiB  # "`--upload-buffer-mb` ... | 256"
    assert cfg.body_timeout_s == 120  # "`--body-timeout` ... | 120"
    assert round(budget / 600 / 1000) == 447
    assert round(budget / cfg.body_timeout_s / 1e6, 1) == 2.2
    assert "256 MiB at 600 s: about 447 KB/s, against about 2.2 MB/s at 120 s" in PROSE


def test_what_the_default_budget_holds() -> None:
    # "the default 256 MiB holds about 11,000 bodies of 24 KB ..., or about 40 dense fp32
    # frames of the MNIST CNN (6.6 MB)"; the CNN's dense fp32 is 4 bytes a parameter
    params = _ingest()["params"]
    assert 6.6e6 <= 4 * params < 6.7e6
    assert round(256 * MiB / 24_000, -3) == 11_000
    assert int(256 * MiB / (4 * params)) == 40
    # "up to about 16 MiB for 256 waiting bodies (256 x 64 KiB ...)"; "at worst 80 MiB"
    assert 256 * 64 * 1024 == 16 * MiB
    assert 256 * (64 + 256) * 1024 == 80 * MiB


def test_a_pools_size_with_the_defaults() -> None:
    # "A pool holds about `max_checkin_rate` x `pool_ttl_s` / 2 devices at once (6,000 with
    # the defaults) ... e.g. `--pool-ttl 120 --max-checkin-rate 500` for up to 30,000"
    cfg = ServiceConfig(db_path=":memory:")
    assert cfg.max_checkin_rate * cfg.pool_ttl_s / 2 == 6_000
    assert 500 * 120 / 2 == 30_000
    assert "(6,000 with the defaults)" in PROSE and "for up to 30,000" in PROSE


def test_the_header_byte_counts() -> None:
    # "e.g. `date: Sun, 29 Nov 2026 08:03:17 GMT`, 37 bytes with its CRLF"; "the 25-byte
    # `HTTP/1.1 100 Continue` interim response"; "the 19-byte `connection: close` header"
    example = re.search(r"e\.g\. `(date: [^`]+)`, (\d+) bytes with its CRLF", PROSE)
    assert example is not None
    assert len(example.group(1)) + 2 == int(example.group(2))
    assert len(b"HTTP/1.1 100 Continue\r\n\r\n") == 25
    assert len(b"connection: close\r\n") == 19


def test_a_compressed_body_inflates_far() -> None:
    # "a compressed body can inflate without bound before any cap applies (64 MiB of zeros is
    # about 2 kB of zstd, 64 kB of gzip)"
    zeros = bytes(64 * MiB)
    assert round(len(zstandard.ZstdCompressor().compress(zeros)), -3) == 2_000
    assert round(len(gzip.compress(zeros)), -3) in (64_000, 65_000)
