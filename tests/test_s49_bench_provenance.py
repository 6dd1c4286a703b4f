"""What bench results files record, and what `make bench` reruns (s49 review, items 2-5, 7, 8, 10).

- Every results file a bench script writes records the commit and dirty flag of the code that
  wrote it (bench/_common.write_results; mobile_sim.report.git_info).
- sim_throughput.json: a new section records its machine and code, and an older section is
  never given the file's current machine (sections measured 2026-11-28 came to name a kernel
  first recorded 2026-11-29); the committed file's sections each say what machine they ran on,
  or that it was not recorded. The script's defaults are the published sections' commands, and
  the pool's start() is timed on its own.
- `make bench` runs every script whose results the docs publish, each with --quick in
  `make bench-quick`.
- RSS fields from VmHWM (KiB / 1024) are MiB and say so.
Nothing here is benchmarked: scripts are loaded and their parsers and helpers called.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"s49p_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _benches() -> list[str]:
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.startswith("BENCHES :="))
    return line.split(":=", 1)[1].split()


def test_write_results_records_the_code(tmp_path: Path) -> None:
    # Prepare
    common = _script("_common")
    from mobile_sim.report import git_info

    # Execute
    path = common.write_results(tmp_path / "sub" / "r.json", {"x": 1})

    # Assert
    doc = json.loads(path.read_text())
    assert path.read_text().endswith("}\n")
    assert {k: doc[k] for k in ("git_commit", "git_dirty")} == git_info(ROOT)
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    if head.returncode == 0:
        assert doc["git_commit"] == head.stdout.strip()
        assert isinstance(doc["git_dirty"], bool)
    unstamped = common.write_results(tmp_path / "u.json", {"x": 1}, stamp=False)
    assert "git_commit" not in json.loads(unstamped.read_text())


def test_every_bench_script_writes_through_the_shared_writer() -> None:
    # A results file written with a bare json.dumps records no commit.
    for path in sorted((ROOT / "bench").glob("*.py")):
        if path.name in ("_common.py", "summarize.py"):
            continue
        text = path.read_text()
        assert not re.search(r"\.write_text\(\s*json\.dumps", text), path.name
        if "json.dumps(" in text and "write_text" in text:
            assert "write_results(" in text, path.name


def _machine(cpu: str) -> dict[str, Any]:
    return {"cpu": cpu, "cores": 2, "memory_gib": 8.0}


def test_merge_leaves_an_older_sections_machine_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: _merge copied the file's top-level machine into every section without one, at
    # every write, so a section got whatever machine wrote the file last.
    module = _script("sim_throughput")
    path = tmp_path / "sim.json"
    digits = {"measured_at": "2026-01-01T10:00:00Z", "results": {}}
    path.write_text(
        json.dumps(
            {"machine": _machine("Later CPU"), "date": "2026-01-02", "sections": {"d": digits}}
        )
    )
    import mobile_sim.report

    monkeypatch.setattr(mobile_sim.report, "machine_info", lambda: _machine("New CPU"))
    args = argparse.Namespace(argv=["--sections", "million"])

    module._merge(path, "million", {"peak_rss_gb": 0.6, "wall_s_per_round_median": 2.0}, args)

    doc = json.loads(path.read_text())
    assert doc["sections"]["d"] == digits  # untouched: no machine, no date filled in
    new = doc["sections"]["million"]
    assert new["machine"]["cpu"] == "New CPU"
    from mobile_sim.report import git_info

    code = git_info(ROOT)
    assert {k: new[k] for k in code} == code
    assert {k: doc[k] for k in code} == code


def test_the_committed_sections_say_what_machine_they_ran_on() -> None:
    doc = json.loads((RESULTS / "sim_throughput.json").read_text())
    for name, sec in doc["sections"].items():
        assert "machine" in sec, name
        if sec["machine"] is None:
            assert "not recorded" in sec["machine_note"], name
            continue
        assert sec["date"] == sec["measured_at"][:10], name
    # Measured 2026-11-28, when the file recorded kernel fc-v669; fc-v657 came 2026-11-29.
    for name in ("digits", "mnist_5_rounds_low_load", "million_under_heavy_load"):
        assert "fc-v669" in doc["sections"][name]["machine"]["platform"], name
    assert "fc-v657" in doc["sections"]["mnist"]["machine"]["platform"]
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert "machine not recorded" not in page  # every section of the file has one


def _section_options(module: ModuleType, command: str) -> argparse.Namespace:
    """The options the script's own parser gives a recorded command (main stops right after
    parsing); a section's comment, " (section copied ...)", is not part of it."""
    words = shlex.split(command.partition(" (")[0])
    assert words[0] in ("python", "sim_throughput.py")
    words = words[2:] if words[0] == "python" else words[1:]
    captured: dict[str, argparse.Namespace] = {}
    original = argparse.ArgumentParser.parse_args

    class _Stop(Exception):
        pass

    def capture(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
        captured["ns"] = original(self, args, namespace)
        raise _Stop

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_args", capture)
        with pytest.raises(_Stop):
            module.main(words)
    return captured["ns"]


def test_the_defaults_are_the_published_sections_settings() -> None:
    # Before: --million-rounds 5 (published: 100), --repeat 1 (digits published: 3), and the
    # mnist section ran four backends (published: pool and sequential).
    module = _script("sim_throughput")
    doc = json.loads((RESULTS / "sim_throughput.json").read_text())
    defaults = _section_options(module, "python bench/sim_throughput.py")
    assert defaults.million_rounds == 100 and defaults.repeat == 3
    for section in ("million", "digits", "mnist"):
        recorded = _section_options(module, doc["sections"][section]["command"])
        for option in ("million_rounds", "repeat", "million_residual_mb", "digits_rounds",
                       "digits_clients", "mnist_rounds", "workers", "threads"):  # fmt: skip
            assert getattr(recorded, option) == getattr(defaults, option), (section, option)
    digits = doc["sections"]["digits"]["results"]
    assert set(module.DIGITS_BACKENDS) == set(digits) - {
        "plain_torch_loop",
        "vectorized_per_update_codec",
    }
    mnist = _section_options(module, doc["sections"]["mnist"]["command"])
    assert list(module.MNIST_BACKENDS) == mnist.backends
    assert defaults.backends is None  # each section's own default
    assert doc["sections"]["million"]["rounds"] == defaults.million_rounds


def test_the_pool_start_is_timed_alone() -> None:
    module = _script("sim_throughput")

    class Slow:
        name = "slow"

        def start(self, ctx: Any) -> None:
            time.sleep(0.05)

    rec = module._Recording(Slow())
    assert rec.start_s is None
    rec.start(None)
    assert rec.start_s is not None and 0.04 < rec.start_s < 5


def test_make_bench_runs_every_published_script_with_quick() -> None:
    benches = _benches()
    for name in ("cli_startup", "device_round_rss", "device_footprint", "secagg_unmask"):
        assert name in benches, name
    for name in benches:
        text = (ROOT / "bench" / f"{name}.py").read_text()
        assert '"--quick"' in text, name


def test_device_footprint_quick_keeps_off_the_published_file(tmp_path: Path) -> None:
    module = _script("device_footprint")
    out = tmp_path / "f.json"
    assert module.main(["--quick", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["quick"] is True and "git_commit" in doc
    assert module.out_file(None, RESULTS / "device_footprint.json", True) == (
        RESULTS / "device_footprint_quick.json"
    )


def test_rss_fields_are_mib() -> None:
    # VmHWM is in KiB; the scripts divide by 1024, so the figures are MiB.
    for name in ("device_round_rss.json", "onnx_train.json"):
        text = (RESULTS / name).read_text()
        assert not re.search(r'"[a-z_]*(peak_rss|after_imports|numpy_only)_mb"', text), name
        assert '"peak_rss_mib"' in text
    for name in ("device_round_rss", "onnx_train"):
        source = (ROOT / "bench" / f"{name}.py").read_text()
        assert '_mb"' not in source.replace("residual_memory_mb", ""), name
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert "`first_round_peak_rss_mib` 193.2 MiB" in page


def test_cli_startup_times_every_subcommand() -> None:
    module = _script("cli_startup")
    doc = json.loads((RESULTS / "cli_startup.json").read_text())
    assert list(doc["per_command"]) == list(module._commands())
    assert "plume sim report --help" in doc["per_command"]
    assert "git_commit" in doc


def test_server_opt_does_not_promise_the_same_results_on_another_backend() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "server_opt.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    text = " ".join(out.split())
    assert "not bit-identical" in text
    assert "(same results)" not in text
