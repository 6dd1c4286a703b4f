"""`plume sim --capacity-trace FILE --behaviour-trace FILE [--trace-compute-scale F]` and
SimConfig's trace fields (stop 55, task T): the traces reach the simulated clock and the
availability, rounds.json records each path with its file's SHA-256, and wrong uses are one
line naming the flag. The traces are generated here, small and seeded."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from coordinator.cli import main as plume
from mobile_sim.runner import SimConfig, run_simulation

BASE = SimConfig(
    dataset="digits",
    clients=40,
    per_round=4,
    rounds=1,
    local_epochs=1,
    lr=0.2,
    seed=3,
)
ARGV = ["sim", "--dataset", "digits", "--clients", "40", "--per-round", "4", "--rounds", "1"]
ARGV += ["--local-epochs", "1", "--no-progress"]


def _capacity(path: Path, communication: float = 1.0) -> Path:
    rng = np.random.default_rng(0)
    doc = {
        str(k): {"computation": float(rng.uniform(5, 50)), "communication": communication}
        for k in range(25)
    }
    path.write_text(json.dumps(doc))
    return path


def _behaviour(path: Path) -> Path:
    # Every entry is off for the first hour of each day, then on until hour 20.
    doc = {
        f"u{k}": {"active": [3600], "inactive": [72_000], "finish_time": 86_400, "model": "x"}
        for k in range(10)
    }
    path.write_text(json.dumps(doc))
    return path


def test_a_capacity_trace_reaches_the_clock(tmp_path: Path) -> None:
    # 1 kbit/s (FedScale's, 1024 bit/s) for everyone: the digits model's fp32 download alone
    # (67.5 KB) takes some 540 simulated s; the tier model's bandwidths take well under 1 s.
    cap = _capacity(tmp_path / "cap.json", communication=1.0)
    plain = run_simulation(BASE, progress=False)
    traced = run_simulation(replace(BASE, capacity_trace=str(cap)), progress=False)
    down_bytes = traced.records[0].bytes_down / BASE.per_round
    assert plain.records[0].sim_s is not None and plain.records[0].sim_s < 60
    assert traced.records[0].sim_s is not None
    assert traced.records[0].sim_s >= down_bytes * 8 / 1024.0


def test_a_behaviour_trace_gives_the_availability(tmp_path: Path) -> None:
    beh = _behaviour(tmp_path / "beh.json")
    cfg = replace(BASE, fleet="realistic", behaviour_trace=str(beh), deadline_s=600.0)
    res = run_simulation(cfg, progress=False)
    # Nobody is available before simulated second 3600: round 1 waits for it (and opens
    # within one 15-minute availability step after it).
    wait = res.records[0].wait_s
    assert wait is not None and 3600.0 <= wait <= 3600.0 + 900.0


def test_as_dict_records_paths_and_sha256_and_from_dict_checks_them(tmp_path: Path) -> None:
    cap = _capacity(tmp_path / "cap.json")
    beh = _behaviour(tmp_path / "beh.json")
    cfg = replace(BASE, fleet="realistic", capacity_trace=str(cap), behaviour_trace=str(beh))
    doc = cfg.as_dict()
    assert doc["capacity_trace"] == str(cap) and doc["behaviour_trace"] == str(beh)
    assert doc["capacity_trace_sha256"] == hashlib.sha256(cap.read_bytes()).hexdigest()
    assert doc["behaviour_trace_sha256"] == hashlib.sha256(beh.read_bytes()).hexdigest()
    assert doc["trace_compute_scale"] == 1.0
    assert SimConfig.from_dict(doc) == cfg
    # Without traces the record is as before: no trace key at all.
    assert not [k for k in BASE.as_dict() if "trace" in k]
    # A rerun from the record on another file is refused, naming both digests.
    _capacity(cap, communication=2.0)
    with pytest.raises(ValueError, match="capacity_trace .* is not the file the recorded run"):
        SimConfig.from_dict(doc)


def test_a_trace_file_changed_after_the_config_is_refused_at_the_run(tmp_path: Path) -> None:
    cap = _capacity(tmp_path / "cap.json")
    cfg = replace(BASE, capacity_trace=str(cap))
    _capacity(cap, communication=3.0)
    import os

    os.utime(cap, ns=(1, 1))  # a new mtime, as any edit gives
    with pytest.raises(ValueError, match="changed since the run was configured"):
        run_simulation(cfg, progress=False)


def test_plume_sim_with_both_traces_end_to_end(tmp_path: Path) -> None:
    cap = _capacity(tmp_path / "cap.csv.json")
    beh = _behaviour(tmp_path / "beh.json")
    csv_cap = tmp_path / "cap.csv"
    rows = json.loads(cap.read_text())
    csv_cap.write_text(
        "client_id,computation,communication\n"
        + "".join(f"{k},{v['computation']!r},{v['communication']!r}\n" for k, v in rows.items())
    )
    out = tmp_path / "run"
    argv = [*ARGV, "--fleet", "realistic", "--capacity-trace", str(csv_cap)]
    argv += ["--behaviour-trace", str(beh), "--trace-compute-scale", "2", "--out", str(out)]
    assert plume(argv) == 0
    doc = json.loads((out / "rounds.json").read_text())
    config = doc["config"]
    assert config["capacity_trace"] == str(csv_cap)
    assert config["capacity_trace_sha256"] == hashlib.sha256(csv_cap.read_bytes()).hexdigest()
    assert config["behaviour_trace"] == str(beh)
    assert config["behaviour_trace_sha256"] == hashlib.sha256(beh.read_bytes()).hexdigest()
    assert config["trace_compute_scale"] == 2.0
    for flag in (f"--capacity-trace {csv_cap}", f"--behaviour-trace {beh}"):
        assert flag in doc["command"]
    assert "--trace-compute-scale 2" in doc["command"]
    assert doc["rounds"][0]["wait_s"] >= 3600.0  # the behaviour trace's first hour off


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--behaviour-trace", "{beh}"], "--behaviour-trace only applies with --fleet realistic"),
        (
            ["--fleet", "off", "--capacity-trace", "{cap}"],
            "--capacity-trace needs the simulated clock: --fleet timing or realistic",
        ),
        (
            ["--transport", "http", "--capacity-trace", "{cap}"],
            "--capacity-trace sets the simulated devices' compute and bandwidth, which "
            "--transport http runs do not simulate (they run in wall time)",
        ),
        (
            ["--trace-compute-scale", "2"],
            "--trace-compute-scale scales --capacity-trace's compute speed: add --capacity-trace",
        ),
        (
            ["--capacity-trace", "{cap}", "--trace-compute-scale", "0"],
            "--trace-compute-scale must be in [1e-06, 1e+06], got 0.0",
        ),
        (
            ["--capacity-trace", "{bad}"],
            "--capacity-trace {bad}: client 'x': communication must be finite and > 0, got -1",
        ),
        (
            ["--capacity-trace", "{dir}/missing.json"],
            "--capacity-trace {dir}/missing.json: cannot read it (No such file or directory)",
        ),
        (
            ["--capacity-trace", "{dir}/client_device_capacity"],
            "--capacity-trace {dir}/client_device_capacity: give a .json or .csv file "
            "(FedScale's pickles must be converted first: see docs/traces.md)",
        ),
        (
            ["--fleet", "realistic", "--behaviour-trace", "{cap}"],
            "--behaviour-trace {cap}: client '0': missing field 'active'",
        ),
    ],
)
def test_wrong_uses_are_one_line_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    names = {
        "cap": str(_capacity(tmp_path / "cap.json")),
        "beh": str(_behaviour(tmp_path / "beh.json")),
        "bad": str(tmp_path / "bad.json"),
        "dir": str(tmp_path),
    }
    Path(names["bad"]).write_text('{"x": {"computation": 1, "communication": -1}}')
    out = tmp_path / "run"
    code = plume([*ARGV, *[e.format(**names) for e in extra], "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"plume sim: error: {message.format(**names)}\n"
    assert not out.exists()  # refused before anything was made
