"""The dp entry of AGGREGATOR_HELP gives the ranges DPMean enforces since helper-198 (36d7df5):
clip= at least float32's smallest normal (MIN_CLIP) and denom= finite and > 0. Fails on the
help before (it named neither range)."""

from __future__ import annotations

import pytest

from coordinator.aggregators import AGGREGATOR_HELP, build_aggregator
from coordinator.aggregators._dp import MIN_CLIP


def _dp_entry() -> str:
    lines = AGGREGATOR_HELP.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("dp:"))
    entry = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith(" " * 35):
            break
        entry.append(line)
    return " ".join(" ".join(entry).split())


def test_the_help_gives_the_clip_and_denom_ranges_that_hold() -> None:
    entry = _dp_entry()
    assert f"clip= (with quantile=, the adaptive clip's start) at least {MIN_CLIP:.8g}" in entry
    assert "denom=, the divisor of the noised sum, finite and > 0" in entry
    assert "max(z, 1)·clip / min(denom, 1) at most 1e30" in entry
    build_aggregator(f"dp:clip={MIN_CLIP!r},z=1,denom=1+fedavg")  # at the bounds
    build_aggregator("dp:clip=1e30,z=1,denom=1+fedavg")
    build_aggregator("dp:clip=1,z=1,denom=1e-30+fedavg")
    for bad in (
        "clip=2e30",
        f"clip={MIN_CLIP / 2!r}",
        "denom=0",
        "denom=inf",
        "clip=1e-39,quantile=0.5",
    ):
        spec = f"dp:z=1,{bad}+fedavg" if "clip" in bad else f"dp:clip=1,z=1,{bad}+fedavg"
        with pytest.raises(ValueError):
            build_aggregator(spec)
