"""docs/benchmarks.md prints a result file's notes only where they describe something the file
holds (review h157, item 3): a robustness run made with --skip-backdoor (`backdoor_runs` empty)
gets no `backdoor_*` note, and the MLP runs' `model_note` names the recommended robust
aggregator, not "the default aggregator" (--aggregator defaults to fedavg). Before,
bench/summarize.py printed every `*_note` key as written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NO_BACKDOOR = [
    "robustness_sparse_support",
    "robustness_sparse_support_seed1",
    "robustness_cnn_v3",
]


def _module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"h159_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _section(text: str, stem: str) -> str:
    start = text.index(f"--name {stem} ")
    end = text.find("\n## ", start)
    return text[start : end if end >= 0 else len(text)]


@pytest.fixture(scope="module")
def rendered() -> str:
    return str(_module("summarize").render())


@pytest.mark.parametrize("stem", NO_BACKDOOR)
def test_a_run_without_backdoor_runs_prints_no_backdoor_note(rendered: str, stem: str) -> None:
    doc = json.loads((ROOT / "bench" / "results" / f"{stem}.json").read_text())
    assert doc["backdoor_runs"] == {} and "backdoor_note" in doc  # the file still holds them
    section = _section(rendered, stem)
    assert "Note (`backdoor_" not in section
    assert "Note (`model_note`)" in section


def test_a_run_with_backdoor_runs_keeps_its_backdoor_notes(rendered: str) -> None:
    start = rendered.index("python bench/robustness.py")
    section = rendered[start : rendered.index("\n## ", start)]
    doc = json.loads((ROOT / "bench" / "results" / "robustness.json").read_text())
    assert doc["backdoor_runs"]
    for key in (
        "backdoor_note",
        "backdoor_screen_weak_dp_note",
        "backdoor_literal_normbound_dp_note",
    ):
        assert f"Note (`{key}`)" in section


def test_notes_without_backdoor_runs_are_dropped_only_for_backdoor_keys() -> None:
    notes = _module("summarize")._notes
    doc = {"backdoor_runs": {}, "backdoor_note": "b", "model_note": "m", "note": "n"}
    assert notes(doc) == ["Note (`model_note`): m", "", "Note (`note`): n", ""]
    assert notes({**doc, "backdoor_runs": {"x": {}}})[:2] == ["Note (`backdoor_note`): b", ""]
    # a file from before backdoor_runs existed keeps its notes
    assert notes({"backdoor_note": "b"}) == ["Note (`backdoor_note`): b", ""]


def test_the_model_note_names_the_recommended_aggregator(rendered: str) -> None:
    robustness = _module("robustness")
    note = robustness.MLP_MODEL_NOTE
    assert "recommended robust aggregator" in note and robustness.DEFAULT_ROBUST in note
    assert "default aggregator" not in note
    # the committed MLP files carry the old wording; the doc shows the current one
    assert "default aggregator" not in rendered
    assert rendered.count(f"Note (`model_note`): {note}") == 3
