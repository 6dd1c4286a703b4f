"""`plume sim`: run a simulated fleet and print per-round accuracy and bandwidth."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import math
import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["register", "config_from_args"]

_EXAMPLES = """\
examples:
  plume sim --dataset digits --rounds 30 --lr 0.2            # a first run, seconds long
  plume sim --dataset mnist --clients 100 --per-round 10 --rounds 20 --topk 0.01 --bits 4
  plume sim --dataset mnist --rounds 20 --compare-dense --out runs/mnist
  plume sim --dataset digits --clients 200 --per-round 50 --rounds 30 --local-epochs 2
  plume sim --attack alie --malicious 0.2 --aggregator cosfilter+geomed  # the robust rule advised
  plume sim --secure --rounds 5 --model mlp                   # SecAgg+ with 10% dropouts
  plume sim --transport http --model mlp --rounds 5          # against a loopback coordinator
  plume sim --plugin my_plugin --dataset my_data --model my_cnn  # yours, registered by my_plugin.py
  plume sim report runs/mnist                   # rebuild a run's plots and rounds.csv
"""


_REPORT_HELP = """\
usage: plume sim report [-h] RUN_DIR

Rebuild the plots of a `plume sim` run from its rounds.json files alone, byte for byte as the
run wrote them (a run that ended, or one stopped early by Ctrl-C, SIGTERM, a closed stdout or
an error, which wrote the rounds it finished): accuracy_vs_upload_bytes.png,
bytes_per_round.png and round_durations.png; write each run's rounds.csv again from its
rounds.json (ledger.csv cannot be rebuilt: a missing one is one line); print each run's
per-round table as the run printed it, then one line per run (rounds, final accuracy, upload
bytes, ratio vs dense) and one for each run stopped early (its figures stop at its last
finished round). rounds.json and ledger.csv are not touched. No run's rounds.json, or a damaged
one (not JSON, a field missing, of the wrong type or impossible), is one error line naming the
file (exit status 2); a run still in progress is one line saying how far it got (status 1).

positional arguments:
  RUN_DIR     the --out folder of a run (with --compare-dense: the folder holding
              compressed/ and dense/), or a sweep's folder holding one run folder per
              setting (each run is then named by its folder); runs of different datasets
              or models are refused, naming them (exit status 2)

options:
  -h, --help  show this help message and exit

example:
  plume sim report runs/mnist
"""


class _Help(argparse.Action):
    """-h/--help: the report's help after `plume sim report`, the whole of `plume sim`'s
    otherwise (the action positional is parsed before an option that follows it)."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        if getattr(namespace, "action", None) == "report":
            parser._print_message(_REPORT_HELP, sys.stdout)
        else:
            parser.print_help()
        parser.exit()


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


# Names the library accepts, listed here so `plume sim --help` imports no torch; a test
# checks them against mobile_sim.models.MODELS, mobile_sim.backends.BACKENDS and the datasets.
_DATASETS = "mnist, digits, shakespeare, synthetic, synthetic_iid or synthetic(ALPHA,BETA)"
_MODELS = "mnist_cnn, mlp, digits_mlp, synthetic_lr, shakespeare_lstm, shakespeare_lstm_small"
_BACKENDS = ("sequential", "vectorized", "pool", "ray")
_INNER_BACKENDS = ("sequential", "vectorized")  # in pool and Ray workers (--inner-backend)
_MAX_WORKERS = 1024  # --workers: process_pool.MAX_WORKERS and WORKERS_PER_CPU
_WORKERS_PER_CPU = 4
_THREADS_PER_CPU = 4  # --threads: at most this many per CPU this process may use
_PROG = "plume sim"


class RuntimeEnv:
    """A parsed --ray-runtime-env: `env`, Ray's runtime_env (a JSON object), and `path`, the
    file it was read from (None: given inline). Its `str` is what rounds.json's `command`
    records: the path, or for inline JSON a redaction marker naming its keys (its values may
    be secrets), which a rerun refuses in one line."""

    def __init__(self, env: dict[str, Any], path: str | None) -> None:
        self.env = env
        self.path = path

    def __str__(self) -> str:
        if self.path is not None:
            return self.path
        return f"{_NOT_RECORDED} (keys: {', '.join(sorted(self.env)) or 'none'})>"


_NOT_RECORDED = "<inline runtime_env not recorded"


def _runtime_env(text: str) -> RuntimeEnv:
    """--ray-runtime-env: a JSON object, or the path of a file holding one (read now), of the
    shape Ray takes (`_runtime_env_problem`)."""
    if text.startswith(_NOT_RECORDED):
        raise argparse.ArgumentTypeError(
            "this is the redaction marker rounds.json's command records for an inline runtime_env "
            "(its values may be secrets, so they were not recorded): give the JSON object, or "
            "a file holding it, again"
        )
    path: str | None = None
    source = text
    if _is_file(text):
        path = source = text
        try:
            source = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise argparse.ArgumentTypeError(f"cannot read {path} ({reason})") from None
    try:
        env = json.loads(source)
    except (ValueError, RecursionError) as exc:
        if path is not None:
            raise argparse.ArgumentTypeError(f"{path} does not hold valid JSON: {exc}") from None
        if text.lstrip().startswith(("{", "[", '"')):
            raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a JSON object nor a file holding one (no such file)"
        ) from None
    if not isinstance(env, dict):
        raise argparse.ArgumentTypeError(
            f"{f'{path} must hold' if path else 'must be'} a JSON object (Ray's runtime_env: "
            f"py_modules, pip, env_vars, ...), not {_json_kind(env)}"
        )
    problem = _runtime_env_problem(env)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{path}: {problem}" if path else problem)
    return RuntimeEnv(env, path)


def _json_kind(value: object) -> str:
    """What JSON `value` is, in words ("a string", "an array holding a number", ...)."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, list):
        odd = next((item for item in value if not isinstance(item, str)), None)
        return "an array" if odd is None else f"an array holding {_json_kind(odd)}"
    kinds = {dict: "an object", str: "a string", type(None): "null"}
    return kinds.get(type(value), "a number")


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


# The fields Ray (2.60) takes in a runtime_env's pip and uv objects, and their types.
_PACKAGE_FIELDS: dict[str, dict[str, tuple[type, str]]] = {
    "pip": {
        "pip_check": (bool, "true or false"),
        "pip_version": (str, "a string"),
        "pip_install_options": (list, "an array of strings"),
    },
    "uv": {
        "uv_check": (bool, "true or false"),
        "uv_version": (str, "a string"),
        "uv_pip_install_options": (list, "an array of strings"),
    },
}


def _runtime_env_problem(env: dict[str, Any]) -> str | None:
    """What Ray would refuse in a --ray-runtime-env by its shape alone, or None: the checks of
    Ray 2.60's runtime_env for env_vars, py_modules, working_dir, excludes, pip, uv, conda,
    container and config (a null value is left unset, as Ray does). It names the key, never a
    value: env_vars may hold secrets, and Ray's own messages quote values. What only Ray can
    check (a path, a URI, its other keys) is checked when the run starts Ray, where a refusal
    is also one line naming the key (RayBackend.start)."""
    given = {key: value for key, value in env.items() if value is not None}
    env_vars = given.get("env_vars")
    if env_vars is not None:
        if not isinstance(env_vars, dict):
            return (
                "env_vars must be an object of variable names to strings (Ray sets each as an "
                f"environment variable of the workers), not {_json_kind(env_vars)}"
            )
        for name, value in env_vars.items():
            if not name or "=" in name or "\0" in name:
                # Every worker crashed at start on one, and the run waited 300 s for actors
                # that never came (helper-344).
                return (
                    f"env_vars name {json.dumps(name)} is no environment variable name (empty, "
                    "or holding '=' or a NUL byte)"
                )
            if not isinstance(value, str):
                return (
                    f"env_vars[{json.dumps(name)}] must be a string (Ray sets it as an "
                    f"environment variable: quote it), not {_json_kind(value)}"
                )
    for key in ("py_modules", "excludes"):
        if key in given and not _strings(given[key]):
            return f"{key} must be an array of strings, not {_json_kind(given[key])}"
    if "working_dir" in given and not isinstance(given["working_dir"], str):
        return f"working_dir must be a string, not {_json_kind(given['working_dir'])}"
    installers = [key for key in ("pip", "uv", "conda") if key in given]
    if len(installers) > 1:
        return f"{' and '.join(installers)} cannot be given together (Ray takes one of them)"
    for key, fields in _PACKAGE_FIELDS.items():
        if key in given and (problem := _packages_problem(key, given[key], fields)):
            return problem
    if "conda" in given and not isinstance(given["conda"], (str, dict)):
        return (
            "conda must be the name of a conda environment, a .yaml file or an object, not "
            f"{_json_kind(given['conda'])}"
        )
    if given.get("container") and (
        others := sorted(set(given) - {"container", "config", "env_vars"})
    ):
        return f"container takes only config and env_vars with it, not {', '.join(others)}"
    if "config" in given and not isinstance(given["config"], dict):
        return f"config must be an object, not {_json_kind(given['config'])}"
    return None


def _packages_problem(key: str, value: object, fields: dict[str, tuple[type, str]]) -> str | None:
    """What Ray refuses in a runtime_env's `key` ("pip" or "uv"): a requirements file's path,
    an array of requirements, or an object of `packages` and `fields`."""
    if isinstance(value, str) or _strings(value):
        return None
    if not isinstance(value, dict):
        return (
            f"{key} must be a requirements file's path, an array of strings or an object, not "
            f"{_json_kind(value)}"
        )
    unknown = sorted(set(value) - {"packages", *fields})
    if unknown:
        return (
            f"{key} takes only the fields packages, {', '.join(fields)}, not "
            f"{', '.join(json.dumps(name) for name in unknown)}"
        )
    if "packages" not in value:
        return f"{key} must include packages (the requirements to install)"
    packages = value["packages"]
    if not (_strings(packages) or (key == "pip" and isinstance(packages, str))):
        what = "an array of strings" + (" or a requirements file's path" if key == "pip" else "")
        return f"{key}.packages must be {what}, not {_json_kind(packages)}"
    for name, (kind, words) in fields.items():
        if name in value and not (
            _strings(value[name]) if kind is list else isinstance(value[name], kind)
        ):
            return f"{key}.{name} must be {words}, not {_json_kind(value[name])}"
    return None


def _is_file(text: str) -> bool:
    """Whether `text` names an existing file (False for what no path can be: a name too long,
    a NUL byte, as an inline JSON object may be)."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def _secure_default(name: str) -> str:
    """The default of SecureConfig's field `name` (what a --secure run uses when the flag is
    left unset), for the flag's help: the value alone, as `plume coordinator create-task
    --help` shows it (the class name meant nothing to a user)."""
    try:
        from dataclasses import fields

        from coordinator.secure import SecureConfig
    except ImportError:
        return "the secure aggregation library's"
    default = next(f.default for f in fields(SecureConfig) if f.name == name)
    return f"{default}"


def register(sub: Any) -> None:
    from coordinator.cli import when_help

    p: argparse.ArgumentParser = sub.add_parser(
        "sim",
        add_help=False,  # -h is _Help: `plume sim report --help` gets the report's own
        help="run a simulated fleet against the coordinator",
        description=(
            "Simulate a fleet of devices training a model with Plume. Every upload is really "
            "encoded (top-k + quantization + zstd with error feedback) and decoded by the "
            "coordinator's round engine; the table shows accuracy and bytes per round."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-h", "--help", action=_Help, help="show this help message and exit")
    p.add_argument(
        "action",
        nargs="?",
        default="run",
        metavar="{run,report}",  # checked in _main, to suggest `report` for a stray folder
        help="'run' (default) a simulation, or 'report' to rebuild the plots and rounds.csv "
        "of RUN_DIR",
    )
    p.add_argument(
        "run_dir", nargs="?", metavar="RUN_DIR", help="with 'report': the run's output folder"
    )

    g = p.add_argument_group("data and model")
    g.add_argument(
        "--plugin",
        action="append",
        default=None,
        metavar="MODULE",
        help="import MODULE before the run (repeatable; also a path to a .py file), so its "
        "top-level code registers your own models, datasets and aggregators "
        "(mobile_sim.models.MODELS, mobile_sim.runner.DATASET_LOADERS, AGGREGATORS) for "
        "--model, --dataset and --aggregator; a module name is found from the current "
        "directory, as with python -m; e.g. --plugin my_plugin --dataset my_data --model "
        'my_cnn (docs/simulator.md, "Your own model, dataset or aggregator")',
    )
    g.add_argument("--dataset", default="mnist", metavar="NAME", help=_DATASETS)
    g.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help=f"zoo model: {_MODELS} (default: the dataset's: mnist_cnn for mnist, digits_mlp "
        "for digits, shakespeare_lstm_small, synthetic_lr)",
    )
    g.add_argument(
        "--data-root",
        default=None,
        metavar="DIR",
        help="folder holding mnist-t10k/ and tinyshakespeare/ (default: $PLUME_DATA, else "
        "../shared/data next to the repository)",
    )
    g.add_argument(
        "--partition",
        default=None,
        choices=("iid", "dirichlet", "shards", "natural"),
        help="how examples are split over devices; natural: the dataset's own users (default: "
        "natural for shakespeare and synthetic, which have them; dirichlet for mnist and digits)",
    )
    g.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="Dirichlet concentration of the label skew (smaller: more skewed)",
    )
    g.add_argument(
        "--shards-per-client",
        type=int,
        default=2,
        metavar="N",
        help="--partition shards: label-sorted shards each device gets",
    )

    g = p.add_argument_group("fleet and rounds")
    g.add_argument(
        "--clients",
        type=int,
        default=None,
        metavar="N",
        help="registered devices (default: 100; with --partition natural, all the dataset's "
        "natural clients: 98 shakespeare speakers, 30 synthetic devices, a --plugin "
        "dataset's train_groups)",
    )
    g.add_argument(
        "--per-round", type=int, default=10, metavar="N", help="reports aggregated per round"
    )
    g.add_argument("--rounds", type=int, default=20, metavar="N", help="training rounds")
    g.add_argument(
        "--over-selection",
        type=float,
        default=None,
        metavar="FACTOR",
        help="devices selected per round = FACTOR x --per-round, 1 to 10; e.g. 1.3 selects "
        "30%% extra (default: 1.0, none; with --fleet realistic the coordinator's default, "
        "1.3, as a task has)",
    )
    g.add_argument(
        "--min-reports",
        type=int,
        default=1,
        metavar="N",
        help="reports a round needs to close, 1 to --per-round",
    )
    g.add_argument(
        "--fleet",
        default=None,
        choices=("off", "timing", "realistic"),
        help="simulated clock: 'timing' adds simulated seconds (everyone available, no "
        "dropouts); 'realistic' adds diurnal availability (or --behaviour-trace's), check-ins, "
        "tier dropouts and the "
        "coordinator's default deadline. --deadline applies in both. Default: timing for "
        "in-process plain runs; off (wall time only) for --transport http and --secure, "
        "which have no simulated clock",
    )
    # The coordinator's numbers ({max}, {default}) are filled in when the help is shown.
    clock_actions = {}
    clock_actions["deadline"] = g.add_argument(
        "--deadline",
        type=float,
        default=None,
        metavar="SECONDS",
        help="round deadline, simulated seconds, in (0, {max}] as the coordinator's; a late "
        "report is a straggler (default: with --fleet realistic the coordinator's default "
        "{default}, the wait of a round that loses a device; with --fleet timing none, every "
        "device reports)",
    )
    clock_actions["selection_timeout"] = g.add_argument(
        "--selection-timeout",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="realistic: open a round with >= --min-reports devices this many simulated s "
        "after the first check-in, as `plume coordinator serve` does, in (0, {max}] "
        "(default 900; -1: full cohort only)",
    )
    g.add_argument(
        "--checkin-period",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="realistic: each eligible device checks in once per this many simulated s, at a "
        "uniformly random time (default 900, at most 900; 0: instantly)",
    )
    g.add_argument(
        "--min-memory-mb",
        type=float,
        default=None,
        metavar="MIB",
        help="realistic: only devices with at least this much memory are eligible, e.g. 4096 "
        "leaves out the low tier's 2 and 3 GiB phones (default: none, no memory filter)",
    )
    g.add_argument(
        "--capacity-trace",
        default=None,
        metavar="FILE",
        help="timing/realistic: a FedScale-format device capacity trace, .json (client id -> "
        '{"computation": ms per sample, "communication": kbit/s}) or .csv (client_id,'
        "computation,communication); each device takes one entry (a draw seeded by --seed) "
        "for its compute speed, 1000 / (3 x computation) samples/s, and its up and down "
        "bandwidth, communication x 1024 bit/s. Tier, latency, dropout and memory stay the "
        "tier model's. JSON or CSV only, never a pickle: docs/traces.md shows how to convert "
        "FedScale's (default: none, the tier model)",
    )
    g.add_argument(
        "--behaviour-trace",
        default=None,
        metavar="FILE",
        help="realistic: a FedScale-format availability trace, .json (client id -> "
        '{"active": [s, ...], "inactive": [s, ...], "finish_time": s}); each device takes '
        "one entry (a draw seeded by --seed) and is available while simulated time mod "
        "finish_time is inside one of its [active, inactive] windows, in place of the "
        "diurnal model (default: none, the diurnal model)",
    )
    g.add_argument(
        "--trace-compute-scale",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="--capacity-trace: multiply the trace's samples/s (FedScale's reference model) "
        "by FACTOR to get the MNIST CNN's, which --model's cost then scales (default: 1)",
    )
    g.add_argument(
        "--aggregator",
        default="fedavg",
        metavar="SPEC",
        help="server aggregator: fedavg, median, trimmed_mean:0.1, krum, cosfilter+geomed, "
        "yogi:lr=0.01, ... (the full list is at the end of this help)",
    )
    g.add_argument(
        "--server-lr",
        type=float,
        default=1.0,
        metavar="LR",
        help="server step: the model moves by LR x the aggregate. top-k shrinks the averaged "
        "update (a coordinate a report did not keep counts as 0 in the mean), so compressed "
        "runs may need more: the README's headline run uses 2.0 with --topk 0.005. Keep 1 "
        "with a server optimizer such as yogi:lr=0.01, whose lr= is the step; LR would "
        "multiply it",
    )

    g = p.add_argument_group("local training")
    g.add_argument(
        "--local-epochs", type=int, default=5, metavar="E", help="device epochs per round"
    )
    g.add_argument(
        "--batch-size", type=int, default=10, metavar="B", help="device minibatch, examples"
    )
    g.add_argument("--lr", type=float, default=0.05, help="device SGD learning rate")
    g.add_argument("--momentum", type=float, default=0.0, help="device SGD momentum")

    g = p.add_argument_group("compression")
    g.add_argument(
        "--topk",
        type=float,
        default=0.01,
        metavar="FRACTION",
        help="fraction of coordinates each upload keeps, in (0, 1]",
    )
    g.add_argument(
        "--bits",
        type=int,
        default=4,
        choices=(1, 2, 4, 8, 16, 32),
        help="bits per kept value: 1, 2, 4, 8 (quantized), 16 or 32 (floats)",
    )
    g.add_argument(
        "--block", type=int, default=256, metavar="N", help="values per quantization scale"
    )
    g.add_argument(
        "--index",
        default="auto",
        choices=("auto", "bitmap", "rice", "ef"),
        help="encoding of the kept coordinates' positions (auto: the smallest)",
    )
    g.add_argument(
        "--topk-mode",
        default="exact",
        choices=("exact", "sampled"),
        help="exact top-k, or a sampled threshold (faster on large models)",
    )
    g.add_argument(
        "--scope",
        default="global",
        choices=("global", "per_tensor"),
        help="top-k over the whole model or within each tensor",
    )
    g.add_argument(
        "--no-error-feedback",
        action="store_true",
        help="drop what compression discards instead of carrying it to the next round",
    )
    g.add_argument(
        "--warmup-rounds",
        type=int,
        default=0,
        metavar="N",
        help="first N rounds sent dense (fp32)",
    )
    g.add_argument(
        "--clip-norm",
        type=float,
        default=None,
        metavar="C",
        help="L2 clip of each update before encoding (default: none)",
    )
    g.add_argument(
        "--downlink-topk",
        type=float,
        default=None,
        metavar="FRACTION",
        help="model downloads: the fraction of coordinates each published model delta keeps, "
        "in (0, 1], with server-side error feedback, as `plume coordinator create-task "
        "--downlink-topk` (default: in process the exact model, no downlink compression; "
        "over --transport http 0.05; given --downlink-bits alone, create-task's 0.02)",
    )
    g.add_argument(
        "--downlink-bits",
        type=int,
        default=None,
        choices=(1, 2, 4, 8, 16, 32),
        metavar="BITS",
        help="model downloads: bits a value of each published delta, 1, 2, 4, 8 (quantized), "
        "16 or 32 (floats) (default: in process exact; over --transport http 8; given "
        "--downlink-topk alone, create-task's 8)",
    )
    g.add_argument("--dense", action="store_true", help="run only the dense fp32 baseline")
    g.add_argument(
        "--compare-dense",
        action="store_true",
        help="also run the dense fp32 baseline in this invocation and plot both",
    )

    g = p.add_argument_group("secure aggregation (SecAgg+ on a shared coordinate set)")
    g.add_argument("--secure", action="store_true", help="run rounds under SecAgg+")
    secure_actions = {
        "coord_fraction": g.add_argument(
            "--secure-fraction",
            type=float,
            default=None,
            metavar="FRACTION",
            help="|S_r| / d, the shared coordinates per round",
        )
    }
    g.add_argument(
        "--secure-upload-budget",
        type=int,
        default=None,
        metavar="BYTES",
        help="per-device upload over the four stages; |S_r| is the largest that fits each "
        "round's cohort (overrides --secure-fraction; e.g. 2x the plain frame) (default: none, "
        "|S_r| from --secure-fraction)",
    )
    secure_actions["value_bits"] = g.add_argument(
        "--secure-bits",
        type=int,
        default=None,
        metavar="BITS",
        help="bits per value before masking, 1-16",
    )
    secure_actions["clip_norm"] = g.add_argument(
        "--secure-clip",
        type=float,
        default=None,
        metavar="C",
        help="L2 clip of the sent vector",
    )
    g.add_argument(
        "--secure-dropout",
        type=float,
        default=0.1,
        metavar="FRACTION",
        help="share of each cohort that drops out mid-round, in [0, 1)",
    )
    g.add_argument(
        "--group-size",
        type=int,
        default=None,
        metavar="G",
        help="grouped mode: SecAgg+ within groups of G >= 3 devices (default: one group)",
    )
    g.add_argument(
        "--group-aggregator",
        default="fedavg",
        metavar="SPEC",
        help="with --group-size: robust aggregator over the group sums",
    )
    g.add_argument(
        "--dp-noise",
        default="none",
        metavar="{none,gaussian,skellam}",  # checked in _dp_noise_error: a usage error, 2
        help="distributed DP noise each device adds (needs --noise-multiplier > 0)",
    )
    g.add_argument(
        "--noise-multiplier",
        type=float,
        default=0.0,
        metavar="Z",
        help="with --dp-noise: noise standard deviation / --secure-clip",
    )
    g.add_argument(
        "--epsilon-budget",
        type=float,
        default=None,
        metavar="EPS",
        help="with --dp-noise: the epsilon (at delta 1e-05) the run may spend; a round that "
        "would pass it is refused before unmasking and the run stops there (default: none, "
        "epsilon only grows)",
    )

    g = p.add_argument_group("threats")
    g.add_argument(
        "--attack",
        default=None,
        metavar="NAME[:k=v,...]",
        help="poisoning attack of the malicious devices (needs --malicious): signflip, "
        "scaling, alie, ipm, labelflip, gaussian, backdoor (default: none, every device "
        "honest)",
    )
    g.add_argument(
        "--malicious",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="share of devices that run --attack, in [0, 1)",
    )

    g = p.add_argument_group("execution and output")
    g.add_argument(
        "--transport",
        default="inproc",
        choices=("inproc", "http"),
        help="inproc: call the round engine directly; http: real requests to a coordinator",
    )
    g.add_argument(
        "--coordinator",
        default=None,
        metavar="URL",
        help="with --transport http: an external coordinator's URL (needs $PLUME_ADMIN_TOKEN; "
        "an https:// one with a private CA also SSL_CERT_FILE=PEM; default: start a loopback "
        "one; plain rounds only, not with --secure)",
    )
    g.add_argument(
        "--backend",
        default="sequential",
        choices=_BACKENDS,
        help="how device training runs: one by one, vectorized, a process pool, or Ray",
    )
    g.add_argument(
        "--residual-memory-mb",
        type=float,
        default=512.0,
        metavar="MIB",
        help="in-process and --secure runs: trained devices' error-feedback residuals (4 bytes "
        "a model parameter each) held in memory; beyond it the least recently used go to a "
        "private temporary directory under $TMPDIR, removed at the end, and come back bit for "
        "bit (default 512; 0: all, after each round)",
    )
    g.add_argument(
        "--job-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="pool and ray: fail the round when one worker task runs this long (a stuck "
        "worker). Default: an automatic limit (20x a task's examples at the finished "
        "tasks' rate, at least 300 s; 3600 s for a worker's first task)",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="pool and ray: worker processes or Ray actors (default: the pool one per CPU of "
        "this machine; Ray one per CPU free in the cluster when it starts), at most "
        f"{_MAX_WORKERS}, and at most {_WORKERS_PER_CPU} per CPU (the pool: of this machine; "
        "Ray: of the cluster, checked when it starts, and of this machine for a private "
        "runtime, checked at once): more only take turns on the same CPUs, "
        "each a process that imports torch, and workers beyond the devices of a round get no "
        "jobs",
    )
    g.add_argument(
        "--inner-backend",
        default=None,
        choices=_INNER_BACKENDS,
        help="pool and ray: how each worker trains its share of the devices: one by one, or "
        "vectorized (vmap; fastest for small models such as digits_mlp) (default: sequential)",
    )
    g.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="ray: the cluster to join: HOST:PORT of `ray start --head`, ray://HOST:PORT, "
        "auto (the cluster `ray start` runs on this machine), or local (a private Ray runtime "
        "on this machine, even when a cluster runs here); given, it wins over $RAY_ADDRESS, "
        "auto too (default: $RAY_ADDRESS, else a private Ray runtime on this machine)",
    )
    g.add_argument(
        "--ray-runtime-env",
        type=_runtime_env,
        default=None,
        metavar="JSON|FILE",
        help="ray: Ray's runtime_env for ray.init, a JSON object or a .json file holding one, "
        'e.g. \'{"env_vars": {"OMP_NUM_THREADS": "1"}}\' or {"py_modules": [...]} to ship '
        "code to nodes without Plume; a shape Ray refuses (env_vars maps names to strings) is "
        "an error naming the key, never a value. rounds.json records only its keys (values "
        "such as env_vars may be secrets): its command names the FILE, or leaves inline JSON "
        "out (default: none)",
    )
    g.add_argument(
        "--ort-fraction",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="share of devices that train on onnxruntime (needs --ort-artifacts)",
    )
    g.add_argument(
        "--ort-artifacts",
        default=None,
        metavar="DIR",
        help="folder written by `plume export` for the same model (default: none; "
        "--ort-fraction and --ort-tier need it)",
    )
    g.add_argument(
        "--ort-tier",
        default=None,
        choices=("low", "mid", "high"),
        help="that device tier trains on onnxruntime (needs --ort-artifacts) (default: none, "
        "every device trains on torch unless --ort-fraction)",
    )
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch threads in this process (default: torch's choice), at least 1 and at "
        f"most {_THREADS_PER_CPU} per CPU this process may use (more only take turns on the "
        "same CPUs); tiny models such as digits_mlp run fastest on 1, and so does any model on "
        "a machine whose CPUs other processes keep busy",
    )
    g.add_argument(
        "--eval-every",
        type=int,
        default=1,
        metavar="N",
        help="evaluate the global model every N rounds (and after the last)",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help=(
            "seed of the partition over devices, the cohorts and the initial weights, and "
            "(unless --data-seed) of the dataset's train/test split; in [0, 2**63)"
        ),
    )
    g.add_argument(
        "--data-seed",
        type=int,
        default=None,
        metavar="SEED",
        help=(
            "seed of the dataset's train/test split (mnist, digits) or generated data "
            "(synthetic); fix it to repeat over --seed on one test set (default: --seed)"
        ),
    )
    g.add_argument(
        "--out",
        default="runs/latest",
        metavar="DIR",
        help="output folder for JSON, CSV and plots (created if missing). An earlier run's "
        "files there (rounds.json, rounds.csv, ledger.csv, the three PNGs; in compressed/, "
        "dense/ and secure/ too) are removed as the first round ends, and a line says so (a "
        "run that fails or is stopped before then leaves them); nothing else in it is touched",
    )
    g.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (there is none either when stderr is not a terminal); the "
        "per-round table is printed all the same",
    )
    p.set_defaults(
        func=_main,
        # Every flag of a run and its default: `plume sim report` takes none of them, and
        # `_given` reads which were set.
        _run_flags={
            a.dest: (a.option_strings[0], a.default)
            for a in p._actions
            if a.option_strings and a.dest != argparse.SUPPRESS
        },
        # Every option string (and each value-taking flag's dest), for `_typed_argv`.
        _option_dests={
            option: a.dest
            for a in p._actions
            if a.dest != argparse.SUPPRESS
            for option in a.option_strings
        },
    )
    # The words after `plume sim` as they were typed, kept for rounds.json's `argv`: the
    # parser of `plume` hands this parser exactly those words (argparse's subparser action).
    parse_known = p.parse_known_args

    def parse_known_args(
        args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = parse_known(args, namespace)
        parsed._typed = list(sys.argv[2:] if args is None else args)
        return parsed, extras

    p.parse_known_args = parse_known_args  # type: ignore[method-assign,assignment]

    def complete_help(parser: argparse.ArgumentParser) -> None:
        # The aggregator list and SecureConfig's defaults import numpy and the aggregators:
        # added when this help is shown, not for every `plume` run.
        parser.epilog = _EXAMPLES + _aggregator_help()
        for name, action in secure_actions.items():
            action.help = f"{action.help} (default: {_secure_default(name)})"
        from .clock import COORDINATOR_DEADLINE_S, COORDINATOR_MAX_S

        for action in clock_actions.values():
            assert action.help is not None
            action.help = action.help.format(
                max=f"{COORDINATOR_MAX_S:.0f}", default=f"{COORDINATOR_DEADLINE_S:g}"
            )

    when_help(p, complete_help)


# The datasets that have their own users (one client per speaker or per synthetic device).
_NATURAL_USERS = {"shakespeare": "speakers", "synthetic": "devices"}


def _natural_family(dataset: str) -> str | None:
    """'shakespeare' or 'synthetic' (also for synthetic(a,b) and synthetic_iid), else None."""
    from .runner import dataset_family

    family = dataset_family(dataset)
    return family if family in _NATURAL_USERS else None


def _default_partition(args: argparse.Namespace) -> None:
    """--partition left out: the dataset's own users where it has them, as in LEAF and
    FedProx (a label split would erase what synthetic(alpha, beta) varies), else dirichlet."""
    if args.partition is None:
        args.partition = "natural" if _natural_family(args.dataset) else "dirichlet"


def _registered_dataset(dataset: str) -> bool:
    """Whether `dataset` is one a --plugin registered (`DATASET_LOADERS`), which may have
    natural users of its own (a `NaturalData` with `train_groups`)."""
    from .runner import DATASET_LOADERS

    return dataset in DATASET_LOADERS


def _natural_users(dataset: str) -> str:
    """What a dataset's natural clients are, in the line that counts them: "speakers",
    "devices", or "users" for a registered one."""
    return _NATURAL_USERS.get(_natural_family(dataset) or "", "users")


def _default_clients(args: argparse.Namespace) -> None:
    """--clients left out: 100, or with the natural split every natural client (loading the
    dataset to count them, a registered one too; a `DataError` if it is missing, a
    `ValueError` for one without natural users). Sets `args.natural_count`."""
    _default_partition(args)
    if args.clients is not None:
        return
    if args.partition == "natural" and (
        _natural_family(args.dataset) or _registered_dataset(args.dataset)
    ):
        # A --plugin's dataset counted too: 100 was refused as more than its users, with a
        # --clients the user never gave (stop 48, helper-406).
        from .runner import natural_client_count
        from .status import say

        say(f"loading {args.dataset}")
        args.clients = args.natural_count = natural_client_count(
            args.dataset, args.data_root, args.seed if args.data_seed is None else args.data_seed
        )
    else:
        args.clients = 100


def config_from_args(args: argparse.Namespace, **overrides: Any) -> Any:
    from .runner import SimConfig

    _default_clients(args)
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
        "workers": args.workers,
        "inner_backend": args.inner_backend,
        "residual_memory_mb": args.residual_memory_mb,
        "ray_address": args.ray_address,
        "ray_runtime_env": None if args.ray_runtime_env is None else args.ray_runtime_env.env,
        "ort_fraction": args.ort_fraction,
        "ort_artifacts": args.ort_artifacts,
        "ort_tier": args.ort_tier,
        "eval_every": args.eval_every,
        "seed": args.seed,
        "data_seed": args.data_seed,
        "fleet": _fleet(args),
        "deadline_s": args.deadline,
        "selection_timeout_s": None if args.selection_timeout == -1 else args.selection_timeout,
        "checkin_period_s": args.checkin_period,
        "min_memory_mb": args.min_memory_mb,
        "capacity_trace": args.capacity_trace,
        "behaviour_trace": args.behaviour_trace,
        "trace_compute_scale": args.trace_compute_scale,
        "plugins": tuple(args.plugin or ()),
        "downlink_topk": args.downlink_topk,
        "downlink_bits": args.downlink_bits,
    }
    if overrides.get("dense"):
        # The dense baseline (--compare-dense) is uncompressed both ways.
        values["downlink_topk"] = values["downlink_bits"] = None
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
        epsilon_budget=math.inf if args.epsilon_budget is None else args.epsilon_budget,
        server_lr=cfg.server_lr,
        seed=cfg.seed,
    )


class _InProgress:
    """The record of a run into an --out folder (`report_extra.in_progress_path`): written as
    the run starts, its round count updated as each round ends, removed when the run ends
    however it ends (`remove`). `plume sim report` reads it to tell a run still writing there
    from a folder holding none (a run writes its own files only when it ends). A record that
    cannot be written is no reason to stop a run: `plume sim report` then says what it said
    before."""

    def __init__(self, out: Path, runs: list[tuple[str, Any]]) -> None:
        from .report import utc_now
        from .report_extra import in_progress_path, process_start

        self.path = in_progress_path(out)
        self.doc: dict[str, Any] = {
            "out": str(out.resolve()),
            "pid": os.getpid(),
            # Where the system tells (Linux): a pid reused after a SIGKILL is not this run.
            **({} if (start := process_start(os.getpid())) is None else {"pid_start": start}),
            "started_at": utc_now(),
            "runs": [label for label, _ in runs],
            "run": runs[0][0],
            "rounds": runs[0][1].rounds,
            "done": 0,
        }
        self.written = False

    def start(self, label: str, rounds: int) -> None:
        """Run `label` (of --rounds `rounds`) starts."""
        self.doc.update(run=label, rounds=rounds, done=0)
        self._write()

    def round_done(self, done: int) -> None:
        self.doc["done"] = done
        self._write()

    def _write(self) -> None:
        from .report import replace_atomically

        text = json.dumps(self.doc) + "\n"
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            replace_atomically(self.path, lambda tmp: tmp.write_text(text))
            self.written = True

    def remove(self) -> None:
        """Remove the record, unless another run into the folder has written its own since."""
        if not self.written:
            return
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()


class _Rows:
    """Prints the per-round table as rounds finish: above the progress bar (tqdm.write) when
    there is one, as plain lines otherwise."""

    def __init__(
        self,
        label: str,
        above_bar: bool,
        show: bool = True,
        first: Callable[[], None] | None = None,
        counted: Callable[[int], None] | None = None,
    ) -> None:
        self.label = label
        self.above_bar = above_bar
        self.show = show  # False: count the rounds only (a runner's own bar prints them)
        self.first = first  # called as the first round ends, before its row
        self.counted = counted  # called with the rounds finished as each round ends
        self.started = False
        self.done = 0

    def _say(self, text: str) -> None:
        if self.above_bar:
            from tqdm import tqdm

            tqdm.write(text)
        else:
            print(text, flush=True)

    def __call__(self, rec: Any) -> None:
        from .report import table_header, table_row

        _hold_sigterm()
        if self.done == 0 and self.first is not None:
            self.first()
        self.done += 1
        if self.counted is not None:
            self.counted(self.done)
        if not self.show:
            return
        if not self.started:  # at the first row, so a run that fails to start prints no header
            self.started = True
            self._say(table_header(self.label))
        self._say(table_row(rec))


def _progress_on(args: argparse.Namespace) -> bool:
    """Whether a run shows its progress (the bar, the status line): on a terminal's stderr,
    unless --no-progress."""
    return not args.no_progress and sys.stderr.isatty()


def _run_one(cfg: Any, args: argparse.Namespace, label: str, rows: _Rows) -> Any:
    """Run one simulation; `rows` prints its table (or only counts its rounds, where the
    runner's own progress bar prints them)."""
    # The bar goes to stderr: only on a terminal, so a log (`2>&1 | tee`) holds no
    # carriage-return noise; the table rows go to stdout either way, one per finished round.
    bar = _progress_on(args)
    if args.secure and not cfg.dense:
        from .secure import run_secure_simulation

        rows.above_bar = bar  # the secure bar prints no rows
        return run_secure_simulation(
            cfg,
            _secure_config(args, cfg),
            dropout=args.secure_dropout,
            progress=bar,
            label=label or "secure",
            transport=args.transport,
            on_round=rows,
        )
    # The plain runners print the rows above their own bar; without one, this does.
    rows.show = not bar
    if args.transport == "http":
        try:
            from .http_fleet import run_http_simulation
        except ImportError as exc:
            raise SystemExit(f"--transport http is unavailable in this build: {exc}") from exc
        said = args.coordinator is None and _unproven_dp_note(cfg, args.secure) is not None
        with _without_coordinator_note() if said else contextlib.nullcontext():
            return run_http_simulation(
                cfg, coordinator_url=args.coordinator, progress=bar, label=label, on_round=rows
            )
    from .runner import run_simulation

    return run_simulation(cfg, progress=bar, label=label, on_round=rows)


# The embedded coordinator's create-task warning that `_unproven_dp_note` has already said.
_COORDINATOR_NOTE = "its dp stage accounts epsilon with amplification by fixed-size sampling"


@contextlib.contextmanager
def _without_coordinator_note() -> Iterator[None]:
    """Drop the embedded coordinator's log line of `_unproven_dp_note` (its create-task
    warning, logged on `plume.coordinator` in this process) while the run lasts: `plume sim`
    printed the same note before the run, and the line came out twice. Its other lines pass."""

    def keep(record: logging.LogRecord) -> bool:
        return _COORDINATOR_NOTE not in record.getMessage()

    logger = logging.getLogger("plume.coordinator")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _remote_errors() -> tuple[type[Exception], ...]:
    """What talking to an external coordinator raises on a refusal or a network failure."""
    try:
        import httpx

        from coordinator.service import AdminError
    except ImportError:  # no HTTP stack in this build: --transport http is refused anyway
        return ()
    return (AdminError, httpx.HTTPError)


def _run_folder_blocked(out: Path, labels: list[str]) -> str | None:
    """Why a --compare-dense run's own folder (`out/compressed`, `out/dense`, ...) could not
    take its files, or None: a file of that name in the way, or a folder that takes no file.
    Checked before the first round: found when a run's files were written, the error came
    after every round of that run had trained, as a bare `--out/dense: File exists` (s52b)."""
    if len(labels) < 2:
        return None  # a single run writes into --out itself, checked above
    for label in labels:
        folder = out / label
        if folder.exists() and not folder.is_dir():
            return (
                f"cannot create the output folder {folder} for the {label} run of "
                f"--compare-dense ({folder} is a file, not a folder): move it, or give "
                "another --out"
            )
        if folder.is_dir():
            try:
                with tempfile.NamedTemporaryFile(dir=folder, prefix=".plume-write-check-"):
                    pass
            except OSError as exc:
                reason = exc.strerror or str(exc)
                return f"cannot write in the output folder {folder} of the {label} run ({reason})"
    return None


def _fail(message: str, status: int = 2) -> int:
    """Print `plume sim: error: MESSAGE` on stderr; returns `status` (2: a usage error)."""
    from coordinator.cli import print_error

    from .status import clear

    clear()
    print_error(_PROG, message)
    return status


# Secure-aggregation flags: any value but the flag's default without --secure is a mistake.
_SECURE_ONLY = (
    ("--secure-fraction", "secure_fraction"),
    ("--secure-upload-budget", "secure_upload_budget"),
    ("--secure-bits", "secure_bits"),
    ("--secure-clip", "secure_clip"),
    ("--secure-dropout", "secure_dropout"),
    ("--group-size", "group_size"),
    ("--group-aggregator", "group_aggregator"),
    ("--dp-noise", "dp_noise"),
    ("--noise-multiplier", "noise_multiplier"),
    ("--epsilon-budget", "epsilon_budget"),
)
# Flags of plain rounds that a secure run has no use for: its devices upload a masked count
# sketch (sized by --secure-upload-budget, clipped by --secure-clip), every device is honest,
# the cohort is --per-round, and robustness across groups is --group-aggregator.
_PLAIN_ONLY = (
    ("--attack", "attack"),
    ("--malicious", "malicious"),
    ("--aggregator", "aggregator"),
    ("--over-selection", "over_selection"),
    ("--min-reports", "min_reports"),
    ("--warmup-rounds", "warmup_rounds"),
    ("--clip-norm", "clip_norm"),
    ("--topk", "topk"),
    ("--bits", "bits"),
    ("--block", "block"),
    ("--index", "index"),
    ("--topk-mode", "topk_mode"),
    ("--scope", "scope"),
    ("--no-error-feedback", "no_error_feedback"),
    ("--ort-fraction", "ort_fraction"),
    ("--ort-tier", "ort_tier"),
)
# --residual-memory-mb: the idle devices' error-feedback state held in memory. A dense run keeps
# none; an HTTP fleet's plain devices keep theirs in their app directories, its secure ones use
# the simulator's participants (mobile_sim/_residuals.py's ParticipantStore).
_RESIDUAL_FLAG = ("--residual-memory-mb", "residual_memory_mb")
# The plain codec's flags, which a --dense run (dense fp32 updates) has no use for.
_CODEC_FLAGS = (
    *(
        (flag, dest)
        for flag, dest in _PLAIN_ONLY
        if dest
        in (
            "topk",
            "bits",
            "block",
            "index",
            "topk_mode",
            "scope",
            "no_error_feedback",
            "warmup_rounds",
        )
    ),
    _RESIDUAL_FLAG,
)
# The downlink's flags: a compressed plain run's (not --dense's, not --secure's).
_DOWNLINK_FLAGS = (("--downlink-topk", "downlink_topk"), ("--downlink-bits", "downlink_bits"))
# Flags the HTTP fleet has no use for: it trains each device in its own SDK client.
_INPROC_ONLY = (
    ("--backend", "backend"),
    ("--job-timeout", "job_timeout"),
    ("--workers", "workers"),
    ("--inner-backend", "inner_backend"),
    ("--ray-address", "ray_address"),
    ("--ray-runtime-env", "ray_runtime_env"),
)
# Options of the backends whose workers run in other processes, and of Ray alone.
_WORKER_ONLY = (("--workers", "workers"), ("--inner-backend", "inner_backend"))
_RAY_ONLY = (("--ray-address", "ray_address"), ("--ray-runtime-env", "ray_runtime_env"))


# Flags of the realistic fleet's selection.
_REALISTIC_ONLY = (
    ("--selection-timeout", "selection_timeout"),
    ("--checkin-period", "checkin_period"),
    ("--min-memory-mb", "min_memory_mb"),
    ("--behaviour-trace", "behaviour_trace"),
)


def _given(args: argparse.Namespace, dest: str) -> bool:
    """Whether flag `dest` was set to something other than its default."""
    run_flags: dict[str, tuple[str, Any]] = args._run_flags
    return bool(getattr(args, dest) != run_flags[dest][1])


def _command(args: argparse.Namespace) -> str:
    """The `plume sim` line that reruns this run: every flag whose value differs from its
    default (the defaults filled in by the time of the call, such as --clients and
    --partition, are written out), in the parser's order. Recorded as rounds.json's
    `command`."""
    import shlex

    run_flags: dict[str, tuple[str, Any]] = args._run_flags
    words = ["plume", "sim"]
    for dest, (flag, default) in run_flags.items():
        value = getattr(args, dest)
        if value == default:
            continue
        if isinstance(value, list):  # a repeatable flag (--plugin): once per value
            for item in value:
                words += [flag, _without_credentials(str(item))]
        elif value is True and default is False:  # a switch (--dense, --secure, ...)
            words.append(flag)
        elif dest == "ray_address":  # also user:password@host:port, which has no scheme
            from .backends.ray_backend import public_address

            words += [flag, public_address(str(value))]
        else:
            words += [flag, _without_credentials(str(value))]
    return shlex.join(words)


def _dest_of(options: dict[str, str], flag: str) -> str | None:
    """The dest of option `flag` as typed (`--roun` for --rounds: argparse takes a unique
    prefix of a long option), None for a word that names no option (a value such as -1)."""
    if flag in options:
        return options[flag]
    dests = {dest for option, dest in options.items() if option.startswith(flag)}
    return dests.pop() if len(dests) == 1 and flag.startswith("--") else None


def _typed_dests(args: argparse.Namespace) -> set[str] | None:
    """The dests of the options typed after `plume sim` (`--out=x` and abbreviations too; the
    words after `--` are no options), whatever their values; None where the words are not
    known (a namespace not made by this parser)."""
    typed: list[str] | None = getattr(args, "_typed", None)
    if typed is None:
        return None
    options: dict[str, str] = args._option_dests
    found: set[str] = set()
    for word in typed:
        if word == "--":
            break
        if word.startswith("-") and len(word) > 1:
            dest = _dest_of(options, word.partition("=")[0])
            if dest is not None:
                found.add(dest)
    return found


def _typed_argv(args: argparse.Namespace) -> list[str] | None:
    """rounds.json's `argv`: the command as it was typed, word for word (`plume`, `sim`, then
    the words after them, abbreviations and `--flag=value` forms kept), with the credentials
    `_command` leaves out left out here too: a URL's user and password in any word, a
    --ray-address's `user:password@`, and an inline --ray-runtime-env's JSON (its values may
    be secrets; replaced by the redaction marker `_command` records). None where the words
    are not known (a namespace not made by this parser)."""
    typed: list[str] | None = getattr(args, "_typed", None)
    if typed is None:
        return None
    options: dict[str, str] = args._option_dests

    def dest_of(flag: str) -> str | None:
        return _dest_of(options, flag)

    def redacted(dest: str | None, value: str) -> str:
        if dest == "ray_address":
            from .backends.ray_backend import public_address

            return public_address(value)
        if dest == "ray_runtime_env" and not _is_file(value):
            try:
                env = json.loads(value)
            except ValueError:
                env = None
            keys = env if isinstance(env, dict) else {}
            return str(RuntimeEnv(keys, None))
        return _without_credentials(value)

    words = ["plume", "sim"]
    takes_value: str | None = None  # the dest of the flag before this word, if it takes one
    for i, word in enumerate(typed):
        if word == "--":
            words += typed[i:]
            break
        if takes_value is not None:
            words.append(redacted(takes_value, word))
            takes_value = None
            continue
        if word.startswith("-") and len(word) > 1:
            flag, eq, value = word.partition("=")
            dest = dest_of(flag)
            if eq:
                words.append(f"{flag}={redacted(dest, value)}")
            else:
                words.append(word)
                if dest in ("ray_address", "ray_runtime_env", "coordinator"):
                    takes_value = dest
            continue
        words.append(redacted(None, word))
    return words


def _unproven_dp_note(cfg: Any, secure: bool) -> str | None:
    """The coordinator's create-task note for the same setting (docs/privacy.md, item 5): a
    `dp` stage accounting amplification by fixed-size sampling (population > sample) while
    the devices keep an error-feedback residual, whose accounted epsilon no proof covers.
    None otherwise, and for an aggregator the coordinator's grammar does not build (your own)."""
    if secure or cfg.dense or not cfg.error_feedback:
        return None
    from coordinator.aggregators import build_aggregator
    from coordinator.aggregators._dp import amplified_cohort

    try:
        cohort = amplified_cohort(build_aggregator(cfg.aggregator))
    except ValueError:
        return None
    if cohort is None:
        return None
    return (
        f"the dp stage accounts epsilon with amplification by fixed-size sampling "
        f"(population={cohort[0]} > sample={cohort[1]}) while the devices "
        "keep an error-feedback residual, which depends on the rounds a device took part in; "
        "no proof covers that path, so the reported epsilon rests on an unproven assumption "
        "(docs/privacy.md, item 5); --no-error-feedback removes it"
    )


# Values an upload keeps below which `_few_kept_note` speaks: at the default --topk 0.01 the
# 2,410-parameter digits_mlp keeps 24, and `plume sim --dataset digits --compare-dense` ended
# at 0.3175 against dense's 0.7465 after 20 rounds, with nothing said (s50 review).
_FEW_KEPT = 100
# The --topk the note suggests: the smallest of these that keeps at least twice _FEW_KEPT
# values (clear of the threshold, not at its edge): 0.1 for digits_mlp (241 values).
_LARGER_TOPK = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def _over_selection_capped_note(args: argparse.Namespace) -> str | None:
    """A note when a given --over-selection asks for more devices a round than --clients has:
    an in-process round selects at most every device, so `--clients 10 --per-round 10
    --over-selection 1.3` selected 10 a round and the flag changed nothing, unsaid (s52b).
    Over HTTP and with --secure selection is another's (the coordinator's, the secure
    runner's), so they get none."""
    if args.over_selection is None or args.transport != "inproc" or args.secure:
        return None
    cohort = math.ceil(args.per_round * args.over_selection - 1e-9)  # RoundEngine's
    if cohort <= args.clients:
        return None
    extra = args.clients - args.per_round
    adds = f"{extra} over --per-round" if extra else "none over --per-round"
    return (
        f"--over-selection {args.over_selection:g} selects {cohort} devices a round for "
        f"--per-round {args.per_round}, but --clients is {args.clients}: each round selects "
        f"all {args.clients} ({adds}); add --clients for over-selection to matter"
    )


def _few_kept_note(cfg: Any, args: argparse.Namespace) -> str | None:
    """The note for a compressed run whose uploads keep fewer than `_FEW_KEPT` values: k as the
    codec derives it (`CodecConfig.k_for` of the model's trainable parameters, the same total
    under --scope global and per_tensor), the model's size, and a larger --topk. In process and
    over --transport http alike: the HTTP devices encode with the task's codec, this same
    `cfg.codec()`. None for a --dense or --secure run (no --topk), or a dataset or model the
    runner refuses (it then says why, in its own words: one line, no note before it)."""
    if cfg.dense or args.secure or not _known_dataset(cfg.dataset):
        return None
    from dataclasses import replace

    from compression import CodecConfig
    from sdk.flat import spec_from_module

    from .models import build_model

    try:
        d = spec_from_module(build_model(cfg.model_name, seed=cfg.seed)).size
    except Exception:  # an unknown dataset, a --plugin model that fails: the runner says why
        return None
    codec: CodecConfig = cfg.codec()
    k = codec.k_for(d)
    if k >= _FEW_KEPT or d <= _FEW_KEPT:  # a model of <= 100 parameters: no --topk helps
        return None
    # --topk 1 when none of the others keeps enough (d > _FEW_KEPT; k < d means --topk < 1).
    larger = next(
        (f for f in _LARGER_TOPK if replace(codec, topk=f).k_for(d) >= 2 * _FEW_KEPT), 1.0
    )
    text = (
        f"--topk {codec.topk:g} keeps {k} of {cfg.model_name}'s {d:,} parameters in each "
        "upload, so few that the compressed run can end far below dense fp32; a larger "
        f"--topk keeps more, e.g. --topk {larger:g} ({replace(codec, topk=larger).k_for(d):,} "
        "values)"
    )
    if cfg.dataset == "digits" and not _given(args, "lr"):
        text += f" (and for digits a larger --lr than {args.lr:g}: the README's digits run "
        text += "uses --lr 0.2 --rounds 30)"
    return text


def _known_dataset(name: str) -> bool:
    """Whether the runner's `load_dataset` takes dataset `name` (built in, one of
    `mobile_sim.datasets`, or a --plugin's), without loading it: it refuses any other as a
    usage error, which stays one line (no `_few_kept_note` before it)."""
    from .runner import DATASET_LOADERS

    if name in DATASET_LOADERS or name in ("mnist", "digits"):
        return True
    try:
        from . import datasets
    except ImportError:
        return False
    return datasets.known(name)


def _without_credentials(value: str) -> str:
    """`value` with a URL's user and password left out (`http://u:p@host` -> `http://host`):
    rounds.json is shared with results, and a --coordinator URL may carry a secret."""
    from urllib.parse import urlsplit, urlunsplit

    if "://" not in value or "@" not in value:
        return value
    try:
        url = urlsplit(value)
    except ValueError:
        return value
    if url.username is None and url.password is None:
        return value
    host = url.netloc.rpartition("@")[2]
    return urlunsplit(url._replace(netloc=host))


def _only_apply(
    args: argparse.Namespace, flags: tuple[tuple[str, str], ...], sep: str = ", "
) -> str | None:
    """'--a, --b only apply' (or '--a only applies') for the `flags` given, None if none."""
    given = [flag for flag, dest in flags if _given(args, dest)]
    if not given:
        return None
    return f"{sep.join(given)} only {'applies' if len(given) == 1 else 'apply'}"


# SimConfig / SecureConfig / codec field names in library messages, and the flag that sets
# each. Names with an underscore never occur as plain words, so they are replaced anywhere;
# plain-word names only where the message starts with them ("alpha must be positive").
_FLAG_OF_FIELD = {
    "shards_per_client": "--shards-per-client",
    "clients_per_round": "--per-round",
    "per_round": "--per-round",
    "min_reports": "--min-reports",
    "over_selection": "--over-selection",
    "server_lr": "--server-lr",
    "local_epochs": "--local-epochs",
    "batch_size": "--batch-size",
    "clip_norm": "--clip-norm",
    "deadline_s": "--deadline",
    "selection_timeout_s": "--selection-timeout",
    "checkin_period_s": "--checkin-period",
    "min_memory_mb": "--min-memory-mb",
    "capacity_trace": "--capacity-trace",
    "behaviour_trace": "--behaviour-trace",
    "trace_compute_scale": "--trace-compute-scale",
    "job_timeout_s": "--job-timeout",
    "inner_backend": "--inner-backend",
    "ray_address": "--ray-address",
    "ray_runtime_env": "--ray-runtime-env",
    "ort_fraction": "--ort-fraction",
    "ort_artifacts": "--ort-artifacts",
    "ort_tier": "--ort-tier",
    "residual_memory_mb": "--residual-memory-mb",
    "eval_every": "--eval-every",
    "data_seed": "--data-seed",
    "topk_mode": "--topk-mode",
    "warmup_rounds": "--warmup-rounds",
    "expected_dropout": "--secure-dropout",
    "group_size": "--group-size",
    "coord_fraction": "--secure-fraction",
    "value_bits": "--secure-bits",
    "upload_budget": "--secure-upload-budget",
    "noise_multiplier": "--noise-multiplier",
    "epsilon_budget": "--epsilon-budget",
    "downlink_topk": "--downlink-topk",
    "downlink_bits": "--downlink-bits",
}
_LEADING_FIELDS = (
    "clients",
    "rounds",
    "alpha",
    "block",
    "malicious",
    "topk",
    "bits",
    "index",
    "scope",
    "fleet",
    "lr",
    "momentum",
    "seed",
    "workers",
)


def _did_you_mean(name: str, names: list[str]) -> str:
    """The words ", did you mean 'x'?" for the one of `names` closest to `name` (case ignored:
    `--dataset MNIST`), else "". The runner's "unknown dataset 'digit'; choose ..." and the
    model's list named no nearest one, as a mistyped flag's or aggregator's error does (s52b)."""
    import difflib

    lowered = {n.lower(): n for n in names}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return f", did you mean {lowered[close[0]]!r}?" if close else ""


def _dataset_hint(message: str) -> str:
    """The runner's `unknown dataset 'NAME'; choose ...` with the nearest name it lists
    (`unknown dataset 'digit' (--dataset, did you mean 'digits'?); choose ...`); any other
    message as it is."""
    import ast

    from .runner import DATASET_LOADERS

    found = re.match(r"unknown dataset ('[^']*'|\"[^\"]*\"); ", message)
    if found is None:
        return message
    name = ast.literal_eval(found.group(1))
    families: tuple[str, ...] = ()
    with contextlib.suppress(ImportError):
        from .datasets import DATASETS as families
    names = ["mnist", "digits", *(d for d in families if "(" not in d), *DATASET_LOADERS]
    hint = _did_you_mean(name, names)
    if not hint:
        return message
    return f"unknown dataset {found.group(1)} (--dataset{hint}); {message[found.end() :]}"


def _in_flags(message: str, secure: bool = False) -> str:
    """A library error message with its config field names replaced by `plume sim` flags.
    `secure`: a `--secure` run's, whose `SecureConfig.clip_norm` is `--secure-clip` (the plain
    runs' `--clip-norm` is refused with `--secure`)."""
    message = _dataset_hint(message)
    if secure:
        message = re.sub(r"(?<![\w-])clip_norm(?!\w)", "--secure-clip", message)
    for field, flag in _FLAG_OF_FIELD.items():
        message = re.sub(rf"(?<![\w-]){field}(?!\w)", flag, message)
    head = re.match(r"(\w+)(?= must | > | in )", message)
    if head is not None and head.group(1) in _LEADING_FIELDS:
        message = "--" + message
    # The partitioners' and the dp accountant's advice, in flags.
    for words, flags in _ADVICE_IN_FLAGS:
        message = message.replace(words, flags)
    if message.startswith("dp accounts "):
        message = "--aggregator: " + message
    return message


# (words in a library message, the same advice in `plume sim` flags)
_ADVICE_IN_FLAGS = (
    ("(given by RayBackend(address=...)", "(given by --ray-address"),
    ("RayBackend(runtime_env=...)", "--ray-runtime-env"),
    ("lower the client count", "lower --clients"),
    ("raise alpha", "raise --alpha"),
    ("exceeds clients ", "exceeds --clients "),
    ("devices (clients)", "devices (--clients)"),
    ("of clients ", "of --clients "),
)


def _clockless(args: argparse.Namespace) -> str | None:
    """The flag of a run that has no simulated clock (`--transport http`, `--secure`), or None."""
    if args.transport == "http":
        return "--transport http"
    return "--secure" if args.secure else None


def _fleet(args: argparse.Namespace) -> str:
    """--fleet as given, else its default: timing, or off for a run without a simulated clock."""
    if args.fleet is not None:
        return str(args.fleet)
    return "off" if _clockless(args) else "timing"


def _server_optimizer(spec: str | None) -> bool:
    """Whether an aggregator spec starts with a server optimizer (avgm, adam, yogi, ...)."""
    from coordinator.aggregators import SERVER_OPTIMIZERS

    first = (spec or "").split("+", 1)[0].partition(":")[0].strip().lower()
    return first in SERVER_OPTIMIZERS


def _usage_error(args: argparse.Namespace) -> str | None:
    """The first mistake in the flags of a run that only the command line knows of (flags
    that do not go together, folders, specs), named by its flags, or None.

    Checked before any data is loaded, so a typo costs no time. The rules of each value
    (--per-round <= --clients, --lr > 0, a dp stage the fleet cannot honour, ...) are
    SimConfig's: `config_from_args` states them, and `_in_flags` names the flags.
    """
    if not args.out.strip():
        # "" was the current folder, whose earlier rounds.json, rounds.csv and plots the run
        # then removed (helper-353); "." still names it on purpose.
        return "--out must name a folder (got an empty one); give . for the current folder"
    if args.data_root is not None and not args.data_root.strip():
        # "" was the current folder, and a missing dataset's line then pointed at PLUME_DATA,
        # which the run did not read (stop 48, helper-406); "." still names it on purpose.
        return "--data-root must name a folder (got an empty one); give . for the current folder"
    _default_partition(args)
    if not 0.0 <= args.secure_dropout < 1.0:
        return f"--secure-dropout is a fraction in [0, 1), got {args.secure_dropout}"
    if args.over_selection is not None and not 1.0 <= args.over_selection <= 10.0:
        # the engine's rule, with the value it got (None: the fleet's default, SimConfig's)
        return f"--over-selection must be in [1, 10], got {args.over_selection:g}"
    if args.threads is not None and args.threads < 1:
        return f"--threads must be at least 1, got {args.threads}"
    if args.threads is not None and (problem := _too_many_threads(args.threads)):
        return problem
    if args.seed >= 2**63:
        # torch's manual_seed refused it in its own words ("Overflow when unpacking long long"),
        # and the coordinator's engine takes a seed in [0, 2**63) (validate_task).
        return f"--seed must be in [0, 2**63), got {args.seed}"
    if not 0.0 <= args.malicious < 1.0:  # NaN too
        return f"--malicious must be a fraction in [0, 1), got {args.malicious:g}"
    if args.attack and not args.malicious > 0:
        return (
            f"--attack {args.attack} needs --malicious FRACTION (the share of devices that "
            "attack, e.g. 0.2); without it no device attacks"
        )
    if args.dense and args.compare_dense:
        return (
            "--dense runs only the baseline and --compare-dense adds it to a compressed run; "
            "pass one"
        )
    if args.dense and args.secure:
        return "--secure runs compressed rounds under SecAgg+; it cannot be combined with --dense"
    if (args.dense or args.secure) and (head := _only_apply(args, _DOWNLINK_FLAGS)):
        if args.dense:
            return (
                f"{head} to a compressed run's model downloads; --dense runs only the dense "
                "fp32 baseline, uncompressed both ways (use --compare-dense for both)"
            )
        return (
            f"{head} to plain rounds; a --secure run publishes each round's unmasked mean "
            "as an exact fp32 model (its downlink is not compressed): drop "
            f"{head.split(' only ')[0]}, or drop --secure"
        )
    if args.dense and (head := _only_apply(args, _CODEC_FLAGS)):
        return (
            f"{head} to compressed updates; --dense runs only the dense fp32 baseline (use "
            "--compare-dense for both)"
        )
    if _given(args, "block") and args.bits in (16, 32):
        return (
            f"--block only applies to quantized values (--bits 1, 2, 4 or 8): --bits {args.bits} "
            "sends floats, which have no per-block scale"
        )
    clockless = _clockless(args)
    if clockless and args.fleet not in (None, "off"):
        return (
            f"--fleet {args.fleet} needs the simulated clock, which only in-process plain "
            f"runs have; {clockless} runs in wall time (drop --fleet, or drop {clockless})"
        )
    if args.deadline is not None and _fleet(args) == "off":
        if clockless:
            return f"--deadline is in simulated seconds, which {clockless} runs do not have"
        return "--deadline needs the simulated clock: --fleet timing or realistic"
    # A secure HTTP run's devices use the simulator's participants (their residuals), which
    # --residual-memory-mb bounds as in process; a plain one's keep theirs in app directories.
    inproc_only = _INPROC_ONLY if args.secure else (*_INPROC_ONLY, _RESIDUAL_FLAG)
    if args.transport == "http" and (head := _only_apply(args, inproc_only, " and ")):
        return (
            f"{head} to --transport inproc (the HTTP fleet trains one SDK client per device "
            "in this process)"
        )
    if args.backend not in ("pool", "ray") and (head := _only_apply(args, _WORKER_ONLY, " and ")):
        return f"{head} to --backend pool or ray (this run: --backend {args.backend})"
    if args.backend != "ray" and (head := _only_apply(args, _RAY_ONLY, " and ")):
        return f"{head} to --backend ray (this run: --backend {args.backend})"
    if args.backend == "ray" and (problem := _private_ray_workers_error(args)):
        return problem
    if _fleet(args) != "realistic" and (head := _only_apply(args, _REALISTIC_ONLY, " and ")):
        return f"{head} with --fleet realistic"
    if args.capacity_trace is not None and _fleet(args) == "off":
        if clockless:
            return (
                f"--capacity-trace sets the simulated devices' compute and bandwidth, which "
                f"{clockless} runs do not simulate (they run in wall time)"
            )
        return "--capacity-trace needs the simulated clock: --fleet timing or realistic"
    if _given(args, "trace_compute_scale") and args.capacity_trace is None:
        return "--trace-compute-scale scales --capacity-trace's compute speed: add --capacity-trace"
    if problem := _selection_timeout_error(args.selection_timeout):
        return problem
    if _given(args, "alpha") and args.partition != "dirichlet":
        return f"--alpha only applies with --partition dirichlet (this run: {args.partition})"
    if _given(args, "shards_per_client") and args.partition != "shards":
        return (
            f"--shards-per-client only applies with --partition shards (this run: {args.partition})"
        )
    if args.partition == "natural" and args.dataset in ("mnist", "digits"):
        return (
            f"--partition natural needs a dataset with its own users (shakespeare, synthetic); "
            f"for {args.dataset} use iid, dirichlet or shards"
        )
    if args.coordinator and args.transport != "http":
        return "--coordinator URL is only used with --transport http (add it)"
    if args.coordinator and (problem := _coordinator_url_problem(args)):
        return problem
    if args.coordinator and args.secure:
        # Ignored before (helper-336): the run went to its own loopback coordinator while
        # rounds.json recorded the URL given.
        return (
            "--coordinator runs plain rounds only: a --secure --transport http run starts its "
            "own loopback coordinator (drop --coordinator, or --secure)"
        )
    if args.coordinator and (problem := _admin_token_problem()):
        return problem
    if not args.secure:
        if head := _only_apply(args, _SECURE_ONLY):
            return f"{head} to secure runs: add --secure"
    elif _given(args, "group_aggregator") and args.group_size is None:
        return "--group-aggregator needs --group-size G (the devices per SecAgg+ group)"
    elif not args.dense and (head := _only_apply(args, _PLAIN_ONLY)):
        return (
            f"{head} to plain rounds; a --secure run uploads a masked sketch "
            "(--secure-upload-budget, --secure-bits, --secure-clip) from honest devices, with "
            "--group-size/--group-aggregator for robustness"
        )
    elif problem := _dp_noise_error(args) or _epsilon_budget_error(args):
        return problem
    elif args.secure_fraction is not None and args.secure_upload_budget is not None:
        # The budget chooses |S_r| each round; the fraction was silently ignored.
        return (
            "--secure-fraction and --secure-upload-budget both set the shared coordinates a "
            "round: with a budget, |S_r| is the largest that fits it and the fraction is "
            "unused; give one of them"
        )
    if not (args.dense or args.secure) and args.rounds >= 1 and args.warmup_rounds >= args.rounds:
        # Every round dense: the compressed run is the dense one and its codec flags are void.
        return (
            f"--warmup-rounds {args.warmup_rounds} makes every one of the {args.rounds} rounds "
            "dense (fp32), so the codec flags change nothing: give fewer than --rounds, or --dense"
        )
    if (args.ort_fraction > 0 or args.ort_tier) and not args.ort_artifacts:
        return (
            "--ort-fraction/--ort-tier need --ort-artifacts DIR, a folder written by "
            "`plume export --model MODEL --out DIR`"
        )
    if args.ort_artifacts and not Path(args.ort_artifacts).is_dir():
        return f"--ort-artifacts {args.ort_artifacts} is not a folder (run `plume export` first)"
    if args.ort_artifacts is not None and not (args.ort_fraction > 0 or args.ort_tier):
        # Accepted before and unused: every device trained on torch (stop 48, helper-407).
        if args.secure:
            return (
                "--ort-artifacts only applies to plain rounds, with --ort-fraction or "
                "--ort-tier; a --secure run trains every device on torch: drop --ort-artifacts"
            )
        return (
            f"--ort-artifacts {args.ort_artifacts} only applies with --ort-fraction FRACTION "
            "or --ort-tier TIER (the devices that train on onnxruntime): add one of them, or "
            "drop --ort-artifacts"
        )
    if args.ort_artifacts and (problem := _ort_loss_error(Path(args.ort_artifacts), args.dataset)):
        return problem
    if args.data_root and not Path(args.data_root).is_dir():
        where = Path(args.data_root)
        why = "a file" if where.exists() else "it does not exist"
        holding = _DATA_FOLDERS.get(args.dataset, "the dataset's files")
        return (
            f"--data-root {args.data_root} is not a folder ({where.resolve()}: {why}); give "
            f"the folder holding {holding}"
        )
    return _spec_error(args) or _group_error(args) or _model_mismatch(args.dataset, args.model)


def _private_ray_workers_error(args: argparse.Namespace) -> str | None:
    """The error for --workers over _WORKERS_PER_CPU per CPU of this machine when the run
    starts a private Ray runtime (no --ray-address and no RAY_ADDRESS, or "local" in either:
    `ray_backend.is_private`), None otherwise. That runtime gets this machine's usable CPUs,
    so the count is known now, before any data is loaded or Ray is started; a cluster's CPUs
    are known only once it is joined (RayBackend.start checks them). Over --workers' own
    bound (_MAX_WORKERS) SimConfig's error is the one given."""
    workers = args.workers
    if workers is None or not 1 <= workers <= _MAX_WORKERS:
        return None
    from .backends._base import usable_cpus
    from .backends.process_pool import too_many_per_cpu
    from .backends.ray_backend import is_private, resolve_address

    address, source = resolve_address(args.ray_address)
    if not is_private(address):
        return None
    problem = too_many_per_cpu(workers, usable_cpus(), "this machine for a private Ray runtime")
    if problem is None:
        return None
    how = (
        "--ray-address local"
        if source != "RAY_ADDRESS"
        else ("RAY_ADDRESS=local" if address else "no --ray-address and no RAY_ADDRESS")
    )
    return f"--{problem} ({how}: Ray starts on this machine's CPUs)"


def _too_many_threads(threads: int) -> str | None:
    """The error for --threads over _THREADS_PER_CPU per CPU this process may use (as the pool
    bounds --workers), None when they fit. 100000 made OpenBLAS fail, then a segfault."""
    from .backends._base import usable_cpus

    cpus = usable_cpus()
    most = _THREADS_PER_CPU * cpus
    if threads <= most:
        return None
    return (
        f"--threads must be at most {_THREADS_PER_CPU} per CPU this process may use ({most} "
        f"with its {cpus} CPUs), got {threads}: more only take turns on the same CPUs"
    )


def _coordinator_url_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with --coordinator URL, in the words of the admin commands' --url
    (`coordinator._cli.checked_url`: http:// or https:// in any case, a URL httpx parses,
    with a host, a port in 1-65535, no query or fragment), or None, with `args.coordinator`
    then as the coordinator will be asked (its scheme lower-cased). Until stop 49 the sim
    checked less: `HTTP://` was refused, and a port of 99999 or a query was taken. None too
    when this build has no HTTP stack (--transport http is refused then anyway)."""
    try:
        import httpx  # noqa: F401
    except ImportError:
        return None
    from coordinator._cli import checked_url

    try:
        args.coordinator = checked_url(args.coordinator, "--coordinator")
    except ValueError as exc:
        return str(exc)
    return None


def _admin_token_problem() -> str | None:
    """What is wrong with $PLUME_ADMIN_TOKEN for a run against --coordinator URL, or None.
    Checked with the other flags, before any data is loaded: the runner found a missing token
    only after its "setting up: ... registering N devices" line (s50 review). `plume sim` has
    no --admin-token flag: the token is the one `plume coordinator serve` was started with."""
    token = os.environ.get("PLUME_ADMIN_TOKEN")
    serve = (
        "the token `plume coordinator serve` was started with (its --admin-token, or "
        "PLUME_ADMIN_TOKEN in its environment)"
    )
    if not token:
        return f"--coordinator needs an admin token: set PLUME_ADMIN_TOKEN to {serve}"
    try:
        from coordinator.service.auth import admin_token_problem
    except ImportError:  # no HTTP stack in this build: --transport http is refused anyway
        return None
    problem = admin_token_problem(token)
    return None if problem is None else f"PLUME_ADMIN_TOKEN {problem}; it must be {serve}"


def _selection_timeout_error(timeout: float) -> str | None:
    """What is wrong with --selection-timeout, or None: the coordinator's rule (validate_task,
    (0, 604800] seconds), or -1, the simulator's own "only with the full cohort"."""
    from .clock import COORDINATOR_MAX_S

    if timeout == -1 or 0 < timeout <= COORDINATOR_MAX_S:
        return None
    return (
        f"--selection-timeout must be in (0, {COORDINATOR_MAX_S:.0f}] simulated seconds, as "
        f"the coordinator's, or -1 (open only with the full cohort), got {timeout:g}"
    )


def _dp_noise_error(args: argparse.Namespace) -> str | None:
    """What is wrong with --dp-noise / --noise-multiplier of a secure run, or None."""
    z = args.noise_multiplier
    if args.dp_noise not in ("none", "gaussian", "skellam"):
        return f"--dp-noise must be none, gaussian or skellam, got {args.dp_noise!r}"
    if not (math.isfinite(z) and z >= 0):
        return f"--noise-multiplier must be >= 0, got {z}"
    if args.dp_noise == "none" and z > 0:
        # It used to be ignored: the run looked private and added no noise.
        return (
            "--noise-multiplier sets the noise of --dp-noise gaussian or skellam; with "
            "--dp-noise none (the default) no device adds noise"
        )
    if args.dp_noise != "none" and z == 0:
        return (
            f"--dp-noise {args.dp_noise} needs --noise-multiplier Z > 0 (the noise standard "
            "deviation / --secure-clip)"
        )
    return None


def _epsilon_budget_error(args: argparse.Namespace) -> str | None:
    """What is wrong with --epsilon-budget of a secure run (whose --dp-noise is right), or
    None: it needs noise to account, a finite value > 0, and room for one round (the
    coordinator's create-task rule: not even the most favourable round, rho = (1 -
    --secure-dropout) / (2 z^2) zCDP, may pass it)."""
    eps = args.epsilon_budget
    if eps is None:
        return None
    if args.dp_noise == "none":
        # Without noise nothing is accounted, so the budget would never be checked.
        return (
            "--epsilon-budget caps the epsilon of --dp-noise gaussian or skellam; with "
            "--dp-noise none (the default) no noise is added and no epsilon is accounted"
        )
    if not (math.isfinite(eps) and eps > 0):
        return f"--epsilon-budget must be finite and > 0, got {eps:g}"
    from coordinator.secure import DistributedDpAccountant, SecureConfig, min_round_rho

    delta = SecureConfig().dp_delta  # the run's: `_secure_config` leaves it at its default
    rho = min_round_rho(args.noise_multiplier, args.secure_dropout)
    first = DistributedDpAccountant(delta).epsilon_after(rho)
    if first > eps:
        return (
            f"--epsilon-budget {eps:g} is below what any one round spends (at least epsilon "
            f"{first:.4g} at delta {delta:g} with --noise-multiplier {args.noise_multiplier:g} "
            f"and --secure-dropout {args.secure_dropout:g}): no round could be released; raise "
            "--epsilon-budget or --noise-multiplier"
        )
    return None


def _ort_loss_error(folder: Path, dataset: str) -> str | None:
    """Why the export in `folder` cannot train a `plume sim` classifier, or None: the runner's
    check (`mobile_sim.runner.ort_loss_error`), made here from the manifest alone, before any
    data is loaded. A missing or unreadable manifest is left to the runner's artifact checks,
    which load the artifacts and check them against the data before round 1 (the per-example
    shapes of x and y, token ids, labels), and name the problem.
    """
    import json

    from .runner import ort_loss_error

    try:
        loss = json.loads((folder / "manifest.json").read_text()).get("loss")
    except (OSError, ValueError, AttributeError):
        return None
    if loss in (None, "ce"):
        return None
    return _in_flags(ort_loss_error(folder, str(loss), dataset))


def _spec_error(args: argparse.Namespace) -> str | None:
    """The first --aggregator / --group-aggregator / --attack spec that does not parse, with
    its flag (both kinds of spec share a syntax, so the message alone would not say which)."""
    from coordinator.aggregators import build_aggregator

    from .attacks import build_attack
    from .runner import AGGREGATORS
    from .runner import build_aggregator as plain_aggregator  # also the ones plugins register

    # In process, the runner also builds the aggregators registered in AGGREGATORS (by a
    # --plugin); over HTTP the coordinator builds the aggregator, from its own grammar only.
    http = args.transport == "http"
    specs: list[tuple[str, str, Callable[[str], object]]] = [
        ("--aggregator", args.aggregator, build_aggregator if http else plain_aggregator)
    ]
    if args.secure and args.group_size is not None:
        specs.append(("--group-aggregator", args.group_aggregator, build_aggregator))
    if args.attack:
        specs.append(("--attack", args.attack, build_attack))
    for flag, spec, build in specs:
        try:
            build(spec)
        except ValueError as exc:
            if http and flag == "--aggregator" and spec in AGGREGATORS:
                return (
                    f"--aggregator {spec!r} is registered in this process (a --plugin's), but "
                    "--transport http aggregates in a coordinator, which builds only its own "
                    "aggregators: drop --transport http"
                )
            return f"{flag} {spec!r}: {exc}"
    return None


def _group_error(args: argparse.Namespace) -> str | None:
    """What is wrong with --group-size / --group-aggregator of a secure run (whose spec
    parses), or None: SecureConfig's rules (a dp or collusion stage across groups, a group of
    fewer than 3), then a robust rule that the run's groups leave no room to act
    (`group_refusal`: --per-round split into groups of --group-size, as `split_groups` does,
    gives fewer group sums than the rule needs to differ from their mean)."""
    if not args.secure or args.group_size is None:
        return None
    from coordinator.secure import SecureConfig
    from coordinator.secure._config import group_refusal

    spec, g, n = args.group_aggregator, args.group_size, args.per_round
    try:
        SecureConfig(group_size=g, group_aggregator=spec)
    except ValueError as exc:
        text = _in_flags(str(exc), secure=True)
        field = "group_aggregator"
        return "--group-aggregator" + text[len(field) :] if text.startswith(field) else text
    if n < 1:
        return None  # SimConfig's to refuse, in its words
    short = group_refusal(
        spec,
        n,
        g,
        src=f"--per-round {n} in groups of --group-size {g}",
        grow="--per-round or lower --group-size",
    )
    return None if short is None else f"--group-aggregator {spec!r}: {short}"


def _model_mismatch(dataset: str, model: str | None) -> str | None:
    """Why zoo model `model` is unknown or cannot take `dataset`'s examples, or None.

    A dataset's example shape is its default model's input shape; a dataset name the table
    does not know is left to the library, which reports unknown datasets itself.
    """
    from sdk._cli import example_input_shape

    from .models import MODELS
    from .runner import default_model

    if model is not None and model not in MODELS:
        hint = _did_you_mean(model, sorted(MODELS))
        return f"unknown model {model!r} (--model{hint}); choose one of {', '.join(sorted(MODELS))}"
    natural = default_model(dataset)  # synthetic(1,1), synthetic_iid: their family's
    if model is None or natural is None or model == natural:
        return None
    try:
        wanted, given = example_input_shape(natural), example_input_shape(model)
    except ValueError:
        return None
    if wanted == given:
        return None
    shape = "x".join(map(str, wanted))
    return (
        f"--model {model} takes inputs of shape {'x'.join(map(str, given))}, but {dataset} "
        f"examples are {shape}; pick a model for {dataset}, e.g. --model {natural}"
    )


# The signal that stopped the current `plume sim` (SIGTERM), None for a Ctrl-C or none.
_stopped_by: str | None = None


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (timeout, Slurm, docker stop, CI) stops the run as Ctrl-C does: raised as a
    KeyboardInterrupt, so the finished rounds are written and the workers shut down."""
    global _stopped_by
    if os.getpid() != _sigterm_pid:
        # A "fork" worker inherited this handler: it ends as SIGTERM ends it by default.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _stopped_by = signal.Signals(signum).name
    raise KeyboardInterrupt


_sigterm_pid = -1


def _hold_sigterm() -> None:
    """Put `_on_sigterm` back if something took SIGTERM since (ray.init installs its own,
    which exits at once without writing the finished rounds). Called as each round ends."""
    if _sigterm_pid == os.getpid() and signal.getsignal(signal.SIGTERM) is not _on_sigterm:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _on_sigterm)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM handled as Ctrl-C while in this block (from the main thread only); the handler
    before it is put back at its end, since the CLI may be called in a program or a test."""
    global _stopped_by, _sigterm_pid
    _stopped_by = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    pid = _sigterm_pid
    _sigterm_pid = os.getpid()
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        _sigterm_pid = pid


def _stop_text(text: str) -> str:
    """A Ctrl-C line (starting "interrupted ...") said for the signal that stopped the run."""
    if _stopped_by is None or not text.startswith("interrupted"):
        return text
    return f"stopped by {_stopped_by}" + text[len("interrupted") :]


def _stop_status() -> int:
    """Exit status of an interrupted run: 130 after Ctrl-C, 128 + the signal's number after
    another (143 for SIGTERM), as a shell reports a process that signal ended."""
    return 128 + signal.Signals[_stopped_by] if _stopped_by is not None else 130


def _main(args: argparse.Namespace) -> int:
    from .status import status_line

    with _sigterm_interrupts():
        try:
            # What the run is doing before its first round and after its last (loading the
            # data, starting workers, writing plots), on the same condition as the bar.
            run = args.action == "run"
            # Without a terminal (a log, CI), the one slow start-up step (pool or Ray
            # workers) still gets a plain line, unless --no-progress.
            notes = run and not args.no_progress and not sys.stderr.isatty()
            with status_line(run and _progress_on(args), notes=notes):
                status = _sim(args)
        except KeyboardInterrupt:
            if _stopped_by is None:
                raise  # Ctrl-C where _sim has nothing to say: `plume`'s own line
            print(f"{_PROG}: stopped by {_stopped_by}", file=sys.stderr)
            return _stop_status()
        except SystemExit as exc:
            # Ray's driver handler, between ray.init and the end of the first round.
            if exc.code != signal.SIGTERM or args.backend != "ray":
                raise
            print(f"{_PROG}: stopped by SIGTERM while Ray started or ran round 1", file=sys.stderr)
            return 128 + signal.SIGTERM
        return _stop_status() if status == 130 else status


def _sim(args: argparse.Namespace) -> int:
    if args.action == "report":
        return _report(args)
    if args.action != "run":
        if Path(args.action).is_dir():
            hint = f"; to rebuild the plots of a run folder: plume sim report {args.action}"
        else:  # `plume sim reprot runs/x` (s52b)
            hint = _did_you_mean(args.action, ["run", "report"]).replace(",", ";", 1)
        return _fail(f"unknown action {args.action!r} (run or report){hint}")
    if args.run_dir:
        return _fail("a run folder is only taken by `plume sim report RUN_DIR`")
    from coordinator.privacy import PrivacyBudgetExhausted

    from .data import DataError
    from .report import (
        abandoned_warning,
        dp_pool_warning,
        dp_unaccounted_note,
        ort_note,
        robust_guarantee_warning,
        summary,
    )
    from .runner import NoEligibleDevices
    from .status import clear, say

    if args.plugin:
        # Before any check: the plugins register the names --model, --dataset and
        # --aggregator may give.
        from .backends._base import PluginError, import_plugins

        say("importing plugins")
        try:
            import_plugins(args.plugin)
        except PluginError as exc:
            return _fail(f"--plugin {exc.spec}: {exc.reason}")
    problem = _usage_error(args)  # sets the default --partition first
    if problem is not None:
        return _fail(problem)
    try:
        _default_clients(args)
    except DataError as exc:
        return _fail(_data_error_text(args, exc), 1)
    except ValueError as exc:  # a registered dataset without natural users, a bad loader
        return _fail(_in_flags(str(exc), args.secure))
    if getattr(args, "natural_count", None) is not None:
        clear()
        print(
            f"{args.dataset}: --partition natural (its own {_natural_users(args.dataset)}): "
            f"{args.clients} devices, all of them (--clients N takes the first N)",
            flush=True,
        )
    if args.server_lr != 1.0 and _server_optimizer(args.aggregator):
        # Allowed (it is a step size), but rarely meant: robustness.md says keep it 1.
        print(
            f"{_PROG}: note: --server-lr {args.server_lr:g} multiplies the step of the server "
            f"optimizer in --aggregator {args.aggregator} (its own lr= is the step; keep "
            "--server-lr 1 unless you mean both)",
            file=sys.stderr,
        )
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        cfg = config_from_args(args)
        if (note := _unproven_dp_note(cfg, args.secure)) is not None:
            print(f"{_PROG}: note: {note}", file=sys.stderr)
        if (note := _few_kept_note(cfg, args)) is not None:
            print(f"{_PROG}: note: {note}", file=sys.stderr)
        if (note := _over_selection_capped_note(args)) is not None:
            print(f"{_PROG}: note: {note}", file=sys.stderr)
        first = "dense" if cfg.dense else ("secure" if args.secure else "compressed")
        runs = [(first, cfg)]
        if args.compare_dense and not cfg.dense:
            runs.append(("dense", config_from_args(args, dense=True)))
    except ValueError as exc:
        return _fail(_in_flags(str(exc), args.secure))
    # Once the flags are known to make a run, so that a usage error stays one line.
    # Shown on a terminal only (`_busy_cpu_warning`); kept in each run's rounds.json
    # (`machine.busy_cpu_warning`) either way, so that a piped or CI run's `plume sim report`
    # says its wall times were measured on a busy machine.
    args._busy_warning = _busy_cpu_warning(args)
    if args._busy_warning is not None and _stderr_is_terminal():
        print(f"{_PROG}: warning: {args._busy_warning}", file=sys.stderr)
    # An external --coordinator's refusals and network failures are the user's to fix; with
    # the loopback one (ours), such an error would be a bug and keeps its traceback. Before the
    # --out folders are made: a Ctrl-C in these imports leaves none behind.
    remote_errors = _remote_errors() if args.coordinator else ()
    from coordinator.cli import debug_enabled

    debug = debug_enabled()  # PLUME_DEBUG set to anything but "", 0, false, no or off
    out = Path(args.out)
    try:
        # Made before the run, so an unwritable --out fails now rather than after the rounds;
        # a run that fails (or is interrupted before it wrote anything) removes the folders
        # made here, and only those, while they are empty.
        made = _make_folders(out)
    except NotADirectoryError as exc:  # a file in the way: "File exists" said the opposite
        return _fail(
            f"cannot create the output folder --out {out} ({exc.filename} is a file, not a folder)",
            1,
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return _fail(f"cannot create the output folder --out {out} ({reason})", 1)
    try:
        # An --out that was there already is only made above: it must take files too, or a
        # read-only one would fail after the rounds, with their results lost.
        with tempfile.NamedTemporaryFile(dir=out, prefix=".plume-write-check-"):
            pass
    except OSError as exc:
        _remove_empty(made)
        reason = exc.strerror or str(exc)
        return _fail(f"cannot write in the output folder --out {out} ({reason})", 1)
    if (blocked := _run_folder_blocked(out, [label for label, _ in runs])) is not None:
        _remove_empty(made)
        return _fail(blocked, 1)
    # An earlier run's files in --out go as this command's first round ends (before its row is
    # printed, long before anything is written): a run killed later where it cannot write
    # (SIGKILL) must not leave an earlier run's rounds.json for `plume sim report` to take for
    # this one's, and a run that fails while it sets up (a missing admin token, an unreachable
    # --coordinator, a data folder without the dataset, a runner's refusal) or in round 1
    # leaves them as they were. The runners have no call just before round 1; the first
    # round's record is the first thing of this run's they hand back.
    if (stuck := _unremovable(out)) is not None:  # now, rather than after round 1
        _remove_empty(made)
        return _fail(
            f"cannot remove an earlier run's {stuck} from --out {out} (its folder is not writable)",
            1,
        )
    replace = _Replacer(out, above_bar=_progress_on(args))
    results: list[Any] = []
    kept = False  # whether --out stays, empty or not
    running = _InProgress(out, runs)
    try:
        for label, c in runs:
            run_dir = out / label if len(runs) > 1 else out
            running.start(label, c.rounds)
            rows = _Rows(label, above_bar=False, first=replace, counted=running.round_done)
            args._load_start = _load_average()  # rounds.json's machine.load_average_start
            try:
                try:
                    res = _run_one(c, args, label, rows)
                except BrokenPipeError as exc:
                    # stdout closed (`plume sim ... | head -1`): the finished rounds are
                    # written as after Ctrl-C (the earlier run's files went as round 1
                    # ended), then the run ends quietly, as a SIGPIPE death would (`plume`'s
                    # handler: exit status 141). They were lost before (stop 48, helper-407).
                    kept = _keep_on_closed_stdout(exc, run_dir, args, out, results, replace)
                    raise
                except Exception as exc:
                    line = _worker_failure_line(exc, run_dir, args, out, results, replace)
                    if line is None:
                        # Any other error after a finished round (an external --coordinator
                        # gone, a refused task, a bug): its rounds are written first, then
                        # the error is reported as before.
                        note = _finished_before_error(exc, run_dir, args, out, results, replace)
                        if note:
                            print(f"{_PROG}: {note}", file=sys.stderr)
                            kept = True
                        raise
                    print(f"{_PROG}: error: {line}", file=sys.stderr)
                    kept = True
                    return 1
            except KeyboardInterrupt as exc:
                clear()
                partial = getattr(exc, "result", None)  # the runner's RunInterrupted
                text = _interrupted(rows.done, c.rounds, label, runs, out, partial)
                if partial is not None and partial.records:
                    text += _write_finished(partial, run_dir, args, out, results, replace)
                print(f"{_PROG}: {_stop_text(text)}", file=sys.stderr)
                # An interrupted run writes the rounds it finished, as before; with none
                # ("nothing was written"), the empty folders made for it go.
                kept = partial is not None and bool(partial.records)
                return 130
            except _NotRemoved as exc:
                return _fail(exc.text(out), 1)
            except ValueError as exc:
                if debug:
                    raise
                return _fail(_in_flags(str(exc), args.secure))
            except PrivacyBudgetExhausted as exc:
                if debug:
                    raise
                # Only a budget that cannot pay for the first round gets here: later rounds
                # end the run early instead, as the summary says.
                return _fail(
                    f"--aggregator {args.aggregator!r}: {exc}; the dp budget (eps=) does not "
                    "cover one round: raise eps= or z=, or sample fewer devices a round"
                )
            except remote_errors as exc:
                from coordinator._cli import admin_error_text

                # `plume sim` has no --admin-token flag: its token comes from the environment.
                text = admin_error_text(exc, args.coordinator, "--coordinator")
                text = text.replace("(--admin-token or PLUME_ADMIN_TOKEN)", "(PLUME_ADMIN_TOKEN)")
                return _fail(text, 1)
            except DataError as exc:  # the data folder is missing or unreadable
                return _fail(_data_error_text(args, exc), 1)
            except ConnectionError as exc:
                if args.backend != "ray" or "Ray cluster" not in str(exc):
                    raise
                # RayBackend.start's one line for an address nothing answers at, in flags.
                text = str(exc).replace("RayBackend(address=...)", "--ray-address")
                text = text.replace(
                    "without RAY_ADDRESS or address=", "without --ray-address or RAY_ADDRESS"
                )
                return _fail(text, 1)
            except NoEligibleDevices as exc:
                if debug:
                    raise
                # A traceback before (helper-337); the rounds before it are written above.
                return _fail(
                    f"{exc}: add devices (--clients), lower --min-memory-mb, or simulate "
                    "without availability (--fleet timing)",
                    1,
                )
            except RuntimeError as exc:
                from .backends.ray_backend import RuntimeEnvSetupFailed

                if debug or not isinstance(exc, RuntimeEnvSetupFailed):
                    raise
                # A node could not set --ray-runtime-env up: one line without Ray's message
                # (a refusal of its shape is a ValueError, above: a usage error).
                return _fail(_in_flags(str(exc)), 1)
            try:
                replace()  # done already, unless the run recorded no round
            except _NotRemoved as exc:
                return _fail(exc.text(out), 1)
            try:
                _write_run(res, run_dir, args)
            except KeyboardInterrupt:
                # Every round ran; write_run renames each whole file into place, rounds.json
                # last.
                clear()
                of = f" of the {label} run" if len(runs) > 1 else ""
                text = (
                    f"interrupted while writing the results of all {len(res.records)} "
                    f"rounds{of}: {run_dir}/rounds.json was not written"
                )
                print(f"{_PROG}: {_stop_text(text)}", file=sys.stderr)
                kept = True
                return 130
            results.append(res)
        kept = True
    finally:
        running.remove()  # every way out: its rounds written, or not to be
        if not kept:
            _remove_empty(made)
    say("writing plots")
    try:
        plots = _run_plots(out, results)
    except KeyboardInterrupt:
        clear()
        where = f"{out}/" if len(runs) == 1 else f"{out}/{{{','.join(lbl for lbl, _ in runs)}}}/"
        text = (
            f"interrupted while drawing the plots; the runs' files are in {where} "
            f"(rounds.json, rounds.csv, ledger.csv): plume sim report {out} draws them"
        )
        print(f"{_PROG}: {_stop_text(text)}", file=sys.stderr)
        return 130
    clear()
    print()
    for r in results:
        s = summary(r)
        ratio = s["upload_ratio_vs_dense"]
        acc = s["final_accuracy"]
        line = f"{r.label or 'run'}: final accuracy {acc:.4f}" if acc is not None else r.label
        line += f", upload {s['total_upload_bytes']:,} B"
        if ratio and r.config.dense:
            # The baseline's own frames are fp32 through zstd: "1.3x fewer than dense fp32"
            # read as a contradiction.
            line += f" (fp32 frames through zstd: {_times(ratio, ' bytes', 'raw fp32')})"
        elif ratio:
            line += f" ({_times(ratio, ' bytes', 'dense fp32')})"
        line += _download_and_wire(r, s["total_download_bytes"])
        if s["sim_s"] is not None:
            line += (
                f"; simulated {_seconds(s['sim_s'])} s in rounds + {_seconds(s['wait_s'])} s "
                "waiting"
            )
        if (ort := ort_note(r)) is not None:
            line += f"; {ort}"
        if s.get("backdoor_accuracy") is not None:
            line += f"; backdoor accuracy {s['backdoor_accuracy']:.4f}"
        if s.get("dp_epsilon") is not None:
            line += f"; dp epsilon {s['dp_epsilon']:.2f}"
            line += f" at delta {s['dp_delta']:g}" if s["dp_delta"] is not None else ""
            line += f" over {s['dp_rounds']} rounds" if s["dp_rounds"] is not None else ""
        print(line)
        if len(r.records) < r.config.rounds:
            print(f"{r.label or 'run'}: {_stopped_early(r)}")
        for warning in (
            abandoned_warning(r),
            dp_pool_warning(r),
            robust_guarantee_warning(r),
            dp_unaccounted_note(r),
        ):
            if warning:
                print(f"{r.label or 'run'}: {warning}")
    if len(results) == 2 and results[0].final_accuracy is not None:
        dense_up, comp_up = results[1].total_up, results[0].total_up
        delta_pp = 100 * ((results[0].final_accuracy or 0) - (results[1].final_accuracy or 0))
        print(
            f"{runs[0][0]} vs dense: {_times(dense_up / comp_up, ' upload bytes')}, "
            f"accuracy {delta_pp:+.2f} pp"
        )
    where = f"{out}/" if len(runs) == 1 else f"{out}/{{{','.join(label for label, _ in runs)}}}/"
    print(f"wrote {where} (rounds.json, rounds.csv, ledger.csv) and {', '.join(map(str, plots))}")
    return 0


# The files a run writes into its --out folder (the PNGs) and into each run folder (the rest),
# and the run folders --compare-dense makes inside it (`_sim`'s labels).
_RUN_FILES = ("rounds.json", "rounds.csv", "ledger.csv")
_PLOT_FILES = ("accuracy_vs_upload_bytes.png", "bytes_per_round.png", "round_durations.png")
_RUN_FOLDERS = ("compressed", "dense", "secure")


class _NotRemoved(Exception):
    """An earlier run's file in --out could not be removed (the OSError is its cause)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error

    def text(self, out: Path) -> str:
        where = self.error.filename or out
        reason = self.error.strerror or str(self.error)
        return f"cannot remove an earlier run's {where} from --out {out} ({reason})"


class _Replacer:
    """Removes an earlier run's files from --out (`_remove_earlier_outputs`) when first
    called, and says so in one line on stdout (above the progress bar, if any); later calls do
    nothing. Raises `_NotRemoved` for a file that cannot be removed."""

    def __init__(self, out: Path, above_bar: bool) -> None:
        self.out = out
        self.above_bar = above_bar
        self.done = False

    def __call__(self) -> None:
        if self.done:
            return
        try:
            removed = _remove_earlier_outputs(self.out)
        except OSError as exc:
            raise _NotRemoved(exc) from exc
        self.done = True
        if not removed:
            return
        from .status import clear

        names = ", ".join(p.relative_to(self.out).as_posix() for p in removed)
        text = f"replacing an earlier run's files in {self.out}/: removed {names}"
        clear()
        if self.above_bar:
            from tqdm import tqdm

            tqdm.write(text)
        else:
            print(text, flush=True)


def _unremovable(out: Path) -> Path | None:
    """The first of an earlier run's files in `out` that `_remove_earlier_outputs` could not
    remove as far as the folder holding it says (not writable by this process); None if
    none."""
    for path in _earlier_outputs(out):
        if not os.access(path.parent, os.W_OK | os.X_OK):
            return path
    return None


def _earlier_outputs(out: Path) -> list[Path]:
    """The files of an earlier `plume sim` run in `out` (see `_remove_earlier_outputs`)."""
    candidates = [out / name for name in (*_RUN_FILES, *_PLOT_FILES)]
    candidates += [out / sub / name for sub in _RUN_FOLDERS for name in _RUN_FILES]
    return [path for path in candidates if path.is_symlink() or path.is_file()]


def _remove_earlier_outputs(out: Path) -> list[Path]:
    """Remove the files an earlier `plume sim` run wrote into `out` (`_RUN_FILES` and
    `_PLOT_FILES` in it, `_RUN_FILES` in its `_RUN_FOLDERS`); the paths removed. Nothing else
    is touched: other files, the folders themselves. Raises the OSError of a file that cannot
    be removed."""
    removed = []
    for path in _earlier_outputs(out):
        path.unlink()
        removed.append(path)
    return removed


def _make_folders(path: Path) -> list[Path]:
    """Make folder `path` and its missing parents, one at a time; the folders made, deepest
    first. Only these are a failed run's to remove: `new/../keep_me` makes `new` and not
    `keep_me`, which was there (looking for missing folders by name took `keep_me` for one
    made and missed `new`). Raises the OSError of a folder that cannot be made, or
    NotADirectoryError naming a file in the way (its FileExistsError, "File exists", said the
    opposite of what was wrong), after removing the folders it made."""
    made: list[Path] = []
    try:
        for folder in [*reversed(path.parents), path]:
            try:
                folder.mkdir()
            except FileExistsError:
                if not folder.is_dir():
                    raise NotADirectoryError(
                        errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder)
                    ) from None
                continue
            made.append(folder)
    except OSError:
        _remove_empty(made[::-1])
        raise
    return made[::-1]


def _remove_empty(folders: list[Path]) -> None:
    """Remove `folders` (deepest first) while each is empty: a failed run's --out, made for
    it, is not left behind; one that holds anything (an earlier run's files) stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty, or already gone: leave it and its parents
            return


# What a built-in dataset's data folder must hold (docs/simulator.md, "The files it reads").
_DATA_FOLDERS = {"mnist": "mnist-t10k/", "shakespeare": "tinyshakespeare/"}


def _data_error_text(args: argparse.Namespace, exc: Exception) -> str:
    """A `DataError`'s message, with the flag or variable that sets the data folder; with
    --data-root, the folder it names as given and resolved when they differ (a relative path
    is taken from the current folder, which the message's own path did not show)."""
    text = str(exc)
    if args.data_root:
        text = text.replace("set PLUME_DATA to", "pass --data-root")
        resolved = str(Path(args.data_root).resolve())
        if resolved == str(args.data_root):
            return text  # the message's own path already shows it
        return f"{text} (--data-root {args.data_root} is {resolved})"
    if os.environ.get("PLUME_DATA"):
        return text.replace(
            "set PLUME_DATA to", f"set PLUME_DATA (now {os.environ['PLUME_DATA']}) to"
        )
    return text


def _seconds(x: float) -> str:
    """Simulated seconds for the summary line: 0.77, not 1 (nor 0 for 0.3); whole above 100."""
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def _interrupted(
    done: int, rounds: int, label: str, runs: list[tuple[str, Any]], out: Path, partial: Any
) -> str:
    """The start of the line for a Ctrl-C during run `label`: how far it got and, with
    --compare-dense, where the runs that ended before it are.

    `partial`: the runner's `SimResult` of the rounds that finished (`RunInterrupted`, which
    every runner raises: in process, --secure, --transport http), which `_write_interrupted`
    then writes and the line's end names; None where the Ctrl-C came before the runner had
    anything to keep (loading the data, starting a coordinator) or from a runner that keeps
    none, and then nothing is written.
    """
    if partial is not None:
        done = len(partial.records)
    of = f" of the {label} run" if len(runs) > 1 else ""
    text = f"interrupted after {done} of {rounds} rounds{of}"
    if partial is None or not partial.records:
        text += (
            "; no round finished, so nothing was written"
            if partial is not None or done == 0
            else "; its results were not written (this runner keeps no partial results)"
        )
    labels = [lbl for lbl, _ in runs]
    finished = labels[: labels.index(label)]
    if finished:
        text += " (" + ", ".join(f"the {lbl} run is in {out / lbl}" for lbl in finished) + ")"
    # (An earlier run's rounds.json in the run's folder was removed as this command's first
    # round ended; a Ctrl-C before then left it.)
    return text


def _finished_rounds_of(exc: Exception) -> Any:
    """The finished rounds a runner handed on `exc` (`finished_rounds`), or None: none
    finished, or PLUME_DEBUG=1 (which keeps the traceback and writes nothing)."""
    from coordinator.cli import debug_enabled

    partial = getattr(exc, "finished_rounds", None)
    if partial is None or not partial.records or debug_enabled():
        return None
    return partial


def _worker_failure_line(
    exc: Exception,
    run_dir: Path,
    args: argparse.Namespace,
    out: Path,
    results: list[Any],
    replace: Callable[[], None],
) -> str | None:
    """For a pool or Ray worker that failed, died or stalled after some rounds finished (the
    runner hands them on the error, `finished_rounds`; in process or --secure), or a
    --transport http device that stopped on an error (`DeviceFailed`): write those rounds as
    an interrupted run's and return the one error line, the worker's and where the rounds
    went. None for any other error, or one before a round finished: handled as before.
    PLUME_DEBUG=1 keeps the traceback (nothing is written then, as for any error under it)."""
    from coordinator.cli import _worker_error_line

    partial = _finished_rounds_of(exc)
    if partial is None:
        return None
    line = _worker_error_line(exc)
    device_failed = getattr(sys.modules.get("mobile_sim.http_fleet"), "DeviceFailed", None)
    if line is None and isinstance(device_failed, type) and isinstance(exc, device_failed):
        line = str(exc).strip().partition("\n")[0]  # "simulated device 3 stopped: ..."
    if line is None:
        return None
    return line + _write_finished(partial, run_dir, args, out, results, replace)


def _finished_before_error(
    exc: Exception,
    run_dir: Path,
    args: argparse.Namespace,
    out: Path,
    results: list[Any],
    replace: Callable[[], None],
) -> str | None:
    """For an error `_worker_failure_line` does not word (any other, after some rounds
    finished: the runners hand those on the error, `finished_rounds`): write them as an
    interrupted run's and return the line that says so, printed before the error itself.
    None when no round finished, or under PLUME_DEBUG=1: nothing is written then. (A closed
    stdout is `_keep_on_closed_stdout`'s.)"""
    partial = _finished_rounds_of(exc)
    if partial is None:
        return None
    where = _write_finished(partial, run_dir, args, out, results, replace)
    return "the run stopped on the error below" + where


def _keep_on_closed_stdout(
    exc: BrokenPipeError,
    run_dir: Path,
    args: argparse.Namespace,
    out: Path,
    results: list[Any],
    replace: Callable[[], None],
) -> bool:
    """stdout closed under a run (`plume sim ... | head -1`; the runners hand the finished
    rounds on the error, `finished_rounds`): write them as Ctrl-C's are, saying nothing (the
    reader is gone, and a pipe's writer ends quietly); whether any were written. Under
    PLUME_DEBUG=1 too, as after Ctrl-C: a closed stdout is no error to debug."""
    partial = getattr(exc, "finished_rounds", None)
    if partial is None or not partial.records:
        return False
    _write_finished(partial, run_dir, args, out, results, replace)
    return True


def _write_finished(
    partial: Any,
    run_dir: Path,
    args: argparse.Namespace,
    out: Path,
    results: list[Any],
    replace: Callable[[], None],
) -> str:
    """Write the finished rounds of a run that stopped early (Ctrl-C, SIGTERM, a failed
    worker), after the earlier run's files in --out are gone (`replace`: done already unless
    it stopped before its first round ended); the end of its one line."""
    try:
        replace()
        return _write_interrupted(partial, run_dir, args, out, [*results, partial])
    except _NotRemoved as err:
        return f"; its rounds were not written: {err.text(out)}"


def _write_interrupted(
    partial: Any, run_dir: Path, args: argparse.Namespace, out: Path, results: list[Any]
) -> str:
    """Write an interrupted run's finished rounds into `run_dir` (its summary says
    `"interrupted": true`) and the plots of `results` (the runs of this command so far) into
    `out`; the end of the one line: where they are, or what a second Ctrl-C left."""
    from .status import clear, say

    n = len(partial.records)
    rounds = f"{n} finished round{'' if n == 1 else 's'}"
    files = "(rounds.json with summary.interrupted true, rounds.csv, ledger.csv)"
    try:
        say("writing the finished rounds")
        _write_run(partial, run_dir, args)
    except KeyboardInterrupt:
        clear()
        # write_run renames each whole file into place, rounds.json last: nothing half-written.
        return (
            f"; interrupted again while writing its {rounds}: {run_dir}/rounds.json was not written"
        )
    try:
        say("writing plots")
        plots = _run_plots(out, results)
    except KeyboardInterrupt:
        clear()
        return (
            f"; its {rounds} {'is' if n == 1 else 'are'} in {run_dir}/ {files}; interrupted "
            f"again while drawing the plots: plume sim report {out} draws them"
        )
    clear()
    drawn = " and " + ", ".join(str(p) for p in plots) if plots else ""
    return f"; wrote its {rounds} to {run_dir}/ {files}{drawn}"


def _write_run(result: Any, run_dir: Path, args: argparse.Namespace) -> None:
    """`report.write_run` with what `plume sim` records of the command: `command` (the line
    that reruns it), `argv` (the line as typed), the load average when the run started and
    the busy-CPU warning of its start, if any (`_busy_cpu_warning`)."""
    from .report import write_run

    write_run(
        result,
        run_dir,
        command=_command(args),
        argv=_typed_argv(args),
        load_average_start=getattr(args, "_load_start", None),
        busy_cpu_warning=getattr(args, "_busy_warning", None),
    )


def _run_plots(out: Path, results: list[Any]) -> list[Path]:
    """The three plots of `results` (a completed or an interrupted run) into `out`, drawn from
    these runs alone: a folder of an earlier run beside them is not drawn into them."""
    from .report_extra import plot_runs

    runs = [(r.label or "run", [_as_dict(x) for x in r.records]) for r in results]
    cfg = results[0].config
    return plot_runs(runs, out, title=f"{cfg.dataset} / {cfg.model_name}")


def _load_average() -> float | None:
    """The 1-minute load average (None where the system has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def _busy_cpu_warning(args: argparse.Namespace, load: float | None = None) -> str | None:
    """The warning for a run on torch's default thread count (no --threads) with the
    sequential backend on a machine whose every CPU is already busy: torch's threads then
    wait for each other behind the other processes, and a round can take 10-30x as long
    (helper-222's report: an MNIST CNN round on 2 CPUs, 3.4 s quiet, 108 s beside one busy
    process, 11 s there with --threads 1). The default is not changed by the load: a thread
    count can change a run's float results, and runs must repeat. `load` (tests): the
    1-minute load average."""
    if args.threads is not None or args.backend != "sequential" or args.transport == "http":
        return None  # an HTTP run trains on one thread already
    # Printed for someone watching a terminal only: piped or logged runs (scripts, CI, tests)
    # keep stderr to what the run did (a warning that depends on other processes' load would
    # make it differ between two runs of the same command). Every run records it in its
    # rounds.json (`machine.busy_cpu_warning`), which `plume sim report` shows.
    load = _load_average() if load is None else load
    cpus = os.cpu_count() or 1
    if load is None or load < cpus:
        return None
    import torch

    threads = torch.get_num_threads()
    if threads < 2:
        return None
    return (
        f"the load average ({load:.1f}) is at least the number of CPUs ({cpus}): torch's "
        f"default {threads} threads can make each round many times slower while other "
        "processes use the CPUs; --threads 1 (or --backend pool) avoids that"
    )


def _times(ratio: float, what: str = "", than: str | None = None) -> str:
    """`ratio` (a baseline's bytes over a run's) as "4.2x fewer", or below 1 as "1.2x more":
    "0.9x fewer" meant more (a secure run's download, with its key material; s47 review);
    then `what` and " than `than`". A ratio of 1 is "the same (as `than`)", or with `what`
    "as many bytes (as ...)", and one that rounds to 1.0x either way "about" that: "1.0x
    fewer" read as a saving where there was none, and "1.0x more" as a cost (stop 48)."""
    if ratio > 0 and f"{max(ratio, 1 / ratio):.1f}" == "1.0":  # would read "1.0x"
        about = "" if ratio == 1 else "about "
        text = f"{about}as many{what}" if what else f"{about}the same"
        return text + (f" as {than}" if than else "")
    if ratio >= 1 or ratio <= 0:
        text = f"{ratio:.1f}x fewer{what}"
    else:
        text = f"{1 / ratio:.1f}x more{what}"
    return text + (f" than {than}" if than else "")


def _download_and_wire(result: Any, down: int) -> str:
    """The summary line's download part, against raw fp32 models (`dense_down`: 4 B a
    parameter per download that sent a model; a snapshot the coordinator serves is fp32
    through zstd, a little smaller), and over HTTP the wire bytes, which the payload figures
    leave out.

    `on the wire N B up in the rounds` is the sum of `wire_up`: the HTTP/1.1 requests (lines,
    headers with their signatures, bodies) the coordinator's ledger puts in a round, i.e. each
    selected device's check-in answered with its assignment, its downloads and its uploads.
    The devices' other exchanges are in no round: their registration, every check-in answered
    without an assignment (waiting, at the pace the coordinator asks: with the embedded one,
    after 0.1 s while a cohort gathers and up to 0.5 s while a round runs, `HttpFleetOptions`'
    poll_s and retry_after_s, longer when a task's waiting devices would check in more than
    200 times a second), the check-in after an upload that learns the round's outcome. Their
    bytes, up and down, and requests follow (`control traffic outside the rounds`), the sums of
    the rounds' `measurements.control_traffic` (`http_fleet._Fleet.control_since`; over
    `--secure --transport http`, `secure.HttpSecureFleet.control_since`). How many idle
    check-ins there are is the simulation's: its rounds last seconds and its devices poll as
    the coordinator tells them; a deployment's fleet checks in at its own pace."""
    from .report import control_traffic_text, control_traffic_total

    text = ""
    dense_down = sum(int(r.dense_down or 0) for r in result.records)
    if down and dense_down:
        text += (
            f", download {down:,} B ({_times(dense_down / down, than='raw fp32 models')}, "
            "4 B a parameter)"
        )
    elif down:
        text += f", download {down:,} B"
    wire = [r.wire_up for r in result.records]
    up = sum(int(r.bytes_up or 0) for r in result.records)
    if all(w is not None for w in wire) and sum(wire) != up:
        text += (
            f"; on the wire {sum(wire):,} B up in the rounds (selected devices' assigning "
            "check-ins, downloads, uploads)"
        )
    if (control := control_traffic_total(result.records)) is not None:
        text += f"; {control_traffic_text(control, secure=result.secure is not None)}"
    return text


def _stopped_early(result: Any) -> str:
    """Why a run ended before its last round: a spent DP budget, or the task stopping."""
    from coordinator.engine import find_measurement

    last = result.records[-1].measurements if result.records else {}
    text = f"stopped after {len(result.records)} of {result.config.rounds} rounds"
    if result.secure is not None and find_measurement(last, "budget_exhausted") is True:
        return f"{text}: {_secure_budget_stop(result.secure, last)}"
    if find_measurement(last, "budget_exhausted") is True:
        eps, delta = find_measurement(last, "epsilon"), find_measurement(last, "delta")
        spent = f" (epsilon {eps:.2f} at delta {delta:g})" if eps is not None and delta else ""
        return f"{text}: the privacy budget of --aggregator dp (eps=) is spent{spent}"
    return f"{text}: the coordinator stopped the task"


def _secure_budget_stop(secure: dict[str, Any], last: dict[str, Any]) -> str:
    """Why a --secure run's --epsilon-budget stopped it, from its last round's measurements:
    a round refused before unmasking (`dp_refused`: nothing of it released), or a released
    round after which not even the most favourable round fits (`dp.budget_exhausted`)."""
    refused = last.get("dp_refused")
    dp = refused if isinstance(refused, dict) else last.get("dp")
    dp = dp if isinstance(dp, dict) else {}
    budget = dp.get("epsilon_budget", secure.get("epsilon_budget"))
    text = "the epsilon budget"
    text += f" {budget:g}" if isinstance(budget, (int, float)) else ""
    text += " (--epsilon-budget) stopped the run"
    eps, delta, rounds = dp.get("epsilon"), dp.get("delta"), dp.get("rounds")
    if isinstance(eps, (int, float)):
        text += f": final epsilon {eps:.2f}"
        text += f" at delta {delta:g}" if isinstance(delta, (int, float)) else ""
        if isinstance(rounds, int):
            text += f" over {rounds} released round{'s' if rounds != 1 else ''}"
    if isinstance(refused, dict):
        after = refused.get("epsilon_if_released")
        could = f" (it could take epsilon to {after:.2f})" if isinstance(after, float) else ""
        return f"{text}; the last round was refused before unmasking{could}"
    return f"{text}; no further round could be released within it"


def _as_dict(rec: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(rec)


def _report(args: argparse.Namespace) -> int:
    if not args.run_dir:
        return _fail("`plume sim report` needs RUN_DIR, the --out folder of a run")
    run_flags: dict[str, tuple[str, Any]] = args._run_flags
    # The flags typed, even one set to its default (`--rounds 20`, `--out runs/latest`), which
    # passed before and were ignored all the same (stop 48, helper-407); by value only where
    # the words typed are not known.
    typed = _typed_dests(args)
    if given := [
        flag
        for dest, (flag, _) in run_flags.items()
        if (dest in typed if typed is not None else _given(args, dest))
    ]:
        return _fail(
            f"`plume sim report RUN_DIR` takes no run flags (got {', '.join(given)}): it redraws "
            "the plots and rewrites rounds.csv from RUN_DIR's rounds.json alone"
        )
    from .report import table_header, table_row
    from .report_extra import (
        RunDirError,
        RunDirMixed,
        RunInProgress,
        RunKilled,
        compare_table,
        missing_ledgers,
        plot_runs,
        printable,
        read_run_dir,
        rebuild_rounds_csv,
    )

    try:
        found = read_run_dir(args.run_dir)  # each rounds.json read once, before any drawing
    except RunDirMixed as exc:  # runs of different datasets or models: it names them
        return _fail(str(exc))
    except (RunInProgress, RunKilled) as exc:  # not a wrong RUN_DIR: a run's, not written
        return _fail(str(exc), 1)
    except RunDirError as exc:  # missing folder, no rounds.json, or a corrupt one
        return _fail(f"{exc}; RUN_DIR must be the --out folder of a `plume sim` run")
    try:
        paths = plot_runs(found.runs, found.root, found.title)
        csvs = rebuild_rounds_csv(found)
    except OSError as exc:
        # A bare "PATH: Operation not permitted" said nothing of what was being done.
        where = printable(exc.filename or found.root)
        reason = exc.strerror or str(exc)
        return _fail(
            f"RUN_DIR {printable(args.run_dir)} cannot be written ({reason}: {where}); "
            "`plume sim report` redraws its plots and rewrites rounds.csv there",
            1,
        )
    print("rebuilt " + ", ".join(printable(p) for p in paths))
    print("rebuilt " + ", ".join(printable(p) for p in csvs))
    for line in missing_ledgers(found):
        print(printable(line))
    # Each run's per-round table, as the run printed it (an empty run has no table).
    for label, rounds in found.runs:
        if rounds:
            print()
            print(table_header(label))
            for r in rounds:
                print(table_row(r))
    print()
    print(compare_table(found.runs))
    for line in found.control:
        print(printable(line))
    for note in found.notes:
        print(printable(note))
    # A run on a busy machine (its wall times skewed): said on a terminal only when it ran.
    for line in found.warnings:
        print(line)
    return 0
