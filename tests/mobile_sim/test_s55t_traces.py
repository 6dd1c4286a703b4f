"""FedScale-format device traces (stop 55, task T): the strict loaders of mobile_sim.traces and
the population they drive (PopulationConfig's capacity_trace / behaviour_trace).

Every trace here is generated in the test, small and seeded; no trace file is committed.
"""

from __future__ import annotations

import hashlib
import json
import math
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobile_sim.population import Population, PopulationConfig, PopulationError
from mobile_sim.traces import (
    KBIT,
    MAX_TRACE_TIME_S,
    BehaviourTrace,
    CapacityTrace,
    TraceError,
    load_behaviour_trace,
    load_capacity_trace,
)
from tests.mobile_sim.test_s64a_ookla_bandwidth import EARLIER_TIERS

CAPACITY = {
    "1": {"computation": 10.0, "communication": 2000.0},
    "2": {"computation": 5.5, "communication": 1000},
    "3": {"computation": 120.0, "communication": 50.5},
}
BEHAVIOUR = {
    "7": {
        "duration": 30,
        "inactive": [20, 60],
        "finish_time": 100,
        "active": [10, 50],
        "model": "SM-A105FN",
    },
    "8": {"active": [0], "inactive": [100], "finish_time": 100},
}


def _write(tmp_path: Path, name: str, doc: Any) -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


# --- loaders: good files ---------------------------------------------------------------------


def test_capacity_json_loads_in_file_order_with_its_sha256(tmp_path: Path) -> None:
    path = _write(tmp_path, "cap.json", CAPACITY)
    trace = load_capacity_trace(path)
    assert isinstance(trace, CapacityTrace)
    assert len(trace) == 3
    assert trace.computation_ms.tolist() == [10.0, 5.5, 120.0]
    assert trace.communication_kbps.tolist() == [2000.0, 1000.0, 50.5]
    assert trace.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert trace.path == str(path)


def test_capacity_csv_matches_the_json(tmp_path: Path) -> None:
    rows = "".join(f"{k},{v['computation']},{v['communication']}\n" for k, v in CAPACITY.items())
    path = _write(tmp_path, "cap.csv", "client_id,computation,communication\n" + rows + "\n")
    trace = load_capacity_trace(path)
    ref = load_capacity_trace(_write(tmp_path, "cap.json", CAPACITY))
    assert np.array_equal(trace.computation_ms, ref.computation_ms)
    assert np.array_equal(trace.communication_kbps, ref.communication_kbps)
    assert trace.sha256 != ref.sha256  # of each file's own bytes


def test_capacity_unit_conversion() -> None:
    trace = CapacityTrace("x", "0" * 64, np.array([10.0, 1.0 / 3.0]), np.array([2000.0, 1.0]))
    entries = np.array([0, 1], dtype=np.int64)
    # FedScale: a training sample costs 3 forward passes of `computation` ms.
    assert trace.compute_sps(entries).tolist() == pytest.approx([1000.0 / 30.0, 1000.0])
    assert trace.compute_sps(entries, 2.0).tolist() == pytest.approx([2000.0 / 30.0, 2000.0])
    # FedScale's kbit is 1024 bits (it sizes updates as bytes / 1024 * 8).
    assert KBIT == 1024.0
    assert trace.bandwidth_bps(entries).tolist() == [2000.0 * 1024.0, 1024.0]


def test_behaviour_json_loads_windows_as_csr(tmp_path: Path) -> None:
    path = _write(tmp_path, "beh.json", BEHAVIOUR)
    trace = load_behaviour_trace(path)
    assert isinstance(trace, BehaviourTrace)
    assert len(trace) == 2
    assert trace.offsets.tolist() == [0, 2, 3]
    assert trace.finish_time.tolist() == [100, 100]
    assert trace.windows(0) == [(10, 20), (50, 60)]
    assert trace.windows(1) == [(0, 100)]
    assert trace.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def _hand_active(windows: list[tuple[int, int]], finish: int, t: float) -> bool:
    """FedScale's rule, written out: t mod finish_time inside a closed window."""
    norm = t % finish
    return any(a <= norm <= b for a, b in windows)


@pytest.mark.parametrize(
    ("t", "first", "second"),
    [
        (0.0, False, True),
        (9.999, False, True),
        (10.0, True, True),  # a window's start is inside
        (20.0, True, True),  # and so is its end
        (20.001, False, True),
        (55.0, True, True),
        (60.5, False, True),
        (99.5, False, True),
        (110.0, True, True),  # cyclic: 110 mod 100 = 10
        (1e9 + 15.0, True, True),
        (1e9 + 35.0, False, True),
    ],
)
def test_behaviour_availability_matches_hand_computed_windows(
    tmp_path: Path, t: float, first: bool, second: bool
) -> None:
    trace = load_behaviour_trace(_write(tmp_path, "beh.json", BEHAVIOUR))
    got = trace.is_active(np.array([0, 1, 0], dtype=np.int64), t)
    assert got.tolist() == [first, second, first]
    assert _hand_active([(10, 20), (50, 60)], 100, t) is first


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data())
def test_behaviour_lookup_agrees_with_the_rule_on_random_traces(data: st.DataObject) -> None:
    entries: dict[str, dict[str, Any]] = {}
    n = data.draw(st.integers(1, 6))
    for k in range(n):
        finish = data.draw(st.integers(1, 500))
        cuts = sorted(data.draw(st.lists(st.integers(0, finish), min_size=2, max_size=8)))
        cuts = cuts[: len(cuts) // 2 * 2]
        entries[str(k)] = {
            "active": cuts[0::2],
            "inactive": cuts[1::2],
            "finish_time": finish,
        }
    t = data.draw(st.floats(0, 1e7, allow_nan=False) | st.integers(0, 10**6).map(float))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        trace = load_behaviour_trace(_write(Path(tmp), "b.json", entries))
    got = trace.is_active(np.arange(n, dtype=np.int64), t)
    want = [
        _hand_active(list(zip(e["active"], e["inactive"], strict=True)), e["finish_time"], t)
        for e in entries.values()
    ]
    assert got.tolist() == want


# --- loaders: refusals -----------------------------------------------------------------------


def _cap(**entry: Any) -> dict[str, Any]:
    return {"1": {"computation": 1.0, "communication": 1.0}, "42": entry}


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({}, "the trace is empty"),
        ([], "the top level must be an object"),
        (
            _cap(computation=0, communication=1.0),
            "client '42': computation must be finite and > 0, got 0",
        ),
        (_cap(computation=-1.5, communication=1.0), "computation must be finite and > 0, got -1.5"),
        (
            _cap(computation=1.0, communication=0.0),
            "client '42': communication must be finite and > 0",
        ),
        (_cap(computation="5", communication=1.0), "computation must be a number, got '5'"),
        (_cap(computation=True, communication=1.0), "computation must be a number, got True"),
        (_cap(computation=1.0), "client '42': missing field 'communication'"),
        (_cap(computation=1.0, communication=1.0, sample_size=3), "unknown field 'sample_size'"),
        ({"1": [1.0, 2.0]}, "client '1': an entry must be an object"),
        ({" ": {"computation": 1.0, "communication": 1.0}}, "a client id is empty"),
    ],
)
def test_capacity_json_refusals(tmp_path: Path, doc: Any, says: str) -> None:
    path = _write(tmp_path, "cap.json", doc)
    with pytest.raises(TraceError) as err:
        load_capacity_trace(path)
    assert says in str(err.value)
    assert str(err.value).startswith(f"capacity trace {path}")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"1": {"computation": NaN, "communication": 1}}', "NaN is not a number JSON allows"),
        ('{"1": {"computation": Infinity, "communication": 1}}', "Infinity is not a number"),
        (
            '{"1": {"computation": 1, "communication": 1}, "1": {"computation": 2, '
            '"communication": 1}}',
            "duplicate key '1'",
        ),
        ('{"1": {"computation": 1, "computation": 2, "communication": 1}}', "duplicate key"),
        ('{"1": ', "not valid JSON at line 1"),
        ("[" * 100_000, "not valid JSON"),
        ("   \n", "the file is empty"),
        (
            '{"1": {"computation": 1e400, "communication": 1}}',
            "client '1': computation must be finite",
        ),
    ],
)
def test_capacity_json_text_refusals(tmp_path: Path, text: str, says: str) -> None:
    path = _write(tmp_path, "cap.json", text)
    with pytest.raises(TraceError, match="capacity trace") as err:
        load_capacity_trace(path)
    assert says in str(err.value)


def test_pickles_and_other_files_are_refused_unread(tmp_path: Path) -> None:
    import pickle

    # A pickle is never loaded: the suffix is refused before the file is opened, and a
    # pickle renamed .json is not JSON (nor UTF-8).
    path = tmp_path / "client_device_capacity"
    path.write_bytes(pickle.dumps({1: {"computation": 1.0, "communication": 1.0}}))
    with pytest.raises(TraceError, match=r"give a \.json or \.csv file .*docs/traces\.md"):
        load_capacity_trace(path)
    renamed = tmp_path / "cap.json"
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(TraceError, match="not UTF-8 text|not valid JSON"):
        load_capacity_trace(renamed)
    with pytest.raises(TraceError, match=r"behaviour trace .*beh\.csv: give a \.json file"):
        load_behaviour_trace(tmp_path / "beh.csv")
    with pytest.raises(TraceError, match=r"capacity trace .*missing\.json: cannot read it"):
        load_capacity_trace(tmp_path / "missing.json")


def test_a_device_file_is_refused_unread(tmp_path: Path) -> None:
    # /dev/zero has no size to check: it was read up to the cap, then refused as too large.
    link = tmp_path / "cap.json"
    link.symlink_to("/dev/zero")
    with pytest.raises(TraceError, match=r"cap\.json: not a regular file"):
        load_capacity_trace(link, max_bytes=1000)


def test_the_size_cap_is_checked_before_reading(tmp_path: Path) -> None:
    path = _write(tmp_path, "cap.json", CAPACITY)
    size = path.stat().st_size
    assert load_capacity_trace(path, max_bytes=size).sha256
    with pytest.raises(TraceError, match=rf"{size} bytes, over the {size - 1}-byte cap"):
        load_capacity_trace(path, max_bytes=size - 1)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("client_id,computation,communication\n", "the trace is empty"),
        ("id,computation,communication\n1,1,1\n", "the first line must be the header"),
        ("client_id,computation,communication\n1,1\n", "line 2: expected 3 columns"),
        ("client_id,computation,communication\n,1,1\n", "line 2: the client_id is empty"),
        ("client_id,computation,communication\n1,1,1\n1,2,2\n", "line 3: duplicate client_id '1'"),
        (
            "client_id,computation,communication\n1,nan,1\n",
            "client '1': computation must be a number, got 'nan'",
        ),
        (
            "client_id,computation,communication\n1,1,inf\n",
            "communication must be a number, got 'inf'",
        ),
        ("client_id,computation,communication\n1,1_000,1\n", "computation must be a number"),
        (
            "client_id,computation,communication\n1,0,1\n",
            "computation must be finite and > 0, got 0.0",
        ),
        ("client_id,computation,communication\n1,1,-2\n", "communication must be finite and > 0"),
        ('client_id,computation,communication\n"1,1,1\n', "not valid CSV"),
    ],
)
def test_capacity_csv_refusals(tmp_path: Path, text: str, says: str) -> None:
    path = _write(tmp_path, "cap.csv", text)
    with pytest.raises(TraceError) as err:
        load_capacity_trace(path)
    assert says in str(err.value)
    assert str(err.value).startswith(f"capacity trace {path}")


def _beh(**entry: Any) -> dict[str, Any]:
    good = {"active": [1], "inactive": [2], "finish_time": 10}
    return {"1": good, "u9": {**good, **entry}}


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({}, "the trace is empty"),
        (_beh(finish_time=0), "client 'u9': finish_time must be > 0"),
        (_beh(finish_time=-5), "finish_time must be in [0, "),
        (_beh(finish_time=10.0), "finish_time must be an integer (seconds), got 10.0"),
        (_beh(finish_time=MAX_TRACE_TIME_S + 1), "finish_time must be in [0,"),
        (_beh(active=[1, 5], inactive=[2]), "active has 2 times and inactive 1"),
        (_beh(active=[], inactive=[]), "no window (active and inactive are empty)"),
        (_beh(active=[5], inactive=[4]), "window 0 ends before it starts: active 5 > inactive 4"),
        (_beh(active=[1, 3], inactive=[4, 6]), "window 1 starts at 3, before window 0 ends at 4"),
        (_beh(active=[5, 1], inactive=[6, 2]), "must be sorted and must not overlap"),
        (_beh(active=[1], inactive=[11]), "window 0 ends at 11, after finish_time 10"),
        (_beh(active=[-1], inactive=[2]), "active[0] must be in [0,"),
        (_beh(active=[1], inactive=[2.5]), "inactive[0] must be an integer"),
        (_beh(active=[True], inactive=[2]), "active[0] must be an integer"),
        (_beh(active="1", inactive=[2]), "active must be a list of seconds"),
        (_beh(duration=-1), "duration must be in [0,"),
        (_beh(model=7), "model must be a string"),
        (_beh(extra=1), "unknown field 'extra'"),
        ({"1": {"active": [1], "inactive": [2]}}, "client '1': missing field 'finish_time'"),
    ],
)
def test_behaviour_refusals(tmp_path: Path, doc: Any, says: str) -> None:
    path = _write(tmp_path, "beh.json", doc)
    with pytest.raises(TraceError) as err:
        load_behaviour_trace(path)
    assert says in str(err.value)
    assert str(err.value).startswith(f"behaviour trace {path}")


def test_touching_windows_and_windows_ending_at_finish_time_are_taken(tmp_path: Path) -> None:
    doc = {"a": {"active": [0, 5, 10], "inactive": [5, 10, 10], "finish_time": 10}}
    trace = load_behaviour_trace(_write(tmp_path, "beh.json", doc))
    assert trace.windows(0) == [(0, 5), (5, 10), (10, 10)]
    assert all(trace.is_active(np.zeros(1, dtype=np.int64), t)[0] for t in (0, 5, 9.5, 10, 15))


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**13), 10**13)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


def _entry_like(keys: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), _json_values, max_size=6)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    doc=st.dictionaries(
        st.text(max_size=6),
        _entry_like(("computation", "communication", "active", "inactive", "finish_time")),
        max_size=4,
    )
    | _json_values,
    mangle=st.sampled_from(["", "cut", "junk"]),
)
def test_random_malformed_json_is_refused_cleanly_or_loaded_valid(
    tmp_path: Path, doc: Any, mangle: str
) -> None:
    text = json.dumps(doc)
    if mangle == "cut":
        text = text[: len(text) // 2]
    elif mangle == "junk":
        text += "\x00}"
    for loader, name in ((load_capacity_trace, "c.json"), (load_behaviour_trace, "b.json")):
        path = _write(tmp_path, name, text)
        try:
            trace = loader(path)
        except TraceError as exc:
            assert str(exc).startswith(("capacity trace ", "behaviour trace "))
            continue
        # Whatever loads is a valid trace.
        if isinstance(trace, CapacityTrace):
            assert len(trace) >= 1
            assert np.all(np.isfinite(trace.computation_ms)) and np.all(trace.computation_ms > 0)
            assert np.all(np.isfinite(trace.communication_kbps))
            assert np.all(trace.communication_kbps > 0)
        else:
            assert len(trace) >= 1 and np.all(trace.finish_time > 0)
            for k in range(len(trace)):
                w = trace.windows(k)
                assert w and all(a <= b <= trace.finish_time[k] for a, b in w)
                assert all(w[j][1] <= w[j + 1][0] for j in range(len(w) - 1))


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.lists(
        st.lists(st.text(max_size=8) | st.floats().map(repr) | st.integers().map(str), max_size=4),
        max_size=5,
    ),
    header=st.booleans(),
)
def test_random_malformed_csv_is_refused_cleanly_or_loaded_valid(
    tmp_path: Path, rows: list[list[str]], header: bool
) -> None:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    if header:
        w.writerow(["client_id", "computation", "communication"])
    w.writerows(rows)
    path = _write(tmp_path, "c.csv", buf.getvalue())
    try:
        trace = load_capacity_trace(path)
    except TraceError as exc:
        assert str(exc).startswith(f"capacity trace {path}")
        return
    assert len(trace) >= 1
    for arr in (trace.computation_ms, trace.communication_kbps):
        assert np.all(np.isfinite(arr)) and np.all(arr > 0)


# --- the population ----------------------------------------------------------------------------


def _synthetic_capacity(n: int, seed: int) -> CapacityTrace:
    rng = np.random.default_rng(seed)
    return CapacityTrace(
        "synthetic",
        "0" * 64,
        rng.lognormal(3.0, 0.5, n),
        rng.lognormal(8.0, 1.0, n),
    )


def _synthetic_behaviour(tmp_path: Path, n: int, seed: int) -> BehaviourTrace:
    rng = np.random.default_rng(seed)
    doc = {}
    for k in range(n):
        finish = int(rng.integers(3600, 7 * 86_400))
        cuts = np.sort(rng.choice(finish, size=2 * int(rng.integers(1, 4)), replace=False))
        doc[str(k)] = {
            "active": cuts[0::2].tolist(),
            "inactive": cuts[1::2].tolist(),
            "finish_time": finish,
            "duration": finish,
            "model": "synthetic",
        }
    return load_behaviour_trace(_write(tmp_path, f"beh{n}_{seed}.json", doc))


def test_without_traces_the_population_is_bit_identical_to_before() -> None:
    """A digest of profiles, availability and a draw of devices, as the population computed
    them before traces existed (computed with mobile_sim/population.py of cdf1778e). With the
    tiers of then: since 2026-12-07 the default bandwidth medians are Ookla's (EARLIER_TIERS)."""
    h = hashlib.sha256()
    fields = (
        "tier_index", "compute_sps", "down_bps", "up_bps", "latency_s", "dropout_p",
        "memory_mb", "tz_offset_h", "night_start_h", "night_hours", "home_wifi",
    )  # fmt: skip
    for seed in (0, 55):
        pop = Population.build(10**6, seed=seed, tiers=EARLIER_TIERS)
        ids = np.arange(0, 10**6, 997, dtype=np.int64)
        prof = pop.profiles(ids)
        for name in fields:
            h.update(np.ascontiguousarray(getattr(prof, name)).tobytes())
        for t in (0.0, 3600.0 * 5, 86400.0 * 3 + 1234.5):
            h.update(pop.available_mask(prof, t).tobytes())
        h.update(pop.sample_available(50, 7200.0, np.random.default_rng(1)).tobytes())
    assert h.hexdigest() == "8d83258a6df5c692f59f51ee71c4489c979ca22065ea2cae9ba3dec6bffdd0e2"


def test_capacity_trace_sets_compute_and_bandwidth_only() -> None:
    trace = _synthetic_capacity(50, seed=1)
    plain = Population.build(10_000, seed=3)
    traced = Population.build(10_000, seed=3, capacity_trace=trace, trace_compute_scale=0.5)
    ids = np.arange(10_000, dtype=np.int64)
    a, b = plain.profiles(ids), traced.profiles(ids)
    # Tier, latency, dropout, memory and the day shape stay the tier model's.
    for name in ("tier_index", "latency_s", "dropout_p", "memory_mb", "tz_offset_h",
                 "night_start_h", "night_hours", "home_wifi"):  # fmt: skip
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    # Every device's numbers are one trace entry's, converted.
    comp = 0.5 * 1000.0 / (3.0 * trace.computation_ms)
    bw = trace.communication_kbps * 1024.0
    entry = np.array([int(np.argmin(np.abs(comp - c))) for c in b.compute_sps])
    assert np.allclose(b.compute_sps, comp[entry], rtol=1e-12)
    assert np.array_equal(b.down_bps, bw[entry]) and np.array_equal(b.up_bps, bw[entry])
    # The hashed draw reaches every entry about equally often (50 entries, 200 devices each).
    counts = np.bincount(entry, minlength=50)
    assert counts.min() > 120 and counts.max() < 290
    # Availability without a behaviour trace is unchanged.
    assert np.array_equal(plain.available_mask(a, 7200.0), traced.available_mask(b, 7200.0))


def test_trace_entries_are_deterministic_in_seed_and_id(tmp_path: Path) -> None:
    cap = _synthetic_capacity(1000, seed=2)
    beh = _synthetic_behaviour(tmp_path, 200, seed=2)
    ids = np.array([0, 5, 999_999, 123_456, 5], dtype=np.int64)

    def look(seed: int) -> tuple[np.ndarray, np.ndarray]:
        pop = Population.build(10**6, seed=seed, capacity_trace=cap, behaviour_trace=beh)
        prof = pop.profiles(ids)
        masks = np.stack([pop.available_mask(prof, t) for t in np.arange(0, 7 * 86_400, 3600.0)])
        return prof.compute_sps, masks

    c1, m1 = look(7)
    c2, m2 = look(7)
    assert np.array_equal(c1, c2) and np.array_equal(m1, m2)
    assert c1[1] == c1[4]  # the same device, twice in one batch
    c3, _ = look(8)
    assert not np.array_equal(c1, c3)  # another seed draws other entries
    # One device alone gets what it got in the batch.
    pop = Population.build(10**6, seed=7, capacity_trace=cap, behaviour_trace=beh)
    assert pop.profile(123_456).compute_sps == c1[3]


def test_behaviour_trace_gives_the_availability(tmp_path: Path) -> None:
    doc = {"only": {"active": [600, 4000], "inactive": [1200, 4100], "finish_time": 5000}}
    beh = load_behaviour_trace(_write(tmp_path, "one.json", doc))
    pop = Population.build(1000, seed=4, behaviour_trace=beh)
    ids = np.arange(1000, dtype=np.int64)
    for t in (0.0, 599.0, 600.0, 900.0, 1200.0, 1201.0, 4050.0, 5600.0, 9100.0, 9101.0):
        want = _hand_active([(600, 1200), (4000, 4100)], 5000, t)
        assert pop.is_available(ids, t).tolist() == [want] * 1000, t
    rng = np.random.default_rng(0)
    assert pop.sample_available(10, 300.0, rng).size == 0  # nobody is in a window
    assert pop.sample_available(10, 700.0, rng).size == 10


def test_trace_config_refusals() -> None:
    cap = _synthetic_capacity(3, seed=0)
    with pytest.raises(PopulationError, match="trace_compute_scale .* needs capacity_trace"):
        PopulationConfig(10, trace_compute_scale=2.0)
    for bad in (0.0, -1.0, math.inf, math.nan, 1e7):
        with pytest.raises(PopulationError, match="trace_compute_scale must be in"):
            PopulationConfig(10, capacity_trace=cap, trace_compute_scale=bad)
    with pytest.raises(PopulationError, match="trace_compute_scale must be a number"):
        PopulationConfig(10, capacity_trace=cap, trace_compute_scale="2")  # type: ignore[arg-type]
    with pytest.raises(PopulationError, match="capacity_trace must be a CapacityTrace"):
        PopulationConfig(10, capacity_trace={"1": {}})  # type: ignore[arg-type]
    beh = BehaviourTrace(
        "x", "0" * 64, np.array([10]), np.array([0, 1]), np.array([0]), np.array([1]), np.array([2])
    )
    with pytest.raises(PopulationError, match="needs availability='diurnal'"):
        PopulationConfig(10, availability="always", behaviour_trace=beh)


def test_a_million_devices_on_a_100k_entry_trace_stay_small(tmp_path: Path) -> None:
    """Nothing is held per device: the memory is the traces' arrays (a few MB for 100k
    entries), and looking at devices costs memory in proportion to the batch only."""
    n_entries = 100_000
    cap = _synthetic_capacity(n_entries, seed=5)
    rng = np.random.default_rng(5)
    finish = rng.integers(3600, 86_400, n_entries)
    active = (finish // 4).tolist()
    inactive = (finish // 2).tolist()
    doc = {
        str(k): {"active": [active[k]], "inactive": [inactive[k]], "finish_time": int(finish[k])}
        for k in range(n_entries)
    }
    beh = load_behaviour_trace(_write(tmp_path, "big.json", doc))
    assert cap.nbytes == 16 * n_entries  # two float64 per entry
    assert beh.nbytes == 8 * (5 * n_entries + 1)  # finish, base, offsets, lo, hi (1 window each)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        pop = Population.build(10**6, seed=9, capacity_trace=cap, behaviour_trace=beh)
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.reset_peak()
        picked = pop.sample_available(1000, 20_000.0, np.random.default_rng(3))
        prof = pop.profiles(np.arange(0, 10**6, 100, dtype=np.int64))
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert held < 64 * 1024  # the population itself: no per-device state
    assert peak < 48 * 2**20  # batches of at most a few hundred thousand devices
    assert picked.size == 1000 and len(prof) == 10_000
    assert pop.is_available(picked, 20_000.0).all()
