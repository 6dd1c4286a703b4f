"""bench/robustness.py --merge and files written between 11d3449 and 792bb93, which recorded
the config with `dataclasses.asdict`: "plugins": [] (helper-139's review). Such a file is the
setting of a run without plugins and merges; one that names a plugin is still refused."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from mobile_sim.runner import SimConfig

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location(
        "h141_robustness", ROOT / "bench" / "robustness.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _saved(cfg: SimConfig) -> dict[str, Any]:
    """The config such a file recorded: asdict, through JSON, less what its runs vary."""
    recorded = json.loads(json.dumps(asdict(cfg)))
    # Fields SimConfig gained after those files (min_memory_mb, 8eef265; the trace fields,
    # a83a176d) are not in them.
    newer = (
        "aggregator", "attack", "min_memory_mb",
        "capacity_trace", "behaviour_trace", "trace_compute_scale",
    )  # fmt: skip
    return {k: v for k, v in recorded.items() if k not in newer}


@pytest.mark.parametrize("seed", [0, 2])
def test_a_file_recording_plugins_empty_merges(tmp_path: Path, seed: int) -> None:
    # Before: SystemExit "was run with another setting; not merging it"
    bench = _bench()
    base = SimConfig(dataset="digits", clients=4, per_round=2, rounds=1, seed=seed)
    config = _saved(base)
    assert config["plugins"] == []
    run = {"kind": "matrix", "aggregator": "fedavg", "attack": None, "malicious": 0.0}
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"config": config, "runs": [run]}))

    rows = bench._merged_rows([str(path)], bench._setting(base))

    assert rows == [{**run, "seed": seed, "merged_from": "old.json"}]


def test_a_file_recording_a_plugin_is_refused(tmp_path: Path) -> None:
    bench = _bench()
    base = SimConfig(dataset="digits", clients=4, per_round=2, rounds=1)
    config = {**_saved(base), "plugins": ["my_plugin.py"]}
    path = tmp_path / "plugged.json"
    path.write_text(json.dumps({"config": config, "runs": []}))

    with pytest.raises(SystemExit, match="was run with another setting"):
        bench._merged_rows([str(path)], bench._setting(base))
