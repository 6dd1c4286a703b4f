"""SimFleet's two selection paths (`select`, `wait_for`) against a brute-force reference."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from mobile_sim.fleet import SimFleet

I64 = npt.NDArray[np.int64]
DAY = 86_400.0
FIXTURE = Path(__file__).with_name("data") / "selection_paths_v1.json"


@dataclass(frozen=True)
class Case:
    """One selection scenario, run for `rounds` rounds in a row on one fleet."""

    devices: int
    seed: int
    path: str  # "select" or "wait_for"
    n: int
    min_n: int = 1
    timeout: float | None = None
    period: float = 0.0
    step: float = 900.0
    max_wait: float = 2 * DAY
    memory: float = 0.0
    start: float = 0.0
    rounds: int = 3


CASES = [
    # select: check-ins over a period, instant check-ins, the timeout rule, abandoned windows.
    Case(2_000, 0, "select", 13, 5, 900.0, period=900.0),
    Case(2_000, 1, "select", 30, 30, None, period=5.0, start=12_345.678),
    Case(300, 0, "select", 13, 3, 300.0, period=900.0, start=50_000.0 / 3),
    Case(300, 2, "select", 13, 1, 0.0, period=600.0, step=600.0, memory=6144.0),
    Case(40, 4, "select", 30, 3, 300.0, period=900.0),
    Case(40, 4, "select", 30, 3, 1800.0, period=0.0, start=40_000.0),
    Case(40, 1, "select", 30, 30, None, period=900.0, max_wait=3_600.0),
    Case(30, 0, "select", 13, 13, 1800.0, period=0.0, max_wait=7_200.0, start=30_000.0),
    Case(250_000, 2, "select", 13, 1, None, period=900.0, rounds=2),
    # wait_for: the plain wait, the timeout from the start of the wait, the largest-pool fallback.
    Case(2_000, 1, "wait_for", 400, start=3_333.3),
    Case(2_000, 0, "wait_for", 13, 3, 1800.0, start=40_000.0),
    Case(300, 3, "wait_for", 30, 5, 1000.0, step=600.0, memory=6144.0, start=12_345.678),
    Case(40, 2, "wait_for", 30, 3, 1800.0, start=40_000.0),
    Case(10, 0, "wait_for", 13),
    Case(10, 0, "wait_for", 30, 3, 1000.0, start=43_200.0),  # the timeout between two steps
    Case(10, 2, "wait_for", 13, 1, 1800.0, start=46_800.0),  # nobody eligible at the start
    Case(40, 4, "wait_for", 30, 30, None, max_wait=3_600.0, start=50_000.0 / 3),
    Case(250_000, 2, "wait_for", 130, rounds=2, start=40_000.0),
]


def _ref_select(
    fleet: SimFleet, case: Case, rng: np.random.Generator, round_id: int
) -> dict[str, Any]:
    """`select` by brute force, as a walk over events: at step k (offset k*step, summed) the
    pool is every eligible device (first step, check-ins over a period: each at its own
    time; otherwise all at the step); the round opens at the first instant (a check-in, or the
    first check-in + timeout) where the pool holds n, or the timeout has passed and it holds
    min_n. The later steps' pool is the population's own uniform draw (`sample_available`)."""
    pop, clock = fleet.population, fleet.clock
    t0 = clock.now_s
    period = fleet.checkin_period_s
    offset, first = 0.0, None
    best = np.zeros(0, dtype=np.int64)
    timeout = math.inf if case.timeout is None else case.timeout
    while True:
        t = t0 + offset
        if first is None and period > 0:
            everyone = np.arange(len(pop), dtype=np.int64)
            prof = pop.profiles(everyone)
            ok = pop.available_mask(prof, t) & (prof.memory_mb >= case.memory)
            u = clock.checkin_fraction(everyone[ok], round_id)
            order = np.argsort(u, kind="stable")
            ids, times = everyone[ok][order], offset + period * u[order]
        else:
            ids = pop.sample_available(case.n, t, rng, min_memory_mb=case.memory)
            times = np.full(ids.size, offset)
        if ids.size and first is None:
            first = float(times[0])
        if first is not None:
            instants = sorted({*times.tolist(), first + timeout} - {math.inf})
            for instant in instants:
                if not instant < offset + case.step:
                    break
                pool = ids[times <= instant]
                if pool.size >= case.n or (instant >= first + timeout and pool.size >= case.min_n):
                    return {
                        "ids": pool[: case.n].tolist(),
                        "by": "cohort" if pool.size >= case.n else "timeout",
                        "waited": instant,
                        "first": first,
                        "now": t0 + instant if instant > 0 else t0,
                    }
        if min(ids.size, case.n) > best.size:
            best = ids[: case.n]
        if offset >= case.max_wait:
            return {
                "ids": best.tolist(),
                "by": "abandoned",
                "waited": offset,
                "first": math.nan if first is None else first,
                "now": t0 + offset if offset > 0 else t0,
            }
        offset += case.step


def _ref_wait_for(fleet: SimFleet, case: Case, rng: np.random.Generator) -> dict[str, Any]:
    """`wait_for` by brute force: look every step (the clock advanced a step at a time); stop
    at n eligible, or at min_n once the wait reaches the timeout; past max_wait, the first
    largest set seen, with the clock at the step it was seen."""
    pop = fleet.population
    timeout = math.inf if case.timeout is None else case.timeout
    times = [fleet.clock.now_s]  # the clock after k calls of advance(step)
    seen: list[I64] = []
    k = 0
    while True:
        ids = pop.sample_available(case.n, times[k], rng, min_memory_mb=case.memory)
        waited = k * case.step
        if ids.size >= case.n or (waited >= timeout and ids.size >= case.min_n):
            return {"ids": ids.tolist(), "now": times[k], "idle": waited}
        seen.append(ids)
        if waited >= case.max_wait:
            at = max(range(len(seen)), key=lambda j: (seen[j].size, -j))
            return {"ids": seen[at].tolist(), "now": times[at], "idle": at * case.step}
        times.append(times[k] + case.step)
        k += 1


def _run(case: Case, *, reference: bool) -> list[dict[str, Any]]:
    """Every round of `case`: the selection (by the fleet, or by the reference when
    `reference`), then the round's timing on the fleet's clock (kept, stragglers, dropouts)."""
    fleet = SimFleet(
        case.devices,
        seed=case.seed,
        deadline_s=120.0,
        cost_per_sample=0.01,
        checkin_period_s=case.period,
    )
    fleet.clock.advance(case.start)
    out: list[dict[str, Any]] = []
    for r in range(1, case.rounds + 1):
        rng = np.random.default_rng([7, r])
        if reference:
            ref = _ref_select(fleet, case, rng, r) if case.path == "select" else None
            rec = ref or _ref_wait_for(fleet, case, rng)
            ids = np.asarray(rec["ids"], dtype=np.int64)
            # Move the fleet's clock and its wait counters as the reference says, to time the
            # round from there (an abandoned window is idle time but no round's wait).
            waited = rec["waited"] if ref else rec.pop("idle")
            fleet.clock.now_s = rec["now"]
            fleet.idle_s += waited
            fleet._waited_s += 0.0 if rec.get("by") == "abandoned" else waited
            rec["idle"] = fleet.idle_s
        elif case.path == "select":
            sel = fleet.select(
                case.n,
                rng,
                round_id=r,
                min_n=case.min_n,
                selection_timeout_s=case.timeout,
                step_s=case.step,
                max_wait_s=case.max_wait,
                min_memory_mb=case.memory,
            )
            ids = sel.device_ids
            rec = {"ids": ids.tolist(), "by": sel.opened_by, "waited": sel.waited_s}
            rec |= {"first": sel.first_checkin_s, "now": fleet.now_s, "idle": fleet.idle_s}
        else:
            ids = fleet.wait_for(
                case.n,
                rng,
                selection_timeout_s=case.timeout,
                min_n=case.min_n,
                step_s=case.step,
                max_wait_s=case.max_wait,
                min_memory_mb=case.memory,
            )
            rec = {"ids": ids.tolist(), "now": fleet.now_s, "idle": fleet.idle_s}
        rec["rng_after"] = int(rng.integers(1 << 30))  # the same draws were taken
        if ids.size:
            timing = fleet.time_round(
                r,
                ids,
                down_bytes=200_000,
                up_bytes=[3_000 + 17 * i for i in range(ids.size)],
                samples=[20 + i % 7 for i in range(ids.size)],
                epochs=2,
                per_round=max(1, ids.size * 10 // 13),
            )
            rec |= {
                "kept": timing.kept.tolist(),
                "stragglers": timing.stragglers.tolist(),
                "dropped": timing.dropped.tolist(),
                "duration": timing.duration_s,
                "round_waited": timing.waited_s,
            }
            fleet.advance(timing)
        out.append(rec)
    return out


def _same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want)
    for r, (g, w) in enumerate(zip(got, want, strict=True), start=1):
        assert g.keys() == w.keys(), r
        for key in g:
            if isinstance(g[key], float) and math.isnan(g[key]):
                assert math.isnan(w[key]), (r, key)
            else:
                assert g[key] == w[key], (r, key, g[key], w[key])


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.path}-{c.devices}-{c.seed}-{c.n}")
def test_each_path_selects_what_the_brute_force_reference_selects(case: Case) -> None:
    # Prepare / Execute: the same rounds through the fleet and through the reference.
    got = _run(case, reference=False)
    want = _run(case, reference=True)

    # Assert: the same devices, the same opening rule, the same float times, the same draws
    # taken from the rng, and so the same kept / straggling / dropped devices.
    _same(got, want)


def test_the_cases_reach_every_outcome() -> None:
    # Prepare / Execute
    outcomes = {
        (case.path, rec.get("by", "waited" if rec.get("round_waited", 0) > 0 else "at once"))
        for case in CASES
        for rec in _run(case, reference=False)
    }
    stragglers = any(rec.get("stragglers") for case in CASES for rec in _run(case, reference=False))

    # Assert: the reference comparison above covers each rule, not just the easy path.
    assert {("select", "cohort"), ("select", "timeout"), ("select", "abandoned")} <= outcomes
    assert {("wait_for", "waited"), ("wait_for", "at once")} <= outcomes
    assert stragglers


def _rounded(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Floats to 6 decimals (continuous draws may differ in the last bit between CPUs)."""
    return [
        {
            k: (None if math.isnan(v) else round(v, 6)) if isinstance(v, float) else v
            for k, v in r.items()
        }
        for r in recs
    ]


def test_selections_are_those_of_the_code_before_the_paths_were_merged() -> None:
    # Prepare: a regression fixture, NOT a specification. It was generated by running `_run`
    # (reference=False) over CASES with the pre-merge mobile_sim/fleet.py (commit ceca944, two
    # separate loops in `wait_for` and `select`), before `_select` replaced them; the test
    # above checks the same rounds against an independent reference.
    frozen = json.loads(FIXTURE.read_text())

    # Execute
    now = {repr(case): _rounded(_run(case, reference=False)) for case in CASES}

    # Assert
    assert now == frozen
