"""Robustness benchmark: attacks × aggregators at 10% and 20% malicious devices, plus a backdoor.

Every run is a real `mobile_sim` simulation: MNIST, Dirichlet(0.5) non-IID partition over 100
devices, 10 per round, compressed uploads with the runner's defaults (top-k 1%, 4-bit values,
error feedback), malicious devices drawn once per run. The no-attack baseline of every
aggregator runs in the same invocation (or, with `--merge`, comes from an earlier run of the same
setting: runs are deterministic). Headline: the default robust aggregator's worst
accuracy over the model/data attacks at 20% malicious, as a fraction of the no-attack FedAvg
accuracy (and of its own no-attack accuracy). Backdoor: pixel-pattern trigger at 10% malicious,
backdoor accuracy and main-task loss of each defence against FedAvg without attack.

The model is the MLP of the zoo by default (the matrix was first run when the MNIST CNN took
about a minute per round on the loaded machine). The CNN now takes about 45 s per 20-round run
with two workers on a quiet 2-core machine: `--model mnist_cnn` runs it (docs/robustness.md,
"On the MNIST CNN"). The JSON records the model used.

    python bench/robustness.py                 # the full matrix (over an hour on 2 cores)
    python bench/robustness.py --quick         # a smoke run: 2 attacks, 2 aggregators, 3 rounds
                                               # (to bench/results/robustness_quick.json)
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    command_line,
    config_matches,
    git_provenance,
    quick_stem,
    write_results,
)
from coordinator.aggregators import DEFAULT_ROBUST  # noqa: E402
from mobile_sim.report import machine_info, utc_now  # noqa: E402
from mobile_sim.runner import SimConfig  # noqa: E402

TARGET_FRACTION = 0.95
TARGET_BACKDOOR = 0.10
TARGET_MAIN_LOSS_PP = 1.0
# Tolerance of the backdoor targets' comparisons. Accuracies are counts over the test images
# (2,000 for the main task: one image is 0.05 pp), so a loss of exactly 1 pp can come out of
# float subtraction as 1.0000000000000009 (FedAvg's 0.904 - 0.894, screen + weak DP on seed 16
# of robustness_backdoor_20seeds_rebuild.json) and was counted as missing "<= 1 pp". A millionth of
# a pp (and of a backdoor-accuracy point) is far below one test image and far above float
# rounding, so it only forgives the rounding.
TARGET_TOLERANCE_PP = 1e-6


def _meets(value: float, target: float, scale: float = 1.0) -> bool:
    """value <= target up to TARGET_TOLERANCE_PP (scale 100 for a fraction against a pp-scaled
    tolerance: backdoor accuracy is a fraction)."""
    return value <= target + TARGET_TOLERANCE_PP / scale


AGGREGATORS = [
    "fedavg",
    "trimmed_mean:0.2",
    "multikrum:f=0.2",
    "nnm:f=0.4+cclip:tau=auto,beta=0",
    "geomed",
    DEFAULT_ROBUST,
]
ATTACKS = [
    "signflip",
    "scaling",
    "alie",
    "ipm:epsilon=0.1",
    "ipm:epsilon=100",
    "labelflip",
    "gaussian",
]
FRACTIONS = [0.1, 0.2]
# Backdoor defences. The first is the headline: the collusion screen (coordinator/aggregators/
# _backdoor.py) against the unboosted backdoor, in front of norm bounding at the 90th percentile
# of the norms against the boosted one. It was chosen on seeds 0-2 among screen + norm-bounding
# variants (robustness_backdoor_normbound*.json); seeds 3-9 were run after the choice. Then the
# screen in front of norm bounding + weak DP (the dp stage's own clip, Gaussian noise with
# z = 0.01 / 0.02 at the 90th-percentile clip, z = 0.01 at a fixed clip, z = 0.05 at the median
# and at the 90th percentile), the screen alone, norm bounding alone, the literal norm
# bounding + DP without a screen (z = 0.05 at the median, z = 0.01 at the 90th percentile), and
# the robust learning rate (an earlier headline).
BACKDOOR_DEFENSES = [
    "collusion:tau=0.3+normbound:q=0.9,init=1+fedavg",
    "collusion:tau=0.3+dp:clip=1,quantile=0.9,z=0.01,seed=0+fedavg",
    "collusion:tau=0.3+dp:clip=1,quantile=0.9,z=0.02,seed=0+fedavg",
    "collusion:tau=0.3+dp:clip=1,z=0.01,seed=0+fedavg",
    "collusion:tau=0.3+dp:clip=0.5,quantile=0.5,z=0.05,seed=0+fedavg",
    "collusion:tau=0.3+dp:clip=1,quantile=0.9,z=0.05,seed=0+fedavg",
    "collusion:tau=0.3+fedavg",
    "normbound:q=0.9,init=1+fedavg",
    "dp:clip=0.5,quantile=0.5,z=0.05,seed=0+fedavg",
    "dp:clip=1,quantile=0.9,z=0.01,seed=0+fedavg",
    "rlr:theta=2",
]
# The headline attack (unboosted data poisoning) and the boosted model-replacement variant
# norm bounding was designed for; the headline figures are the worse of the two per seed.
BACKDOOR_ATTACK = "backdoor:target=0,poison_fraction=0.5"
BACKDOOR_ATTACKS = [BACKDOOR_ATTACK, BACKDOOR_ATTACK + ",boost=10"]
BACKDOOR_SEEDS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]


def _attack_spec(attack: str, fraction: float, per_round: int) -> str:
    """ALIE gets the cohort size n and the expected attackers f for z (Baruch et al.)."""
    if attack == "alie":
        return f"alie:n={per_round},f={max(1, round(fraction * per_round))}"
    return attack


class _MeanNormProbe:
    """Factory around the mean inside a DPMean: returns the inner output unchanged and adds the
    L2 norm of that noiseless mean of the clipped reports to the measurements (`mean_norm`),
    so that the benchmark can set the Gaussian noise against the signal it is added to."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create(self, size: int) -> Any:
        return _MeanNormProbeProcess(self.inner.create(size))


class _MeanNormProbeProcess:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def initialize(self) -> Any:
        return self.inner.initialize()

    def next(self, state: Any, updates: Any) -> Any:
        import numpy as np

        from coordinator.aggregators import AggregateOutput

        out = self.inner.next(state, updates)
        norm = float(np.linalg.norm(out.result.astype(np.float64)))
        return AggregateOutput(out.state, out.result, {**out.measurements, "mean_norm": norm})


def _probe_dp(factory: Any) -> Any:
    """`factory` with a `_MeanNormProbe` around the mean inside any DPMean (wrappers in front of
    it, e.g. the collusion screen, are rebuilt around the probed DPMean). Measurement only: the
    aggregate is bit-for-bit the same."""
    from dataclasses import is_dataclass
    from dataclasses import replace as dc_replace

    from coordinator.aggregators import DPMean

    if isinstance(factory, DPMean):
        return dc_replace(factory, inner=_MeanNormProbe(factory.inner))
    if is_dataclass(factory) and hasattr(factory, "inner"):
        return dc_replace(factory, inner=_probe_dp(factory.inner))  # type: ignore[type-var]
    return factory


def _dp_measurements(meas: Any) -> dict[str, Any] | None:
    """The DPMean measurements (the dict with `noise_stddev`) in nested measurements, or None."""
    if not isinstance(meas, dict):
        return None
    if "noise_stddev" in meas:
        return meas
    return _dp_measurements(meas.get("inner"))


def _dp_noise(measurements: list[dict[str, Any]], size: int) -> dict[str, Any] | None:
    """Per-run noise figures of a DP stage, averaged over its rounds with at least one report:
    the noise norm on the released mean (noise stddev per coordinate × sqrt(d), its expected
    norm), that norm over the clip norm C, and over the norm of the noiseless mean of the clipped
    reports (noise-to-signal). None when the aggregator has no DP stage."""
    import math

    rows = [m for m in (_dp_measurements(x) for x in measurements) if m and m.get("clients")]
    if not rows:
        return None
    noise = [float(m["noise_stddev"]) * math.sqrt(size) for m in rows]
    clip = [float(m["clip"]) for m in rows]
    signal = [float(m.get("inner", {}).get("mean_norm", math.nan)) for m in rows]
    ratio = [n / s for n, s in zip(noise, signal, strict=True) if s > 0]
    return {
        "rounds": len(rows),
        "noise_multiplier": float(rows[0]["noise_multiplier"]),
        "mean_clip": sum(clip) / len(clip),
        "mean_reports": sum(int(m["clients"]) for m in rows) / len(rows),
        "mean_noise_norm": sum(noise) / len(noise),
        "mean_noise_norm_over_clip": sum(n / c for n, c in zip(noise, clip, strict=True))
        / len(rows),
        "mean_signal_norm": sum(s for s in signal if s > 0) / max(1, len(ratio)),
        "mean_noise_to_signal": sum(ratio) / len(ratio) if ratio else None,
        "max_noise_to_signal": max(ratio) if ratio else None,
        "min_noise_to_signal": min(ratio) if ratio else None,
    }


def final_backdoor_accuracy(cfg: SimConfig, params: Any, attack_spec: str) -> float:
    """The backdoor accuracy of `params` (a run's final model) on the test split the run
    trained against: the dataset is loaded with `cfg.dataset_seed` (its `data_seed`, else its
    `seed`, as the runner loads it), and measured as the runner measures it each round."""
    import mobile_sim.runner as runner
    from mobile_sim.attacks import BackdoorAttack, build_attack
    from mobile_sim.models import build_model

    data = runner.load_dataset(cfg.dataset, cfg.data_root, cfg.dataset_seed)
    attack = build_attack(attack_spec)
    if not isinstance(attack, BackdoorAttack):
        raise ValueError(f"{attack_spec!r} is not a backdoor attack")
    model = build_model(cfg.model_name, seed=cfg.seed)
    return runner._backdoor_accuracy(model, params, data, attack)


# How both device trainers (sdk.trainer.TorchTrainer, sdk.ort.OrtTrainer) begin the
# `ValueError` for a run whose loss or trained parameters stopped being finite
# (sdk._data.diverged and check_trained_params; tests/mobile_sim/test_h152_bench_diverged.py
# pins it to their messages). They raise no class of their own.
TRAINER_DIVERGED = "training diverged:"


def is_divergence(exc: BaseException) -> bool:
    """Whether `exc`, raised by a simulation, means its training diverged (a result: the
    run is recorded as diverged) rather than a bug or a bad setting (the benchmark stops).
    That is the trainers' divergence error, or a `ValueError` naming NaN: the device
    encoder's refusal of a NaN delta, which ended such runs before the trainers checked the
    loss, and the trainer's refusal of NaN starting parameters."""
    if not isinstance(exc, ValueError):
        return False
    text = str(exc)
    return text.startswith(TRAINER_DIVERGED) or "NaN" in text


def _run(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    import mobile_sim.runner as runner
    from mobile_sim.runner import run_simulation

    torch.set_num_threads(1)
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp_accounting's per-order chatter
    # This worker process builds every aggregator through the runner: probe DP stages for the
    # noise-to-signal figures (the aggregate itself is unchanged).
    build = runner.build_aggregator
    if getattr(build, "__name__", "") != "_probed_build":

        def _probed_build(spec: str) -> Any:
            return _probe_dp(build(spec))

        runner.build_aggregator = _probed_build
    cfg = SimConfig.from_dict(job["config"])
    t0 = time.perf_counter()
    try:
        res = run_simulation(cfg, progress=False)
    except ValueError as exc:
        if not is_divergence(exc):
            raise
        # A poisoned model can blow up: benign training then stops on a NaN or infinite loss.
        # The run counts as diverged, accuracy 0 (worse than chance), and the matrix goes on.
        return {
            **{k: v for k, v in job.items() if k != "config"},
            "final_accuracy": 0.0,
            "diverged": True,
            "error": str(exc),
            "backdoor_accuracy": None,
            "wall_s": round(time.perf_counter() - t0, 1),
        }
    accs = [r.accuracy for r in res.records if r.accuracy is not None]
    out: dict[str, Any] = {
        **{k: v for k, v in job.items() if k != "config"},
        "final_accuracy": res.final_accuracy,
        "diverged": False,
        "accuracy_by_eval": accs,
        "rounds_run": len(res.records),
        "upload_ratio_vs_dense": res.upload_ratio,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    if job["kind"] == "backdoor":
        out["backdoor_accuracy"] = final_backdoor_accuracy(
            cfg, res.final_params, job["backdoor_attack"]
        )
        eps = [r.measurements for r in res.records]
        out["last_measurements"] = eps[-1] if eps else {}
        out["screened"] = _screen_counts(cfg, eps)
        noise = _dp_noise(eps, int(res.final_params.shape[0]))
        if noise is not None:
            out["dp_noise"] = noise
    return out


def _dropped(meas: Any) -> dict[str, Any]:
    """The first `dropped` map (device -> score) in nested measurements, or {}."""
    if not isinstance(meas, dict):
        return {}
    found = meas.get("dropped")
    if isinstance(found, dict):
        return found
    return _dropped(meas.get("inner"))


def _screen_counts(cfg: SimConfig, measurements: list[dict[str, Any]]) -> dict[str, int]:
    """Reports a screen dropped over the run, split into malicious and honest devices (the
    runner draws the malicious devices as below: rng [seed, 2], the first malicious·clients
    of a permutation)."""
    import numpy as np

    from mobile_sim.runner import _device_ids

    ids = _device_ids(cfg.clients)
    n_bad = int(round(cfg.malicious * cfg.clients))
    bad = {ids[i] for i in np.random.default_rng([cfg.seed, 2]).permutation(cfg.clients)[:n_bad]}
    dropped = [dev for m in measurements for dev in _dropped(m)]
    return {
        "dropped_malicious": sum(d in bad for d in dropped),
        "dropped_honest": sum(d not in bad for d in dropped),
    }


def _jobs(args: argparse.Namespace, base: SimConfig) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    clean_only = [a for a in args.clean_only if a not in args.aggregators]
    for agg in [] if args.skip_matrix else [*clean_only, *args.aggregators]:
        cfg = replace(base, aggregator=agg)
        jobs.append(
            {
                "kind": "matrix",
                "aggregator": agg,
                "attack": None,
                "malicious": 0.0,
                "seed": base.seed,
                "config": cfg.as_dict(),
            }
        )
        if agg in clean_only:
            continue
        for frac in args.fractions:
            for attack in args.attacks:
                spec = _attack_spec(attack, frac, base.per_round)
                cfg = replace(base, aggregator=agg, attack=spec, malicious=frac)
                jobs.append(
                    {
                        "kind": "matrix",
                        "aggregator": agg,
                        "attack": attack,
                        "attack_spec": spec,
                        "malicious": frac,
                        "seed": base.seed,
                        "config": cfg.as_dict(),
                    }
                )
    if not args.skip_backdoor:
        for seed in args.backdoor_seeds:
            bd = replace(base, rounds=args.backdoor_rounds, seed=seed)
            for agg in ("fedavg", *args.backdoor_defenses):
                for attack in (None, *args.backdoor_attacks):
                    cfg = replace(
                        bd,
                        aggregator=agg,
                        attack=attack,
                        malicious=args.backdoor_malicious if attack else 0.0,
                    )
                    jobs.append(
                        {
                            "kind": "backdoor",
                            "aggregator": agg,
                            "attack": attack,
                            "backdoor_attack": attack or args.backdoor_attacks[0],
                            "malicious": cfg.malicious,
                            "seed": seed,
                            "config": cfg.as_dict(),
                        }
                    )
    return jobs


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["kind"], row["aggregator"], row["attack"], row["malicious"], row.get("seed", 0))


def _summarise_backdoor(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per defence and seed: no-attack accuracy, and per attack variant accuracy, backdoor
    accuracy and main-task loss (pp) against FedAvg without attack of the same seed."""
    bd: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:  # fresh runs come after merged ones and replace them
        # Attacked runs count only at this invocation's fraction: a merged file may hold the
        # same defence, attack and seed at another --backdoor-malicious.
        if r["kind"] == "backdoor" and (
            r["attack"] is None or r["malicious"] == args.backdoor_malicious
        ):
            bd[(r["aggregator"], r["attack"], r.get("seed", 0))] = r
    runs = {
        f"{agg} | {attack or 'no attack'} | seed {seed}": {
            "final_accuracy": r["final_accuracy"],
            "backdoor_accuracy": r["backdoor_accuracy"],
            **({"merged_from": r["merged_from"]} if "merged_from" in r else {}),
        }
        for (agg, attack, seed), r in bd.items()
    }
    clean = {
        s: bd[("fedavg", None, s)]["final_accuracy"]
        for s in args.backdoor_seeds
        if ("fedavg", None, s) in bd
    }
    by_defense: dict[str, Any] = {}
    for agg in ("fedavg", *args.backdoor_defenses):
        seeds: dict[str, Any] = {}
        for s in args.backdoor_seeds:
            own = bd.get((agg, None, s))
            attacks: dict[str, Any] = {}
            for attack in args.backdoor_attacks:
                run = bd.get((agg, attack, s))
                if run is None:
                    continue
                loss = None if s not in clean else 100.0 * (clean[s] - run["final_accuracy"])
                attacks[attack] = {
                    "accuracy": run["final_accuracy"],
                    "backdoor_accuracy": run["backdoor_accuracy"],
                    "main_task_loss_pp": loss,
                    "screened": run.get("screened"),
                    **({"dp_noise": run["dp_noise"]} if "dp_noise" in run else {}),
                }
            complete = len(attacks) == len(args.backdoor_attacks)
            bds = [a["backdoor_accuracy"] for a in attacks.values()]
            losses = [a["main_task_loss_pp"] for a in attacks.values()]
            seeds[str(s)] = {
                "no_attack_accuracy": own["final_accuracy"] if own else None,
                "no_attack_backdoor_accuracy": own["backdoor_accuracy"] if own else None,
                "no_attack_screened": own.get("screened") if own else None,
                "attacks": attacks,
                "worst_backdoor_accuracy": max(bds) if complete and None not in bds else None,
                "worst_main_task_loss_pp": max(losses) if complete and None not in losses else None,
            }
        # A defence is summarised over the seeds it has complete runs for (`seeds_complete`):
        # a merged file may hold more seeds of some defences (e.g. held-out seeds of the
        # headline) than of others. The per-seed lists follow --backdoor-seeds, None if missing.
        complete_seeds = [
            s
            for s, e in seeds.items()
            if e["worst_backdoor_accuracy"] is not None and e["worst_main_task_loss_pp"] is not None
        ]
        worst_bd = [seeds[s]["worst_backdoor_accuracy"] for s in complete_seeds]
        worst_loss = [seeds[s]["worst_main_task_loss_pp"] for s in complete_seeds]
        done = bool(complete_seeds)
        # Noise figures of a DP stage over every run of this defence (all seeds, with and
        # without attack); absent for runs merged from files written before they were recorded.
        noise = [
            r["dp_noise"]
            for (a, _, s), r in bd.items()
            if a == agg and s in args.backdoor_seeds and r.get("dp_noise")
        ]
        ratios = [n["mean_noise_to_signal"] for n in noise if n["mean_noise_to_signal"]]
        by_defense[agg] = {
            "seeds": seeds,
            "seeds_complete": [int(s) for s in complete_seeds],
            "no_attack_accuracy_per_seed": [e["no_attack_accuracy"] for e in seeds.values()],
            "worst_backdoor_accuracy_per_seed": [
                e["worst_backdoor_accuracy"] for e in seeds.values()
            ],
            "worst_main_task_loss_pp_per_seed": [
                e["worst_main_task_loss_pp"] for e in seeds.values()
            ],
            "mean_backdoor_accuracy": sum(worst_bd) / len(worst_bd) if done else None,
            "mean_main_task_loss_pp": sum(worst_loss) / len(worst_loss) if done else None,
            "max_backdoor_accuracy": max(worst_bd) if done else None,
            "max_main_task_loss_pp": max(worst_loss) if done else None,
            "target_met_every_seed": None
            if not done
            else all(_meets(b, TARGET_BACKDOOR, 100.0) for b in worst_bd)
            and all(_meets(x, TARGET_MAIN_LOSS_PP) for x in worst_loss),
            "target_met_on_mean": None
            if not done
            else _meets(sum(worst_bd) / len(worst_bd), TARGET_BACKDOOR, 100.0)
            and _meets(sum(worst_loss) / len(worst_loss), TARGET_MAIN_LOSS_PP),
            "seeds_meeting_target": sum(
                _meets(b, TARGET_BACKDOOR, 100.0) and _meets(x, TARGET_MAIN_LOSS_PP)
                for b, x in zip(worst_bd, worst_loss, strict=True)
            ),
            **(
                {
                    "dp_noise_runs": len(noise),
                    "dp_noise_norm_over_clip": sum(n["mean_noise_norm_over_clip"] for n in noise)
                    / len(noise),
                    "dp_noise_to_signal": sum(ratios) / len(ratios) if ratios else None,
                    "dp_noise_to_signal_range": [
                        min(n["min_noise_to_signal"] for n in noise if n["min_noise_to_signal"]),
                        max(n["max_noise_to_signal"] for n in noise if n["max_noise_to_signal"]),
                    ]
                    if ratios
                    else None,
                }
                if noise
                else {}
            ),
        }
    return {"by_defense": by_defense, "runs": runs, "fedavg_no_attack_per_seed": clean}


def _stages(spec: str) -> list[str]:
    from coordinator.aggregators._registry import split_stages

    return [stage.partition(":")[0].strip().lower() for stage in split_stages(spec)]


def _screen_weak_dp(by_defense: dict[str, Any]) -> str | None:
    """The best complete defence with the collusion screen in front of a dp stage (norm bounding
    + weak DP behind the screen): one that meets the target on every seed if any, then the
    lowest mean main-task loss."""
    found = [
        d
        for d in by_defense
        if _stages(d)[0] == "collusion"
        and "dp" in _stages(d)
        and by_defense[d]["mean_main_task_loss_pp"] is not None
    ]
    if not found:
        return None
    return min(
        found,
        key=lambda d: (
            not by_defense[d]["target_met_every_seed"],
            by_defense[d]["mean_main_task_loss_pp"],
        ),
    )


def _literal_dp(by_defense: dict[str, Any]) -> str | None:
    """The issue's literal norm bounding + DP without a screen: among the complete defences whose
    first stage is `dp`, the one with the lowest mean backdoor accuracy (the first listed if none
    is complete)."""
    literal = [d for d in by_defense if _stages(d)[0] == "dp"]
    complete = [d for d in literal if by_defense[d]["mean_backdoor_accuracy"] is not None]
    if complete:
        return min(complete, key=lambda d: by_defense[d]["mean_backdoor_accuracy"])
    return literal[0] if literal else None


# Why the MLP runs use the MLP (robustness.json's model_note). It said "the default
# aggregator's" before, which read as Plume's default (--aggregator defaults to fedavg);
# bench/summarize.py shows the committed files' note in this wording.
MLP_MODEL_NOTE = (
    "MLP (McMahan et al. 2NN, 199,210 params) instead of the MNIST CNN: the matrix was first "
    "run when the CNN took about a minute per round on the shared 2-core machine; the "
    f"recommended robust aggregator's ({DEFAULT_ROBUST}) CNN runs are in robustness_cnn*.json."
)

# What the DP stage of a backdoor defence is worth as privacy. Noise multipliers this small give
# epsilons in the thousands per round (dp_accounting RDP bound: about 5,600 for z = 0.01 and
# Poisson rate 0.1 in one round), and a screen in front of dp voids any epsilon anyway.
WEAK_DP_NOTE = (
    "The dp stage here is Sun et al. (2019)'s 'norm bounding + weak DP': L2 clipping of each "
    "report (fixed or adaptive clip) and Gaussian noise on the clipped sum, with a noise "
    "multiplier so small (z <= 0.05) that it gives no meaningful privacy: no epsilon is "
    "accounted (the registry refuses accounting behind the collusion screen, which lets one "
    "device's report decide whether another's is kept), and even without the screen z = 0.01 "
    "would be an epsilon in the thousands per round. The noise is a robustness measure, not a "
    "privacy one; see docs/privacy.md for DP with a guarantee."
)


# How backdoor_note says where a seed's FedAvg baseline ran. "same seed and run" holds only when
# every backdoor run of the summary ran in one invocation; with --merge a seed's baseline and
# its defended runs can come from different files (robustness.json: seeds 0-4's FedAvg baseline
# from robustness_backdoor_weakdp.json, defended runs from other files).
SAME_RUN = "same seed and run"
SAME_SEED = (
    "same seed, not always the same invocation: a run merged from another results file "
    "names it in its merged_from (backdoor_runs), and a seed's FedAvg baseline and its "
    "defended runs may come from different files"
)


def backdoor_note(runs: dict[str, dict[str, Any]]) -> str:
    """The backdoor summary's note. `runs`: _summarise_backdoor's, each with `merged_from`
    when it came from another file (--merge)."""
    sources = {r.get("merged_from") for r in runs.values()}
    where = SAME_RUN if len(sources) <= 1 else SAME_SEED
    return (
        "backdoor_accuracy and main_task_loss_pp are means over the seeds of each seed's "
        "worse attack variant (unboosted and boosted); main-task loss = FedAvg's no-attack "
        f"accuracy minus the defended model's accuracy under attack, {where}; "
        "target_met_backdoor requires both targets on every seed, "
        "target_met_backdoor_on_mean on the means, and backdoor_seeds_meeting_target counts "
        "the seeds that meet both. Each defence is "
        "summarised over the seeds it was run on (seeds_complete in backdoor_by_defense; "
        "backdoor_seeds_complete for the headline)"
    )


def _summarise(
    args: argparse.Namespace, base: SimConfig, rows: list[dict[str, Any]], complete: bool
) -> dict[str, Any]:
    matrix = [r for r in rows if r["kind"] == "matrix"]
    clean = {r["aggregator"]: r["final_accuracy"] for r in matrix if r["attack"] is None}
    fedavg_clean = clean.get("fedavg")
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for r in matrix:
        if r["attack"] is None:
            continue
        key = f"{int(round(100 * r['malicious']))}pct"
        table.setdefault(key, {}).setdefault(r["aggregator"], {})[r["attack"]] = r["final_accuracy"]

    def worst(agg: str, key: str) -> tuple[float | None, str | None]:
        cells = table.get(key, {}).get(agg, {})
        vals = [(v, a) for a, v in cells.items() if v is not None]
        if not vals:
            return None, None
        v, a = min(vals)
        return v, a

    per_agg: dict[str, Any] = {}
    # Every aggregator with matrix runs, merged ones included, in order of first appearance.
    for agg in dict.fromkeys(r["aggregator"] for r in matrix):
        entry: dict[str, Any] = {"no_attack_accuracy": clean.get(agg)}
        for key in ("10pct", "20pct"):
            w, a = worst(agg, key)
            entry[f"worst_case_accuracy_{key}"] = w
            entry[f"worst_case_attack_{key}"] = a
            entry[f"worst_case_fraction_of_fedavg_{key}"] = (
                w / fedavg_clean if w is not None and fedavg_clean else None
            )
            own = clean.get(agg)
            entry[f"worst_case_fraction_of_own_{key}"] = w / own if w is not None and own else None
        per_agg[agg] = entry
    default = per_agg.get(DEFAULT_ROBUST, {})
    headline = default.get("worst_case_fraction_of_fedavg_20pct")

    backdoor = _summarise_backdoor(args, rows)
    head = backdoor["by_defense"].get(args.backdoor_defenses[0], {})
    backdoor_acc, main_loss = head.get("mean_backdoor_accuracy"), head.get("mean_main_task_loss_pp")
    literal = _literal_dp(backdoor["by_defense"])
    lit = backdoor["by_defense"].get(literal, {}) if literal else {}
    screened = _screen_weak_dp(backdoor["by_defense"])
    weak = backdoor["by_defense"].get(screened, {}) if screened else {}
    headline_dp = "dp" in _stages(args.backdoor_defenses[0])
    return {
        "benchmark": "robustness",
        "complete": complete,
        "date": utc_now()[:10],
        "finished_at": utc_now(),
        "machine": machine_info(),
        "model": base.model_name,
        "model_note": MLP_MODEL_NOTE if base.model_name == "mlp" else "as the issue asks",
        "config": _setting(base),
        "default_robust_aggregator": DEFAULT_ROBUST,
        "worst_case_accuracy_fraction_20pct": headline,
        "worst_case_accuracy_fraction_20pct_of_own_no_attack": default.get(
            "worst_case_fraction_of_own_20pct"
        ),
        "worst_case_attack_20pct": default.get("worst_case_attack_20pct"),
        "target_worst_case_fraction": TARGET_FRACTION,
        "target_met_worst_case": None if headline is None else headline >= TARGET_FRACTION,
        "no_attack_accuracy": clean,
        "accuracy": table,
        "per_aggregator": per_agg,
        "backdoor_accuracy": backdoor_acc,
        "main_task_loss_pp": main_loss,
        "backdoor_defense": args.backdoor_defenses[0],
        "backdoor_attack": args.backdoor_attacks[0],
        "backdoor_attacks": args.backdoor_attacks,
        "backdoor_seeds": args.backdoor_seeds,
        "backdoor_seeds_complete": head.get("seeds_complete"),
        "backdoor_accuracy_per_seed": head.get("worst_backdoor_accuracy_per_seed"),
        "main_task_loss_pp_per_seed": head.get("worst_main_task_loss_pp_per_seed"),
        "backdoor_accuracy_max_over_seeds": head.get("max_backdoor_accuracy"),
        "main_task_loss_pp_max_over_seeds": head.get("max_main_task_loss_pp"),
        "backdoor_defense_no_attack_accuracy_per_seed": head.get("no_attack_accuracy_per_seed"),
        "backdoor_fedavg_no_attack_accuracy_per_seed": backdoor["fedavg_no_attack_per_seed"],
        "backdoor_note": backdoor_note(backdoor["runs"]),
        "backdoor_malicious": args.backdoor_malicious,
        "backdoor_rounds": args.backdoor_rounds,
        "target_backdoor_accuracy": TARGET_BACKDOOR,
        "target_main_task_loss_pp": TARGET_MAIN_LOSS_PP,
        "target_met_backdoor": head.get("target_met_every_seed"),
        "target_met_backdoor_on_mean": head.get("target_met_on_mean"),
        "backdoor_seeds_meeting_target": head.get("seeds_meeting_target"),
        "backdoor_defense_has_dp": headline_dp,
        **(
            {
                "backdoor_dp_note": WEAK_DP_NOTE,
                "backdoor_dp_noise_to_signal": head.get("dp_noise_to_signal"),
                "backdoor_dp_noise_norm_over_clip": head.get("dp_noise_norm_over_clip"),
            }
            if headline_dp
            else {}
        ),
        # Norm bounding + weak DP behind the screen: the best such defence run (_screen_weak_dp).
        "backdoor_screen_weak_dp_defense": screened,
        "backdoor_screen_weak_dp_accuracy": weak.get("mean_backdoor_accuracy"),
        "backdoor_screen_weak_dp_main_task_loss_pp": weak.get("mean_main_task_loss_pp"),
        "backdoor_screen_weak_dp_max_backdoor_accuracy": weak.get("max_backdoor_accuracy"),
        "backdoor_screen_weak_dp_max_main_task_loss_pp": weak.get("max_main_task_loss_pp"),
        "backdoor_screen_weak_dp_target_met_every_seed": weak.get("target_met_every_seed"),
        "backdoor_screen_weak_dp_seeds_meeting_target": weak.get("seeds_meeting_target"),
        "backdoor_screen_weak_dp_noise_to_signal": weak.get("dp_noise_to_signal"),
        **({"backdoor_screen_weak_dp_note": WEAK_DP_NOTE} if screened else {}),
        "backdoor_literal_normbound_dp_defense": literal,
        "backdoor_literal_normbound_dp_accuracy": lit.get("mean_backdoor_accuracy"),
        "backdoor_literal_normbound_dp_main_task_loss_pp": lit.get("mean_main_task_loss_pp"),
        **(
            {
                "backdoor_literal_normbound_dp_note": (
                    "no report screen: the defence whose first stage is dp with the lowest mean "
                    "backdoor accuracy over the seeds"
                )
            }
            if literal
            else {}
        ),
        "backdoor_literal_normbound_dp": lit or None,
        "backdoor_by_defense": backdoor["by_defense"],
        "backdoor_runs": backdoor["runs"],
        "runs": rows,
        "merged_from": [Path(p).name for p in args.merge],
        "command": command_line(__file__, getattr(args, "argv", None)),
        "quick": bool(args.quick),
    }


def _plot(summary: dict[str, Any], path: Path, aggregators: list[str], attacks: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [k for k in ("10pct", "20pct") if k in summary["accuracy"]]
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 0.5 * len(aggregators) + 2.5))
    axes = np.atleast_1d(axes)
    for ax, key in zip(axes, keys, strict=True):
        grid = np.full((len(aggregators), len(attacks) + 1), np.nan)
        for i, agg in enumerate(aggregators):
            grid[i, 0] = summary["no_attack_accuracy"].get(agg) or np.nan
            for j, att in enumerate(attacks):
                v = summary["accuracy"][key].get(agg, {}).get(att)
                grid[i, j + 1] = np.nan if v is None else v
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    color="w" if v < 0.6 else "k",
                    fontsize=8,
                )
        ax.set_xticks(range(len(attacks) + 1), ["none", *attacks], rotation=35, ha="right")
        ax.set_yticks(range(len(aggregators)), aggregators if ax is axes[0] else [])
        ax.set_title(f"final test accuracy, {key.replace('pct', '%')} malicious")
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _plot_backdoor(summary: dict[str, Any], path: Path) -> bool:
    """Per defence: each seed's backdoor accuracy (%) and main-task loss (pp), worse attack
    variant, with the mean and the targets. False (no file) if no defence has complete seeds."""
    by = {
        name: d
        for name, d in summary.get("backdoor_by_defense", {}).items()
        if d.get("mean_backdoor_accuracy") is not None
    }
    if not by:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(by)
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * len(names) + 2.0), sharey=True)
    panels = [
        ("worst_backdoor_accuracy_per_seed", 100.0, 100.0 * TARGET_BACKDOOR, "backdoor accuracy %"),
        ("worst_main_task_loss_pp_per_seed", 1.0, TARGET_MAIN_LOSS_PP, "main-task loss, pp"),
    ]
    for ax, (key, scale, target, label) in zip(axes, panels, strict=True):
        for i, name in enumerate(names):
            vals = [scale * v for v in by[name][key] if v is not None]
            ax.scatter(vals, [i] * len(vals), s=14, alpha=0.6, color="tab:blue")
            ax.scatter([sum(vals) / len(vals)], [i], marker="|", s=300, color="k")
        ax.axvline(target, color="tab:red", linestyle="--", linewidth=1, label="target")
        ax.set_xlabel(label)
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_yticks(range(len(names)), names, fontsize=7)
    axes[0].invert_yaxis()
    seeds = max(len(by[n]["seeds_complete"]) for n in names)
    malicious = summary.get("backdoor_malicious")
    fig.suptitle(
        f"backdoor, {malicious} malicious, {summary.get('model')}: dots are seeds (up to "
        f"{seeds}), bars the mean"
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def _setting(base: SimConfig) -> dict[str, Any]:
    """The config a results file records: `base`'s, but for what its runs vary."""
    return {k: v for k, v in base.as_dict().items() if k not in ("aggregator", "attack")}


def _same_setting(saved: dict[str, Any], setting: dict[str, Any]) -> bool:
    """Whether a results file's recorded config is `setting`."""
    recorded = dict(saved.get("config", {}))
    # Files written between 11d3449 and 792bb93 record `dataclasses.asdict`, with
    # "plugins": [] for a run without plugins; as_dict (the setting) leaves the key out.
    if recorded.get("plugins") == []:
        del recorded["plugins"]
    # Fields SimConfig gained after that run count at their defaults (e.g. `fleet`).
    return config_matches(recorded, setting, SimConfig().as_dict())


# The backdoor options, by argparse dest, that --resummarise takes from the file's summary.
BACKDOOR_FLAGS = {
    "backdoor_seeds": "--backdoor-seeds",
    "backdoor_defenses": "--backdoor-defenses",
    "backdoor_attacks": "--backdoor-attacks",
    "backdoor_malicious": "--backdoor-malicious",
    "backdoor_rounds": "--backdoor-rounds",
}


def _recorded_backdoor_options(saved: dict[str, Any]) -> dict[str, Any]:
    """The backdoor options a results file's summary records, by argparse dest; an option it
    does not record is left out (files written before backdoor_seeds and backdoor_attacks were
    recorded). The defences are backdoor_by_defense's keys after fedavg, which
    `_summarise_backdoor` puts first, with backdoor_defense (the first defence) in front if it
    is fedavg itself."""
    found: dict[str, Any] = {
        dest: saved[dest]
        for dest in ("backdoor_seeds", "backdoor_attacks", "backdoor_malicious", "backdoor_rounds")
        if dest in saved
    }
    by_defense, headline = saved.get("backdoor_by_defense"), saved.get("backdoor_defense")
    if isinstance(by_defense, dict) and by_defense:
        defenses = list(by_defense)[1:]
        if headline == "fedavg":
            defenses = ["fedavg", *defenses]
        if defenses[:1] == [headline]:
            found["backdoor_defenses"] = defenses
    return found


def _same_backdoor_option(dest: str, a: Any, b: Any) -> bool:
    """Whether two values of backdoor option `dest` summarise alike: the defences by their first
    (the headline) and the set `_summarise_backdoor` summarises, fedavg included."""
    if dest == "backdoor_defenses":
        return a[:1] == b[:1] and list(dict.fromkeys(["fedavg", *a])) == list(
            dict.fromkeys(["fedavg", *b])
        )
    return bool(a == b)


def _merged_rows(paths: list[str], setting: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of the results files `paths` (--merge), each run with `setting`."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        saved = json.loads(Path(path).read_text())
        if not _same_setting(saved, setting):
            raise SystemExit(f"{path} was run with another setting; not merging it")
        seed = saved["config"]["seed"]
        # A run keeps the file it was first merged from, so that provenance survives merging
        # a merged file again (e.g. the previous robustness.json).
        rows.extend(
            {**r, "seed": r.get("seed", seed), "merged_from": r.get("merged_from", Path(path).name)}
            for r in saved["runs"]
        )
    return rows


def _shown(value: Any) -> str:
    """An option's value as its flag takes it: a list as its words."""
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def _seeds(words: list[str]) -> list[int]:
    """--backdoor-seeds values: integers and inclusive ranges, `0-19` or `0 1 2 10-19`."""
    seeds: list[int] = []
    for word in words:
        first, dash, last = word.partition("-")
        try:
            if dash and first:
                lo, hi = int(first), int(last)
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(word))
        except ValueError:
            raise SystemExit(
                f"--backdoor-seeds: {word!r} is not a seed or a range like 0-19"
            ) from None
    return list(dict.fromkeys(seeds))


def results_path(args: argparse.Namespace) -> Path:
    """This run's JSON in the --out folder: <--name>.json, <--name>_quick.json for --quick."""
    return Path(args.out) / (quick_stem(args.name, args.quick) + ".json")


def main(argv: list[str] | None = None) -> int:
    git = git_provenance()  # the code this run starts from
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="mlp", help="zoo model (mlp, or mnist_cnn: slow)")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--local-epochs", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    ap.add_argument("--aggregators", nargs="+", default=AGGREGATORS)
    ap.add_argument("--attacks", nargs="+", default=ATTACKS)
    ap.add_argument("--fractions", nargs="+", type=float, default=FRACTIONS)
    ap.add_argument(
        "--clean-only",
        nargs="*",
        default=[],
        help="aggregators run only without attack (e.g. fedavg as the baseline of a re-run)",
    )
    ap.add_argument("--backdoor-defenses", nargs="+", default=BACKDOOR_DEFENSES)
    ap.add_argument(
        "--backdoor-attacks",
        "--backdoor-attack",
        nargs="+",
        default=BACKDOOR_ATTACKS,
        help="backdoor variants; the headline is the worse one per seed",
    )
    ap.add_argument(
        "--backdoor-seeds",
        nargs="+",
        default=[str(s) for s in BACKDOOR_SEEDS],
        metavar="SEEDS",
        help="seeds of the backdoor runs (mean and each seed reported): integers or inclusive "
        "ranges, e.g. 0-19 (default 0-9)",
    )
    ap.add_argument("--backdoor-malicious", type=float, default=0.1)
    ap.add_argument("--backdoor-rounds", type=int, default=30)
    ap.add_argument("--skip-backdoor", action="store_true")
    ap.add_argument("--skip-matrix", action="store_true", help="only the backdoor runs")
    ap.add_argument("--name", default="robustness", help="results file stem")
    ap.add_argument(
        "--merge",
        nargs="*",
        default=[],
        help="earlier result JSONs of the same setting whose runs join this summary",
    )
    ap.add_argument(
        "--reuse-backdoor",
        action="store_true",
        help="take backdoor runs from --merge files instead of re-running them",
    )
    ap.add_argument(
        "--merge-only",
        action="store_true",
        help="run nothing: summarise the --merge files' runs (a defence is summarised over the "
        "seeds it has complete runs for)",
    )
    ap.add_argument(
        "--resummarise",
        action="store_true",
        help="run nothing: recompute the summary of the results file --name/--out names from the "
        "runs it holds, with the setting this invocation gives (give the file's own: another is "
        "refused) and the --backdoor-* options the file records (one given with another value "
        "is refused), keeping its date, machine, command and merged_from; the file records when "
        "and by which command",
    )
    ap.add_argument("--replot", action="store_true", help="redraw the plot from the saved JSON")
    ap.add_argument("--workers", type=int, default=2, help="simulations run in parallel")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a smoke run (minutes)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    args.backdoor_seeds = _seeds(args.backdoor_seeds)
    args.argv = argv

    base = SimConfig(
        dataset="mnist",
        model=args.model,
        clients=args.clients,
        per_round=args.per_round,
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        partition="dirichlet",
        alpha=args.alpha,
        eval_every=5,
        seed=args.seed,
    )
    if args.quick:
        base = replace(base, clients=20, per_round=5, rounds=3, eval_every=1)
        args.aggregators = ["fedavg", DEFAULT_ROBUST]
        args.attacks = ["signflip", "alie"]
        args.fractions = [0.2]
        args.backdoor_rounds = 3
        args.backdoor_defenses = args.backdoor_defenses[:1]
        args.backdoor_seeds = [args.seed]
    json_path = results_path(args)
    out_dir = json_path.parent
    name = json_path.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.replot:
        saved = json.loads(json_path.read_text())
        _plot_backdoor(saved, out_dir / f"{name}_backdoor.png")
        aggs = list(saved["no_attack_accuracy"])
        _plot(
            saved,
            out_dir / f"{name}.png",
            aggs,
            [
                a
                for a in ATTACKS
                if any(a in row for cells in saved["accuracy"].values() for row in cells.values())
            ],
        )
        return 0
    if args.resummarise:
        saved = json.loads(json_path.read_text())
        if not _same_setting(saved, _setting(base)):
            raise SystemExit(f"{json_path} was run with another setting: give its own options")
        # The backdoor summary follows the file's own backdoor options, as far as it records
        # them (before, this invocation's: without --backdoor-seeds a 20-seed file was rewritten
        # as a summary of seeds 0-9). One given here with another value is refused.
        recorded = _recorded_backdoor_options(saved)
        ap.set_defaults(**dict.fromkeys(BACKDOOR_FLAGS))  # None: not given (even --quick's)
        flags = ap.parse_args(argv)
        other = []
        for dest, value in recorded.items():
            given = getattr(args, dest)
            if getattr(flags, dest) is not None and not _same_backdoor_option(dest, given, value):
                other.append(f"{BACKDOOR_FLAGS[dest]} {_shown(value)} (given {_shown(given)})")
        if other:
            raise SystemExit(
                f"{json_path} records other backdoor options: {'; '.join(other)}; leave them "
                "out to summarise with the file's own"
            )
        for dest, value in recorded.items():
            setattr(args, dest, value)
        summary = _summarise(args, base, saved["runs"], bool(saved.get("complete")))
        # The file keeps the config it recorded (a field SimConfig gained since counts at its
        # default, as in --merge).
        summary["config"] = saved["config"]
        # The runs' code is the file's (absent: not recorded); the summary's is this one's.
        summary.pop("git_commit", None)
        summary.pop("git_dirty", None)
        for key in (
            "date", "finished_at", "machine", "command", "merged_from", "quick", "git_commit",
            "git_dirty",
        ):  # fmt: skip
            if key in saved:
                summary[key] = saved[key]
        summary["resummarised"] = {
            "at": utc_now(),
            "command": command_line(__file__, argv),
            **git,
            "note": "summary recomputed from the file's own runs (no run repeated) with its "
            "own backdoor options; the backdoor targets are compared with TARGET_TOLERANCE_PP",
        }
        write_results(json_path, summary, indent=1, stamp=False)
        print(f"wrote {json_path}")
        return 0
    jobs = _jobs(args, base)
    rows = _merged_rows(args.merge, _setting(base))
    # A matrix run already in a merged file (same kind, aggregator, attack, fraction, seed) is
    # not repeated: the runs are deterministic given the setting and seed. Backdoor runs are
    # run afresh and replace merged ones, unless --reuse-backdoor (merge only files written by
    # the same code, since the loss compares runs across defences).
    done = {_key(r) for r in rows}
    rows = list({_key(r): r for r in rows}.values())
    jobs = [
        j
        for j in jobs
        if _key(j) not in done or (j["kind"] == "backdoor" and not args.reuse_backdoor)
    ]
    if args.merge_only:
        jobs = []

    from tqdm import tqdm

    ctx = mp.get_context("spawn")
    with ctx.Pool(args.workers) as pool, tqdm(total=len(jobs), desc="robustness runs") as bar:
        for row in pool.imap_unordered(_run, jobs):
            rows.append(row | git)  # each run records the code it ran (merged ones keep theirs)
            bar.set_postfix_str(
                f"{row['aggregator'][:18]} {row['attack']} acc={row['final_accuracy']:.3f}"
            )
            bar.update(1)
            write_results(json_path, _summarise(args, base, rows, False), indent=1)
    summary = _summarise(args, base, rows, True)
    write_results(json_path, summary, indent=1)
    if not args.skip_matrix:
        _plot(summary, out_dir / f"{name}.png", list(summary["per_aggregator"]), args.attacks)
    _plot_backdoor(summary, out_dir / f"{name}_backdoor.png")
    print(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "worst_case_accuracy_fraction_20pct",
                    "worst_case_attack_20pct",
                    "no_attack_accuracy",
                    "backdoor_accuracy",
                    "main_task_loss_pp",
                )
            },
            indent=1,
        )
    )
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
