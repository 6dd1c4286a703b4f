"""rounds.json's `config.downlink_topk` / `downlink_bits` (8cdd699) are null in a run that sets
no downlink, as docs/simulator.md says ("null when not given"), like the config's other unset
options (clip_norm, attack, deadline_s, workers): a run dir written before the fields (no keys),
one written since (null) and one with a downlink all load, through `SimConfig.from_dict` and
`plume sim report`, and bench/robustness.py's --merge takes the older and the newer file for the
same setting. Leaving the keys out when unset (as `plugins` and `min_memory_mb` are) would make
that merge refuse every file written with the nulls (a key the setting lacks)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main as plume
from mobile_sim.report import write_run
from mobile_sim.report_extra import read_run_dir
from mobile_sim.runner import SimConfig, run_simulation

ROOT = Path(__file__).resolve().parents[2]
DOWNLINK = ("downlink_topk", "downlink_bits")

# 4 digits-MLP devices, 2 a round, 1 round, no clock: a run dir in a second or two.
CFG = SimConfig(
    dataset="digits",
    model="digits_mlp",
    clients=4,
    per_round=2,
    rounds=1,
    topk=0.1,
    bits=8,
    local_epochs=1,
    batch_size=16,
    partition="iid",
    fleet="off",
    seed=5,
)


def _robustness() -> Any:
    spec = importlib.util.spec_from_file_location("h295_robustness", ROOT / "bench/robustness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("downlink", [None, (0.05, 8)], ids=["unset", "set"])
def test_older_and_newer_rounds_json_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], downlink: tuple[float, int] | None
) -> None:
    # Prepare: a run dir as plume sim writes it now, and a copy without the two keys (an
    # older run's file; only a run without a downlink could have been written then)
    cfg = CFG
    if downlink is not None:
        cfg = replace(CFG, downlink_topk=downlink[0], downlink_bits=downlink[1])
    result = run_simulation(cfg, progress=False)
    new = tmp_path / "new"
    write_run(result, new)
    doc = json.loads((new / "rounds.json").read_text())
    recorded = doc["config"]
    older = {k: v for k, v in recorded.items() if k not in DOWNLINK}
    old = tmp_path / "old"
    old.mkdir()
    (old / "rounds.json").write_text(json.dumps({**doc, "config": older}))

    # Assert: the keys are there, null or the values; each file rebuilds the config
    assert tuple(recorded[k] for k in DOWNLINK) == (downlink or (None, None))
    assert SimConfig.from_dict(recorded) == result.config
    if downlink is None:
        assert SimConfig.from_dict(older) == result.config
    # ... and plume sim report reads both folders
    for folder in (new, old):
        assert read_run_dir(folder).title == "digits / digits_mlp"
        assert plume(["sim", "report", str(folder)]) == 0, capsys.readouterr().err
        assert (folder / "bytes_per_round.png").exists()


def test_a_robustness_file_written_with_the_nulls_or_before_them_merges(tmp_path: Path) -> None:
    bench = _robustness()
    setting = bench._setting(CFG)
    assert all(k in setting and setting[k] is None for k in DOWNLINK)
    run = {"kind": "matrix", "aggregator": "fedavg", "attack": None, "malicious": 0.0}
    paths = []
    for name, config in (
        ("newer.json", setting),
        ("older.json", {k: v for k, v in setting.items() if k not in DOWNLINK}),
    ):
        path = tmp_path / name
        path.write_text(json.dumps({"config": config, "runs": [run]}))
        paths.append(str(path))
    rows = bench._merged_rows(paths, setting)
    assert [r["merged_from"] for r in rows] == ["newer.json", "older.json"]
