"""Property tests of mobile_sim.traces' parsers (stop 56, task R).

Malformed input of every kind (arbitrary bytes; JSON with wrong types, NaN and Infinity,
negative, huge and tiny numbers, missing and unknown keys, deep nesting, repeated entries;
CSV with bad cells, counts of columns, quotes and NULs) either loads as a valid trace or is
refused with TraceError: one line, naming the trace, of bounded length. Never another
exception. Valid generated traces load to exactly the values docs/traces.md gives:
compute_sps = scale x 1000 / (3 x computation), bits/s = communication x 1024, the windows as
written. Every test is derandomized and runs a modest number of examples under a deadline.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobile_sim.traces import (
    KBIT,
    MAX_CAPACITY_FIGURE,
    MAX_TRACE_TIME_S,
    MIN_CAPACITY_FIGURE,
    TRAINING_PASSES,
    BehaviourTrace,
    CapacityTrace,
    TraceError,
    load_behaviour_trace,
    load_capacity_trace,
)

MESSAGE_LIMIT = 400  # what a refusal may add to the file's name
SCALES = (1e-6, 1.0, 1e6)  # trace_compute_scale's range is [10^-6, 10^6]

_SETTINGS = settings(
    max_examples=80,
    deadline=5000,  # ms; an example takes a few ms: this catches a hang, not a slow machine
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

Loader = Callable[[Path], Any]


def _load(name: str, data: bytes, loader: Loader) -> Any:
    """`loader` on a file `name` holding `data`: the trace, or the TraceError's message
    (checked to be one bounded line naming the trace). Any other exception fails the test."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            return loader(path)
        except TraceError as exc:
            message = str(exc)
            assert message.startswith(("capacity trace ", "behaviour trace ")), message
            assert str(path) in message
            assert "\n" not in message and "\r" not in message, message
            assert len(message) - len(str(path)) <= MESSAGE_LIMIT, message[:300]
            return message


def _check_capacity(trace: CapacityTrace) -> None:
    assert len(trace) >= 1
    entries = np.arange(len(trace), dtype=np.int64)
    for scale in SCALES:
        sps = trace.compute_sps(entries, scale)
        assert np.all(np.isfinite(sps)) and np.all(sps > 0)
    bps = trace.bandwidth_bps(entries)
    assert np.all(np.isfinite(bps)) and np.all(bps > 0)


def _check_behaviour(trace: BehaviourTrace) -> None:
    assert len(trace) >= 1 and np.all(trace.finish_time > 0)
    for k in range(len(trace)):
        w = trace.windows(k)
        assert w and all(0 <= a <= b <= trace.finish_time[k] for a, b in w)
        assert all(w[j][1] <= w[j + 1][0] for j in range(len(w) - 1))


# --- arbitrary bytes ---------------------------------------------------------------------------


@_SETTINGS
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_are_refused_or_valid(data: bytes) -> None:
    for name, loader, check in (
        ("c.json", load_capacity_trace, _check_capacity),
        ("c.csv", load_capacity_trace, _check_capacity),
        ("b.json", load_behaviour_trace, _check_behaviour),
    ):
        got = _load(name, data, loader)
        if not isinstance(got, str):
            check(got)


# --- JSON: near-valid documents with malformed parts -------------------------------------------

_ODD_NUMBERS = st.sampled_from(
    [
        0,
        -0.0,
        -1,
        -1.5,
        5e-324,
        1e-300,
        1e-10,
        1e308,
        2**63,
        2**64 + 1,
        10**30,
        10**400,
        MAX_TRACE_TIME_S,
        MAX_TRACE_TIME_S + 1,
        float("nan"),
        float("inf"),
        float("-inf"),
    ]
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included: json.dumps writes them as NaN / Infinity
    | st.text(max_size=12)
    | _ODD_NUMBERS
)
_ANY = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_FIGURE = st.floats(MIN_CAPACITY_FIGURE, MAX_CAPACITY_FIGURE) | st.integers(1, 10**6)


def _maybe(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Half the time a good value, else an odd number or anything at all."""
    return st.one_of(good, good, _ODD_NUMBERS, _ANY)


def _mangle(entry: dict[str, Any], drop: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in entry.items() if k not in drop}
    out.update(extra)
    return out


_CAPACITY_ENTRY = st.builds(
    _mangle,
    st.fixed_dictionaries({"computation": _maybe(_FIGURE), "communication": _maybe(_FIGURE)}),
    st.lists(st.sampled_from(["computation", "communication"]), max_size=1),
    st.dictionaries(st.text(max_size=6), _ANY, max_size=1) | st.just({}),
)


@st.composite
def _windows(draw: st.DrawFn) -> dict[str, Any]:
    finish = draw(st.integers(1, 10**6) | st.sampled_from([1, MAX_TRACE_TIME_S]))
    cuts = sorted(draw(st.lists(st.integers(0, finish), min_size=2, max_size=8)))
    cuts = cuts[: len(cuts) // 2 * 2]
    return {"active": cuts[0::2], "inactive": cuts[1::2], "finish_time": finish}


@st.composite
def _behaviour_entry(draw: st.DrawFn) -> dict[str, Any]:
    entry = draw(_windows())
    for key in ("active", "inactive", "finish_time"):
        if draw(st.integers(0, 5)) == 0:
            entry[key] = draw(_ANY)
    if draw(st.booleans()):
        entry["duration"] = draw(_maybe(st.integers(0, 10**6)))
    if draw(st.booleans()):
        entry["model"] = draw(_maybe(st.text(max_size=10)))
    drop = draw(st.lists(st.sampled_from(sorted(entry)), max_size=1))
    extra = draw(st.dictionaries(st.text(max_size=6), _ANY, max_size=1) | st.just({}))
    return _mangle(entry, drop, extra)


_CLIENT_ID = st.text(max_size=8) | st.integers(0, 10**6).map(str) | st.just("x" * 5000)


@st.composite
def _json_text(draw: st.DrawFn, entry: st.SearchStrategy[Any]) -> str:
    doc: Any = draw(st.dictionaries(_CLIENT_ID, entry, max_size=4))
    shape = draw(st.sampled_from(["as is", "top", "nest", "repeat", "duplicate", "cut", "junk"]))
    if shape == "top":
        doc = draw(_ANY)
    text = json.dumps(doc)
    if shape == "nest" and doc:
        # One value deep inside many arrays (a depth json may or may not parse).
        depth = draw(st.sampled_from([10, 500, 990, 2000, 100_000]))
        key = json.dumps(next(iter(doc)))
        text = text.replace(f"{key}: ", f"{key}: {'[' * depth}", 1)
        text = text[:-1] + "]" * depth + "}"
    elif shape == "repeat" and doc:
        # The same entry under many fresh ids: a large count of clients.
        body = json.dumps(next(iter(doc.values())))
        count = draw(st.sampled_from([2, 1000, 20_000]))
        text = "{" + ", ".join(f'"r{i}": {body}' for i in range(count)) + "}"
    elif shape == "duplicate" and doc:
        text = text[:-1] + ", " + text[1:]
    elif shape == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif shape == "junk":
        text += draw(st.sampled_from(["\x00", "}", "]", ",", " x", "\ufeff"]))
    return text


@_SETTINGS
@given(text=_json_text(_CAPACITY_ENTRY))
def test_capacity_json_is_refused_cleanly_or_valid(text: str) -> None:
    got = _load("c.json", text.encode("utf-8", "surrogatepass"), load_capacity_trace)
    if not isinstance(got, str):
        _check_capacity(got)


@_SETTINGS
@given(text=_json_text(_behaviour_entry()))
def test_behaviour_json_is_refused_cleanly_or_valid(text: str) -> None:
    got = _load("b.json", text.encode("utf-8", "surrogatepass"), load_behaviour_trace)
    if not isinstance(got, str):
        _check_behaviour(got)


# --- CSV -------------------------------------------------------------------------------------

_CELL = (
    _FIGURE.map(repr)
    | st.floats().map(repr)
    | st.integers().map(str)
    | st.sampled_from(
        ["", " ", "nan", "inf", "-1", "0", "1e400", "1" * 400, "1_0", "0x10", "1,5", '"', "\x00"]
    )
    | st.text(max_size=8)
)


@_SETTINGS
@given(
    header=st.sampled_from(
        [
            "client_id,computation,communication",
            " client_id , computation , communication ",
            "\ufeffclient_id,computation,communication",
            "client_id,communication,computation",
            "client_id,computation",
            "",
        ]
    ),
    rows=st.lists(st.lists(_CELL, max_size=5), max_size=6),
    raw_tail=st.sampled_from(["", "\n", '"unterminated', "a,b\x00c,d\n", "\r\n\r\n"]),
)
def test_capacity_csv_is_refused_cleanly_or_valid(
    header: str, rows: list[list[str]], raw_tail: str
) -> None:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    text = header + "\n" + buf.getvalue() + raw_tail
    got = _load("c.csv", text.encode("utf-8", "surrogatepass"), load_capacity_trace)
    if not isinstance(got, str):
        _check_capacity(got)


# --- valid traces round-trip to the documented values ------------------------------------------


@_SETTINGS
@given(
    figures=st.lists(
        st.tuples(st.floats(MIN_CAPACITY_FIGURE, MAX_CAPACITY_FIGURE), _FIGURE),
        min_size=1,
        max_size=20,
    ),
    scale=st.floats(1e-6, 1e6),
    as_csv=st.booleans(),
)
def test_valid_capacity_traces_give_the_documented_speeds(
    figures: list[tuple[float, float]], scale: float, as_csv: bool
) -> None:
    if as_csv:
        lines = ["client_id,computation,communication"]
        lines += [f"{i},{c!r},{b!r}" for i, (c, b) in enumerate(figures)]
        name, text = "c.csv", "\n".join(lines) + "\n"
    else:
        doc = {str(i): {"computation": c, "communication": b} for i, (c, b) in enumerate(figures)}
        name, text = "c.json", json.dumps(doc)
    trace = _load(name, text.encode(), load_capacity_trace)
    assert isinstance(trace, CapacityTrace), trace
    assert trace.computation_ms.tolist() == [float(c) for c, _ in figures]
    assert trace.communication_kbps.tolist() == [float(b) for _, b in figures]
    entries = np.arange(len(figures), dtype=np.int64)[::-1].copy()
    want_sps = [scale * 1000.0 / (3.0 * float(figures[k][0])) for k in entries]
    want_bps = [float(figures[k][1]) * 1024.0 for k in entries]
    assert trace.compute_sps(entries, scale).tolist() == want_sps
    assert trace.bandwidth_bps(entries).tolist() == want_bps
    assert TRAINING_PASSES == 3.0 and KBIT == 1024.0  # the doc's 3 and 1024
    _check_capacity(trace)


@_SETTINGS
@given(entries=st.lists(_windows(), min_size=1, max_size=6), extra=st.booleans())
def test_valid_behaviour_traces_keep_their_windows(
    entries: list[dict[str, Any]], extra: bool
) -> None:
    doc = {}
    for i, e in enumerate(entries):
        if extra:
            e = {**e, "duration": i, "model": f"M{i}"}
        doc[f"c{i}"] = e
    trace = _load("b.json", json.dumps(doc).encode(), load_behaviour_trace)
    assert isinstance(trace, BehaviourTrace), trace
    assert trace.finish_time.tolist() == [e["finish_time"] for e in entries]
    for k, e in enumerate(entries):
        assert trace.windows(k) == list(zip(e["active"], e["inactive"], strict=True))
    _check_behaviour(trace)
