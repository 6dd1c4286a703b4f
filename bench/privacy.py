"""Privacy-utility benchmark: accuracy of user-level DP-FedAvg at epsilon in {1, 2, 4, 8}, delta 1e-5.

DP needs many devices per round: the noise on the mean has stddev z·C / m for m reports, and
its norm grows with sqrt(d). So this runs sklearn's digits (1,438 training images) with the
zoo's `digits_mlp` (2,410 parameters) over 1,400 simulated devices of about one image each
(IID), 140 devices per round (fixed-size sampling, q = 0.1), for a fixed number of rounds.
For each epsilon the noise multiplier z is calibrated with dp_accounting (RDP, replace-one,
sampling without replacement) so that exactly that many rounds fit the budget; the DP
aggregator reports epsilon each round and stops the task when the budget is spent. Uploads
are compressed (top-k 10%, 4 bits, error feedback); clipping and noise are on the server.
Clip norms C in {1, 2} are swept (C = 1 is the headline, fixed beforehand), over two seeds.
Baselines in the same run: FedAvg without DP, and clipping alone (no noise).

    python bench/privacy.py             # the full sweep (about 20 minutes on 2 cores)
    python bench/privacy.py --quick     # a smoke run, to bench/results/privacy_quick.json
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

from bench._common import command_line, git_provenance, quick_stem, write_results  # noqa: E402
from coordinator.privacy import FixedSizeSampling, calibrate_noise_multiplier  # noqa: E402
from mobile_sim.report import machine_info, utc_now  # noqa: E402
from mobile_sim.runner import SimConfig  # noqa: E402

EPSILONS = [1.0, 2.0, 4.0, 8.0]
DELTA = 1e-5


def _run(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from coordinator.engine import find_measurement
    from mobile_sim.runner import run_simulation

    torch.set_num_threads(1)
    logging.getLogger("absl").setLevel(logging.ERROR)
    cfg = SimConfig.from_dict(job["config"])
    t0 = time.perf_counter()
    res = run_simulation(cfg, progress=False)
    last = res.records[-1].measurements if res.records else {}
    return {
        **{k: v for k, v in job.items() if k != "config"},
        "final_accuracy": res.final_accuracy,
        "accuracy_by_eval": [r.accuracy for r in res.records if r.accuracy is not None],
        "rounds_run": len(res.records),
        "epsilon_spent": find_measurement(last, "epsilon"),
        "budget_exhausted": find_measurement(last, "budget_exhausted"),
        "clipped_last_round": find_measurement(last, "clipped"),
        "noise_stddev_on_mean": find_measurement(last, "noise_stddev"),
        "epsilon_by_round": [find_measurement(r.measurements, "epsilon") for r in res.records],
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def results_path(args: argparse.Namespace) -> Path:
    """This run's JSON in the --out folder: privacy.json, privacy_quick.json for --quick."""
    return Path(args.out) / (quick_stem("privacy", args.quick) + ".json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clients", type=int, default=1400)
    ap.add_argument("--per-round", type=int, default=140)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument(
        "--clips",
        nargs="+",
        type=float,
        default=[1.0, 2.0],
        help="L2 clip norms C to sweep; the first is the headline",
    )
    ap.add_argument("--lr", type=float, default=0.5, help="local SGD learning rate")
    ap.add_argument("--epsilons", nargs="+", type=float, default=EPSILONS)
    ap.add_argument("--delta", type=float, default=DELTA)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a smoke run (a minute or two)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    git_provenance()  # the code this run starts from
    args = ap.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)

    base = SimConfig(
        dataset="digits",
        model="digits_mlp",
        clients=args.clients,
        per_round=args.per_round,
        rounds=args.rounds,
        partition="iid",
        local_epochs=1,
        batch_size=10,
        lr=args.lr,
        topk=0.1,
        bits=4,
        eval_every=max(1, args.rounds // 8),
    )
    if args.quick:
        base = replace(base, clients=300, per_round=30, rounds=4, eval_every=2)
        args.epsilons = [8.0]
        args.seeds = [0]
        args.clips = args.clips[:1]
    sampling = FixedSizeSampling(base.clients, base.per_round)
    jobs: list[dict[str, Any]] = []
    noise: dict[float, float] = {}
    for eps in args.epsilons:
        noise[eps] = calibrate_noise_multiplier(eps, args.delta, base.rounds, sampling)
    for seed in args.seeds:
        common = replace(base, seed=seed)
        jobs.append(
            {
                "label": "no_dp",
                "epsilon": None,
                "clip": None,
                "seed": seed,
                "config": replace(common, aggregator="fedavg:uniform=1").as_dict(),
            }
        )
        for clip in args.clips:
            jobs.append(
                {
                    "label": f"clip_only_C{clip:g}",
                    "epsilon": None,
                    "clip": clip,
                    "seed": seed,
                    "config": replace(
                        common, aggregator=f"normbound:{clip}+fedavg:uniform=1"
                    ).as_dict(),
                }
            )
            for eps in args.epsilons:
                spec = (
                    f"dp:clip={clip},z={noise[eps]!r},population={base.clients},"
                    f"sample={base.per_round},delta={args.delta},eps={eps},"
                    f"denom={base.per_round},seed={seed}+fedavg"
                )
                jobs.append(
                    {
                        "label": f"dp_eps_{eps:g}_C{clip:g}",
                        "epsilon": eps,
                        "clip": clip,
                        "seed": seed,
                        "noise_multiplier": noise[eps],
                        "aggregator": spec,
                        "config": replace(common, aggregator=spec).as_dict(),
                    }
                )

    from tqdm import tqdm

    rows: list[dict[str, Any]] = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.workers) as pool, tqdm(total=len(jobs), desc="privacy runs") as bar:
        for row in pool.imap_unordered(_run, jobs):
            rows.append(row)
            bar.set_postfix_str(f"{row['label']} acc={row['final_accuracy']:.3f}")
            bar.update(1)

    def mean_acc(label: str) -> float | None:
        vals = [r["final_accuracy"] for r in rows if r["label"] == label]
        return sum(vals) / len(vals) if vals else None

    by_clip = {
        f"{clip:g}": {f"{eps:g}": mean_acc(f"dp_eps_{eps:g}_C{clip:g}") for eps in args.epsilons}
        for clip in args.clips
    }
    accuracy = by_clip[f"{args.clips[0]:g}"]
    summary = {
        "benchmark": "privacy",
        "date": utc_now()[:10],
        "finished_at": utc_now(),
        "machine": machine_info(),
        "guarantee": "user-level (epsilon, delta)-DP of the published models against anyone who "
        "sees them; replace-one neighbouring relation, fixed-size uniform sampling",
        "delta": args.delta,
        "simulated_devices": base.clients,
        "devices_per_round": base.per_round,
        "sampling_fraction": base.per_round / base.clients,
        "rounds": base.rounds,
        "clip_norm": args.clips[0],
        "clip_norms_swept": args.clips,
        "dataset": base.dataset,
        "model": base.model_name,
        "accounting": "dp_accounting RDP, SampledWithoutReplacementDpEvent(N, m, "
        "GaussianDpEvent(z/2)) self-composed over the rounds",
        "noise_multipliers": {f"{k:g}": v for k, v in noise.items()},
        "accuracy_by_epsilon": accuracy,
        "accuracy_no_dp": mean_acc("no_dp"),
        "accuracy_clip_only": mean_acc(f"clip_only_C{args.clips[0]:g}"),
        "accuracy_by_clip_and_epsilon": by_clip,
        "accuracy_clip_only_by_clip": {f"{c:g}": mean_acc(f"clip_only_C{c:g}") for c in args.clips},
        "note": "accuracy is the mean over seeds of the final test accuracy; the headline "
        "accuracy_by_epsilon uses the first clip norm, fixed before the run (picking the best "
        "clip per epsilon after the fact would itself be tuning on private data)",
        "seeds": args.seeds,
        "config": {k: v for k, v in base.as_dict().items() if k not in ("aggregator", "seed")},
        "runs": rows,
        "command": command_line(__file__, argv),
        "quick": bool(args.quick),
    }
    json_path = results_path(args)
    write_results(json_path, summary, indent=1)
    _plot(summary, json_path.with_suffix(".png"))
    print(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "accuracy_by_clip_and_epsilon",
                    "accuracy_no_dp",
                    "accuracy_clip_only_by_clip",
                    "noise_multipliers",
                )
            },
            indent=1,
        )
    )
    print(f"wrote {json_path}")
    return 0


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for clip, table in summary["accuracy_by_clip_and_epsilon"].items():
        eps = [float(k) for k, v in table.items() if v is not None]
        acc = [table[f"{e:g}"] for e in eps]
        ax.plot(eps, acc, "o-", label=f"DP-FedAvg, C={clip}")
    if summary["accuracy_no_dp"] is not None:
        ax.axhline(summary["accuracy_no_dp"], color="k", ls="--", label="no DP")
    if summary["accuracy_clip_only"] is not None:
        ax.axhline(
            summary["accuracy_clip_only"],
            color="gray",
            ls=":",
            label=f"clipping only, C={summary['clip_norm']:g}",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"epsilon (delta = {summary['delta']:g})")
    ax.set_ylabel("test accuracy")
    ax.set_title(
        f"{summary['simulated_devices']} devices, {summary['devices_per_round']}/round, "
        f"{summary['rounds']} rounds"
    )
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
