"""bench/secagg.py --plain-from against the committed results files (s49 review, items 1 and 9).

The documented 3-seed commands (`python bench/secagg.py --skip-timing --seed 1 --plain-from
bench/results/secagg_seed1_pool1.json ...`) failed with "was run with other settings": the check
compared the stored config with today's exactly, and SimConfig has since gained
selection_timeout_s, checkin_period_s and residual_memory_mb. A field the stored config lacks now
counts at today's default (bench/_common.config_matches, shared with bench/robustness.py). These
tests run that comparison on the committed files, parsing each documented command with the
script's own parser; nothing is trained. They also check the provenance a --plain-from run
writes: the plain arm was run elsewhere, possibly several files back.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"s49_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _documented(stem: str) -> list[str]:
    """The options of the command bench/summarize.py (and docs/secure-aggregation.md) give for
    `bench/results/<stem>.json`."""
    command = _script("summarize").DOC_COMMANDS[stem][0]
    words = shlex.split(command)
    assert words[:2] == ["python", "bench/secagg.py"]
    return words[2:]


@pytest.mark.parametrize("stem", ["secagg_seed1_budget", "secagg_seed2_budget"])
def test_the_documented_three_seed_commands_accept_their_plain_from_file(stem: str) -> None:
    # Prepare: the documented command, parsed as the script parses it
    secagg = _script("secagg")
    args = secagg.parse_args(_documented(stem))
    config = secagg.recorded_config(secagg.accuracy_config(args))
    source = json.loads(args.plain_from.read_text())
    # The committed file predates fields SimConfig has now: the exact comparison failed.
    assert source["config"] != config

    # Execute
    old = secagg.plain_source(args.plain_from, config)

    # Assert: accepted, and it is the file the committed result reused
    assert (
        old["accuracy_plain"]
        == json.loads((RESULTS / f"{stem}.json").read_text())["accuracy_plain"]
    )


def test_another_setting_is_still_refused() -> None:
    secagg = _script("secagg")
    argv = _documented("secagg_seed1_budget")
    for changed in (["--rounds", "5"], ["--seed", "2"], ["--local-epochs", "1"]):
        args = secagg.parse_args([*argv, *changed])
        config = secagg.recorded_config(secagg.accuracy_config(args))
        with pytest.raises(SystemExit, match="was run with other settings"):
            secagg.plain_source(args.plain_from, config)


def test_a_missing_field_counts_at_its_default_only() -> None:
    common = _script("_common")
    defaults = {"a": 1, "b": 2.0}
    assert common.config_matches({"a": 1}, {"a": 1, "b": 2.0}, defaults)
    # A field the old run lacks but this run sets away from its default is another setting.
    assert not common.config_matches({"a": 1}, {"a": 1, "b": 3.0}, defaults)
    # A field the old run recorded that this config no longer has is another setting too.
    assert not common.config_matches({"a": 1, "gone": 0}, {"a": 1, "b": 2.0}, defaults)
    assert not common.config_matches({"a": 2}, {"a": 1, "b": 2.0}, defaults)


def test_robustness_compares_settings_with_the_same_rule() -> None:
    robustness = _script("robustness")
    from mobile_sim.runner import SimConfig

    setting = robustness._setting(SimConfig())
    older = {
        k: v
        for k, v in setting.items()
        if k not in ("selection_timeout_s", "checkin_period_s", "residual_memory_mb")
    }
    assert robustness._same_setting({"config": older}, setting)
    assert not robustness._same_setting({"config": {**older, "rounds": 3}}, setting)


def test_the_plain_arm_of_a_chained_file_names_every_file_back_to_its_run() -> None:
    # secagg_seed1_budget.json reused secagg_seed1_pool1.json's plain arm, which had reused
    # secagg_seed1.json's: its note said the plain arm was "that file's" only.
    secagg = _script("secagg")
    chain = secagg.plain_chain(RESULTS / "secagg_seed1_budget.json")
    assert chain[1:] == ["bench/results/secagg_seed1_pool1.json", "bench/results/secagg_seed1.json"]
    note = secagg.plain_arm_note(Path("bench/results/secagg_seed1_pool1.json"))
    assert "not run in this invocation" in note
    assert note.endswith("wrote bench/results/secagg_seed1.json, with the same settings")
    doc = json.loads((RESULTS / "secagg_seed1_budget.json").read_text())
    assert "secagg_seed1.json" in doc["note"] and "deterministic, same settings" not in doc["note"]
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    line = next(x for x in page.splitlines() if "`bench/results/secagg_seed2_budget.json`" in x)
    assert "which had reused `bench/results/secagg_seed2.json`'s" in line


def test_the_backdoor_note_says_same_run_only_when_it_was() -> None:
    robustness = _script("robustness")
    one = {"fedavg | no attack | seed 0": {}, "x | a | seed 0": {}}
    assert robustness.SAME_RUN in robustness.backdoor_note(one)
    merged = {"fedavg | no attack | seed 0": {"merged_from": "a.json"}, "x | a | seed 0": {}}
    assert robustness.SAME_RUN not in robustness.backdoor_note(merged)
    assert robustness.SAME_SEED in robustness.backdoor_note(merged)
    # Every committed file's note now matches its own runs (robustness.json: seeds 0-4's FedAvg
    # baseline came from robustness_backdoor_weakdp.json).
    for path in sorted(RESULTS.glob("robustness*.json")):
        doc = json.loads(path.read_text())
        note, runs = doc.get("backdoor_note"), doc.get("backdoor_runs")
        if not isinstance(note, str) or not runs or robustness.SAME_RUN not in note:
            continue
        sources = {r.get("merged_from") for r in runs.values()}
        assert len(sources) == 1, path.name
    robustness_json = json.loads((RESULTS / "robustness.json").read_text())
    assert robustness.SAME_SEED in robustness_json["backdoor_note"]
