"""bench/robustness.py compares the backdoor targets with a tolerance (s24/r2 review, F9).

Before, `seeds_meeting_target` and `target_met_*` compared floats exactly: seed 16 of
robustness_backdoor_20seeds_rebuild.json ended at 0.894 under attack against FedAvg's 0.904
without attack: exactly 20 of 2,000 test images, 1 pp, which float subtraction gives as
1.0000000000000009 pp, and was counted as missing
"<= 1 pp" (17 seeds instead of 18 for screen + weak DP). TARGET_TOLERANCE_PP (a millionth of a
pp, far below one test image: 0.05 pp) forgives only the rounding. The committed file's summary
was recomputed from its own runs with `--resummarise`; the last test checks that.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
REBUILD = ROOT / "bench" / "results" / "robustness_backdoor_20seeds_rebuild.json"
DEFENCE = "collusion:tau=0.3+dp:clip=1,quantile=0.9,z=0.01,seed=0+fedavg"
ATTACK = "backdoor:target=0,poison_fraction=0.5"


def _robustness() -> ModuleType:
    path = ROOT / "bench" / "robustness.py"
    spec = importlib.util.spec_from_file_location("s24e_robustness", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(seeds: list[int]) -> argparse.Namespace:
    return argparse.Namespace(
        backdoor_seeds=seeds,
        backdoor_defenses=[DEFENCE],
        backdoor_attacks=[ATTACK],
        backdoor_malicious=0.1,
    )


def _row(agg: str, attack: str | None, seed: int, acc: float, bd: float) -> dict[str, Any]:
    return {
        "kind": "backdoor",
        "aggregator": agg,
        "attack": attack,
        "malicious": 0.1 if attack else 0.0,
        "seed": seed,
        "final_accuracy": acc,
        "backdoor_accuracy": bd,
    }


def _summary(clean: float, attacked: float, backdoor: float) -> dict[str, Any]:
    module = _robustness()
    rows = [
        _row("fedavg", None, 16, clean, 0.01),
        _row(DEFENCE, None, 16, 0.899, 0.01),
        _row(DEFENCE, ATTACK, 16, attacked, backdoor),
    ]
    out: dict[str, Any] = module._summarise_backdoor(_args([16]), rows)["by_defense"][DEFENCE]
    return out


def test_a_loss_of_exactly_one_pp_meets_the_target() -> None:
    # 100 * (0.904 - 0.894) == 1.0000000000000009: counted as a miss before.
    assert 100.0 * (0.904 - 0.894) > 1.0
    entry = _summary(0.904, 0.894, 0.01)
    assert entry["seeds_meeting_target"] == 1
    assert entry["target_met_every_seed"] is True
    assert entry["target_met_on_mean"] is True


def test_one_test_image_over_the_bound_still_misses() -> None:
    # 21 of 2,000 images: 1.05 pp.
    entry = _summary(0.904, 0.8935, 0.01)
    assert entry["seeds_meeting_target"] == 0
    assert entry["target_met_every_seed"] is False


def test_backdoor_accuracy_at_the_bound_meets_it_and_above_does_not() -> None:
    # 0.1 as floats compute it (a mean: (0.1 + 0.2) / 3 == 0.10000000000000002).
    at_bound = (0.1 + 0.2) / 3
    assert at_bound > 0.1
    assert _summary(0.904, 0.904, at_bound)["seeds_meeting_target"] == 1
    # One backdoor test image over, out of about 1,800 triggered images.
    assert _summary(0.904, 0.904, 0.1 + 1 / 1800)["seeds_meeting_target"] == 0


def test_the_committed_rebuild_summary_is_its_runs_summary() -> None:
    # `--resummarise` recomputed the file from its own runs: 18 seeds, seed 16 included.
    module = _robustness()
    saved = json.loads(REBUILD.read_text())
    defences = [d for d in saved["backdoor_by_defense"] if d != "fedavg"]
    args = _args(saved["backdoor_seeds"])
    args.backdoor_defenses = defences
    args.backdoor_attacks = saved["backdoor_attacks"]
    args.backdoor_malicious = saved["backdoor_malicious"]
    by_defense = module._summarise_backdoor(args, saved["runs"])["by_defense"]
    weak = by_defense[DEFENCE]
    assert weak["seeds"]["16"]["worst_main_task_loss_pp"] == 1.0000000000000009
    assert weak["seeds_meeting_target"] == 18
    assert saved["backdoor_by_defense"][DEFENCE]["seeds_meeting_target"] == 18
    assert saved["backdoor_screen_weak_dp_seeds_meeting_target"] == 18
    assert saved["backdoor_seeds_meeting_target"] == by_defense[defences[0]]["seeds_meeting_target"]
    assert saved["resummarised"]["command"].endswith("--resummarise")
