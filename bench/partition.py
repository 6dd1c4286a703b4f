"""CPU time of mobile_sim.partition's Dirichlet split, against baselines timed in the same run.

Three label sets, 100 clients:
  - `mnist_train`: the 8,000 MNIST t10k training labels `plume sim --dataset mnist` splits
    (mobile_sim.data.load_mnist: ../shared/data, or $PLUME_DATA);
  - `mnist_x6`: all 10,000 t10k labels six times over, 60,000 labels: MNIST's training-set size;
  - `synthetic_1e6`: 10^6 labels drawn uniformly over 10 classes (seeded).
On each, timed round-robin (so machine noise hits all alike), each with a fresh
`np.random.default_rng(seed)`:
  - `iid`: partition.iid, the baseline for
  - `dirichlet`: partition.dirichlet at --alpha (0.5: `plume sim`'s default split);
  - `dirichlet_hopeless`: partition.dirichlet at --hopeless-alpha (0.001), where every draw
    leaves some client short, so it makes all --max-tries (1,000) draws and raises ValueError;
  - `stream_floor`: the baseline for the hopeless split: only the random numbers its draws
    take (per draw and class: copy the class's examples, numpy's shuffle of them, the
    Dirichlet proportions), which the split must draw so that a seed gives the partition it
    always gave;
  - `dirichlet_hopeless_before`: the same hopeless split by mobile_sim/partition.py as
    committed at --compare-rev (read with `git show`; default baa0c083~1, the code before
    that commit checked the sizes of all classes at once; `--compare-rev none` skips it).
Times are CPU seconds of this process (time.process_time; wall seconds beside them), the
median and range over --repeats runs (--million-repeats on the 10^6 labels); the ratios
compare medians of the same run.

    python bench/partition.py           # writes bench/results/partition.json (~1.5 min of CPU)
    python bench/partition.py --quick   # a smoke run: partition_quick.json
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import command_line, git_provenance, out_file, write_results  # noqa: E402
from mobile_sim import partition  # noqa: E402
from mobile_sim.report import load_average_1m, machine_info, utc_now  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CLIENTS = 100
# The partition.py before commit baa0c083 (one check of all classes' sizes a draw).
COMPARE_REV = "baa0c083~1"
Labels = npt.NDArray[np.int64]


def label_sets(data_root: str | None, quick: bool) -> dict[str, tuple[Labels, str]]:
    """name -> (labels, what they are). --quick leaves out the 10^6 set."""
    from mobile_sim.data import load_mnist

    data = load_mnist(data_root)
    train = np.asarray(data.y_train, dtype=np.int64)
    every = np.concatenate([train, np.asarray(data.y_test, dtype=np.int64)])
    out = {
        "mnist_train": (train, "MNIST t10k's 8,000 training labels (load_mnist, seed 0)"),
        "mnist_x6": (
            np.tile(every, 6),
            "MNIST t10k's 10,000 labels six times: 60,000, MNIST's training-set size",
        ),
    }
    if not quick:
        synthetic = np.random.default_rng(1).integers(0, 10, 10**6).astype(np.int64)
        out["synthetic_1e6"] = (synthetic, "10^6 labels uniform over 10 classes (seed 1)")
    return out


def stream_floor(
    labels: Labels, n: int, alpha: float, rng: np.random.Generator, draws: int
) -> None:
    """The random numbers `draws` Dirichlet draws take, and nothing else: per draw and class,
    a copy of the class's examples, numpy's shuffle of them and the proportions."""
    members = [np.flatnonzero(labels == c).astype(np.int64) for c in np.unique(labels)]
    alphas = np.full(n, alpha)
    drawn = [np.empty_like(m) for m in members]
    for _ in range(draws):
        for c, m in enumerate(members):
            drawn[c][...] = m
            rng.shuffle(drawn[c])
            rng.dirichlet(alphas)


def module_at(rev: str) -> tuple[types.ModuleType, str]:
    """mobile_sim/partition.py as committed at `rev`, loaded as a module, and the commit."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"partition.py: error: --compare-rev {rev!r}: {done.stderr.strip()}")
        return done.stdout

    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}").strip()
    source = git("show", f"{commit}:mobile_sim/partition.py")
    module = types.ModuleType(f"partition_at_{commit[:12]}")
    exec(compile(source, f"{commit[:12]}:mobile_sim/partition.py", "exec"), module.__dict__)
    return module, commit


def _hopeless(dirichlet: Callable[..., Any], alpha: float, tries: int) -> Callable[..., None]:
    def run(labels: Labels, rng: np.random.Generator) -> None:
        try:
            dirichlet(labels, CLIENTS, alpha, rng, max_tries=tries)
        except ValueError:
            return
        raise SystemExit(f"partition.py: Dirichlet({alpha}) found a split: not a hopeless case")

    return run


def _stats(times: list[float]) -> dict[str, Any]:
    return {
        "runs": [round(t, 6) for t in times],
        "median": round(statistics.median(times), 6),
        "min": round(min(times), 6),
        "max": round(max(times), 6),
    }


class Progress:
    """One line on stderr, rewritten, when stderr is a terminal; nothing otherwise."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.on = sys.stderr.isatty()

    def step(self, what: str) -> None:
        self.done += 1
        if self.on:
            sys.stderr.write(f"\r\033[K[{self.done}/{self.total}] {what}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.on:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--repeats", type=int, default=None, help="runs of each (default: 3; 1 --quick)"
    )
    ap.add_argument(
        "--million-repeats",
        type=int,
        default=1,
        help="runs of each on the 10^6 labels (default: 1: a hopeless split there takes about "
        "20 s of CPU, so 3 runs of its three variants would take the whole run past 3 minutes)",
    )
    ap.add_argument("--alpha", type=float, default=0.5, help="the split's alpha (default: 0.5)")
    ap.add_argument(
        "--hopeless-alpha",
        type=float,
        default=0.001,
        help="an alpha no draw meets with 100 clients and 10 classes (default: 0.001)",
    )
    ap.add_argument(
        "--max-tries",
        type=int,
        default=None,
        help="draws of the hopeless split (default: 1000, the split's own; 50 --quick)",
    )
    ap.add_argument("--seed", type=int, default=0, help="each timed call's rng seed (default: 0)")
    ap.add_argument(
        "--compare-rev",
        default=COMPARE_REV,
        metavar="REV",
        help="also time the hopeless split by mobile_sim/partition.py as committed at REV "
        f"(git show; default: {COMPARE_REV}, the code before the sizes of all classes were "
        "checked at once); 'none' to skip it",
    )
    ap.add_argument(
        "--data", default=None, help="the data folder (default: $PLUME_DATA or ../shared/data)"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run (no 10^6 set, 50 draws, 1 repeat): writes partition_quick.json, "
        "marked quick, which bench/summarize.py never publishes",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the JSON goes (default: bench/results/partition.json, or "
        "partition_quick.json beside it with --quick)",
    )
    git_provenance()  # the code this run starts from
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.max_tries is None:
        args.max_tries = 50 if args.quick else 1000
    for name in ("repeats", "million_repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_tries < 1:
        ap.error(f"--max-tries must be at least 1, got {args.max_tries}")
    for name in ("alpha", "hopeless_alpha"):
        value = getattr(args, name)
        if not 0 < value < float("inf"):
            ap.error(f"--{name.replace('_', '-')} must be positive and finite, got {value}")
    args.out = out_file(args.out, RESULTS / "partition.json", args.quick)
    if args.compare_rev.lower() == "none":
        args.compare_rev = None
    before = module_at(args.compare_rev) if args.compare_rev else None
    load_start = load_average_1m()
    started = utc_now()
    sets = label_sets(args.data, args.quick)

    def iid(y: Labels, rng: np.random.Generator) -> None:
        partition.iid(y, CLIENTS, rng)

    def dirichlet(y: Labels, rng: np.random.Generator) -> None:
        partition.dirichlet(y, CLIENTS, args.alpha, rng)

    variants: dict[str, Callable[[Labels, np.random.Generator], None]] = {
        "iid": iid,
        "dirichlet": dirichlet,
        "dirichlet_hopeless": _hopeless(partition.dirichlet, args.hopeless_alpha, args.max_tries),
        "stream_floor": lambda y, rng: stream_floor(
            y, CLIENTS, args.hopeless_alpha, rng, args.max_tries
        ),
    }
    if before is not None:
        variants["dirichlet_hopeless_before"] = _hopeless(
            before[0].dirichlet, args.hopeless_alpha, args.max_tries
        )
    cpu: dict[str, dict[str, list[float]]] = {s: {v: [] for v in variants} for s in sets}
    wall: dict[str, dict[str, list[float]]] = {s: {v: [] for v in variants} for s in sets}

    def repeats(set_name: str) -> int:
        return int(args.million_repeats if set_name == "synthetic_1e6" else args.repeats)

    progress = Progress(sum(repeats(s) for s in sets) * len(variants))
    for repeat in range(max(repeats(s) for s in sets)):
        for set_name, (labels, _) in sets.items():
            if repeat >= repeats(set_name):
                continue
            for name, run in variants.items():  # round-robin: noise hits every variant alike
                progress.step(f"run {repeat + 1}/{repeats(set_name)}: {set_name} {name}")
                rng = np.random.default_rng(args.seed)
                c0, w0 = time.process_time(), time.perf_counter()
                run(labels, rng)
                cpu[set_name][name].append(time.process_time() - c0)
                wall[set_name][name].append(time.perf_counter() - w0)
    progress.close()

    results: dict[str, Any] = {}
    for set_name, (labels, what) in sets.items():
        entry: dict[str, Any] = {
            "labels": int(len(labels)),
            "classes": int(len(np.unique(labels))),
            "what": what,
            "cpu_s": {v: _stats(t) for v, t in cpu[set_name].items()},
            "wall_s": {v: _stats(t) for v, t in wall[set_name].items()},
        }
        med = {v: s["median"] for v, s in entry["cpu_s"].items()}
        entry["dirichlet_over_iid"] = round(med["dirichlet"] / med["iid"], 2)
        entry["hopeless_over_stream_floor"] = round(
            med["dirichlet_hopeless"] / med["stream_floor"], 3
        )
        if before is not None:
            entry["hopeless_before_over_now"] = round(
                med["dirichlet_hopeless_before"] / med["dirichlet_hopeless"], 3
            )
        results[set_name] = entry

    doc: dict[str, Any] = {
        "benchmark": "bench/partition.py",
        "command": command_line(__file__, argv),
        "started_at": started,
        "date": utc_now(),
        "machine": {
            **machine_info(),
            "load_average_start": load_start,
            "load_average_end": load_average_1m(),
        },  # fmt: skip
        "quick": args.quick,
        "settings": {
            "clients": CLIENTS,
            "alpha": args.alpha,
            "hopeless_alpha": args.hopeless_alpha,
            "max_tries": args.max_tries,
            "repeats": args.repeats,
            "million_repeats": args.million_repeats,
            "seed": args.seed,
            "compare_rev": args.compare_rev,
            "compare_commit": before[1] if before is not None else None,
        },
        "results": results,
    }
    # Headline figures: the hopeless split's CPU seconds and its ratio to the stream floor.
    for set_name, entry in results.items():
        doc[f"{set_name}_hopeless_cpu_s"] = entry["cpu_s"]["dirichlet_hopeless"]["median"]
        doc[f"{set_name}_hopeless_over_stream_floor"] = entry["hopeless_over_stream_floor"]
        doc[f"{set_name}_dirichlet_over_iid"] = entry["dirichlet_over_iid"]
        if before is not None:
            doc[f"{set_name}_hopeless_before_over_now"] = entry["hopeless_before_over_now"]
    doc["time_note"] = (
        "CPU seconds of this process (time.process_time), median over the repeats, each "
        "variant timed round-robin with the others in every repeat; wall seconds beside them. "
        "The hopeless split makes all max_tries draws and raises ValueError; stream_floor is "
        "the random numbers those draws must take (copy, numpy shuffle of each class's "
        "examples, Dirichlet proportions) and nothing else"
    )
    write_results(args.out, doc)
    for set_name, entry in results.items():
        line = "  ".join(
            f"{v} {s['median']:.4f} s ({s['min']:.4f}-{s['max']:.4f})"
            for v, s in entry["cpu_s"].items()
        )
        print(f"{set_name} ({entry['labels']:,} labels), CPU: {line}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
