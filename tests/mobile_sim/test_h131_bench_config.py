"""The bench scripts record a config as `SimConfig.as_dict()` does: a run without plugins has
no "plugins" key, as before the field existed. Before, bench/robustness.py recorded
`dataclasses.asdict` (plugins: () in the comparison, [] in the JSON), so `--merge` refused
every results file written after the field was added: "was run with another setting"."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pytest

from mobile_sim.runner import SimConfig

ROOT = Path(__file__).resolve().parents[2]


def _bench(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"h131_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _base(**changes: Any) -> SimConfig:
    # bench/robustness.py main()'s config, with its defaults
    values: dict[str, Any] = {
        "dataset": "mnist",
        "model": "mlp",
        "clients": 100,
        "per_round": 10,
        "rounds": 20,
        "local_epochs": 5,
        "partition": "dirichlet",
        "alpha": 0.5,
        "eval_every": 5,
        "seed": 0,
    }
    return SimConfig(**{**values, **changes})


@pytest.mark.parametrize("seed", [0, 3])
def test_a_robustness_results_file_written_now_merges_with_itself(
    tmp_path: Path, seed: int
) -> None:
    bench = _bench("robustness")
    setting = bench._setting(_base(seed=seed))
    path = tmp_path / "robustness.json"
    run = {"kind": "matrix", "aggregator": "fedavg", "attack": None, "malicious": 0.0}
    path.write_text(json.dumps({"config": setting, "runs": [run]}))

    # Execute
    rows = bench._merged_rows([str(path)], setting)

    # Assert
    assert rows == [{**run, "seed": seed, "merged_from": "robustness.json"}]
    assert "plugins" not in setting


def test_a_robustness_results_file_of_another_setting_is_refused(tmp_path: Path) -> None:
    bench = _bench("robustness")
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"config": bench._setting(_base(rounds=5)), "runs": []}))
    with pytest.raises(SystemExit, match="was run with another setting"):
        bench._merged_rows([str(path)], bench._setting(_base()))


@pytest.mark.parametrize("name", ["robustness_mlp_default_v3", "robustness_cnn_v3"])
def test_the_committed_robustness_results_still_merge(name: str) -> None:
    # A file written before the plugins field: its own setting merges it, as before.
    bench = _bench("robustness")
    path = ROOT / "bench" / "results" / f"{name}.json"
    saved = json.loads(path.read_text())["config"]
    known = {f.name for f in fields(SimConfig)}
    base = SimConfig(**{k: v for k, v in saved.items() if k in known})

    rows = bench._merged_rows([str(path)], bench._setting(base))

    assert rows and all(r["merged_from"] == f"{name}.json" for r in rows)


def test_without_plugins_as_dict_is_asdict_without_the_field() -> None:
    # What the bench scripts recorded before SimConfig had `plugins`.
    cfg = _base(aggregator="median", attack="signflip", malicious=0.2)
    expected = asdict(cfg)
    del expected["plugins"]
    del expected["min_memory_mb"]  # likewise left out at its default (None) since 8eef265
    # and the trace fields at their defaults (no trace) since stop 55 (task T)
    for name in ("capacity_trace", "behaviour_trace", "trace_compute_scale"):
        del expected[name]
    assert cfg.as_dict() == expected
