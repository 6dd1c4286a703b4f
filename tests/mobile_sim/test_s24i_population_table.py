"""docs/simulator.md's table of what the default population produces, computed and checked.

The figures: `Population.build(10**6, 0)`, the 50,000 devices `available_fraction(t,
sample=50_000, seed=0)` draws, simulated time 0 at 20:00 UTC (`start_hour_utc`), eligible
share every two UTC hours, and the 10th / 50th / 90th percentiles (numpy's default linear
interpolation) of the same devices' compute speed, bandwidths and latency. The fleet is
derived from the seed on demand, so the 10^6 build costs nothing; the whole check takes well
under a second.

Run `python -m tests.mobile_sim.test_s24i_population_table` to print them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mobile_sim.population import Population

DOC = Path(__file__).resolve().parents[2] / "docs" / "simulator.md"
DEVICES, SEED, SAMPLE = 10**6, 0, 50_000
HOURS = range(0, 24, 2)


def _sample() -> tuple[Population, np.ndarray]:
    pop = Population.build(DEVICES, SEED)
    # The ids available_fraction(..., sample=SAMPLE, seed=0) draws (its own code path).
    ids = np.random.default_rng(0).choice(DEVICES, size=SAMPLE, replace=False).astype(np.int64)
    return pop, ids


def eligible_counts() -> dict[int, int]:
    """Devices of the sample eligible at each even UTC hour of the first simulated day."""
    pop, ids = _sample()
    prof = pop.profiles(ids)
    start = pop.config.start_hour_utc
    counts = {}
    for hour in HOURS:
        t = ((hour - start) % 24) * 3600.0
        counts[hour] = int(pop.available_mask(prof, t).sum())
        # The public estimate draws the same devices.
        assert pop.available_fraction(t, sample=SAMPLE, seed=0) == counts[hour] / SAMPLE
    return counts


def percent_half_up(count: int) -> str:
    """count / SAMPLE as a percentage with one decimal, ties rounded up (exact: one device is
    0.002 %)."""
    tenths = (count * 1000 + SAMPLE // 2) // SAMPLE
    return f"{tenths // 10}.{tenths % 10} %"


def percentiles() -> dict[str, np.ndarray]:
    pop, ids = _sample()
    prof = pop.profiles(ids)
    low, high = prof.tier_index == 0, prof.tier_index == len(prof.tiers) - 1
    q = [10, 50, 90]
    return {
        "compute": np.percentile(prof.compute_sps, q),
        "download": np.percentile(prof.down_bps / 1e6, q),
        "upload": np.percentile(prof.up_bps / 1e6, q),
        "latency": np.percentile(prof.latency_s * 1e3, q),
        "low tier compute p10": np.percentile(prof.compute_sps[low], 10),
        "high tier compute p90": np.percentile(prof.compute_sps[high], 90),
    }


def _doc_text() -> str:
    return re.sub(r"\s+", " ", DOC.read_text(encoding="utf-8"))


def test_the_eligibility_row_is_the_documented_one() -> None:
    counts = eligible_counts()
    # 22:00 UTC is 15,475 of 50,000 devices, 30.95 % exactly: the row rounds ties up.
    assert counts[22] == 15_475
    row = "| eligible | " + " | ".join(percent_half_up(counts[h]) for h in HOURS) + " |"
    assert row == (
        "| eligible | 52.5 % | 62.0 % | 55.6 % | 38.1 % | 19.9 % | 9.0 % | 4.8 % | 4.0 % "
        "| 3.7 % | 4.9 % | 12.6 % | 31.0 % |"
    )
    assert row in _doc_text()


def test_the_percentiles_are_the_documented_ones() -> None:
    p = percentiles()
    assert [round(float(x)) for x in p["compute"]] == [26, 83, 252]
    # The bandwidths of the Ookla-calibrated defaults (2026-12-07; test_s64a_ookla_bandwidth).
    assert [round(float(x), 1) for x in p["download"]] == [22.7, 84.2, 285.7]
    assert [round(float(x), 2) for x in p["upload"][:2]] == [9.98, 38.18]
    assert round(float(p["upload"][2]), 1) == 142.9
    assert [round(float(x)) for x in p["latency"]] == [34, 73, 162]
    low, high = float(p["low tier compute p10"]), float(p["high tier compute p90"])
    assert (round(low), round(high), round(high / low)) == (19, 344, 18)
    doc = _doc_text()
    for text in (
        "compute 26 / 83 / 252 samples/s",
        "low tier's 10th percentile, 19, to the high tier's 90th, 344: an 18x spread",
        "download 22.7 / 84.2 / 285.7 Mbit/s",
        "upload 9.98 / 38.18 / 142.9 Mbit/s",
        "latency 34 / 73 / 162 ms",
    ):
        assert text in doc, text


if __name__ == "__main__":
    counts = eligible_counts()
    print(f"eligible of {SAMPLE:,} sampled devices of a {DEVICES:,}-device fleet, seed {SEED}:")
    for h in HOURS:
        print(f"  {h:02d}:00 UTC  {counts[h]:6d}  {100 * counts[h] / SAMPLE:6.3f} %")
    for name, v in percentiles().items():
        print(f"{name}: {np.round(v, 3)}")
