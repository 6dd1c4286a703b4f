"""Start-up time of `plume --help` and of every `plume COMMAND --help`, in fresh interpreters.

Each command runs as the `plume` console script does (`sys.exit(coordinator.cli.main())`), in a
new process, many times, round-robin with two baselines measured in the same run so machine
noise hits all alike:
  - `python_floor`: an interpreter that imports nothing (`python -c pass`);
  - `full_stack_help`: `plume --help` after importing what it used to import for its help
    texts (dp_accounting with scipy, and coordinator.service with FastAPI, uvicorn, httpx).
Wall times in ms; min and median per command.

    python bench/cli_startup.py          # writes bench/results/cli_startup.json
    python bench/cli_startup.py --quick  # a smoke run: 3 repeats, cli_startup_quick.json
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import command_line, git_provenance, out_file, write_results  # noqa: E402
from coordinator.cli import build_parser, iter_parsers  # noqa: E402
from mobile_sim.report import machine_info, utc_now  # noqa: E402

RESULTS = ROOT / "bench" / "results"
_MAIN = "import sys; from coordinator.cli import main; sys.exit(main(sys.argv[1:]))"
_FULL_STACK = "import dp_accounting, coordinator.service.secure; " + _MAIN


# Commands with a help of their own that are not argparse subparsers, so iter_parsers does not
# list them: `plume sim report` is an action of `plume sim` (its first positional), whose
# --help prints the report's help.
ACTIONS = (("sim", "report"),)


def _commands() -> dict[str, list[str]]:
    """name -> argv of a fresh interpreter, the baselines first, then every parser's help
    (iter_parsers) and every ACTIONS help."""
    out = {
        "python_floor": [sys.executable, "-c", "pass"],
        "full_stack_help": [sys.executable, "-c", _FULL_STACK, "--help"],
    }
    helps = [parser.prog.split()[1:] for parser in iter_parsers(build_parser())]
    for words in [*helps, *(list(a) for a in ACTIONS)]:
        words = [*words, "--help"]
        out[" ".join(["plume", *words])] = [sys.executable, "-c", _MAIN, *words]
    return out


def _time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - start) * 1000.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--repeats", type=int, default=None, help="runs of each command (default: 15; 3 --quick)"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run (3 repeats unless --repeats): writes cli_startup_quick.json, marked "
        "quick, which bench/summarize.py never publishes",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the JSON goes (default: bench/results/cli_startup.json, or "
        "cli_startup_quick.json beside it with --quick)",
    )
    git_provenance()  # the code this run starts from
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 15
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    args.out = out_file(args.out, RESULTS / "cli_startup.json", args.quick)
    commands = _commands()
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, command in commands.items():  # round-robin: noise hits every command alike
            times[name].append(_time_once(command))
    per_command = {
        name: {"min_ms": round(min(t), 1), "median_ms": round(statistics.median(t), 1)}
        for name, t in times.items()
    }
    help_ms = per_command["plume --help"]["median_ms"]
    full_ms = per_command["full_stack_help"]["median_ms"]
    doc: dict[str, Any] = {
        "benchmark": "bench/cli_startup.py",
        "command": command_line(__file__, argv),
        "date": utc_now(),
        "machine": machine_info(),
        "repeats": args.repeats,
        "quick": args.quick,
        "help_median_ms": help_ms,
        "full_stack_help_median_ms": full_ms,
        "python_floor_median_ms": per_command["python_floor"]["median_ms"],
        "slowest_help_median_ms": max(
            v["median_ms"] for k, v in per_command.items() if k.startswith("plume ")
        ),
        "speedup_vs_full_stack": round(full_ms / help_ms, 2),
        "per_command": per_command,
        "full_stack_note": "full_stack_help is `plume --help` after `import dp_accounting, "
        "coordinator.service.secure`: the imports its help texts made before they stopped "
        "loading dp_accounting (with scipy) and the FastAPI service (with uvicorn and httpx)",
        "noise_note": "shared machine: other jobs preempt these processes, so medians sit "
        "above the uncontended cost; the baselines ran round-robin with the commands",
    }
    write_results(args.out, doc)
    for name, v in per_command.items():
        print(f"{name:40s} min {v['min_ms']:8.1f} ms   median {v['median_ms']:8.1f} ms")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
