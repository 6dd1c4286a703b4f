"""docs/traces.md against FedScale's format and code (stop 56, task R).

- The doc's pickle-to-JSON one-liners, run as the doc gives them, with the one call that reads
  the pickle swapped for a reader of a JSON file holding the same dict as FedScale's pickles
  would (integer client ids, numpy numbers and arrays): no pickle is written or read. What
  they write loads with Plume's loaders to the values the dict holds.
- The doc's Python example prints what the doc says it prints.
- FedScale's availability check (a per-client cursor, `ClientMetadata.is_active` in
  fedscale/cloud/internal/client_metadata.py, as docs/traces.md quotes it; re-stated here as a
  small model, not copied) agrees with Plume's stateless lookup exactly under the conditions the
  doc states, and disagrees in the two ways it describes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobile_sim.traces import BehaviourTrace, load_behaviour_trace, load_capacity_trace

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "traces.md"
PICKLE_READ = 'pickle.load(open(sys.argv[1], "rb"))'

# Reads a JSON file and gives back the dict FedScale's pickles hold: integer client ids, numpy
# float64 computation, numpy float32 communication (not a float subclass: json.dump needs the
# one-liner's default= for it), numpy int64 times and int64 arrays of window bounds.
FAKE_PICKLE_READER = """\
import json as _json
import numpy as _np


def _numpy(value, key=None):
    if isinstance(value, dict):
        return {k: _numpy(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return _np.asarray(value, dtype=_np.int64)
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return _np.int64(value)
    if isinstance(value, float):
        return _np.float32(value) if key == "communication" else _np.float64(value)
    return value


def _read_like_the_pickle(path):
    with open(path) as f:
        return {int(k): _numpy(v) for k, v in _json.load(f).items()}
"""

CAPACITY = {
    "1": {"computation": 162.0, "communication": 5648.109619499134},
    "2": {"computation": 41.5, "communication": 880.25},
    "17": {"computation": 12.0, "communication": 20000.0},
}
BEHAVIOUR = {
    "3": {
        "duration": 200000,
        "inactive": [60000, 130000, 470000],
        "finish_time": 518400,
        "active": [10000, 100000, 400000],
        "model": "SM-A105FN",
    },
    "9": {"duration": 10, "inactive": [86400], "finish_time": 86400, "active": [0], "model": "X"},
}


def _doc_one_liners() -> list[list[str]]:
    """The `python -c '...' IN OUT` commands of the doc's conversion section, split as a shell
    would split them."""
    section = DOC.read_text().split("## Converting FedScale's pickles", 1)[1]
    lines = [ln for ln in section.splitlines() if ln.startswith("python -c ")]
    assert len(lines) == 2, lines
    return [shlex.split(ln) for ln in lines]


def test_the_docs_conversion_writes_what_the_loaders_read(tmp_path: Path) -> None:
    commands = _doc_one_liners()
    for (python, flag, code, source, target), doc, loader in zip(
        commands, (CAPACITY, BEHAVIOUR), ("capacity", "behaviour"), strict=True
    ):
        assert (python, flag) == ("python", "-c")
        assert code.count(PICKLE_READ) == 1, code
        ours = FAKE_PICKLE_READER + code.replace(PICKLE_READ, "_read_like_the_pickle(sys.argv[1])")
        assert "pickle.load" not in ours
        (tmp_path / source).write_text(json.dumps(doc))
        subprocess.run(
            [sys.executable, "-c", ours, source, target],
            cwd=tmp_path,
            check=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert target.endswith(".json")
        if loader == "capacity":
            assert (source, target) == ("client_device_capacity", "capacity.json")
            cap = load_capacity_trace(tmp_path / target)
            assert cap.computation_ms.tolist() == [e["computation"] for e in CAPACITY.values()]
            # communication went through float32 on the way, as a float32 in a pickle would.
            want = [float(np.float32(e["communication"])) for e in CAPACITY.values()]
            assert cap.communication_kbps.tolist() == want
        else:
            assert (source, target) == ("client_behave_trace", "behaviour.json")
            beh = load_behaviour_trace(tmp_path / target)
            assert beh.finish_time.tolist() == [e["finish_time"] for e in BEHAVIOUR.values()]
            for k, e in enumerate(BEHAVIOUR.values()):
                assert beh.windows(k) == list(zip(e["active"], e["inactive"], strict=True))
        # The ids became strings, in the pickle's order.
        assert list(json.loads((tmp_path / target).read_text())) == list(doc)


def test_the_docs_python_example_prints_what_it_says(tmp_path: Path) -> None:
    text = DOC.read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block is not None
    code = block.group(1)
    want = [ln[2:] for ln in code.splitlines() if ln.startswith("# ")]
    assert len(want) == 2
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(DOC), "exec"), {"__name__": "__doc_example__"})
    finally:
        os.chdir(cwd)
    assert out.getvalue().splitlines() == want


# --- FedScale's cursor against Plume's lookup ------------------------------------------------


class _FedScaleCursor:
    """FedScale's availability check for one client, from docs/traces.md's description of
    `ClientMetadata.is_active`: t mod finish_time; the cursor moves one window on when that is
    past the current window's end, wrapping after the last; available iff inside the window
    under the cursor (both ends included). Every query moves the cursor."""

    def __init__(self, active: list[int], inactive: list[int], finish: int) -> None:
        self.active, self.inactive, self.finish, self.k = active, inactive, finish, 0

    def __call__(self, t: float) -> bool:
        x = t % self.finish
        if x > self.inactive[self.k]:
            self.k += 1
        self.k %= len(self.active)
        return self.active[self.k] <= x <= self.inactive[self.k]


def _trace(entry: dict[str, Any]) -> BehaviourTrace:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b.json"
        path.write_text(json.dumps({"c": entry}))
        return load_behaviour_trace(path)


def _plume(trace: BehaviourTrace, t: float) -> bool:
    return bool(trace.is_active(np.zeros(1, dtype=np.int64), t)[0])


@st.composite
def _kept_up(draw: st.DrawFn) -> tuple[dict[str, Any], list[float]]:
    """An entry whose window ends strictly increase and whose last window ends before
    finish_time, and query times that keep up as docs/traces.md states: from 0, over three
    cycles, a query every h seconds up to the last window's end (h no longer than the distance
    between two consecutive ends, so at least one query falls between them), then 1 + r x m
    queries after the last window's end (m windows, r in 0..2)."""
    finish = draw(st.integers(4, 300))
    ends = sorted(draw(st.sets(st.integers(0, finish - 2), min_size=1, max_size=6)))
    active, start = [], 0
    for b in ends:
        active.append(draw(st.integers(start, b)))
        start = b
    inner = [b - a for a, b in zip(ends, ends[1:], strict=False)] or [finish]
    step = min(inner) * draw(st.floats(0.3, 0.999))
    after = 1 + draw(st.integers(0, 2)) * len(ends)
    last, times = ends[-1], []
    for cycle in range(3):
        base = cycle * finish
        times += [base + k * step for k in range(int(last / step) + 1) if k * step <= last]
        times += [base + last + (finish - last) * (q + 1) / (after + 1) for q in range(after)]
    return {"active": active, "inactive": ends, "finish_time": finish}, times


@settings(
    max_examples=60,
    deadline=5000,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=_kept_up())
def test_fedscale_cursor_agrees_when_queries_keep_up(
    case: tuple[dict[str, Any], list[float]],
) -> None:
    entry, times = case
    fedscale = _FedScaleCursor(entry["active"], entry["inactive"], entry["finish_time"])
    trace = _trace(entry)
    for t in times:
        assert fedscale(t) == _plume(trace, t), t


def test_queries_after_the_last_window_move_fedscales_cursor_on() -> None:
    # Two windows; a query every second over three 9 s cycles: 4 queries after the last
    # window's end (5, 6, 7, 8 s) in each cycle move the cursor 4 times, back onto window 1.
    entry = {"active": [0, 3], "inactive": [1, 4], "finish_time": 9}
    fedscale = _FedScaleCursor(entry["active"], entry["inactive"], entry["finish_time"])
    trace = _trace(entry)
    got = [(fedscale(float(t)), _plume(trace, float(t))) for t in range(27)]
    assert all(f == p for f, p in got[:9])  # the first cycle agrees
    # Later cycles: window 0 ([0, 1]) reads unavailable to FedScale; window 1 still agrees.
    assert [t for t in range(9, 27) if got[t][0] != got[t][1]] == [9, 10, 18, 19]


def test_a_last_window_ending_at_finish_time_strands_fedscales_cursor() -> None:
    entry = {"active": [0, 5], "inactive": [5, 10], "finish_time": 10}
    fedscale = _FedScaleCursor(entry["active"], entry["inactive"], entry["finish_time"])
    trace = _trace(entry)
    times = [float(t) for t in range(40)]  # a query every second: more than keeping up
    got = [(fedscale(t), _plume(trace, t)) for t in times]
    # The first cycle agrees; Plume's entry is available all the time (its windows cover the
    # cycle); from the second cycle on FedScale's only in the last window, [5, 10].
    assert all(f == p for f, p in got[:10])
    assert all(p for _, p in got)
    assert [f for f, _ in got[10:]] == [t % 10 >= 5 for t in times[10:]]


def test_a_query_skipping_a_window_leaves_fedscales_cursor_behind() -> None:
    entry = {"active": [0, 3, 6], "inactive": [1, 4, 7], "finish_time": 10}
    fedscale = _FedScaleCursor(entry["active"], entry["inactive"], entry["finish_time"])
    trace = _trace(entry)
    assert fedscale(0.0) and _plume(trace, 0.0)
    # From window 0 straight to window 2: the cursor moves to window 1 only.
    assert _plume(trace, 6.5) and not fedscale(6.5)
