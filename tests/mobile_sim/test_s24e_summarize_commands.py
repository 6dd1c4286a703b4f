"""docs/benchmarks.md names a runnable command for every section (s24/r2 review, F1 and F11).

Before, four sections said "Command: not recorded" or gave a command that wrote outside the
repository: secagg.json and onnx_train.json record no command, sim_throughput.json records one
per section (summarize.py read only the top-level field), and privacy.json records
`--out /work/notes/privacy_rerun.json`. bench/summarize.py now shows the docs' command for a
file that records none (DOC_COMMANDS, marked as such), each section's own command, and for a
copied file the same run with the default --out. These tests check each docs' command against
what the file records, with the script's own parser (main stops right after parsing; nothing is
benchmarked).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from bench import summarize  # noqa: E402


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"s24e_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Parsed(Exception):
    pass


def _parsed(command: str) -> argparse.Namespace:
    """The options `python bench/<script>.py ...` parses to, by the script's own parser."""
    words = shlex.split(command)
    assert words[:1] == ["python"] and words[1].startswith("bench/"), command
    module = _script(Path(words[1]).stem)
    original = argparse.ArgumentParser.parse_args

    def capture(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
        raise _Parsed(original(self, args, namespace))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
        with pytest.raises(_Parsed) as caught:
            module.main(words[2:])
    return caught.value.args[0]


def _load(stem: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((RESULTS / f"{stem}.json").read_text())
    return doc


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


SECAGG = [s for s, (c, _) in summarize.DOC_COMMANDS.items() if "bench/secagg.py" in c]


@pytest.mark.parametrize("stem", SECAGG)
def test_secagg_docs_command_parses_to_the_files_settings(stem: str) -> None:
    # bench/secagg.py records every option it parsed in `settings`: the docs' command must give
    # the same options (the output path aside: summarize.py says where the run wrote).
    command, source = summarize.DOC_COMMANDS[stem]
    doc_text = " ".join((ROOT / source.split(",")[0]).read_text().split())
    if stem == "secagg_seed2_budget":
        # The doc gives seed 1's command and "the same with 2 for seed 2".
        assert "and the same with 2 for seed 2" in doc_text
        command_in_doc = summarize.DOC_COMMANDS["secagg_seed1_budget"][0]
        assert command_in_doc.replace("seed1", "seed2").replace("--seed 1", "--seed 2") == command
    else:
        command_in_doc = command
    assert command_in_doc in doc_text or f"`{command_in_doc}`" in doc_text, (stem, source)
    settings = _load(stem)["settings"]
    parsed = {k: _plain(v) for k, v in vars(_parsed(command)).items()}
    assert set(parsed) == set(settings)
    differ = {
        k: (parsed[k], settings[k]) for k in settings if k != "out" and parsed[k] != settings[k]
    }
    assert differ == {}


def test_onnx_train_docs_command_is_the_files_run() -> None:
    command, source = summarize.DOC_COMMANDS["onnx_train"]
    assert f"`{command.removeprefix('python ')}`" in (ROOT / source).read_text()
    doc = _load("onnx_train")
    args = _parsed(command)
    assert args.models.split(",") == list(doc["models"])
    assert [f"B={b}" for b in args.batch_sizes.split(",")] == list(
        doc["models"]["mnist_cnn"]["step_time"]
    )
    assert args.steps == doc["steps_timed"]
    assert not args.quick and not args.no_mixed and doc.get("mixed_run")


def test_privacy_in_repo_command_differs_from_the_recorded_one_in_out_only() -> None:
    doc = _load("privacy")
    same, source = summarize.COPIED["privacy"]
    recorded = vars(_parsed(doc["command"]))
    in_repo = vars(_parsed(same))
    assert recorded.pop("out") == "/work/notes/privacy_rerun.json"
    assert Path(in_repo.pop("out")) == RESULTS
    assert recorded == in_repo
    assert (in_repo["clients"], in_repo["per_round"], in_repo["rounds"]) == (
        doc["simulated_devices"],
        doc["devices_per_round"],
        doc["rounds"],
    )
    assert in_repo["seeds"] == doc["seeds"] and in_repo["clips"] == doc["clip_norms_swept"]
    assert "/work/notes/privacy_rerun.json" in " ".join((ROOT / source).read_text().split())


def test_every_section_names_a_command() -> None:
    text = summarize.render()
    assert "not recorded" not in text
    sim = _load("sim_throughput")
    for name, sec in sim["sections"].items():
        if name.endswith("_quick"):
            assert f"| `{name}` |" not in text
            continue
        # Older sections recorded argv[0]'s name, newer ones `python bench/...` (command_line)
        run = sec["command"].partition(" (")[0].removeprefix("python bench/")
        # (a section run on another machine than the file's names it after its time)
        (row,) = [line for line in text.splitlines() if line.startswith(f"| `{name}` | ")]
        assert row.startswith(f"| `{name}` | {sec['measured_at']}"), row
        assert f" | `python bench/{run}`" in row, row
    for stem, _title, _keys in summarize.OTHER_FILES:
        assert f"`bench/results/{stem}.json`. Command: `" in text, stem


def test_a_file_with_no_command_and_no_docs_command_stays_not_recorded() -> None:
    assert summarize._command({"date": "x"}, "unknown_bench") == "not recorded"
    assert summarize._command({"command": "server_opt.py --seed 1"}) == (
        "`python bench/server_opt.py --seed 1`"
    )


def test_the_page_does_not_depend_on_where_the_checkout_lives() -> None:
    # secagg.json's settings record --out as an absolute path into the checkout the run used
    # (/work/main/...). In a clone elsewhere (CI) the page said "a copy of that output", so
    # `summarize.py --check` passed in one directory and failed in another.
    doc = {"settings": {"out": "/work/main/bench/results/secagg.json"}}
    for out in (
        "/work/main/bench/results/secagg.json",
        "/tmp/tmp.x/bench/results/secagg.json",
        "bench/results/secagg.json",
    ):
        doc["settings"]["out"] = out
        assert "copy" not in summarize._command(doc, "secagg"), out
    doc["settings"]["out"] = "/tmp/secagg_seed0.json"
    assert "a copy of that output" in summarize._command(doc, "secagg")
