"""Secure aggregation (SecAgg+) of compressed updates: cost per stage, bytes, and accuracy.

Part 1 (timing, bytes): one secure round over MNIST-CNN-sized updates (d = 1,663,370) for each
cohort size n, with `--dropout` of the devices dropping at a random stage. Inputs are real
MNIST-CNN deltas (a few devices trained once, reused). Reports client seconds per stage, server
seconds per stage and for unmasking, and upload bytes per device (all four stages) against the
plain compressed frame of the same deltas (top-k + quantization + zstd, the product default)
and against dense fp32.

Part 2 (accuracy): `--rounds` rounds of MNIST-CNN FL in plain compressed mode
(mobile_sim.runner) and in secure mode (mobile_sim.secure), same data, partition, model, local
training and cohorts (both draw round r's cohort the same way). The plain runner injects no
dropouts, so by default neither arm does in the accuracy comparison (`--acc-dropout 0`); a
secure-only dropout rate can be set to see what losing contributors costs. `--plain-from
FILE` reuses the plain arm of an earlier result with the same settings (for exploring secure
settings; the canonical run computes both arms): FILE's recorded `config` must be this run's,
a field SimConfig gained since FILE was written counting at its default. Such a run says so
in `plain_from` and `plain_arm_note` (which names every file the plain arm passed through).

    python bench/secagg.py                 # the issue's settings (long: run in the background)
    python bench/secagg.py --quick         # smoke run, a minute or two (to secagg_quick.json)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    RESULTS,
    command_line,
    config_matches,
    git_provenance,
    out_file,
    write_results,
)

TARGET_UPLOAD_RATIO = 2.0
TARGET_UNMASK_S = 1.0
TARGET_ACCURACY_PP = 1.0
TIMING_KEYS = (
    "timing", "timing_ran_at", "plain_frame_bytes", "dense_bytes", "reference_n",
    "upload_ratio_vs_plain", "upload_ratio_vs_dense", "server_unmask_s", "timing_git",
)  # fmt: skip
ACCURACY_KEYS = (
    "accuracy_ran_at", "config", "accuracy_plain", "accuracy_secure", "accuracy_gap_pp",
    "plain_upload_bytes_per_report", "secure_upload_bytes_per_contributor", "plain_curve",
    "secure_curve", "secure_aborted_rounds", "accuracy_settings", "plain_from", "plain_arm_note",
    "accuracy_git",
)  # fmt: skip


def real_deltas(count: int, seed: int) -> tuple[Any, list[np.ndarray], list[int]]:
    """`count` real MNIST-CNN deltas (one local round each from the initial model)."""
    from mobile_sim.backends import TrainContext, TrainJob, build_backend
    from mobile_sim.models import build_model
    from mobile_sim.runner import SimConfig, _partition, load_dataset
    from sdk.flat import get_flat_params, spec_from_module

    cfg = SimConfig(seed=seed)
    data = load_dataset("mnist", None, seed)
    parts = _partition(cfg, data)
    model = build_model(cfg.model_name, seed=seed)
    be = build_backend("sequential")
    be.start(
        TrainContext(
            cfg.model_name, data.x_train, data.y_train, cfg.local_epochs, cfg.batch_size, cfg.lr
        )
    )
    try:
        res = be.train(
            get_flat_params(model),
            [TrainJob(f"d{i}", i, 1, seed, parts[i]) for i in range(count)],
        )
    finally:
        be.close()
    return spec_from_module(model), [r.delta for r in res], [r.num_examples for r in res]


def plain_frame_bytes(spec: Any, deltas: list[np.ndarray], topk: float, bits: int) -> float:
    """Mean plain compressed frame bytes (product codec, first-round residual = 0)."""
    from compression import CodecConfig, UpdateCodec

    codec = UpdateCodec(spec, CodecConfig(topk=topk, bits=bits))
    rng = np.random.default_rng(0)
    return statistics.mean(len(codec.encode(d, rng)[0]) for d in deltas)


def timing_run(
    n: int, spec: Any, deltas: list[np.ndarray], secure_cfg: Any, dropout: float, seed: int
) -> dict[str, Any]:
    """One secure round with n devices; the deltas are reused cyclically."""
    from coordinator.secure import SecureCoordinator
    from mobile_sim.secure import draw_dropouts, run_secure_round
    from protocol.secagg import Stage
    from sdk.secure import SecureParticipant

    d = deltas[0].size
    devs = [f"dev-{i:04d}" for i in range(n)]
    coord = SecureCoordinator(np.zeros(d, np.float32), secure_cfg, spec=spec)
    parts = {x: SecureParticipant(d) for x in devs}
    ups = {x: (deltas[i % len(deltas)], 1) for i, x in enumerate(devs)}
    drops = draw_dropouts(devs, dropout, np.random.default_rng([seed, n]))
    t0 = time.perf_counter()
    out, stats = run_secure_round(coord, parts, ups, drops)
    wall = time.perf_counter() - t0
    senders = [x for x in devs if x in out.contributors]
    per_dev_up = [stats.bytes_up.get(x, 0) for x in senders]
    stages = [
        str(s) for s in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)
    ]
    plan = coord.open_round(devs).groups[0].plan  # same shape as the measured round's plan
    return {
        "n": n,
        "dropped": len(drops),
        "contributors": len(out.contributors),
        "committed": out.committed,
        "degree": plan.degree,
        "threshold": plan.threshold,
        "ring_bits": plan.ring_bits,
        "k": plan.k,
        "sketch_len": plan.sketch_len,
        "client_s_mean": {
            s: statistics.mean(stats.client_s[s]) for s in stages if stats.client_s[s]
        },
        "client_s_max": {s: max(stats.client_s[s]) for s in stages if stats.client_s[s]},
        "server_s": {s: stats.server_s.get(s, 0.0) for s in stages},
        "server_unmask_s": float(out.measurements["unmask_s"]),
        "upload_bytes_per_device": statistics.mean(per_dev_up) if per_dev_up else 0.0,
        "round_wall_s": wall,
    }


def selection_analysis(args: argparse.Namespace, secure_cfg: Any) -> dict[str, Any]:
    """How much of a cohort's mean update each upload rule keeps (no quantization, one round).

    Trains plain mode for `--selection-analysis` rounds, then two successive cohorts A and B
    from that model. For each rule, the share of B's mean update m it keeps is <A, m> / ||m||^2,
    A = m on the rule's coordinates (for per-device top-k: the mean of the devices' top-k
    vectors). Shared-set rules see B's devices (fresh) or, as in the product, A's (stale).
    """
    from coordinator.secure import make_plan
    from mobile_sim.backends import TrainContext, TrainJob, build_backend
    from mobile_sim.runner import SimConfig, prepare, run_simulation
    from protocol.secagg import device_sketch, sketch_scores, sketch_segments_for

    rounds = args.selection_analysis
    cfg = SimConfig(
        rounds=rounds, topk=args.topk, bits=args.plain_bits, local_epochs=args.local_epochs,
        seed=args.seed, backend=args.backend,
    )  # fmt: skip
    params = run_simulation(cfg, progress=True, label="plain").final_params
    setup = prepare(cfg)
    be = build_backend(cfg.backend)
    be.start(
        TrainContext(
            cfg.model_name,
            setup.data.x_train,
            setup.data.y_train,
            cfg.local_epochs,
            cfg.batch_size,
            cfg.lr,
        )  # fmt: skip
    )

    def cohort(r: int) -> np.ndarray:
        rng = np.random.default_rng([cfg.seed, r])  # the engine's draw for round r
        chosen = sorted(rng.choice(cfg.clients, cfg.per_round, replace=False).tolist())
        jobs = [TrainJob(f"d{i}", i, r, cfg.seed, setup.parts[i]) for i in chosen]
        return np.stack([res.delta.astype(np.float64) for res in be.train(params, jobs)])

    try:
        u_a, u_b = cohort(rounds + 1), cohort(rounds + 2)
    finally:
        be.close()
    d = u_b.shape[1]
    mean_b = u_b.mean(axis=0)

    def top(score: np.ndarray, k: int) -> np.ndarray:
        return np.argpartition(-score, k - 1)[:k]

    def kept(idx: np.ndarray) -> float:
        return float(np.sum(mean_b[idx] ** 2) / np.sum(mean_b**2))

    segments = sketch_segments_for([e.shape for e in setup.spec.entries], secure_cfg.sketch_pool)
    plan = make_plan(secure_cfg, 1, cfg.per_round, d, np.arange(1, dtype=np.int64), segments)
    rng = np.random.default_rng(args.seed)

    def sketch(us: np.ndarray) -> np.ndarray:
        sums = sum(device_sketch(u.astype(np.float32), plan, rng).astype(np.float64) for u in us)
        return sketch_scores(np.asarray(sums), plan).astype(np.float64)

    sk_a, sk_b = sketch(u_a), sketch(u_b)
    out: dict[str, Any] = {"after_plain_rounds": rounds, "rules": {}}
    for frac in sorted({args.topk, secure_cfg.coord_fraction, 0.02}):
        k = int(round(frac * d))
        per_device = np.zeros(d)
        for u in u_b:
            i = top(np.abs(u), k)
            per_device[i] += u[i]
        per_device /= len(u_b)
        out["rules"][f"{frac:g}"] = {
            "k": k,
            "plain_per_device_topk": float(per_device @ mean_b / (mean_b @ mean_b)),
            "oracle_top_abs_mean_fresh": kept(top(np.abs(mean_b), k)),
            "oracle_top_abs_mean_stale": kept(top(np.abs(u_a.mean(axis=0)), k)),
            "oracle_top_energy_fresh": kept(top(np.sum(u_b**2, axis=0), k)),
            "sketch_fresh": kept(top(sk_b, k)),
            "sketch_stale": kept(top(sk_a, k)),
            "random": kept(np.random.default_rng(1).choice(d, k, replace=False)),
        }
    return out


def accuracy_config(args: argparse.Namespace) -> Any:
    """The SimConfig both arms of the accuracy part run."""
    from mobile_sim.runner import SimConfig

    return SimConfig(
        clients=args.clients,
        per_round=args.per_round,
        rounds=args.rounds,
        topk=args.topk,
        bits=args.plain_bits,
        local_epochs=args.local_epochs,
        seed=args.seed,
        backend=args.backend,
        server_lr=args.server_lr,
    )


def recorded_config(cfg: Any) -> dict[str, Any]:
    """A SimConfig as a results file records it (`config`): its fields less those that are None."""
    return {k: v for k, v in cfg.as_dict().items() if v is not None}


def same_config(recorded: Any, config: dict[str, Any]) -> bool:
    """Whether a results file's recorded `config` is `config` (recorded_config's), a field
    SimConfig gained since that run (selection_timeout_s, checkin_period_s,
    residual_memory_mb, ...) counting at today's default (bench/_common.config_matches)."""
    from mobile_sim.runner import SimConfig

    if not isinstance(recorded, dict):
        return False
    return config_matches(recorded, config, recorded_config(SimConfig()))


def plain_source(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The results file `--plain-from` names, refused (SystemExit) unless it was run with
    `config`; a field added to SimConfig since counts at its default."""
    old: dict[str, Any] = json.loads(path.read_text())
    if not same_config(old.get("config"), config):
        raise SystemExit(f"{path} was run with other settings: {old.get('config')}")
    return old


def plain_chain(path: Path) -> list[str]:
    """The files the plain arm of `path` passed through, `path` first, each as named (a file
    made with --plain-from names its source in `plain_from`, which may have reused another's);
    the last is the one that ran it, or one that cannot be read."""
    chain = [str(path)]
    current = path
    while True:
        try:
            source = json.loads(current.read_text()).get("plain_from")
        except (OSError, ValueError):
            return chain
        if not isinstance(source, str) or not source or source in chain:
            return chain
        chain.append(source)
        current = Path(source) if Path(source).is_absolute() else ROOT / source


def plain_arm_note(path: Path) -> str:
    """What a run with --plain-from says of its plain arm: not run here, and where it ran."""
    chain = plain_chain(path)
    text = f"the plain arm was not run in this invocation: --plain-from reused {chain[0]}'s"
    for source in chain[1:]:
        text += f", which had reused {source}'s"
    return text + f"; it ran in the run that wrote {chain[-1]}, with the same settings"


def accuracy_runs(args: argparse.Namespace, secure_cfg: Any) -> dict[str, Any]:
    from mobile_sim.runner import run_simulation
    from mobile_sim.secure import run_secure_simulation

    cfg = accuracy_config(args)
    config = recorded_config(cfg)

    def curve(res: Any) -> list[dict[str, Any]]:
        return [
            {"round": r.round, "accuracy": r.accuracy, "bytes_up": r.bytes_up, "reports": r.reports}
            for r in res.records
        ]

    def per_report(res: Any) -> float:
        # Secure bytes include the partial uploads of devices that dropped mid-round.
        up = float(sum(r.bytes_up for r in res.records))
        reports = int(sum(r.reports for r in res.records))
        return up / max(1, reports)

    if args.plain_from is not None:
        old = plain_source(args.plain_from, config)
        plain_acc, p_up, plain_curve = (
            old["accuracy_plain"],
            old["plain_upload_bytes_per_report"],
            old["plain_curve"],
        )
    else:
        plain = run_simulation(cfg, progress=True, label="plain")
        plain_acc, p_up, plain_curve = plain.final_accuracy, per_report(plain), curve(plain)
    secure = run_secure_simulation(cfg, secure_cfg, dropout=args.acc_dropout, progress=True)
    return {
        "config": config,
        "plain_from": str(args.plain_from) if args.plain_from is not None else None,
        **(
            {"plain_arm_note": plain_arm_note(args.plain_from)}
            if args.plain_from is not None
            else {}
        ),
        "accuracy_plain": plain_acc,
        "accuracy_secure": secure.final_accuracy,
        "plain_upload_bytes_per_report": p_up,
        "secure_upload_bytes_per_contributor": per_report(secure),
        "plain_curve": plain_curve,
        "secure_curve": curve(secure),
        "secure_aborted_rounds": sum(1 for r in secure.records if not r.committed),
    }


CANONICAL = RESULTS / "secagg.json"


def results_path(args: argparse.Namespace) -> Path:
    """Where this run's JSON goes (a --quick run never writes CANONICAL unless --out names it)."""
    return out_file(args.out, CANONICAL, args.quick)


def build_parser() -> argparse.ArgumentParser:
    """The script's options (main parses them; tests parse documented commands with it)."""
    from coordinator.secure import SecureConfig

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small sizes and 3 rounds (smoke run)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500], help="cohort sizes n")
    ap.add_argument(
        "--dropout", type=float, default=0.1, help="fraction of devices that drop (timing part)"
    )
    ap.add_argument(
        "--acc-dropout",
        type=float,
        default=0.0,
        help="secure-arm dropout rate in the accuracy part (the plain arm has none)",
    )
    ap.add_argument(
        "--plain-from",
        type=Path,
        default=None,
        help="reuse the plain arm of this earlier result (same settings) instead of rerunning it",
    )
    ap.add_argument("--rounds", type=int, default=20, help="accuracy rounds")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--local-epochs", type=int, default=5)
    ap.add_argument("--topk", type=float, default=0.01, help="plain mode top-k fraction")
    ap.add_argument("--plain-bits", type=int, default=4, help="plain mode quantizer bits")
    # The secure arm's defaults are the product's (SecureConfig), so the bench measures them.
    dflt = SecureConfig()
    ap.add_argument("--bits", type=int, default=dflt.value_bits, help="secure value bits b")
    ap.add_argument("--sketch-pool", type=int, default=dflt.sketch_pool, help="sketch pooling")
    ap.add_argument("--clip", type=float, default=dflt.clip_norm, help="secure L2 clip C")
    ap.add_argument("--explore", type=float, default=dflt.explore, help="random share of S_r")
    ap.add_argument("--ema-decay", type=float, default=dflt.ema_decay, help="S_r score decay")
    ap.add_argument(
        "--coord-bound-sigmas", type=float, default=dflt.coord_bound_sigmas, help="gamma of C'"
    )
    ap.add_argument("--no-rotate", action="store_true", help="no Hadamard rotation over S_r")
    ap.add_argument(
        "--no-dither", action="store_true", help="stochastic rounding instead of subtractive dither"
    )
    ap.add_argument("--max-weight", type=int, default=dflt.max_weight, help="weight cap w_max")
    ap.add_argument(
        "--coord-fraction",
        type=float,
        default=dflt.coord_fraction,
        help="secure |S_r| / d when there is no upload budget (the plain arm's top-k is --topk)",
    )
    ap.add_argument(
        "--upload-budget-x",
        type=float,
        default=TARGET_UPLOAD_RATIO,
        help="secure upload budget per device as a multiple of the plain frame (measured in "
        "this run on real deltas); |S_r| is the largest that fits each round's cohort. "
        "0: no budget, |S_r| = --coord-fraction of d (default: %(default)s, the issue's bound)",
    )
    ap.add_argument("--backend", default="sequential")
    ap.add_argument(
        "--server-lr",
        type=float,
        default=1.0,
        help="server step size, the same for the plain and the secure arm",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument(
        "--selection-analysis",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="only the coordinate-selection analysis after ROUNDS plain rounds (to --out)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results file (default bench/results/secagg.json; with --quick "
        "bench/results/secagg_quick.json)",
    )
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep the parts of an existing --out this run skips (e.g. re-time with "
        "--skip-accuracy); each part records when it ran and the code it ran",
    )
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """`argv` parsed as main parses it: --out resolved, --quick's sizes applied."""
    args = build_parser().parse_args(argv)
    args.out = results_path(args)
    if args.quick:
        args.sizes = [10, 30]
        args.rounds = 3
        args.local_epochs = 1
    return args


def main(argv: list[str] | None = None) -> int:
    from coordinator.secure import SecureConfig

    git = git_provenance()
    args = parse_args(argv)

    import torch
    from tqdm import tqdm

    from mobile_sim.report import machine_info, utc_now

    torch.set_num_threads(1)
    plain_bytes: float | None = None
    spec = deltas = None
    if args.upload_budget_x > 0 or not args.skip_timing:
        spec, deltas, _ = real_deltas(4, args.seed)
        plain_bytes = plain_frame_bytes(spec, deltas, args.topk, args.plain_bits)
    budget = (
        int(args.upload_budget_x * plain_bytes)
        if args.upload_budget_x > 0 and plain_bytes is not None
        else None
    )
    secure_cfg = SecureConfig(
        upload_budget=budget,
        coord_fraction=args.coord_fraction,
        value_bits=args.bits,
        clip_norm=args.clip,
        explore=args.explore,
        ema_decay=args.ema_decay,
        coord_bound_sigmas=args.coord_bound_sigmas,
        rotate=not args.no_rotate,
        dither=not args.no_dither,
        max_weight=args.max_weight,
        sketch_pool=args.sketch_pool,
        seed=args.seed,
        server_lr=args.server_lr,
    )
    doc: dict[str, Any] = {
        "bench": "secagg",
        "command": command_line(__file__, argv),
        "quick": bool(args.quick),
        "machine": machine_info(),
        "date": utc_now()[:10],
        "started_at": utc_now(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "secure_config": {k: getattr(secure_cfg, k) for k in secure_cfg.__dataclass_fields__},
    }
    doc["secure_config"]["noise"] = int(doc["secure_config"]["noise"])
    if args.merge and args.out.exists():
        old = json.loads(args.out.read_text())
        keep = {"accuracy"} if args.skip_accuracy else set()
        keep |= {"timing"} if args.skip_timing else set()
        if "accuracy" in keep:
            for key in ACCURACY_KEYS:
                if key in old:
                    doc[key] = old[key]
        if "timing" in keep:
            for key in TIMING_KEYS:
                if key in old:
                    doc[key] = old[key]
    if args.selection_analysis:
        doc["selection"] = selection_analysis(args, secure_cfg)
        args.skip_timing = args.skip_accuracy = True
    if not args.skip_timing and spec is not None and deltas is not None and plain_bytes:
        plain = plain_bytes
        dense = 4.0 * spec.size
        doc["plain_frame_bytes"] = plain
        doc["dense_bytes"] = dense
        per_n = {}
        for n in tqdm(args.sizes, desc="timing"):
            row = timing_run(n, spec, deltas, secure_cfg, args.dropout, args.seed)
            row["upload_ratio_vs_plain"] = row["upload_bytes_per_device"] / plain
            row["upload_ratio_vs_dense"] = row["upload_bytes_per_device"] / dense
            per_n[str(n)] = row
            tqdm.write(
                f"n={n}: unmask {row['server_unmask_s']:.3f}s, up {row['upload_bytes_per_device']:.0f} B "
                f"({row['upload_ratio_vs_plain']:.2f}x plain), client {row['client_s_mean']}"
            )
        doc["timing"] = per_n
        doc["timing_ran_at"] = utc_now()
        doc["timing_git"] = git
        ref = per_n.get("100") or per_n[str(args.sizes[-1])]
        doc["reference_n"] = ref["n"]
        doc["upload_ratio_vs_plain"] = ref["upload_ratio_vs_plain"]
        doc["upload_ratio_vs_dense"] = ref["upload_ratio_vs_dense"]
        doc["server_unmask_s"] = ref["server_unmask_s"]
    if not args.skip_accuracy:
        acc = accuracy_runs(args, secure_cfg)
        doc.update(acc)
        doc["accuracy_ran_at"] = utc_now()
        doc["accuracy_git"] = git
        doc["accuracy_settings"] = {
            "secure_config": doc["secure_config"],
            "dropout": args.acc_dropout,
            "rounds": args.rounds,
        }
        if acc["accuracy_plain"] is not None and acc["accuracy_secure"] is not None:
            doc["accuracy_gap_pp"] = 100.0 * (acc["accuracy_plain"] - acc["accuracy_secure"])
    targets = {}
    if "upload_ratio_vs_plain" in doc:
        targets["upload_ratio_vs_plain"] = {
            "target": f"<= {TARGET_UPLOAD_RATIO}",
            "measured": doc["upload_ratio_vs_plain"],
            "met": doc["upload_ratio_vs_plain"] <= TARGET_UPLOAD_RATIO,
        }
        targets["server_unmask_s"] = {
            "target": f"<= {TARGET_UNMASK_S} s at n=100",
            "measured": doc["server_unmask_s"],
            "met": doc["server_unmask_s"] <= TARGET_UNMASK_S and doc["reference_n"] == 100,
        }
    if "accuracy_gap_pp" in doc:
        targets["accuracy"] = {
            "target": f"secure within {TARGET_ACCURACY_PP} pp of plain",
            "measured_gap_pp": doc["accuracy_gap_pp"],
            "met": doc["accuracy_gap_pp"] <= TARGET_ACCURACY_PP,
        }
    doc["targets"] = targets
    doc["finished_at"] = utc_now()
    if args.quick:
        doc["note"] = "--quick smoke run: not the issue's settings"
    write_results(args.out, doc, default=float)
    print(json.dumps(targets, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
