"""trace_compute_scale's lower bound (stop 56).

It was only required to be > 0 (and at most 10^6): a tiny factor such as 1e-320 was taken, and
every device's compute speed came out 0 samples/s, so a round's compute time was inf. The range
is [10^-6, 10^6] now, in PopulationConfig, SimConfig and `plume sim --trace-compute-scale`, and
every speed a scale in the range gives from any figure the loader takes is finite and > 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mobile_sim.population import PopulationConfig, PopulationError
from mobile_sim.runner import SimConfig
from mobile_sim.traces import MAX_CAPACITY_FIGURE, MIN_CAPACITY_FIGURE, load_capacity_trace


@pytest.fixture
def cap(tmp_path: Path) -> Path:
    path = tmp_path / "cap.json"
    entries = {"1": {"computation": MAX_CAPACITY_FIGURE, "communication": MIN_CAPACITY_FIGURE}}
    entries["2"] = {"computation": MIN_CAPACITY_FIGURE, "communication": MAX_CAPACITY_FIGURE}
    path.write_text(json.dumps(entries))
    return path


@pytest.mark.parametrize("scale", [1e-320, 1e-7, 0.0, -1.0, 1e6 * 1.0001, 10**400])
def test_a_scale_outside_the_range_is_refused(cap: Path, scale: float) -> None:
    trace = load_capacity_trace(cap)
    with pytest.raises(PopulationError, match=r"trace_compute_scale must be in \[1e-06, 1e\+06\]"):
        PopulationConfig(num_devices=10, capacity_trace=trace, trace_compute_scale=scale)
    with pytest.raises(ValueError, match=r"trace_compute_scale must be in \[1e-06, 1e\+06\]"):
        SimConfig(fleet="timing", capacity_trace=str(cap), trace_compute_scale=scale)
    with pytest.raises(ValueError) as err:
        SimConfig(fleet="timing", capacity_trace=str(cap), trace_compute_scale=scale)
    assert len(str(err.value)) < 120  # an int of 400 digits is shown shortened


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_every_speed_in_the_range_is_finite_and_positive(cap: Path, scale: float) -> None:
    trace = load_capacity_trace(cap)
    PopulationConfig(num_devices=10, capacity_trace=trace, trace_compute_scale=scale)
    entries = np.arange(len(trace), dtype=np.int64)
    for speeds in (trace.compute_sps(entries, scale), trace.bandwidth_bps(entries)):
        assert np.all(np.isfinite(speeds)) and np.all(speeds > 0), speeds
