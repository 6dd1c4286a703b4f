"""Regressions found reviewing mobile_sim.traces (stop 56, task R): each test failed on the
loader of a83a176d..3b249b15.

- an integer too large for a float (``1`` followed by 400 zeros, which JSON allows) raised
  OverflowError out of the capacity loader instead of TraceError;
- a computation or communication figure that is finite and > 0 but extreme (1e308, 5e-324)
  was taken, and the speeds derived from it were 0 or inf (1000 / (3 x 1e308) underflows to
  0 samples/s: a device whose compute time is inf, or NaN for 0 samples);
- a refusal echoed the offending value, client id or key in full: a 100,000-element list or a
  100,000-character id made a message of 300,000 characters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mobile_sim.traces import TraceError, load_behaviour_trace, load_capacity_trace

# What a refusal may add to the file's name: the kind, a client id, a field and a short value.
MESSAGE_LIMIT = 400


def _write(tmp_path: Path, name: str, doc: Any) -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _refused(loader: Any, path: Path) -> str:
    with pytest.raises(TraceError) as err:
        loader(path)
    message = str(err.value)
    assert "\n" not in message
    assert len(message) - len(str(path)) <= MESSAGE_LIMIT, message[:200]
    return message


@pytest.mark.parametrize("field", ["computation", "communication"])
def test_an_integer_too_large_for_a_float_is_refused(tmp_path: Path, field: str) -> None:
    entry = {"computation": "C", "communication": "C"}
    entry[field] = "BIG"
    text = json.dumps({"1": entry}).replace('"C"', "10").replace('"BIG"', "1" + "0" * 400)
    message = _refused(load_capacity_trace, _write(tmp_path, "cap.json", text))
    assert f"client '1': {field} must be" in message


@pytest.mark.parametrize(
    ("computation", "communication"),
    [(1e308, 10.0), (5e-324, 10.0), (10.0, 1e308), (10.0, 5e-324), (1e300, 1e-300)],
)
@pytest.mark.parametrize("suffix", ["json", "csv"])
def test_figures_whose_speeds_overflow_or_underflow_are_refused(
    tmp_path: Path, computation: float, communication: float, suffix: str
) -> None:
    if suffix == "json":
        doc: Any = {"1": {"computation": computation, "communication": communication}}
    else:
        doc = f"client_id,computation,communication\n1,{computation!r},{communication!r}\n"
    path = _write(tmp_path, f"cap.{suffix}", doc)
    try:
        trace = load_capacity_trace(path)
    except TraceError as exc:
        assert "client '1'" in str(exc) and "must be in [" in str(exc)
        return
    # What the loader takes must give finite speeds above zero (it did not: 0 and inf).
    entries = np.zeros(1, dtype=np.int64)
    with np.errstate(all="ignore"):
        speeds = [trace.compute_sps(entries, s)[0] for s in (1.0, 1e6)]
        speeds.append(trace.bandwidth_bps(entries)[0])
    pytest.fail(f"taken, with speeds {speeds}")


def _long_list() -> list[int]:
    return [1] * 100_000


@pytest.mark.parametrize(
    ("loader", "name", "doc"),
    [
        (load_capacity_trace, "c.json", {"1": {"computation": _long_list(), "communication": 1}}),
        (load_capacity_trace, "c.json", {"x" * 100_000: {"computation": 0, "communication": 1}}),
        (load_capacity_trace, "c.json", {"1": {"computation": 1, "communication": "y" * 10**5}}),
        (
            load_capacity_trace,
            "c.csv",
            "client_id,computation,communication\n" + "z" * 100_000 + ",1,0\n",
        ),
        (load_capacity_trace, "c.csv", "client_id,computation,communication\n1,1," + "9" * 10**5),
        (
            load_behaviour_trace,
            "b.json",
            {"1": {"active": [0], "inactive": [1], "finish_time": _long_list()}},
        ),
        (
            load_behaviour_trace,
            "b.json",
            {"1": {"active": [0], "inactive": [1], "finish_time": 5, "w" * 10**5: 1}},
        ),
        (
            load_behaviour_trace,
            "b.json",
            {"1": {"active": [0], "inactive": [1], "finish_time": int("1" * 4000)}},
        ),
        (
            load_behaviour_trace,
            "b.json",
            {"1": {"active": [0], "inactive": [1], "finish_time": 5, "duration": "d" * 10**5}},
        ),
        (
            load_behaviour_trace,
            "b.json",
            '{"' + "k" * 10**5 + '": 1, "' + "k" * 10**5 + '": 2}',
        ),
    ],
)
def test_a_refusal_quotes_a_long_value_id_or_key_shortened(
    tmp_path: Path, loader: Any, name: str, doc: Any
) -> None:
    _refused(loader, _write(tmp_path, name, doc))
