"""bench/*.py --quick and the files it writes (helper-195's audit, helper-199's fix).

`make bench-quick` ran each benchmark with --quick and several of them wrote the canonical
bench/results/<name>.json, so the next `python bench/summarize.py` published smoke numbers.
Now a --quick run without --out writes <name>_quick.json beside it (bench/_common.py), and
summarize.py refuses a file marked quick. These tests check each script's path-choosing
function on the options its own parser produces; nothing is benchmarked.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"

# script -> the canonical file a full run writes (and summarize.py or the docs read).
CANONICAL = {
    "codec": "codec.json",
    "bandwidth_accuracy": "bandwidth_accuracy.json",
    "coordinator_ingest": "coordinator_ingest.json",
    "secagg": "secagg.json",
    "robustness": "robustness.json",
    "privacy": "privacy.json",
    "onnx_train": "onnx_train.json",
    "sim_throughput": "sim_throughput.json",
    "server_opt": "server_opt.json",
    "explore_cnn_speed": "cnn_speed_explore.json",
}
FILE_OUT = ("coordinator_ingest", "secagg", "onnx_train", "sim_throughput", "server_opt")


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"h199_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Parsed(Exception):
    pass


def _parsed(module: ModuleType, argv: list[str]) -> argparse.Namespace:
    """The options the script's own parser gives for `argv` (main stops right after parsing)."""
    original = argparse.ArgumentParser.parse_args

    def capture(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
        raise _Parsed(original(self, args, namespace))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
        with pytest.raises(_Parsed) as caught:
            module.main(argv)
    return caught.value.args[0]


@pytest.mark.parametrize("name", sorted(CANONICAL))
def test_quick_without_out_does_not_choose_the_canonical_file(name: str) -> None:
    # Before: coordinator_ingest, secagg, onnx_train, server_opt, sim_throughput and
    # explore_cnn_speed wrote the canonical file under --quick (and had no results_path).
    module = _script(name)

    quick = module.results_path(_parsed(module, ["--quick"]))
    full = module.results_path(_parsed(module, []))

    assert full == RESULTS / CANONICAL[name]
    assert quick != full
    assert quick == RESULTS / CANONICAL[name].replace(".json", "_quick.json")


@pytest.mark.parametrize("name", FILE_OUT)
def test_quick_with_an_explicit_out_writes_there(name: str, tmp_path: Path) -> None:
    module = _script(name)
    out = tmp_path / "mine.json"

    assert module.results_path(_parsed(module, ["--quick", "--out", str(out)])) == out


def test_folder_scripts_keep_the_quick_suffix_in_a_given_folder(tmp_path: Path) -> None:
    robustness = _script("robustness")
    args = _parsed(robustness, ["--quick", "--name", "robustness_cnn_v3", "--out", str(tmp_path)])
    assert robustness.results_path(args) == tmp_path / "robustness_cnn_v3_quick.json"
    codec = _script("codec")
    args = _parsed(codec, ["--quick", "--out", str(tmp_path)])
    assert codec.results_path(args, "codec_knobs") == tmp_path / "codec_knobs_quick.json"
    bandwidth = _script("bandwidth_accuracy")
    args = _parsed(bandwidth, ["--quick", "--explore"])
    assert bandwidth.results_path(args) == RESULTS / "bandwidth_accuracy_explore_quick.json"


def test_sim_throughput_quick_sections_get_their_own_keys() -> None:
    # Before: only mnist got `_quick`; million and digits overwrote the measured sections.
    module = _script("sim_throughput")
    assert [module.section_key(s, True) for s in module.SECTIONS] == [
        "million_quick",
        "digits_quick",
        "mnist_quick",
    ]
    assert [module.section_key(s, False) for s in module.SECTIONS] == list(module.SECTIONS)


def test_the_recorded_command_is_runnable_from_the_root() -> None:
    # Before: server_opt.py and sim_throughput.py recorded argv[0]'s name ("server_opt.py").
    common = _script("_common")
    line = common.command_line(ROOT / "bench" / "server_opt.py", ["--seed", "1", "--quick"])
    assert line == "python bench/server_opt.py --seed 1 --quick"
    spec = "collusion:tau=0.3+dp:clip=1,quantile=0.9,z=0.01,seed=0+fedavg"
    line = common.command_line(ROOT / "bench" / "robustness.py", ["--name", "a b", spec])
    assert line == f"python bench/robustness.py --name 'a b' {spec}"


def _machine(cpu: str) -> dict[str, Any]:
    return {"cpu": cpu, "cores": 2, "memory_gib": 8.0}


def test_merge_keeps_an_older_sections_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: _merge overwrote the top-level machine and the new section recorded none, so a
    # section measured on an earlier machine was shown with the later one.
    module = _script("sim_throughput")
    path = tmp_path / "sim.json"
    old = {"peak_rss_gb": 0.5, "wall_s_per_round_median": 1.0, "measured_at": "then"}
    old |= {"machine": _machine("Old CPU"), "date": "2026-01-01"}
    path.write_text(
        json.dumps(
            {"machine": _machine("Old CPU"), "date": "2026-01-01", "sections": {"million": old}}
        )
    )
    import mobile_sim.report

    monkeypatch.setattr(mobile_sim.report, "machine_info", lambda: _machine("New CPU"))
    monkeypatch.setattr(sys, "argv", ["bench/sim_throughput.py", "--sections", "million"])
    args = argparse.Namespace(argv=["--sections", "million", "--million-rounds", "2"])
    value = {"peak_rss_gb": 0.6, "wall_s_per_round_median": 2.0}

    module._merge(path, "million_under_heavy_load", value, args)
    doc = json.loads(path.read_text())

    assert doc["sections"]["million"]["machine"]["cpu"] == "Old CPU"
    assert doc["sections"]["million"]["date"] == "2026-01-01"
    new = doc["sections"]["million_under_heavy_load"]
    assert new["machine"]["cpu"] == "New CPU"
    assert new["date"] == doc["date"]
    assert new["command"] == "python bench/sim_throughput.py --sections million --million-rounds 2"
    assert doc["machine"]["cpu"] == "New CPU"  # the last run's, kept for compatibility
    assert doc["million_devices_rss_gb"] == 0.5  # the headline still comes from `million`

    # A --quick section written into the same file (--out named it) leaves the top-level
    # machine and date alone: the published page names them (helper-352).
    monkeypatch.setattr(mobile_sim.report, "machine_info", lambda: _machine("Quick CPU"))
    module._merge(path, "million_quick", {"peak_rss_gb": 0.1, "wall_s_per_round_median": 0.1}, args)
    doc = json.loads(path.read_text())
    assert doc["machine"]["cpu"] == "New CPU"
    assert doc["sections"]["million_quick"]["machine"]["cpu"] == "Quick CPU"


def test_backdoor_seeds_take_ranges() -> None:
    module = _script("robustness")
    assert _parsed(module, ["--backdoor-seeds", "0-19"]).backdoor_seeds == ["0-19"]
    assert module._seeds(["0-19"]) == list(range(20))
    assert module._seeds(["0", "1", "10-12", "1"]) == [0, 1, 10, 11, 12]
    assert module._seeds([str(s) for s in module.BACKDOOR_SEEDS]) == list(range(10))
    for bad in ("x", "5-3", "1-"):
        with pytest.raises(SystemExit, match="not a seed or a range"):
            module._seeds([bad])


def test_privacy_states_the_digits_training_set_size() -> None:
    # Before: "1,437 training images"; load_digits_data() gives 1,438 (359 test).
    from mobile_sim.data import load_digits_data

    n = len(load_digits_data().x_train)
    module = _script("privacy")
    assert f"({n:,} training images)" in str(module.__doc__)
    assert "1,437" not in str(module.__doc__)
