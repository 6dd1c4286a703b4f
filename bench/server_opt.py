"""Server optimizers on the headline compressed MNIST-CNN run: FedAvg (server step 1 and 2),
FedAvgM, FedAdam and FedYogi, same clients, same codec, same seed; accuracy per round and bytes.

Every arm is the `bench/bandwidth_accuracy.py` compressed configuration (100 devices,
Dirichlet 0.5, 10 a round, E=5, B=10, top-k 0.5% global, 4-bit, error feedback, 20 rounds); only
the aggregator spec and the server step change. Upload bytes differ only through what the
devices' updates look like, so the table is accuracy at (nearly) equal bytes.

    python bench/server_opt.py                    # all arms, seed 0
    python bench/server_opt.py --quick            # 2 rounds, to bench/results/server_opt_quick.json
    python bench/server_opt.py --arms fedavg adam:lr=0.003 --seed 1 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import RESULTS, command_line, git_provenance, out_file, write_results  # noqa: E402

CANONICAL = RESULTS / "server_opt.json"

# (aggregator spec, server_lr): FedAvg at step 1 and at the headline's step 2, then the
# optimizers at step 1 (their own lr is the step size).
DEFAULT_ARMS = (
    "fedavg@1",
    "fedavg@2",
    "avgm:momentum=0.5,lr=1",
    "avgm:momentum=0.9,lr=0.2",
    "adam:lr=0.001",
    "adam:lr=0.003",
    "adam:lr=0.01",
    "adam:lr=0.03",
    "yogi:lr=0.003",
    "yogi:lr=0.01",
    "yogi:lr=0.03",
)


def _arm(text: str) -> tuple[str, float]:
    spec, _, lr = text.partition("@")
    return spec, float(lr) if lr else 1.0


def results_path(args: argparse.Namespace) -> Path:
    """Where this run's JSON goes (a --quick run never writes CANONICAL unless --out names it)."""
    return out_file(args.out, CANONICAL, args.quick)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--arms",
        nargs="+",
        default=list(DEFAULT_ARMS),
        help="aggregator specs, each optionally @SERVER_LR (default 1)",
    )
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--backend",
        default="pool",
        help="simulator backend (default: %(default)s). The backends are not bit-identical "
        "(their float operations run in another order), so another backend gives slightly "
        "different accuracies, not the same results",
    )
    ap.add_argument("--quick", action="store_true", help="2 rounds per arm, to check it runs")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results file (default bench/results/server_opt.json; with --quick "
        "bench/results/server_opt_quick.json)",
    )
    git_provenance()  # the code this run starts from
    args = ap.parse_args(argv)
    args.out = results_path(args)

    from mobile_sim.report import machine_info
    from mobile_sim.runner import SimConfig, run_simulation

    base = SimConfig(
        rounds=2 if args.quick else args.rounds,
        topk=0.005,
        bits=4,
        scope="global",
        seed=args.seed,
        backend=args.backend,
    )
    arms: dict[str, Any] = {}
    t_start = time.perf_counter()
    for text in args.arms:
        spec, server_lr = _arm(text)
        cfg = replace(base, aggregator=spec, server_lr=server_lr)
        t0 = time.perf_counter()
        res = run_simulation(cfg, label=text)
        accs = [r.accuracy for r in res.records]
        arms[text] = {
            "aggregator": spec,
            "server_lr": server_lr,
            "final_accuracy": res.final_accuracy,
            "best_accuracy": max(a for a in accs if a is not None),
            "accuracy_per_round": accs,
            "upload_bytes": res.total_up,
            "wall_s": time.perf_counter() - t0,
        }
        print(f"{text:28s} final {res.final_accuracy:.4f}  upload {res.total_up:,} B", flush=True)
    best = max(arms, key=lambda k: arms[k]["final_accuracy"])
    doc = {
        "command": command_line(__file__, argv),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "load_average_at_end": os.getloadavg(),
        "quick": bool(args.quick),
        "settings": {
            "dataset": "mnist",
            "model": "mnist_cnn",
            "clients": base.clients,
            "per_round": base.per_round,
            "rounds": base.rounds,
            "local_epochs": base.local_epochs,
            "batch_size": base.batch_size,
            "partition": f"dirichlet({base.alpha})",
            "codec": "top-k 0.005 global, 4-bit, error feedback",
            "seed": args.seed,
            # Not bit-identical across backends: a run is reproduced on the same backend.
            "backend": args.backend,
        },
        "arms": arms,
        "best_final": best,
        "wall_s": time.perf_counter() - t_start,
    }
    write_results(args.out, doc)
    print(f"best final accuracy: {best} ({arms[best]['final_accuracy']:.4f}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
