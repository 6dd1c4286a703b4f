"""bench/summarize.py renders the support rule's result files (bench/results/
robustness_sparse_support*.json) into docs/benchmarks.md as accuracy tables generated from the
JSON. Before, it read neither file and the doc had no section for them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEMS = ["robustness_sparse_support", "robustness_sparse_support_seed1"]


def _summarize() -> Any:
    spec = importlib.util.spec_from_file_location("h152_summarize", ROOT / "bench" / "summarize.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(text: str) -> dict[str, list[str]]:
    """Table rows of `text` by their first cell."""
    out = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0].strip("`")] = cells[1:]
    return out


@pytest.mark.parametrize("stem", STEMS)
def test_each_support_rule_file_has_a_section_generated_from_it(stem: str) -> None:
    summarize = _summarize()
    doc = json.loads((ROOT / "bench" / "results" / f"{stem}.json").read_text())
    text = summarize.render()

    start = text.index(f"--name {stem} ")
    section = text[start : text.index("\n## ", start)]
    rows = _rows(section)
    attacks = list(doc["accuracy"]["20pct"]["trimmed_mean:0.2"])
    for rule, clean in doc["no_attack_accuracy"].items():
        cells = doc["accuracy"]["20pct"].get(rule, {})
        expected = [summarize._fmt(clean)]
        expected += [summarize._fmt(cells[a]) if a in cells else "–" for a in attacks]
        assert rows[rule] == expected
    assert f"| rule | no attack | {' | '.join(attacks)} |" in section


def test_a_diverged_run_and_a_missing_one_are_shown_as_such() -> None:
    summarize = _summarize()
    doc = {
        "no_attack_accuracy": {"fedavg": 0.9, "geomed": 0.85},
        "accuracy": {"20pct": {"geomed": {"signflip": 0.8, "ipm:epsilon=100": 0.0}}},
        "runs": [
            {"kind": "matrix", "aggregator": "geomed", "attack": "ipm:epsilon=100",
             "malicious": 0.2, "diverged": True, "final_accuracy": 0.0},
            {"kind": "matrix", "aggregator": "geomed", "attack": "signflip",
             "malicious": 0.2, "diverged": False, "final_accuracy": 0.8},
        ],
    }  # fmt: skip

    rows = _rows("\n".join(summarize._matrix_table(doc)))

    assert rows == {
        "fedavg": ["0.9", "–", "–"],
        "geomed": ["0.85", "0.8", "diverged (0)"],
    }


def test_the_committed_doc_is_current() -> None:
    assert _summarize().main(["--check"]) == 0
