"""`plume sim`: run a simulated fleet and print per-round accuracy and bandwidth."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "config_from_args"]

_EXAMPLES = """\
examples:
  plume sim --dataset mnist --clients 100 --per-round 10 --rounds 20 --topk 0.01 --bits 4
  plume sim --dataset mnist --rounds 20 --compare-dense --out runs/mnist
  plume sim --dataset digits --clients 200 --per-round 50 --rounds 30 --local-epochs 2
  plume sim --attack alie --malicious 0.2 --aggregator median
  plume sim --secure --rounds 5 --model mlp                   # SecAgg+ with 10% dropouts
  plume sim --transport http --model mlp --rounds 5          # against a loopback coordinator
  plume sim report runs/mnist                                 # rebuild plots from a run
"""


def _aggregator_help() -> str:
    try:
        from coordinator.aggregators import AGGREGATOR_HELP
        from mobile_sim.attacks import ATTACKS
    except ImportError:
        return ""
    return (
        "\naggregators (--aggregator):\n"
        + "\n".join("  " + line for line in AGGREGATOR_HELP.splitlines())
        + "\n\nattacks (--attack NAME[:key=value,...]): "
        + ", ".join(sorted(ATTACKS))
        + "\n"
    )


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "sim",
        help="run a simulated fleet against the coordinator",
        description=(
            "Simulate a fleet of devices training a model with Plume. Every upload is really "
            "encoded (top-k + quantization + zstd with error feedback) and decoded by the "
            "coordinator's round engine; the table shows accuracy and bytes per round."
        ),
        epilog=_EXAMPLES + _aggregator_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=("run", "report"),
        help="'run' (default) a simulation, or 'report' to rebuild plots of RUN_DIR",
    )
    p.add_argument("run_dir", nargs="?", help="with 'report': the run's output folder")

    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", default="mnist", help="mnist | digits | shakespeare | synthetic")
    g.add_argument("--model", default=None, help="zoo model (default: mnist_cnn for mnist)")
    g.add_argument("--data-root", default=None, help="data folder (default $PLUME_DATA)")
    g.add_argument("--partition", default="dirichlet", help="iid | dirichlet | shards | natural")
    g.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    g.add_argument("--shards-per-client", type=int, default=2)

    g = p.add_argument_group("fleet and rounds")
    g.add_argument("--clients", type=int, default=100, help="registered devices")
    g.add_argument("--per-round", type=int, default=10, help="reports aggregated per round")
    g.add_argument("--rounds", type=int, default=20)
    g.add_argument("--over-selection", type=float, default=1.0, help="e.g. 1.3 selects 30%% extra")
    g.add_argument("--min-reports", type=int, default=1)
    g.add_argument(
        "--fleet",
        default="timing",
        choices=("off", "timing", "realistic"),
        help="simulated clock: 'timing' adds simulated seconds (everyone available, no "
        "dropouts); 'realistic' adds diurnal availability, tier dropouts and the deadline",
    )
    g.add_argument("--deadline", type=float, default=None, help="round deadline, simulated s")
    g.add_argument(
        "--selection-timeout",
        type=float,
        default=900.0,
        help="realistic: open a round with >= --min-reports devices this many simulated s "
        "after the first check-in, as `plume serve` does (default 900; -1: full cohort only)",
    )
    g.add_argument(
        "--checkin-period",
        type=float,
        default=900.0,
        help="realistic: each eligible device checks in once per this many simulated s, at a "
        "uniformly random time (default 900, at most 900; 0: instantly)",
    )
    g.add_argument(
        "--aggregator", default="fedavg", help="fedavg | median | trimmed_mean | krum ..."
    )
    g.add_argument("--server-lr", type=float, default=1.0)

    g = p.add_argument_group("local training")
    g.add_argument("--local-epochs", type=int, default=5, help="E")
    g.add_argument("--batch-size", type=int, default=10, help="B")
    g.add_argument("--lr", type=float, default=0.05)
    g.add_argument("--momentum", type=float, default=0.0)

    g = p.add_argument_group("compression")
    g.add_argument("--topk", type=float, default=0.01, help="fraction of coordinates kept")
    g.add_argument("--bits", type=int, default=4, help="1, 2, 4, 8 (quantized), 16 or 32")
    g.add_argument("--block", type=int, default=256, help="values per quantization scale")
    g.add_argument("--index", default="auto", help="auto | bitmap | rice | ef")
    g.add_argument("--topk-mode", default="exact", help="exact | sampled")
    g.add_argument("--scope", default="global", help="global | per_tensor")
    g.add_argument("--no-error-feedback", action="store_true")
    g.add_argument("--warmup-rounds", type=int, default=0, help="first rounds sent dense")
    g.add_argument("--clip-norm", type=float, default=None, help="L2 clip of each update")
    g.add_argument("--dense", action="store_true", help="run only the dense fp32 baseline")
    g.add_argument(
        "--compare-dense",
        action="store_true",
        help="also run the dense fp32 baseline in this invocation and plot both",
    )

    g = p.add_argument_group("secure aggregation (SecAgg+ on a shared coordinate set)")
    g.add_argument("--secure", action="store_true", help="run rounds under SecAgg+")
    g.add_argument(
        "--secure-fraction", type=float, default=None, help="|S_r| / d (default: SecureConfig's)"
    )
    g.add_argument(
        "--secure-upload-budget",
        type=int,
        default=None,
        metavar="BYTES",
        help="per-device upload over the four stages; |S_r| is the largest that fits each "
        "round's cohort (overrides --secure-fraction; e.g. 2x the plain frame)",
    )
    g.add_argument(
        "--secure-bits",
        type=int,
        default=None,
        help="bits per value before masking (default: SecureConfig's)",
    )
    g.add_argument(
        "--secure-clip",
        type=float,
        default=None,
        help="L2 clip of the sent vector (default: SecureConfig's)",
    )
    g.add_argument("--secure-dropout", type=float, default=0.1, help="dropout rate per round")
    g.add_argument("--group-size", type=int, default=None, help="grouped mode: SecAgg per group")
    g.add_argument("--group-aggregator", default="fedavg", help="robust aggregator over groups")
    g.add_argument("--dp-noise", default="none", help="distributed DP: none | gaussian | skellam")
    g.add_argument("--noise-multiplier", type=float, default=0.0)

    g = p.add_argument_group("threats")
    g.add_argument("--attack", default=None, help="signflip | scaling | alie | ipm | labelflip ...")
    g.add_argument("--malicious", type=float, default=0.0, help="fraction of malicious devices")

    g = p.add_argument_group("execution and output")
    g.add_argument("--transport", default="inproc", choices=("inproc", "http"))
    g.add_argument("--coordinator", default=None, help="with --transport http: a coordinator URL")
    g.add_argument("--backend", default="sequential", help="sequential | vectorized | pool | ray")
    g.add_argument(
        "--job-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="pool and ray: fail the round when one worker task runs this long (a stuck "
        "worker); default no limit. Use a generous multiple of the slowest honest task",
    )
    g.add_argument("--ort-fraction", type=float, default=0.0, help="share of ONNX-runtime devices")
    g.add_argument("--ort-artifacts", default=None, help="folder written by `plume export`")
    g.add_argument("--ort-tier", default=None, help="low | mid | high: that tier runs ONNX")
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads in this process (default: torch's choice); tiny models such as "
        "digits_mlp run fastest on 1",
    )
    g.add_argument("--eval-every", type=int, default=1)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default="runs/latest", help="output folder for JSON, CSV and plots")
    g.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_main)


def config_from_args(args: argparse.Namespace, **overrides: Any) -> Any:
    from .runner import SimConfig

    values: dict[str, Any] = {
        "dataset": args.dataset,
        "model": args.model,
        "clients": args.clients,
        "per_round": args.per_round,
        "rounds": args.rounds,
        "topk": args.topk,
        "bits": args.bits,
        "block": args.block,
        "index": args.index,
        "topk_mode": args.topk_mode,
        "scope": args.scope,
        "error_feedback": not args.no_error_feedback,
        "warmup_rounds": args.warmup_rounds,
        "clip_norm": args.clip_norm,
        "dense": args.dense,
        "local_epochs": args.local_epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "momentum": args.momentum,
        "partition": args.partition,
        "alpha": args.alpha,
        "shards_per_client": args.shards_per_client,
        "data_root": args.data_root,
        "over_selection": args.over_selection,
        "min_reports": args.min_reports,
        "server_lr": args.server_lr,
        "aggregator": args.aggregator,
        "attack": args.attack,
        "malicious": args.malicious,
        "backend": args.backend,
        "job_timeout_s": args.job_timeout,
        "ort_fraction": args.ort_fraction,
        "ort_artifacts": args.ort_artifacts,
        "ort_tier": args.ort_tier,
        "eval_every": args.eval_every,
        "seed": args.seed,
        "fleet": args.fleet,
        "deadline_s": args.deadline,
        "selection_timeout_s": None if args.selection_timeout < 0 else args.selection_timeout,
        "checkin_period_s": args.checkin_period,
    }
    values.update(overrides)
    return SimConfig(**values)


def _secure_config(args: argparse.Namespace, cfg: Any) -> Any:
    from coordinator.secure import SecureConfig
    from protocol.secagg import NoiseKind

    kinds = {
        "none": NoiseKind.NONE,
        "gaussian": NoiseKind.DISCRETE_GAUSSIAN,
        "skellam": NoiseKind.SKELLAM,
    }
    if args.dp_noise not in kinds:
        raise ValueError(f"--dp-noise must be one of {sorted(kinds)}, not {args.dp_noise!r}")
    noise = kinds[args.dp_noise]
    # Flags left out keep SecureConfig's defaults (the benchmarked ones).
    knobs = {
        key: value
        for key, value in (
            ("coord_fraction", args.secure_fraction),
            ("upload_budget", args.secure_upload_budget),
            ("value_bits", args.secure_bits),
            ("clip_norm", args.secure_clip),
        )
        if value is not None
    }
    return SecureConfig(
        **knobs,
        expected_dropout=args.secure_dropout,
        group_size=args.group_size,
        group_aggregator=args.group_aggregator,
        noise=noise,
        noise_multiplier=args.noise_multiplier,
        server_lr=cfg.server_lr,
        seed=cfg.seed,
    )


def _run_one(cfg: Any, args: argparse.Namespace, label: str) -> Any:
    if args.secure and not cfg.dense:
        from .secure import run_secure_simulation

        return run_secure_simulation(
            cfg,
            _secure_config(args, cfg),
            dropout=args.secure_dropout,
            progress=not args.no_progress,
            label=label or "secure",
            transport=args.transport,
        )
    if args.transport == "http":
        try:
            from .http_fleet import run_http_simulation
        except ImportError as exc:
            raise SystemExit(f"--transport http is unavailable in this build: {exc}") from exc
        return run_http_simulation(
            cfg, coordinator_url=args.coordinator, progress=not args.no_progress, label=label
        )
    from .runner import run_simulation

    return run_simulation(cfg, progress=not args.no_progress, label=label)


def _main(args: argparse.Namespace) -> int:
    if args.action == "report":
        return _report(args)
    if args.run_dir:
        print("error: a run folder is only taken by `plume sim report RUN_DIR`", file=sys.stderr)
        return 2
    from .report import plot_accuracy_vs_bytes, summary, write_run

    if args.threads is not None:
        if args.threads < 1:
            print("error: --threads must be at least 1", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(args.threads)
    try:
        cfg = config_from_args(args)
        first = "dense" if cfg.dense else ("secure" if args.secure else "compressed")
        runs = [(first, cfg)]
        if args.compare_dense and not cfg.dense:
            runs.append(("dense", config_from_args(args, dense=True)))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    results = []
    for label, c in runs:
        try:
            res = _run_one(c, args, label)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        write_run(res, out / label if len(runs) > 1 else out)
        results.append(res)
    plot = plot_accuracy_vs_bytes(
        [
            (r.label or label, [_as_dict(x) for x in r.records])
            for (label, _), r in zip(runs, results, strict=True)
        ],
        out / "accuracy_vs_upload_bytes.png",
        title=f"{cfg.dataset} / {cfg.model_name}",
    )
    _extra_plots(out, results)
    print()
    for r in results:
        s = summary(r)
        ratio = s["upload_ratio_vs_dense"]
        acc = s["final_accuracy"]
        line = f"{r.label or 'run'}: final accuracy {acc:.4f}" if acc is not None else r.label
        line += f", upload {s['total_upload_bytes']:,} B"
        if ratio:
            line += f" ({ratio:.1f}x less than dense fp32)"
        if s["sim_s"] is not None:
            line += f"; simulated {s['sim_s']:.0f} s in rounds + {s['wait_s']:.0f} s waiting"
        print(line)
    if len(results) == 2 and results[0].final_accuracy is not None:
        dense_up, comp_up = results[1].total_up, results[0].total_up
        delta_pp = 100 * ((results[0].final_accuracy or 0) - (results[1].final_accuracy or 0))
        print(
            f"compressed vs dense: {dense_up / comp_up:.1f}x fewer upload bytes, "
            f"accuracy {delta_pp:+.2f} pp"
        )
    print(f"wrote {out}/ (rounds.json, rounds.csv, ledger.csv) and {plot}")
    return 0


def _as_dict(rec: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(rec)


def _extra_plots(out: Path, results: list[Any]) -> None:
    """Bytes-per-round and round-duration plots, where the reporting extras are installed."""
    try:
        from . import report_extra
    except ImportError:
        return
    report_extra.plot_run_dir(out)


def _report(args: argparse.Namespace) -> int:
    if not args.run_dir:
        print("error: `plume sim report` needs RUN_DIR", file=sys.stderr)
        return 2
    from .report_extra import RunDirError, rebuild_run_dir

    try:
        paths = rebuild_run_dir(args.run_dir)
    except RunDirError as exc:  # missing folder, no rounds.json, or a corrupt one
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("rebuilt " + ", ".join(str(p) for p in paths))
    return 0
