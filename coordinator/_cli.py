"""`plume coordinator`: serve the HTTP coordinator, and admin helpers (create-task, status,
pause, resume, stop, get-model)."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import errno
import fcntl
import glob
import json
import math
import os
import re
import sqlite3
import stat
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple, NoReturn

from .cli import debug_enabled, print_error, when_help

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch

    from .service import AdminError

__all__ = ["register", "admin_error_text", "checked_url"]

_EXAMPLES = """\
examples:
  export PLUME_ADMIN_TOKEN=s3cret   # serve and the admin commands read the token from it
  plume coordinator serve --db plume.db --host 127.0.0.1 --port 8080
  plume coordinator serve --db plume.db --host 0.0.0.0 --port 8443 \\
      --tls-cert cert.pem --tls-key key.pem
  plume coordinator serve --config /etc/plume/coordinator.toml
  plume coordinator create-task --url http://127.0.0.1:8080 \\
      --model mlp --rounds 20 --clients-per-round 10 --topk 0.01 --bits 4
  plume coordinator create-task --url http://127.0.0.1:8080 \\
      --model mlp --rounds 20 --clients-per-round 10 --secure --secure-fraction 0.05 \\
      --stage-timeout 30 --deadline 150
  plume coordinator status --url http://127.0.0.1:8080 --task 1
  plume coordinator pause  --url http://127.0.0.1:8080 --task 1
  plume coordinator get-model --task 1 --out model.pt
  plume coordinator stop --task 1
  plume coordinator backup --db plume.db --out backups/plume-2026-11-29.db
  plume coordinator restore --db plume.db --from backups/plume-2026-11-29.db

The admin token comes from the PLUME_ADMIN_TOKEN environment variable (or --admin-token, whose
value any local user sees in ps; or serve's --config file).
"""


# (flag, TaskConfig.secure key, type, help) of `create-task --secure`.
_SECURE_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--secure-fraction", "coord_fraction", float, "|S_r| / d, shared coordinates per round"),
    (
        "--secure-upload-budget",
        "upload_budget",
        int,
        "bytes per device per round; |S_r| is the largest that fits (overrides the fraction)",
    ),
    ("--secure-bits", "value_bits", int, "bits per value before masking"),
    ("--secure-clip", "clip_norm", float, "L2 clip of the sent vector"),
    ("--secure-max-weight", "max_weight", int, "largest integer weight a device sends"),
    ("--secure-degree-factor", "degree_factor", float, "graph degree k = 2 ceil(f log2 n)"),
    ("--secure-group-size", "group_size", int, "grouped mode: SecAgg in groups of g"),
    ("--secure-group-aggregator", "group_aggregator", str, "robust aggregator across groups"),
    ("--secure-noise-multiplier", "noise_multiplier", float, "distributed DP noise multiplier"),
    ("--secure-expected-dropout", "expected_dropout", float, "dropout the DP noise allows for"),
    (
        "--secure-epsilon-budget",
        "epsilon_budget",
        float,
        "distributed DP: the epsilon (at the task's secure.dp_delta, default 1e-5) the task "
        "may spend; a round whose release could pass it is abandoned unreleased and the task "
        "stops",
    ),
    ("--stage-timeout", "stage_timeout_s", float, "a stage closes this long after it opened"),
    ("--stage-idle", "stage_idle_s", float, "or this long after its latest upload"),
)


_SECURE_METAVARS = {
    "coord_fraction": "FRACTION",
    "upload_budget": "BYTES",
    "value_bits": "BITS",
    "clip_norm": "C",
    "max_weight": "N",
    "degree_factor": "F",
    "group_size": "G",
    "group_aggregator": "SPEC",
    "noise_multiplier": "Z",
    "expected_dropout": "FRACTION",
    "epsilon_budget": "EPS",
    "stage_timeout_s": "SECONDS",
    "stage_idle_s": "SECONDS",
}


# `coordinator.service.secure.SecureSettings`'s stage timing defaults, named here so --help
# does not import the service (FastAPI); a test checks them against the dataclass.
_STAGE_DEFAULTS: dict[str, Any] = {"stage_timeout_s": 30.0, "stage_idle_s": None}


def _secure_defaults() -> dict[str, Any]:
    """The value each `TaskConfig.secure` key takes when its flag is left out."""
    try:
        from dataclasses import fields

        from .secure import SecureConfig
    except ImportError:
        return {}
    return {f.name: f.default for f in fields(SecureConfig)} | _STAGE_DEFAULTS


_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
# mobile_sim's zoo (`mobile_sim.models.MODELS`), named here so --help needs no torch import.
_ZOO_MODELS = (
    "mlp",
    "mnist_cnn",
    "digits_mlp",
    "synthetic_lr",
    "shakespeare_lstm",
    "shakespeare_lstm_small",
)


# The admin commands' default --timeout, seconds: how long one step of a request (connecting,
# sending, each read of the answer) may wait for the coordinator. It was 60 s, and not settable.
_ADMIN_TIMEOUT_S = 30.0


# The longest --timeout the admin commands take, seconds (a day; AdminClient's bound too): a
# socket timeout past about 9.2e9 s raised OverflowError (a traceback) at the first request.
_MAX_ADMIN_TIMEOUT_S = 86_400.0


def _admin_timeout(text: str) -> float:
    x = _positive(text)
    if x > _MAX_ADMIN_TIMEOUT_S:
        raise argparse.ArgumentTypeError(
            f"must be a finite number > 0 and at most {_MAX_ADMIN_TIMEOUT_S:g} (a day), got {text}"
        )
    return x


# The codec's bits a value (compression's VALID_BITS, as `plume sim --bits` lists them: not
# imported, so that building the parser imports no numpy).
_CODEC_BITS = (1, 2, 4, 8, 16, 32)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 0-65535, got {port}")
    return port


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text == "on"


def _positive(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return x


# The most rounds --keep-frames takes: SQLite's largest integer (the store's query bound);
# any larger count keeps every frame just the same.
_MAX_KEEP = 2**63 - 1


def _rounds_to_keep(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of rounds, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"a number of rounds is >= 0, got {n}")
    if n > _MAX_KEEP:
        raise argparse.ArgumentTypeError(
            f"a number of rounds is at most {_MAX_KEEP} (SQLite's largest integer; leave it "
            f"out to keep every frame), got {n}"
        )
    return n


def _snapshot_cap(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number written in digits, got {text!r}"
        ) from None
    if not 0 <= n <= 1_000_000:
        raise argparse.ArgumentTypeError(f"must be in [0, 1000000] (0: no limit), got {n}")
    return n


# The largest `serve --upload-buffer-mb`: 1 TiB (no machine holds more upload bodies).
_MAX_UPLOAD_BUFFER_MB = 1 << 20


def _upload_buffer_mb(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of MiB written in digits, got {text!r}"
        ) from None
    if not 0 <= n <= _MAX_UPLOAD_BUFFER_MB:
        raise argparse.ArgumentTypeError(
            f"must be in [0, {_MAX_UPLOAD_BUFFER_MB}] MiB (0: no limit), got {n}"
        )
    return n


# The most rounds `status --last` asks for: the coordinator's `rounds.MAX_ROUNDS_PAGE`, written
# again here so that building the parser imports no part of the service.
_MAX_LAST = 100_000


def _rounds_page(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of rounds, got {text!r}") from None
    if not 1 <= n <= _MAX_LAST:
        raise argparse.ArgumentTypeError(f"a number of rounds is 1 to {_MAX_LAST}, got {n}")
    return n


def _store_int(what: str, low: int) -> Callable[[str], int]:
    """An argparse type for an id or version the coordinator stores as a SQLite INTEGER:
    `low` to 2**63 - 1, else a usage error naming `what` (0 or -1 for a task id is a usage
    mistake here, not a request the coordinator answers 422)."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not low <= n <= 2**63 - 1:
            article = what.split(" ", 1)[1]
            raise argparse.ArgumentTypeError(f"a {article} is {low} to 2**63 - 1, got {n}")
        return n

    return parse


# A task id as create-task prints it; get-model --version (0: the initial model); a round id
# as the coordinator takes it in `?before=`.
_task_id = _store_int("a task id", 1)
_model_version = _store_int("a model version", 0)
_round_id = _store_int("a round id", 1)


def _prefix(text: str) -> str:
    """argparse type of --strip-prefix: a non-empty name prefix."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty (e.g. net.)")
    return text


def _aggregator_list() -> str:
    try:
        from .aggregators import AGGREGATOR_HELP
    except ImportError:
        return ""
    return "aggregators (--aggregator):\n" + "\n".join(
        "  " + line for line in AGGREGATOR_HELP.splitlines()
    )


def _fail(prog: str, message: str, status: int = 1) -> NoReturn:
    """One line on stderr, `PROG: error: MESSAGE`, then exit with `status`."""
    print_error(prog, message)
    raise SystemExit(status)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "coordinator",
        help="run the HTTP coordinator or talk to its admin API",
        description="The Plume coordinator service (FastAPI on uvicorn, SQLite in WAL mode).",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    csub = p.add_subparsers(dest="coordinator_command", metavar="ACTION")

    def _help(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=_help)

    s = csub.add_parser(
        "serve",
        help="serve the coordinator until interrupted",
        description="Serve the coordinator's HTTP API until Ctrl-C (or SIGTERM, or SIGHUP).",
        epilog=(
            "examples:\n  export PLUME_ADMIN_TOKEN=s3cret   # the admin API's token\n"
            "  plume coordinator serve --db plume.db --port 8080\n"
            "  plume coordinator serve --config /etc/plume/coordinator.toml --port 8081\n\n"
            "A --config file is TOML, one key per flag, named as the flag without its dashes:\n"
            '  db = "/var/lib/plume/plume.db"\n'
            "  port = 8080\n"
            "  keep-frames = 50\n"
            "Relative paths in it (db, tls-cert, tls-key) are relative to its folder.\n"
        ),
    )
    # Each option notes that it was given, so --config fills only what the command line
    # left out (a flag given with its default value included).
    s.register("action", None, _Given)  # what add_argument takes without action=
    s.add_argument(
        "--config",
        default=None,
        metavar="TOML",
        help="read these flags from a TOML file (keys: the flags without their dashes, e.g. "
        "db, port, admin-token, keep-frames); a flag given on the command line wins over the "
        "file, and the file over the defaults and $PLUME_ADMIN_TOKEN",
    )
    s.add_argument(
        "--db",
        default="plume.db",
        metavar="PATH",
        help="SQLite database file, created if missing (its folder must exist)",
    )
    s.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)"
    )
    s.add_argument("--port", type=_port, default=8080, help="TCP port to listen on, 0-65535")
    s.add_argument(
        "--admin-token",
        default=os.environ.get("PLUME_ADMIN_TOKEN"),
        help="bearer token of the admin API (default $PLUME_ADMIN_TOKEN; unset or empty disables "
        "it: 403)",
    )
    s.add_argument(
        "--tls-cert", default=None, metavar="PEM", help="PEM certificate chain (enables HTTPS)"
    )
    s.add_argument("--tls-key", default=None, metavar="PEM", help="PEM private key of --tls-cert")
    s.add_argument(
        "--signature-window",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="accepted clock skew of a signed device request, seconds (1 to 86400; it also covers "
        "the upload's transfer: a request is checked once its body has arrived)",
    )
    s.add_argument(
        "--poll",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="seconds a device is told to wait before it polls again while a round gathers "
        "or a secure stage is open (retry_after_s in the answer's body; a 425's Retry-After "
        "header carries it rounded up to whole seconds)",
    )
    s.add_argument(
        "--register-rate",
        type=float,
        default=0.0,
        metavar="PER_S",
        help="registrations per second allowed per client address (IPv6: per /64), refilling "
        "a bucket of --register-burst; over it, 429 + Retry-After. 0 (default) = unlimited: "
        "phones behind carrier NAT share addresses, so per-IP limits belong at the edge "
        "(docs/operations.md)",
    )
    s.add_argument(
        "--register-burst",
        type=int,
        default=20,
        metavar="N",
        help="registrations one address may make at once before --register-rate applies "
        "(default 20)",
    )
    s.add_argument(
        "--body-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="seconds a request body may take to arrive in full, from its first read, else 408 "
        "and the connection closes (default 120: a 24 KB update at 2G speeds takes about 10 s; "
        "0 = no limit, else 1 to 86400). It also sets the pace an upload must keep to hold its "
        "room in --upload-buffer-mb, so holding the whole buffer costs a sender the buffer's "
        "bytes per this many seconds: raising it for slow links (600 s) makes that cheaper "
        "(256 MiB: about 447 KB/s instead of 2.2 MB/s at 120 s)",
    )
    s.add_argument(
        "--head-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds a connection may take to send a request's head (request line and "
        "headers), from its opening or from the first byte of its next request; past it the "
        "connection closes without an answer, so a client that stalls mid-head cannot hold it "
        "(default 30; 0 = no limit, else 1 to 86400)",
    )
    s.add_argument(
        "--send-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds a client may read nothing of an answer (a model download it stopped "
        "reading) before the connection is cut; on Linux the clock restarts whenever its "
        "kernel has acknowledged more of the answer, so a slow link that keeps reading is not "
        "cut (default 60; 0 = no limit, else 1 to 86400)",
    )
    s.add_argument(
        "--shutdown-grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds a stop (SIGTERM, SIGHUP, Ctrl-C) waits for requests in flight; those "
        "still running then are answered 503 shutting_down with Retry-After (the device sends "
        "them again) and answers still going out are cut (default 10, at most 3600; 0 = answer them "
        "at once; keep it below the service manager's stop timeout, systemd's 90 s)",
    )
    s.add_argument(
        "--keep-frames",
        type=_rounds_to_keep,
        default=None,
        metavar="N",
        help="keep the accepted update frames of each task's N most recent closed rounds; "
        "older ones are emptied after each round closes (their length and SHA-256 stay, so "
        "retried uploads still get their receipts; the frames can no longer be decoded). "
        "0 = prune every closed round. The downlink delta frames of versions older than "
        "the newest max(N, the task's max_chain) are emptied too (a device further behind "
        "gets the snapshot, as before). Default: keep every frame (docs/operations.md)",
    )
    s.add_argument(
        "--snapshots-per-version",
        type=_snapshot_cap,
        default=16,
        metavar="N",
        help="whole-model snapshots one device may download of one version of a task within "
        "an hour; past it the download is 429 rate_limited with Retry-After (default 16, far "
        "above the SDK's one or two per round; 0 = no limit)",
    )
    s.add_argument(
        "--upload-buffer-mb",
        type=_upload_buffer_mb,
        default=256,
        metavar="MIB",
        help="MiB of upload bodies (updates, secure stage messages) read into memory at once; "
        "a body reserves its Content-Length at its first part, and one that does not fit waits up "
        "to 2 s, then 503 busy with Retry-After (an upload alone is always let in). Waiting "
        "bodies' first parts add up to an eighth more, and each waiting connection up to about "
        "64 KiB in uvicorn's buffer (default 256; 0 = no limit)",
    )
    s.add_argument(
        "--pool-ttl",
        type=_positive,
        default=60.0,
        metavar="SECONDS",
        help="a device that has not checked in for this long leaves its task's selection pool "
        "(default 60; at least 1, and more than --poll)",
    )
    s.add_argument(
        "--max-checkin-rate",
        type=_positive,
        default=200.0,
        metavar="PER_S",
        help="check-ins per second a task's waiting devices are paced to (default 200). A dp "
        "task accounted with population=N waits for N devices in its pool, which holds about "
        "max-checkin-rate x pool-ttl / 2 devices (docs/privacy.md)",
    )
    s.add_argument(
        "--log-level",
        default="info",
        choices=_LOG_LEVELS,
        help="uvicorn and plume.coordinator logging",
    )
    s.add_argument(
        "--access-log",
        type=_on_off,
        default=True,
        metavar="{on,off}",
        help="uvicorn's access log, a line per request on stdout (default: on; off: a fleet's "
        "check-ins are most of the log, and the coordinator's own lines stay)",
    )
    s.set_defaults(func=_serve, _serve_parser=s)

    def admin_args(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--url",
            default="http://127.0.0.1:8080",
            help="coordinator base URL, http:// or https://",
        )
        q.add_argument(
            "--admin-token",
            default=os.environ.get("PLUME_ADMIN_TOKEN"),
            metavar="TOKEN",
            help="the serve command's --admin-token (default $PLUME_ADMIN_TOKEN)",
        )
        q.add_argument(
            "--cacert",
            default=None,
            metavar="PEM",
            help="CA bundle to verify an HTTPS coordinator (a PEM file, or a folder of hashed "
            "certificates as `openssl rehash` makes)",
        )
        q.add_argument(
            "--timeout",
            type=_admin_timeout,
            default=_ADMIN_TIMEOUT_S,
            metavar="SECONDS",
            help="how long to wait for the coordinator at each step: to accept the connection, "
            "to take the request, and for each part of its answer; past it, one error line "
            f"naming --url and the timeout, exit status 1 (> 0, at most a day; default: "
            f"{_ADMIN_TIMEOUT_S:g})",
        )

    c = csub.add_parser(
        "create-task",
        help="create a task with a zoo model's initial weights, or your own (--initial)",
        description=(
            "Create a training task on a running coordinator (`plume coordinator serve`) and "
            "upload the initial weights of a zoo model (or of one a --plugin registers), or "
            "weights of that model from a file (--initial); prints the task id as JSON."
        ),
        epilog=(
            "examples:\n  export PLUME_ADMIN_TOKEN=s3cret   # serve's admin token\n"
            "  plume coordinator create-task --model mlp --rounds 20 --clients-per-round 10\n"
            "  plume coordinator create-task --model mlp --initial pretrained.pt   # your weights\n"
            "\n--initial pretrained.pt: torch.save(model.state_dict(), 'pretrained.pt') of the "
            "model you\ntrained (its names may lack the zoo model's leading 'net.'), or a file "
            "get-model wrote.\n\n"
        ),
    )
    admin_args(c)
    c.add_argument(
        "--name", default=None, help="task name, 1 to 200 characters (default: the model's name)"
    )
    c.add_argument(
        "--model",
        default="mlp",
        metavar="NAME",
        help="zoo model (" + ", ".join(_ZOO_MODELS) + "), or one a --plugin registers",
    )
    c.add_argument(
        "--plugin",
        action="append",
        default=None,
        metavar="MODULE",
        help="import MODULE first (repeatable; also a path to a .py file), as `plume sim "
        "--plugin` does, so that --model takes the names its top-level code registers in "
        "mobile_sim.models.MODELS; the task's layout (and, without --initial, its initial "
        "weights) are that model's",
    )
    c.add_argument(
        "--initial",
        default=None,
        metavar="FILE",
        help="the task's initial model from a file instead of --model's weights for --seed: "
        "a torch state_dict .pt/.pth (read with torch.load(weights_only=True): tensors only, "
        "never a pickled object), an .npz of numeric arrays by name (numpy.load without "
        "pickle), or a file get-model wrote (those two, or a snapshot). It must hold exactly "
        "the parameters of --model, by name and shape (buffers such as BatchNorm's running "
        "means may be there too, and are not sent); names that all lack a leading prefix "
        "the task's have (the zoo MLP's 'net.'), all have one the task's lack "
        "(nn.DataParallel's 'module.'), or both ('module.1.weight' for 'net.1.weight') are "
        "accepted with a note. "
        "Values are converted to float32; NaN, inf or a value beyond float32's range is "
        "refused. Checked before anything is sent",
    )
    c.add_argument(
        "--seed",
        type=int,
        default=0,
        help="initial weights (unless --initial) and round seeds",
    )
    c.add_argument("--rounds", type=int, default=10, metavar="N", help="training rounds")
    c.add_argument(
        "--clients-per-round", type=int, default=10, metavar="N", help="reports aggregated a round"
    )
    c.add_argument(
        "--over-selection",
        type=float,
        default=1.3,
        metavar="FACTOR",
        help="devices selected a round = FACTOR x --clients-per-round, for dropouts",
    )
    c.add_argument(
        "--deadline", type=float, default=60.0, metavar="SECONDS", help="round deadline, seconds"
    )
    c.add_argument(
        "--min-reports",
        type=int,
        default=1,
        metavar="N",
        help="reports a round needs to close at its deadline",
    )
    c.add_argument(
        "--selection-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="open a round with >= --min-reports checked-in devices this long after the first",
    )
    # Noted when given (`_Given`): --secure refuses them as typed, whatever their value.
    c.add_argument(
        "--topk",
        action=_Given,
        type=float,
        default=0.01,
        metavar="FRACTION",
        help="upload: coordinates kept (not with --secure)",
    )
    c.add_argument(
        "--bits",
        action=_Given,
        type=int,
        default=4,
        choices=_CODEC_BITS,
        metavar="BITS",
        help="upload: bits a value, 1, 2, 4, 8 (quantized), 16 or 32 (floats; not with --secure)",
    )
    c.add_argument(
        "--no-error-feedback",
        action="store_true",
        help="devices send each compressed update alone, keeping no residual for the next "
        "round (codec.error_feedback false; what a dp stage with population= > sample= needs "
        "for its epsilon to be proven, docs/privacy.md)",
    )
    c.add_argument(
        "--downlink-topk",
        type=float,
        default=0.02,
        metavar="FRACTION",
        help="model download deltas: coordinates kept",
    )
    c.add_argument(
        "--downlink-bits",
        type=int,
        default=8,
        choices=_CODEC_BITS,
        metavar="BITS",
        help="model download deltas: bits a value, 1, 2, 4, 8 (quantized), 16 or 32 (floats)",
    )
    c.add_argument(
        "--aggregator",
        default="fedavg",
        metavar="SPEC",
        help="aggregator spec, e.g. median or cosfilter+geomed (list below)",
    )
    c.add_argument(
        "--server-lr",
        type=float,
        default=1.0,
        metavar="LR",
        help="server step: the model moves by LR x the aggregate",
    )
    c.add_argument("--local-epochs", type=int, default=1, metavar="E", help="device epochs a round")
    c.add_argument(
        "--batch-size", type=int, default=32, metavar="B", help="device minibatch, examples"
    )
    c.add_argument("--lr", type=float, default=0.05, help="device SGD learning rate")
    g = c.add_argument_group(
        "secure aggregation (SecAgg+; unset knobs keep the SecureConfig defaults)"
    )
    g.add_argument("--secure", action="store_true", help="run every round under SecAgg+")
    secure_actions = {
        key: g.add_argument(
            flag,
            dest=f"secure_{key}",
            type=kind,
            default=None,
            metavar=_SECURE_METAVARS.get(key),
            help=helptext,
        )
        for flag, key, kind, helptext in _SECURE_FLAGS
    }
    g.add_argument(
        "--secure-noise",
        dest="secure_noise",
        choices=("none", "discrete_gaussian", "skellam"),
        default=None,
        help="distributed DP noise each device adds (with --secure-noise-multiplier; "
        "default: none)",
    )
    g.add_argument(
        "--secure-no-sketch",
        dest="secure_sketch",
        action="store_false",
        default=None,
        help="choose S_r from |global update| instead of the row/column energy sketch "
        "(default: the sketch)",
    )
    c.set_defaults(func=_create_task)

    def complete_help(parser: argparse.ArgumentParser) -> None:
        # The aggregator list and SecureConfig's defaults import numpy and the aggregators:
        # added when this help is shown, not for every `plume` run.
        parser.epilog = (parser.epilog or "") + _aggregator_list()
        defaults = _secure_defaults()
        for key, action in secure_actions.items():
            if key in defaults:
                value = defaults[key]
                shown = "none" if value is None or value == math.inf else value
                action.help = f"{action.help} (default: {shown})"

    when_help(c, complete_help)

    for name, helptext in (
        ("status", "print a task's status and rounds as JSON, or list every task"),
        ("pause", "stop opening rounds for a task; prints its status line"),
        ("resume", "resume a paused task; prints its status line"),
        (
            "stop",
            "stop a task for good: its open round is abandoned (accepted updates stay in its "
            "ledger, the model stays the last published one), no round opens again, its "
            "devices are refused; irreversible (pause is the reversible one). The task stays "
            "listed with state stopped; stopping it again prints its status line",
        ),
    ):
        example = "  export PLUME_ADMIN_TOKEN=s3cret   # serve's admin token\n"
        example += f"  plume coordinator {name} --task 1\n"
        if name == "status":
            example += (
                "  plume coordinator status --task 1 --last 20\n"
                "  plume coordinator status --task 1 --last 20 --before 81\n"
                "  plume coordinator status    # every task, a line each\n"
            )
        q = csub.add_parser(
            name,
            help=helptext,
            description=helptext[0].upper() + helptext[1:] + ".",
            epilog=f"example{'s' if name == 'status' else ''}:\n{example}",
        )
        admin_args(q)
        q.add_argument(
            "--task",
            type=_task_id,
            required=name != "status",
            metavar="ID",
            help="id create-task printed"
            + (
                " (default: list every task, refused ones included, one JSON line each)"
                if name == "status"
                else ""
            ),
        )
        if name == "status":
            q.add_argument(
                "--last",
                type=_rounds_page,
                metavar="N",
                help="with --task: only the task's N newest rounds, oldest first (default: "
                f"every round; at most {_MAX_LAST})",
            )
            q.add_argument(
                "--before",
                type=_round_id,
                metavar="ROUND_ID",
                help="with --task: only the task's rounds older than round ROUND_ID, and of "
                "those the --last N newest (page backwards: give the first round_id of the page "
                "printed before)",
            )
        q.set_defaults(func=_task_action, action_name=name)

    m = csub.add_parser(
        "get-model",
        help="download a task's current model (checked against its digest) to a file",
        description=(
            "Download a task's current model from the admin API as an fp32 snapshot, decode "
            "it under the limits of the task's model spec and check it against the version "
            "and SHA-256 digest sent with it, then write it (atomically: a temporary file "
            "renamed into place) as a snapshot, a torch state_dict or numpy arrays. Works for "
            "running, done and stopped tasks; prints what it wrote as JSON."
        ),
        epilog=(
            "examples:\n"
            "  export PLUME_ADMIN_TOKEN=s3cret   # serve's admin token\n"
            "  plume coordinator get-model --task 1 --out model.pt\n"
            "  plume coordinator get-model --task 1 --out model.npz\n"
            "  plume coordinator get-model --task 1 --out v5.npz --version 5\n"
            "  plume coordinator get-model --task 1 --out model.pt --strip-prefix net.\n\n"
            # Wrapped by hand, as the examples above: this parser does not reflow its epilog.
            "Load them with torch.load('model.pt', weights_only=True) into the model\n"
            "(mobile_sim.models.build_model(NAME), after importing the plugin that registers\n"
            "NAME if it is not a zoo model) with load_state_dict(..., strict=True); with\n"
            "--strip-prefix net., into your own nn.Sequential of the zoo MLP's layers (the\n"
            "README's SDK example) instead, whose keys are 1.weight, not net.1.weight;\n"
            "numpy.load('model.npz', allow_pickle=False)[NAME];\n"
            "compression.decode_snapshot(bytes, spec).\n"
        ),
    )
    admin_args(m)
    m.add_argument(
        "--task", type=_task_id, required=True, metavar="ID", help="id create-task printed"
    )
    m.add_argument(
        "--plugin",
        action="append",
        default=None,
        metavar="MODULE",
        help="import MODULE first (repeatable; also a path to a .py file), as create-task "
        "--plugin does, so that --format pt (and a rebuild from the model's own initial "
        "weights) can build a task whose model_name a plugin registers",
    )
    m.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="file to write (replaced if it exists, unless it is a SQLite database, a "
        "coordinator's or not, or a file beside one: its -wal, -shm, -journal or .lock)",
    )
    m.add_argument(
        "--version",
        type=_model_version,
        default=None,
        metavar="N",
        help="the version wanted (default: the current one). The coordinator rebuilds an older "
        "version from the initial model it keeps and the stored delta frames, checked against "
        "the version's digest; refused once --keep-frames emptied a frame on the way. For a "
        "task stored before the coordinator kept initial models (schema 3 or older), the "
        "version is rebuilt here from --initial, or for a zoo task the zoo's weights for its "
        "seed (as create-task made them)",
    )
    m.add_argument(
        "--initial",
        default=None,
        metavar="FILE",
        help="the task's initial model (version 0) for --version (refused without it), "
        "needed only when the coordinator does not keep it (a task stored before schema 4): "
        "a snapshot, .npz or .pt file as get-model writes them (default: a zoo task's "
        "weights for its seed)",
    )
    m.add_argument(
        "--format",
        choices=_MODEL_FORMATS,
        default=None,
        help="snapshot: the fp32 snapshot as sent (compression.decode_snapshot reads it); "
        "pt: the state_dict of the task's model (its model_name: a zoo model, or one a "
        "--plugin registers), for torch.load; npz: "
        "one array per parameter, by name, for numpy.load. Default: from the --out suffix "
        "(.pt/.pth, .npz, else snapshot)",
    )
    m.add_argument(
        "--strip-prefix",
        type=_prefix,
        default=None,
        metavar="PREFIX",
        help="pt and npz: remove PREFIX from the start of every tensor name that has it, so "
        "that the file loads into your own model rather than the task's model_name's: "
        "--strip-prefix net. makes the zoo MLP's net.1.weight 1.weight, the key of the "
        "README's nn.Sequential (default: the names of the task's model, as before). Refused "
        "when no name starts with PREFIX, or two names would become one",
    )
    m.set_defaults(func=_get_model)

    b = csub.add_parser(
        "backup",
        help="copy the database, consistently even while the coordinator serves it",
        description=(
            "Copy the coordinator's SQLite database to a file with SQLite's online backup: "
            "consistent while `serve` runs, with every commit (those still in the -wal file "
            "too). The copy is checked (PRAGMA integrity_check) and written through a "
            "temporary file renamed into place; it is one file, with no -wal beside it. "
            "The copy leaves out the database's incarnation, so the database put back from it "
            "(by restore, or by hand) gets a new one when it is opened and devices set aside "
            "what they keep of the ids given since. "
            "Prints what it wrote as JSON. Needs no sqlite3 command-line tool."
        ),
        epilog=(
            "example:\n  plume coordinator backup --db /var/lib/plume/plume.db "
            "--out /backups/plume-$(date +%F).db\n"
        ),
    )
    b.add_argument("--db", default="plume.db", metavar="PATH", help="serve's --db")
    b.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="file to write (replaced if it exists, unless it is a database in use: one serve "
        "serves, or one with writes in a -wal beside it; put a backup in place of a database "
        "with restore)",
    )
    b.set_defaults(func=_backup)
    r = csub.add_parser(
        "restore",
        help="replace a stopped coordinator's database with a backup",
        description=(
            "Replace the database with a backup `plume coordinator backup` (or sqlite3's "
            ".backup) wrote. Refused while `serve` serves --db (stop it first), for a backup "
            "that is not a sound Plume database or was written by a newer Plume, and for a "
            "--db that exists and is not a Plume database or has other hard links (--force "
            "replaces it anyway). The "
            "database's -wal file, which a killed coordinator leaves, is folded in first and "
            "then overwritten, never replayed onto the restored pages; the database is left "
            "one file, as backup writes it. The backup is only read, nothing is created "
            "beside it; one with a non-empty -wal or -journal beside it, or that serve "
            "serves, is refused. So is a backup with fewer released rounds or a smaller "
            "epsilon than --db for any DP-accounted task (--allow-privacy-rollback restores "
            "it anyway). Everything stored "
            "after the backup is lost (docs/operations.md, Persistence and recovery). Prints "
            "as JSON what it wrote (path: the file, symlinks followed) and what it replaced "
            "(replaced: its size with its -wal, and each task's state, model version and "
            "closed rounds; null when --db did not exist), and the database's new incarnation "
            "(the identity devices know it by: the restored database hands out again the round "
            "and task ids given since the backup, and devices set aside what they keep under "
            "those ids)."
        ),
        epilog=(
            "example:\n  plume coordinator restore --db /var/lib/plume/plume.db "
            "--from /backups/plume-2026-11-29.db\n"
        ),
    )
    r.add_argument(
        "--db",
        default="plume.db",
        metavar="PATH",
        help="serve's --db, replaced (default: plume.db in the current folder)",
    )
    r.add_argument(
        "--from", dest="source", required=True, metavar="FILE", help="the backup to restore"
    )
    r.add_argument(
        "--force",
        action="store_true",
        help="replace --db even if it is not a Plume database (another application's file, or "
        "one too damaged to read) or has other hard links (whose lock restore cannot see)",
    )
    r.add_argument(
        "--allow-privacy-rollback",
        action="store_true",
        help="restore even if --db has a DP-accounted task with more released rounds or a "
        "larger epsilon than the backup (or accounting restore cannot read). What it costs: "
        "the restored task counts from the backup's figures, although the rounds released "
        "since reached devices, so its epsilon under-reports them and the rounds it releases "
        "again can overspend its budget (docs/privacy.md); the figures rolled back are printed",
    )
    r.set_defaults(func=_restore)


class _Given(argparse._StoreAction):
    """argparse's `store`, also noting in `namespace._given` that the option was given."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        super().__call__(parser, namespace, values, option_string)
        namespace._given = getattr(namespace, "_given", frozenset()) | {self.dest}


# serve options naming a file: relative in a --config file, relative to the file's folder.
_CONFIG_PATHS = ("db", "tls_cert", "tls_key")

# The types of serve's integer options (port, register-burst, keep-frames,
# snapshots-per-version, upload-buffer-mb): a --config file gives them as TOML integers.
_INTEGER_TYPES: tuple[Any, ...] = (int, _port, _rounds_to_keep, _snapshot_cap, _upload_buffer_mb)


def _not_a_toml_integer(key: str, value: float) -> str:
    """Why a float given for an integer key is refused. TOML reads `1e3` and `1000.0` as floats
    (1000.0), which was refused as "expected a whole number, got '1000.0'": whole, it is, but
    a float; say what to write instead."""
    if value.is_integer() and abs(value) <= 2**53:
        return (
            f"must be a TOML integer, written in digits ({key} = {int(value)}); a decimal point "
            "or an exponent (1e3) makes a TOML float"
        )
    return "must be a TOML integer, written in digits; a float is not one"


def _apply_config(args: argparse.Namespace) -> str | None:
    """Set the serve options the command line left out from the `--config` TOML file (keys:
    the flags without their dashes, `_` or `-` alike), each value checked as its flag checks
    it; a relative path in it is relative to the file's folder. What is wrong with the
    file, or None."""
    import tomllib

    where = f"--config {args.config}"
    path = _path(args.config)
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        return f"{where}: no such file"
    except IsADirectoryError:
        return f"{where}: is a folder; give the TOML file"
    except OSError as exc:
        return f"{where}: cannot read it ({exc.strerror or exc})"
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return f"{where}: it is not TOML ({exc})"
    parser: argparse.ArgumentParser = args._serve_parser
    actions = {
        option[2:]: action
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and action.dest not in ("help", "config")
    }
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}  # flag name -> the key that gave it
    origin: dict[str, str] = {}  # dest -> "--config FILE: key = value", for later checks
    for key, value in doc.items():
        if isinstance(value, dict):
            return f"{where}: [{key}] is a table; write the keys at the top of the file"
        name = key.replace("_", "-")
        action = actions.get(name)
        if action is None:
            close = difflib.get_close_matches(name, list(actions), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return (
                f"{where}: unknown key {key!r}{hint}; its keys are serve's flags without their "
                f"dashes: {', '.join(actions)}"
            )
        if name in spelled:  # admin_token and admin-token: which one was meant?
            return f"{where}: {name}: given twice ({spelled[name]} and {key}); keep one"
        spelled[name] = key
        shown = str(value).lower() if isinstance(value, bool) else repr(value)
        # "key = value" in the lines below; the admin token is a secret, so a line about a
        # string given for it names its key alone (as the flag's line names the flag): the
        # line goes to the journal.
        said = key if action.dest == "admin_token" else f"{key} = {shown}"
        if action.type in (None, str) and not isinstance(value, str):
            # host = 0 would be "0" (every interface), admin-token = 1_000 "1000". The token's
            # value is not shown even so: a number left unquoted is still the user's secret.
            return f"{where}: {said}: give a string (in quotes)"
        if action.type is _on_off and isinstance(value, bool):
            value = "on" if value else "off"  # access-log = false
        elif isinstance(value, bool) or not isinstance(value, str | int | float):
            return f"{where}: {said}: give a string or a number"
        elif isinstance(value, float) and action.type in _INTEGER_TYPES:
            return f"{where}: {said}: {_not_a_toml_integer(key, value)}"
        try:
            converted = action.type(str(value)) if callable(action.type) else str(value)
        except argparse.ArgumentTypeError as exc:
            return f"{where}: {said}: {exc}"
        except (TypeError, ValueError):
            kind = getattr(action.type, "__name__", "value")
            return f"{where}: {said}: expected a{'n' if kind == 'int' else ''} {kind}"
        if action.choices is not None and converted not in action.choices:
            return f"{where}: {said}: choose one of {', '.join(action.choices)}"
        if action.dest in _CONFIG_PATHS:
            converted = str(_path(str(converted)))  # ~ is the home folder, as in a shell
            if not Path(converted).is_absolute():
                # As the file says, wherever serve starts (systemd starts it in /).
                converted = str(path.parent / converted)
        values[action.dest] = converted
        origin[action.dest] = f"{where}: {said}"
    given: frozenset[str] = getattr(args, "_given", frozenset())
    for dest, converted in values.items():
        if dest not in given:  # the command line wins
            setattr(args, dest, converted)
    # `_serve_usage_error` names the file and key of a value that came from it.
    args._from_file = {dest: text for dest, text in origin.items() if dest not in given}
    mode = path.stat().st_mode
    if "admin_token" in values and mode & stat.S_IROTH:  # a group may be meant (root:plume)
        print(
            f"plume coordinator serve: note: {where} holds the admin token and other users "
            f"may read it (mode {mode & 0o7777:04o}); chmod o-r {args.config}",
            file=sys.stderr,
        )
    return None


def _token_problem(args: argparse.Namespace) -> str | None:
    """ "--admin-token (or PLUME_ADMIN_TOKEN) must be ..." when the token cannot be sent in a
    header as given (`admin_token_problem`), else None."""
    from .service.auth import admin_token_problem

    problem = admin_token_problem(args.admin_token)
    return None if problem is None else f"{_TOKEN_FLAGS} {problem}"


_TOKEN_FLAGS = "--admin-token (or PLUME_ADMIN_TOKEN)"


_MAX_SHUTDOWN_GRACE_S = 3600.0  # serve --shutdown-grace: a stop waits at most an hour
# serve --head-timeout, --body-timeout and --send-timeout: a day at most (0 is no limit);
# rounds.py MAX_BODY_TIMEOUT_S, not imported (the flags are checked before the service loads)
_MAX_CONNECTION_TIMEOUT_S = 86_400.0


def _serve_usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the serve flags (checked before the database is opened), or None."""
    # A value from the --config file is named by its file and key, as the file's other
    # mistakes are (`_apply_config`); one from the command line by its flag.
    from_file: dict[str, str] = getattr(args, "_from_file", {})

    def bad(dest: str, flag_text: str, reason: str) -> str:
        return f"{from_file[dest]}: {reason}" if dest in from_file else flag_text

    if (args.tls_cert is None) != (args.tls_key is None):
        # Named by the one that was set: from the file, by its key there (before, the file's
        # value got the flags' line, naming neither the file nor the key).
        have, lack = ("tls_cert", "tls_key") if args.tls_key is None else ("tls_key", "tls_cert")
        return bad(
            have,
            "--tls-cert and --tls-key go together",
            f"needs {lack.replace('_', '-')} too (in the file, or --{lack.replace('_', '-')}): "
            "the certificate and its private key go together",
        )
    for dest, path in (("tls_cert", args.tls_cert), ("tls_key", args.tls_key)):
        flag = "--" + dest.replace("_", "-")
        # A path from the file is shown as written there; the one looked at is added.
        at = f" ({path})" if dest in from_file else ""
        if path is not None and not Path(path).is_file():
            # A folder or a device is said so: "no such file" named one `ls` shows.
            why = _not_a_file(Path(path))
            return bad(dest, f"{flag} {path}: {why}", f"{why}{at}")
        if path is not None and not os.access(path, os.R_OK):
            # Else ssl's "[Errno 13] Permission denied", naming no file (a certbot
            # privkey.pem is root's alone; serve runs as a service user).
            st = Path(path).stat()
            why = (
                f"this user (uid {os.geteuid()}) cannot read it{at} (owned by uid "
                f"{st.st_uid}, mode {st.st_mode & 0o7777:04o}); give this user read access "
                "(e.g. a group that may read it) or a copy it may read"
            )
            return bad(dest, f"{flag} {path}: {why}", why)
    if (problem := _host_error(args.host)) is not None:
        return bad("host", problem, problem.removeprefix(f"--host {args.host!r} "))
    if (problem := _token_problem(args)) is not None:
        return bad("admin_token", problem, problem.removeprefix(_TOKEN_FLAGS + " "))
    rate, burst = args.register_rate, args.register_burst
    # Each named alone, with its value (before, either mistake got one line naming both
    # flags and neither value: "--register-rate must be >= 0 and --register-burst >= 1").
    if not 0 <= rate < float("inf"):
        why = "must be a number >= 0 and finite (0: unlimited)"
        return bad("register_rate", f"--register-rate {why}, got {rate}", why)
    if burst < 1:
        return bad("register_burst", f"--register-burst must be >= 1, got {burst}", "must be >= 1")
    # The bounds ServiceConfig holds (a wait is divided by each rate), named by their flags.
    if 0 < rate < 1e-6 or burst > 1_000_000:
        if 0 < rate < 1e-6:
            why = "must be 0 (unlimited) or at least 1e-06 per second"
            return bad("register_rate", f"--register-rate {why}, got {rate}", why)
        return bad(
            "register_burst",
            f"--register-burst at most 1,000,000 is taken, got {burst}",
            "must be at most 1,000,000",
        )
    if args.max_checkin_rate < 1e-3:
        return bad(
            "max_checkin_rate",
            f"--max-checkin-rate must be at least 0.001 per second, got {args.max_checkin_rate}",
            "must be at least 0.001 per second",
        )
    if not 0 <= args.body_timeout < float("inf"):
        why = "must be a number of seconds >= 0 (0: no limit)"
        return bad("body_timeout", f"--body-timeout {why}, got {args.body_timeout}", why)
    # The lower bounds ServiceConfig holds (rounds.py MIN_BODY_TIMEOUT_S, MIN_SIGNATURE_WINDOW_S,
    # MIN_POOL_TTL_S; not imported: serve's flags are checked before the service loads).
    if 0 < args.body_timeout < 1:
        why = "must be 0 (no limit) or at least 1 second: a request's whole body must arrive in it"
        return bad("body_timeout", f"--body-timeout {why}, got {args.body_timeout}", why)
    if not 0 <= args.head_timeout < float("inf") or 0 < args.head_timeout < 1:
        why = "must be 0 (no limit) or at least 1 second: a request's whole head must arrive in it"
        return bad("head_timeout", f"--head-timeout {why}, got {args.head_timeout}", why)
    if not 0 <= args.send_timeout < float("inf") or 0 < args.send_timeout < 1:
        why = "must be 0 (no limit) or at least 1 second: a client reads its answer within it"
        return bad("send_timeout", f"--send-timeout {why}, got {args.send_timeout}", why)
    # The upper bound the three connection timeouts share (rounds.py MAX_BODY_TIMEOUT_S, for
    # the body's). 1e300 was taken: asyncio's timers take it, and it meant no limit, but a body
    # timeout that long also set the pace an upload keeps its room in --upload-buffer-mb by,
    # so a sender that sent one byte held its declared length for good (0, no limit, keeps the
    # default 120 s pace).
    for dest in ("body_timeout", "head_timeout", "send_timeout"):
        if (value := getattr(args, dest)) > _MAX_CONNECTION_TIMEOUT_S:
            flag = "--" + dest.replace("_", "-")
            why = f"must be at most {_MAX_CONNECTION_TIMEOUT_S:g} seconds (a day); 0 turns it off"
            return bad(dest, f"{flag} {why}, got {value}", why)
    if not 0 <= args.shutdown_grace <= _MAX_SHUTDOWN_GRACE_S:
        # Past an hour (1e12 passed as finite) a stop waited on a stalled upload for as long.
        why = (
            "must be a number of seconds in [0, 3600] (0: requests in flight are answered "
            "503 at once)"
        )
        return bad("shutdown_grace", f"--shutdown-grace {why}, got {args.shutdown_grace}", why)
    for dest, value in (("signature_window", args.signature_window), ("poll", args.poll)):
        if not (math.isfinite(value) and value > 0):
            flag = "--" + dest.replace("_", "-")
            return bad(
                dest,
                f"{flag} must be a positive number of seconds, got {value}",
                "must be a positive number of seconds",
            )
    if args.signature_window > 86_400:
        return bad(
            "signature_window",
            f"--signature-window must be at most 86400 seconds (a day), got "
            f"{args.signature_window}",
            "must be at most 86400 seconds (a day)",
        )
    if args.signature_window < 1:
        why = (
            "must be at least 1 second: a signed request is checked once its body has arrived, "
            "so the window must cover the device's clock skew and the request's transfer time"
        )
        return bad(
            "signature_window", f"--signature-window {why}, got {args.signature_window}", why
        )
    if args.pool_ttl < 1:
        why = (
            "must be at least 1 second: a waiting device leaves the selection pool unless it "
            "checks in again within it, which takes it the poll interval and a round trip"
        )
        return bad("pool_ttl", f"--pool-ttl {why}, got {args.pool_ttl}", why)
    if args.pool_ttl <= args.poll:
        # Named by whichever of the two came from the file (before, a poll interval from the
        # file got the flags' line, naming neither the file nor its key).
        why = (
            "waiting devices are told to check in again after the poll interval, so every one "
            "would leave the selection pool before it came back"
        )
        if "pool_ttl" in from_file:
            poll = (
                from_file["poll"].removeprefix(f"--config {args.config}: ") + " in the same file"
                if "poll" in from_file
                else f"--poll {args.poll:g}"  # 0.25 s, the default, is below pool-ttl's 1 s
            )
            return bad(
                "pool_ttl",
                "",
                f"must be more than the poll interval ({args.poll:g} s) set by {poll}: {why}",
            )
        if "poll" in from_file:
            default = "" if "pool_ttl" in getattr(args, "_given", frozenset()) else ", its default"
            return bad(
                "poll", "", f"must be less than --pool-ttl ({args.pool_ttl:g} s{default}): {why}"
            )
        return f"--pool-ttl {args.pool_ttl:g} must be more than --poll ({args.poll:g} s): {why}"
    at = f" ({args.db})" if "db" in from_file else ""
    if _path(args.db).is_dir():
        return bad(
            "db",
            _folder_given("--db", args.db, "the database file's path", "plume.db"),
            f"is a folder{at}; give the database file's path",
        )
    folder = _path(args.db).resolve().parent
    if not folder.is_dir():
        return bad(
            "db",
            f"the folder of --db {args.db} does not exist; create it or pick another path",
            f"its folder does not exist{at}; create it or pick another path",
        )
    return None


def _tls_error(
    cert: str,
    key: str,
    password: str | None = None,
    *,
    names: tuple[str, str] | None = None,
) -> str | None:
    """Why --tls-cert/--tls-key do not load as a certificate and its key, naming the file at
    fault, or None (they load). An encrypted key is not asked for its passphrase here: without
    `password` it is said to be encrypted, with one that does not decrypt it, a wrong
    passphrase. `names`: how the certificate and the key are named (`_tls_names`; default
    `--tls-cert CERT` and `--tls-key KEY`)."""
    import ssl

    cert_name, key_name = names or (f"--tls-cert {cert}", f"--tls-key {key}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    asked: list[bool] = []

    def ask() -> str:  # called only for an encrypted key; uvicorn would prompt for it
        asked.append(True)
        return password or ""

    try:
        context.load_cert_chain(cert, key, password=ask)
    except ssl.SSLError as exc:
        if asked and password is None:
            return (
                f"{key_name} is encrypted (it asks for a passphrase); give serve an "
                f"unencrypted key (e.g. `openssl pkey -in {key} -out KEY`, readable by this "
                "user alone)"
            )
        if exc.reason == "KEY_VALUES_MISMATCH":
            return f"{key_name} is not the private key of the certificate in {cert_name}"
        if asked:
            return (
                f"{key_name} is encrypted and the passphrase typed does not decrypt it: wrong "
                "passphrase"
            )
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
        except ssl.SSLError:
            return f"{cert_name} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        return (
            f"{key_name} holds no PEM private key (-----BEGIN PRIVATE KEY-----), or "
            f"{cert_name} does not begin with its certificate ({exc})"
        )
    return None


def _tls_names(args: argparse.Namespace) -> tuple[str, str]:
    """How serve's TLS errors name the certificate and the key: by flag (`--tls-cert CERT`), or,
    for a value from the --config file, by its key there and the path looked at
    (`tls-cert = 'cert.pem' in --config FILE (/etc/plume/cert.pem)`), as the file's other
    mistakes are named."""
    from_file: dict[str, str] = getattr(args, "_from_file", {})

    def name(dest: str) -> str:
        path = getattr(args, dest)
        if dest in from_file:
            setting = from_file[dest].removeprefix(f"--config {args.config}: ")
            return f"{setting} in --config {args.config} ({path})"
        return f"--{dest.replace('_', '-')} {path}"

    return name("tls_cert"), name("tls_key")


def _tls_load_head(args: argparse.Namespace) -> str:
    """The start of a TLS load error: the flags, or the --config file's keys."""
    from_file: dict[str, str] = getattr(args, "_from_file", {})
    if "tls_cert" in from_file or "tls_key" in from_file:
        return "cannot load the TLS certificate and key"
    return "cannot load --tls-cert/--tls-key"


def _tls_dates_error(cert: str, cert_name: str, now: Any = None) -> str | None:
    """Why the first (leaf) certificate in `cert` cannot serve now, outside its validity dates
    (every client's handshake would fail), or None. A file `cryptography` cannot read is left
    to the load (`_tls_error`), which names what is wrong with it."""
    import datetime as dt

    from cryptography import x509

    try:
        leaf = x509.load_pem_x509_certificates(Path(cert).read_bytes())[0]
    except (ValueError, OSError, IndexError):
        return None
    now = now or dt.datetime.now(dt.UTC)
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc

    def shown(when: dt.datetime) -> str:
        return when.strftime("%Y-%m-%d %H:%M:%S UTC")

    dates = f"valid from {shown(start)} to {shown(end)}; this machine's clock says {shown(now)}"
    if now > end:
        return (
            f"{cert_name}: the certificate has expired ({dates}), so every client would refuse "
            "it; renew it (or fix the clock if it is wrong)"
        )
    if now < start:
        return (
            f"{cert_name}: the certificate is not valid yet ({dates}), so every client would "
            "refuse it; check this machine's clock, or use a certificate valid now"
        )
    return None


class _NoPassphrase(Exception):
    """An encrypted --tls-key and no terminal to ask its passphrase at (or none typed)."""


class _Passphrase:
    """serve's --tls-key passphrase for `coordinator.service.serve`: called only when the key
    is encrypted, it asks the terminal once (getpass) and keeps the answer, which serve then
    also gives uvicorn. With stdin not a terminal (systemd, a container, a pipe) it asks
    nothing and raises `_NoPassphrase`."""

    def __init__(self, key_name: str) -> None:
        self.key_name = key_name
        self.value: str | None = None

    def __call__(self) -> str:
        import getpass

        if self.value is None:
            if not sys.stdin.isatty():
                raise _NoPassphrase
            try:
                self.value = getpass.getpass(f"passphrase of {self.key_name}: ")
            except EOFError:
                raise _NoPassphrase from None
        return self.value


def _host_error(host: str) -> str | None:
    """Why --host is no IP address, when it is written as one (digits and dots, or with a
    colon), or None. A name is left to the resolver at the start: one that does not resolve
    then is status 1, retried, as DNS may come up after the coordinator."""
    import socket

    if not host or any(c.isspace() for c in host):
        # No address or name has a space; "" failed at the bind as a name that did not
        # resolve, status 1, which a service manager retries for ever (s53e).
        what = "is empty" if not host else "has white space in it"
        return (
            f"--host {host!r} {what}: give an address (127.0.0.1, or 0.0.0.0 for every "
            "interface) or a host name"
        )
    bare = host.split("%", 1)[0]  # an IPv6 scope, fe80::1%eth0
    if re.fullmatch(r"[0-9.]+", bare):
        try:
            socket.inet_aton(bare)  # 127.1 too, as the resolver takes it
        except OSError:
            return (
                f"--host {host!r} is not an IPv4 address (four numbers 0-255, e.g. 127.0.0.1, "
                "or 0.0.0.0 for every interface)"
            )
    elif ":" in bare:
        try:
            socket.inet_pton(socket.AF_INET6, bare)
        except OSError:
            return (
                f"--host {host!r} is not an IPv6 address (e.g. ::1, or :: for every interface; "
                "no brackets)"
            )
    return None


def _no_access(path: Path | str) -> str | None:
    """ "this user (uid N) cannot read and write PATH (owned by uid M, mode 0600)" when this
    user may not open the file at `path` to read and write it; None when it may, or there is
    no such file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if os.access(path, os.R_OK | os.W_OK):
        return None
    return (
        f"this user (uid {os.geteuid()}) cannot read and write {path} (owned by uid "
        f"{st.st_uid}, mode {st.st_mode & 0o7777:04o})"
    )


def _db_access_error(db_arg: str, command: str = "serve") -> str | None:
    """Why this user cannot use the database's files (permissions), or None. Checked before
    the store opens them (serve) or restore takes their lock: SQLite says only "unable to
    open database file", and a lock file another user left was taken for a folder that is
    not writable ("make its folder writable"). `command`: the one to run as their owner."""
    from .service.store import lock_path

    db = _path(db_arg)
    user = f"this user (uid {os.geteuid()})"
    fix = (
        f"run {command} as the user that owns the database's files, or give them to this one "
        "(chown)"
    )
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(lock_path(db))):
        if (why := _no_access(path)) is not None:
            return f"cannot use the database {db_arg}: {why}; {fix}"
    folder = db.resolve().parent
    if not db.exists() and not os.access(folder, os.W_OK | os.X_OK):
        st = folder.stat()
        return (
            f"cannot use the database {db_arg}: {user} cannot create files in its folder "
            f"{folder} (owned by uid {st.st_uid}, mode {st.st_mode & 0o7777:04o}); make it "
            "writable by this user, or pick a --db in a folder it may write"
        )
    return None


def _listen_sentence(exc: Any, from_file: dict[str, str] | None = None) -> str:
    """The CLI's sentence for a `ListenError`: what to change, by the bind's error number.
    `from_file`: `args._from_file`; a host or port from the --config file is named by its
    file and key, as the checks before the start name it (before, a file's `host` or `port`
    was called `--host`/`--port`, which the command line did not have; s53e)."""
    host, port = exc.host, exc.port
    from_file = from_file or {}

    def named(dest: str, flag_text: str, reason: str) -> str:
        return f"{from_file[dest]}: {reason}" if dest in from_file else flag_text

    if exc.errno is None or exc.errno == errno.EADDRNOTAVAIL:
        why = "" if exc.errno is not None else f" ({exc.code})"
        shown = repr(host) if exc.errno is None else host
        return named(
            "host",
            f"--host {shown} is not an address of this machine{why}",
            f"is not an address of this machine{why}",
        )
    if exc.errno == errno.EADDRINUSE:
        return named(
            "port",
            f"port {port} on {host} is already in use (another coordinator?); stop it or pick "
            "another --port",
            f"port {port} on {host} is already in use (another coordinator?); stop it or pick "
            "another port",
        )
    if exc.errno == errno.EACCES:
        return named(
            "port",
            f"no permission to listen on port {port}; use a port above 1023",
            f"no permission to listen on port {port}; use a port above 1023",
        )
    return str(exc.code)


def _serve(args: argparse.Namespace) -> int:
    import ssl

    from .service import serve
    from .service.server import ListenError
    from .service.store import StoreError

    prog = "plume coordinator serve"
    problem = _apply_config(args) if args.config is not None else None
    problem = problem or _serve_usage_error(args)
    if problem is not None:
        print_error(prog, problem)
        return 2
    try:
        config = _service_config(args)
    except ValueError as exc:  # what ServiceConfig refuses and the checks above do not name
        print_error(prog, str(exc))
        return 2
    cert_name, key_name = _tls_names(args) if args.tls_cert else ("", "")
    if args.tls_cert and (problem := _tls_dates_error(args.tls_cert, cert_name)) is not None:
        print_error(prog, problem)
        return 2
    if not args.admin_token:
        # Not an error (devices can still be served), but the next step of the README,
        # create-task, would be refused: say so now rather than with a 403 later.
        print(f"{prog}: note: {_no_admin_token(args)}", file=sys.stderr)
    elif (note := _file_token_over_env(args)) is not None:
        print(f"{prog}: note: {note}", file=sys.stderr)
    if (note := _idle_burst(args)) is not None:
        print(f"{prog}: note: {note}", file=sys.stderr)
    if (problem := _db_access_error(args.db)) is not None:
        print_error(prog, problem)
        return 1
    # A relative --db is relative to where serve starts: a coordinator started in another
    # folder gets a new, empty database (no tasks). serve logs "creating a new database at
    # PATH" once it can listen (a port in use creates none, so it says nothing).
    passphrase = _Passphrase(key_name)  # asked only if --tls-key is encrypted
    try:
        # SIGTERM (systemd's stop) returns from serve normally, the database closed.
        serve(
            config,
            args.host,
            args.port,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_key_password=passphrase if args.tls_cert else None,
            log_level=args.log_level,
            access_log=args.access_log,
            head_timeout_s=args.head_timeout,
            send_timeout_s=args.send_timeout,
            shutdown_grace_s=args.shutdown_grace,
        )
    except ListenError as exc:  # found before the database was opened
        _fail(prog, _listen_sentence(exc, getattr(args, "_from_file", {})))
    except _NoPassphrase:  # raised by the passphrase's prompt, before the database was opened
        _fail(
            prog,
            f"{_tls_load_head(args)}: {key_name} is encrypted (it asks for a passphrase) and "
            "stdin is not a terminal to type it at; start serve at a terminal, or give it an "
            f"unencrypted key (e.g. `openssl pkey -in {args.tls_key} -out KEY`, readable by this "
            "user alone)",
            2,
        )
    except SystemExit as exc:  # uvicorn's exit when the app fails to start
        if exc.code in (0, None):
            return 0
        where = f"{args.host}:{args.port}"
        _fail(prog, f"the server on {where} failed to start (see the log lines above)")
    except StoreError as exc:  # already names the file and what to do
        _fail(prog, str(exc))
    except sqlite3.Error as exc:
        _fail(prog, f"cannot use the database --db {args.db}: {exc}")
    except OSError as exc:  # ssl.SSLError included: serve loads the TLS files first
        # Which file is at fault, said as a usage error (status 2: a service manager does not
        # retry it), rather than ssl's "[SSL] PEM lib", which names neither. An encrypted key
        # is diagnosed with the passphrase typed (a wrong one is said to be), not asked again.
        if args.tls_cert and (
            problem := _tls_error(
                args.tls_cert,
                args.tls_key,
                passphrase.value,
                names=(cert_name, key_name),
            )
        ):
            _fail(prog, f"{_tls_load_head(args)}: {problem}", 2)
        if not isinstance(exc, ssl.SSLError):
            raise
        _fail(prog, f"{_tls_load_head(args)} as a PEM certificate and key: {exc}")
    return 0


def _no_admin_token(args: argparse.Namespace) -> str:
    """serve's note when it runs without an admin token: where the empty value came from. An
    empty value in the --config file (or on the command line) overrides PLUME_ADMIN_TOKEN,
    as documented; the note said "no --admin-token (nor PLUME_ADMIN_TOKEN)" even with the
    variable set (s25/ops finding 10)."""
    off = "the admin API (create-task, status, pause, resume, stop, get-model) is off"
    env = bool(os.environ.get("PLUME_ADMIN_TOKEN"))
    overrides = ", which overrides PLUME_ADMIN_TOKEN" if env else ""
    from_file: dict[str, str] = getattr(args, "_from_file", {})
    if "admin_token" in from_file:
        return f"--config {args.config} sets admin-token to an empty value{overrides}: {off}"
    if "admin_token" in getattr(args, "_given", frozenset()):
        return f"--admin-token is empty{overrides}: {off}"
    if os.environ.get("PLUME_ADMIN_TOKEN") == "":  # `PLUME_ADMIN_TOKEN=` in an env file
        return f"PLUME_ADMIN_TOKEN is empty (and no --admin-token): {off}"
    return f"no --admin-token (nor PLUME_ADMIN_TOKEN): {off}"


def _file_token_over_env(args: argparse.Namespace) -> str | None:
    """serve's note when the --config file's admin-token is used while PLUME_ADMIN_TOKEN holds
    another one: the file wins, as documented, so a token changed in the variable alone did
    nothing, silently, and the admin commands run with the variable got 403 (s53e). Neither
    token is shown."""
    env = os.environ.get("PLUME_ADMIN_TOKEN")
    if "admin_token" not in getattr(args, "_from_file", {}) or not env:
        return None
    if env == args.admin_token:
        return None
    return (
        f"--config {args.config} sets admin-token, which overrides PLUME_ADMIN_TOKEN (set to "
        "another token): the admin API takes the file's token, so admin commands run with the "
        "variable get 403 bad_admin_token; change the token in the file, or remove it there"
    )


def _idle_burst(args: argparse.Namespace) -> str | None:
    """serve's note for a --register-burst set while --register-rate is 0 (unlimited): the
    burst is the bucket the rate refills, so alone it limits nothing (it was taken silently)."""
    from_file: dict[str, str] = getattr(args, "_from_file", {})
    given = getattr(args, "_given", frozenset()) | from_file.keys()
    if args.register_rate != 0 or "register_burst" not in given:
        return None
    where = from_file.get("register_burst", f"--register-burst {args.register_burst}")
    return (
        f"{where} limits nothing without a --register-rate (0, the default, is unlimited); "
        "set both to limit registrations per address (docs/operations.md)"
    )


def _service_config(args: argparse.Namespace) -> Any:
    from .service import ServiceConfig

    return ServiceConfig(
        db_path=str(_path(args.db)),  # "~/plume.db" in a --config file too
        admin_token=args.admin_token,
        signature_window_s=args.signature_window,
        poll_s=args.poll,
        register_rate_per_s=args.register_rate,
        register_burst=args.register_burst,
        body_timeout_s=args.body_timeout,
        keep_frames_rounds=args.keep_frames,
        snapshots_per_version=args.snapshots_per_version,
        upload_buffer_bytes=args.upload_buffer_mb << 20,
        pool_ttl_s=args.pool_ttl,
        max_checkin_rate=args.max_checkin_rate,
    )


def _url_problem(url: str) -> str | None:
    """What httpx would refuse in `url` (a port that is not a number, an unclosed "[" of an
    IPv6 address, a control character; httpx's `InvalidURL`, not one of its `HTTPError`s, was a
    traceback in every admin command), or a URL with no host; None when it is usable."""
    import httpx

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        hint = (
            " (an IPv6 address goes in brackets, both of them: http://[::1]:8080)"
            if "[" in url and "]" not in url
            else ""
        )
        return f"{exc or type(exc).__name__}{hint}"
    if not parsed.host:
        return "it names no host (e.g. http://127.0.0.1:8080)"
    return None


# httpx sends a URL's user and password as `Authorization: Basic`, in place of the admin
# token's `Authorization: Bearer`: every admin request was refused 401, said as a wrong token.
_USERINFO_PROBLEM = (
    "it has a user name or password before its host (USER:PASSWORD@), which httpx would send "
    "as Authorization: Basic in place of the admin token (Authorization: Bearer), so the "
    "coordinator would refuse every admin request; leave them out"
)


def _admin_url_problem(url: str, flag: str = "--url") -> str | None:
    """What is wrong with a coordinator's base URL given as `flag` (`_url_problem`'s, and what
    httpx takes and then mishandles: a port past 65535 or 0, which fails only when connecting,
    a user or password, sent in place of the admin token, and a query or fragment, which the
    base URL's path silently lost: `http://h:1?x=1` sent every request to
    `/?x=1/v1/admin/...`), or None."""
    import httpx

    if (problem := _url_problem(url)) is not None:
        return problem
    port = httpx.URL(url).port
    if port is not None and not 1 <= port <= 65535:
        return f"its port {port} is not a TCP port (1-65535)"
    if httpx.URL(url).userinfo:
        return _USERINFO_PROBLEM
    if "?" in url or "#" in url:
        return (
            f"it has a {'query' if '?' in url else 'fragment'} ({'?' if '?' in url else '#'}...); "
            f"{flag} is the coordinator's base URL (scheme, host and port, plus a path only if "
            "a proxy serves it under one)"
        )
    return None


def checked_url(given: str, flag: str = "--url") -> str:
    """A coordinator's base URL given as `flag` (the admin commands' --url, `plume sim
    --coordinator`), checked before any request: `given` with its scheme lower-cased (a
    scheme is case-insensitive, RFC 3986: `HTTP://` was refused), or `ValueError` with the
    one line that says what is wrong: not http:// or https://, what httpx cannot parse, no
    host, a port outside 1-65535, a user or password, a query or a fragment
    (`_admin_url_problem`). Every command
    that takes a coordinator's URL checks it here, so their errors read the same."""
    scheme, sep, rest = given.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise ValueError(f"{flag} must start with http:// or https://, got {given!r}")
    url = f"{scheme.lower()}://{rest}"
    if (problem := _admin_url_problem(url, flag)) is not None:
        raise ValueError(f"{flag} {_password_hidden(given)!r} is not a valid URL: {problem}")
    return url


def _password_hidden(given: str) -> str:
    """`given` with the password of its `user:password@` replaced by `***` (an error line
    names the URL, and a terminal or a log keeps it)."""
    scheme, sep, rest = given.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return given
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{host}{slash}{path}"


def _admin(args: argparse.Namespace) -> Any:
    from .service import AdminClient

    prog = getattr(args, "_prog", "plume coordinator")

    if not args.admin_token:
        _fail(prog, "an admin token is required (--admin-token or PLUME_ADMIN_TOKEN)")
    if (problem := _token_problem(args)) is not None:
        _fail(prog, problem)
    given = args.url
    try:
        # Lower-cased scheme, so the error texts' http:// and https:// tests read it too.
        args.url = checked_url(given)
    except ValueError as exc:
        _fail(prog, str(exc))
    if args.cacert is not None and args.url.startswith("http://"):
        # Read, checked and then unused: nothing is verified over plain HTTP.
        _fail(
            prog,
            f"--cacert verifies an HTTPS coordinator's certificate; it needs an https:// --url, "
            f"got {given!r} (drop --cacert, or use the https:// URL `serve --tls-cert` serves)",
            2,
        )
    import ssl

    from protocol.tls import tls_verify

    verify: bool | ssl.SSLContext = True
    if args.cacert is not None:
        try:
            # The context itself, not the path (httpx 0.28 deprecates `verify=<str>`), made as
            # the clients make theirs: a folder of hashed certificates works, and an empty,
            # missing, unreadable or certificate-less path is one line naming the flag.
            verify = tls_verify(args.cacert, name="--cacert")
        except ValueError as exc:
            hint = (
                " (the file `serve --tls-cert` was given, not its key)"
                if "no PEM certificate" in str(exc)
                else ""
            )
            _fail(prog, f"{exc}{hint}")
    return AdminClient(args.url, args.admin_token, verify=verify, timeout=args.timeout)


# OpenSSL's verify messages (`verify_message`), for an error whose cause was not kept, by the
# code each stands for (`protocol.tls`'s sets).
_VERIFY_MESSAGES = (
    ("Hostname mismatch", 62),
    ("IP address mismatch", 64),
    ("certificate has expired", 10),
    ("certificate is not yet valid", 9),
)


def _verify_code(exc: BaseException, what: str) -> int | None:
    """OpenSSL's verify code of a failed certificate check: the `ssl.SSLCertVerificationError`
    that httpx's error was raised from (`protocol.tls.certificate_failure`), else read from
    the error's text."""
    from protocol.tls import certificate_failure

    if (cert := certificate_failure(exc)) is not None:
        return int(cert.verify_code)
    return next((code for message, code in _VERIFY_MESSAGES if message in what), None)


def _timeout_text(exc: Exception, url: str, timeout: float) -> str:
    """The line for an admin call whose step (connecting, sending, a read of the answer) the
    coordinator at `url` left waiting past --timeout `timeout` (httpx's `TimeoutException`):
    before --timeout, the command waited 60 s without a word, then said only "timed out"."""
    import httpx

    within = f"within --timeout {timeout:g} s"
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return (
            f"no connection to the coordinator at {url} {within}: is its host up, `plume "
            "coordinator serve` listening on that port, and nothing (a firewall) dropping the "
            "packets on the way? Check --url, or give a longer --timeout"
        )
    if isinstance(exc, httpx.WriteTimeout):
        return (
            f"the coordinator at {url} did not take the request {within}: it is stalled or "
            "overloaded, or the network is; check its log, or give a longer --timeout"
        )
    return (
        f"the coordinator at {url} did not answer {within}: it is stalled or overloaded (or "
        "something else listens there and says nothing); check its log, or give a longer "
        "--timeout"
    )


def admin_error_text(
    exc: Exception, url: str, flag: str = "--url", timeout: float | None = None
) -> str:
    """A sentence for an admin call that failed: refused by the coordinator, or not sent.
    `timeout`: the command's --timeout, which a timed-out call's line names (None: the caller
    has no such flag, and the line is the unreachable one)."""
    import httpx

    from protocol.names import Reason

    if timeout is not None and isinstance(exc, httpx.TimeoutException):
        return _timeout_text(exc, url, timeout)
    if isinstance(exc, httpx.TransportError):
        what = str(exc) or type(exc).__name__
        if "CERTIFICATE_VERIFY_FAILED" in what:
            # The server is up and speaks TLS: the client refused its certificate. Why, by
            # OpenSSL's verify code: a name the certificate does not hold, its dates, or a CA
            # this client does not trust; a CA passed with --cacert mends only the last.
            from protocol.tls import CERT_HAS_EXPIRED, NAME_MISMATCH, OUT_OF_DATE

            code = _verify_code(exc, what)
            if code in NAME_MISMATCH:
                host = httpx.URL(url).host
                return (
                    f"the coordinator at {url} sent a certificate that does not name {host} "
                    f"({what}); use a URL whose host the certificate names (one of its "
                    f"subject alternative names) ({flag})"
                )
            if code in OUT_OF_DATE:
                when = "has expired" if code == CERT_HAS_EXPIRED else "is not valid yet"
                return (
                    f"the coordinator at {url} sent a certificate that {when} ({what}); check "
                    "the certificate's dates (`openssl x509 -noout -dates -in PEM`) and this "
                    "machine's clock, and renew the certificate `serve --tls-cert` was given"
                )
            trust = (
                "pass the CA that signed it with --cacert PEM (for a self-signed certificate, "
                "the certificate `serve --tls-cert` was given)"
                if flag == "--url"
                else "make this machine trust the CA that signed it (SSL_CERT_FILE=PEM)"
            )
            return (
                f"the coordinator at {url} sent a certificate this machine does not trust "
                f"({what}); {trust}"
            )
        if url.startswith("https://") and "[SSL" in what:
            return (
                f"the TLS handshake with {url} failed ({what}); is it serving plain HTTP? "
                f"Then use an http:// URL ({flag})"
            )
        if url.startswith("http://") and isinstance(exc, httpx.RemoteProtocolError):
            return (
                f"{url} closed the connection without an answer ({what}); is it serving HTTPS "
                f"(`serve --tls-cert`)? Then use an https:// URL ({flag})"
            )
        return (
            f"cannot reach the coordinator at {url} ({what}); is `plume coordinator serve` "
            f"running there? ({flag})"
        )
    if isinstance(exc, httpx.HTTPError):
        return f"request to {url} failed: {exc}"
    # AdminError: `method`, `path`, `status`, and `body` (the service's {"reason", "detail"}
    # JSON) or `problem` (an answer the client would not read: it says why).
    head = f"{getattr(exc, 'method', '?')} {getattr(exc, 'path', '?')}"
    status, body = str(getattr(exc, "status", "?")), str(getattr(exc, "body", ""))
    problem = str(getattr(exc, "problem", ""))
    if problem:
        return f"{url} answered {head} with {status} and {problem} ({flag})"
    try:
        doc = json.loads(body)
        reason, detail = str(doc["reason"]), str(doc["detail"])
    except (ValueError, KeyError, TypeError, RecursionError):
        # Not the service's error JSON: another server (or a proxy's page) answered.
        brief = " ".join(body.split())
        brief = brief if len(brief) <= 120 else brief[:117] + "..."
        return (
            f"{url} answered {head} with {status} and a body that is not the coordinator's "
            f"JSON ({brief or 'empty'}); is a Plume coordinator serving there? ({flag})"
        )
    if reason in (Reason.NOT_FOUND, Reason.METHOD_NOT_ALLOWED):
        # No route (a task, round or version the coordinator lacks has its own reason): the
        # URL's path is not where the admin API is, e.g. --url with a path behind no proxy.
        return (
            f"{url} answered {head} with {status} {reason}: no such route; {flag} is the "
            "coordinator's base URL (scheme, host and port, plus a path only if a proxy "
            "serves it under one)"
        )
    if reason == "bad_admin_token" and "disabled" in detail:
        return (
            f"the coordinator's admin API is off ({detail}); restart `plume coordinator serve` "
            "with --admin-token TOKEN (or PLUME_ADMIN_TOKEN) and pass the same token here"
        )
    if reason == "bad_admin_token" or status in ("401", "403"):
        return (
            f"the coordinator refused the admin token ({detail}; {status} {reason}); pass the "
            "token `plume coordinator serve` was started with (--admin-token or "
            "PLUME_ADMIN_TOKEN)"
        )
    return f"{detail} ({status} {reason}, {head})"


def _create_task(args: argparse.Namespace) -> int:
    import httpx

    from protocol.messages import CodecParams, TaskConfig, TensorShape, TrainingParams
    from sdk.flat import get_flat_params, spec_from_module

    from .service import AdminError
    from .service.rounds import creation_warnings, validate_task

    # Before any check: the plugins register the names --model may give.
    if not _import_plugins("plume coordinator create-task", args.plugin, args.model):
        return 2
    # A flag value refused here, before any request, is a usage mistake: status 2, as `plume
    # sim` gives the same mistake. A refusal by the coordinator (a 4xx) and one it cannot be
    # asked (unreachable) are status 1, as is a --model whose factory fails (the plugin's
    # code, not a flag's value).
    problem = _task_flag_error(args)
    if problem is None and args.initial is not None and _path(args.initial).is_dir():
        problem = _folder_given("--initial", args.initial, "the model file's path")
    if problem is not None:
        print_error("plume coordinator create-task", problem)
        return 2
    model = _build_task_model(args.model, args.seed)
    if isinstance(model, str):
        print_error("plume coordinator create-task", model)
        return 1
    try:
        spec = spec_from_module(model)
    except ValueError as exc:  # the model's parameters, not a flag
        print_error("plume coordinator create-task", f"--model {args.model}: {exc}")
        return 1
    try:
        config = TaskConfig(
            name=args.model if args.name is None else args.name,
            model_name=args.model,
            spec=[TensorShape(e.name, list(e.shape)) for e in spec.entries],
            rounds=args.rounds,
            clients_per_round=args.clients_per_round,
            over_selection=args.over_selection,
            deadline_s=args.deadline,
            min_reports=args.min_reports,
            selection_timeout_s=args.selection_timeout,
            codec=CodecParams(
                topk=args.topk,
                bits=args.bits,
                error_feedback=False if args.no_error_feedback else None,
            ),
            downlink=CodecParams(topk=args.downlink_topk, bits=args.downlink_bits),
            aggregator=args.aggregator,
            server_lr=args.server_lr,
            seed=args.seed,
            training=TrainingParams(args.local_epochs, args.batch_size, args.lr),
            secure=_secure_settings(args),
        )
        # The server's own checks, run here first: a bad value is named without a server.
        validate_task(config)
    except ValueError as exc:
        print_error("plume coordinator create-task", _with_flag(str(exc)))
        return 2
    if args.initial is None:
        params = get_flat_params(model)
    else:
        # The operator's own weights for the model: read and matched against its layout
        # before any request, so a file that does not fit leaves no task behind.
        loaded, notes = _initial_from_file(args.initial, model, spec)
        # The notes first, also before an error: how the names were read explains it.
        for note in notes:
            print(
                f"plume coordinator create-task: note: --initial {args.initial}: {note}",
                file=sys.stderr,
            )
        if isinstance(loaded, str):
            print_error("plume coordinator create-task", loaded)
            return 1
        params = loaded
    try:
        with _admin(args) as admin:
            task_id = admin.create_task(config, params)
            warned: list[str] | None = getattr(admin, "created_warnings", None)
    except ValueError as exc:
        print_error("plume coordinator create-task", _with_flag(str(exc)))
        return 1
    except AdminError as exc:
        text = _create_task_error(exc, args.url, args.timeout)
        print_error("plume coordinator create-task", text)
        return 1
    except httpx.HTTPError as exc:
        text = admin_error_text(exc, args.url, timeout=args.timeout)
        if isinstance(exc, httpx.ReadTimeout):
            # The request went whole: the coordinator may have made the task all the same.
            text += (
                "; the request was sent, so the task may have been created: `plume "
                "coordinator status` lists the tasks"
            )
        print_error("plume coordinator create-task", text)
        return 1
    created: dict[str, Any] = {"task_id": task_id, "model": args.model, "params": spec.size}
    if args.initial is not None:
        created["initial"] = args.initial
    print(json.dumps(created))
    # What the coordinator logs for this task (a dp delta above 1/(10 N), a dp seed=, an
    # epsilon on an unproven assumption, a robust rule behind over-selection, krum on top-k
    # uploads), said to the operator who made it: the `warnings` it
    # answered, or the same checks run here for a coordinator older than that field.
    for note in creation_warnings(config) if warned is None else warned:
        print(f"plume coordinator create-task: note: task {task_id}: {note}", file=sys.stderr)
    if config.secure is not None:
        stage_s = config.secure.get("stage_timeout_s", _STAGE_DEFAULTS["stage_timeout_s"])
        if config.deadline_s < 4 * stage_s:
            # Not an error (stages close on their last upload when nobody drops), but the
            # defaults (60 s, 30 s) are short of what operations.md says to size for.
            print(
                f"plume coordinator create-task: note: --deadline {config.deadline_s:g} s is "
                f"shorter than 4 stages x --stage-timeout {stage_s:g} s: a round whose devices "
                "drop out in two stages can reach its deadline unfinished and be abandoned; "
                "size --deadline as training time + 4 x --stage-timeout (docs/operations.md, "
                "Secure tasks)",
                file=sys.stderr,
            )
    return 0


def _initial_from_file(
    name: str, model: torch.nn.Module, spec: Any
) -> tuple[npt.NDArray[np.float32] | str, list[str]]:
    """create-task --initial NAME: (float32[d] in `spec`'s order, or the one line saying why
    the file is not an initial model for `model` (whose layout is `spec`); the notes to print,
    the way its names were read, also when a tensor then did not fit). Tensors of `model`'s
    state_dict that are not in the spec (buffers, frozen parameters) may be in the file; they
    are not sent."""
    what = f"--initial {name}"
    path = _path(name)
    if not path.is_file():  # a folder is refused before (`_create_task`), status 2
        return f"{what}: {_not_a_file(path)}", []
    not_sent = frozenset(model.state_dict()) - {e.name for e in spec.entries}
    try:
        return _read_model_file(path, spec, not_sent)
    except _NotTheModel as exc:
        return f"{what}: {exc}", exc.notes
    except ValueError as exc:
        return f"{what}: {exc}", []
    except _model_file_errors() as exc:
        if debug_enabled():  # the line is printed later, outside this handler
            traceback.print_exception(exc, file=sys.stderr)
        return f"cannot read {what}: {_first_line(exc)}", []


class _NotTheModel(ValueError):
    """A tensor of a model file that does not fit the task's model, with the notes on how the
    file's names were read (printed before the error)."""

    def __init__(self, message: str, notes: list[str]) -> None:
        super().__init__(message)
        self.notes = notes


def _model_file_errors() -> tuple[type[BaseException], ...]:
    """What reading a model file the operator names (.pt, .npz, a snapshot) raises for a file
    that is not one: a `cannot read` line, not a traceback (imported here: the CLI starts
    without them)."""
    import pickle
    import zipfile

    return (OSError, KeyError, RuntimeError, EOFError, zipfile.BadZipFile, pickle.PickleError)


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of `exc`'s message (torch's run to a dozen), or its type."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def _import_plugins(prog: str, specs: list[str] | None, model: str | None = None) -> bool:
    """Import the --plugin modules `specs` in order (create-task, get-model); False after
    printing the one error line naming the plugin that did not import. With `model` (the
    name create-task deploys): a warning line when a plugin replaced that zoo model's factory
    in `mobile_sim.models.MODELS`, naming the plugin that did."""
    if not specs:
        return True
    from mobile_sim import models
    from mobile_sim.backends._base import PluginError, import_plugins

    for spec in specs:
        # One at a time, to name the plugin that replaced the zoo's model.
        before = models.MODELS.get(model) if model is not None and model in _ZOO_MODELS else None
        try:
            import_plugins([spec])
        except PluginError as exc:
            print_error(prog, f"--plugin {exc.spec}: {exc.reason}")
            return False
        if model is not None and before is not None and models.MODELS.get(model) is not before:
            print(
                f"{prog}: warning: --plugin {spec} replaced the zoo's model {model!r}",
                file=sys.stderr,
            )
    return True


def _build_task_model(name: str, seed: int, what: str | None = None) -> torch.nn.Module | str:
    """Zoo or plugin model `name` built with `seed`, or the sentence (beginning with `what`,
    default `--model NAME`) saying why it was not: a plugin's factory may raise anything, or
    return something that is not a module."""
    import torch

    from mobile_sim.models import build_model

    from .cli import debug_enabled

    try:
        model = build_model(name, seed=seed)
    except Exception as exc:  # the factory is the plugin's code: any error is its
        if debug_enabled():
            raise
        text = str(exc).strip().splitlines()
        why = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
        return f"{what or f'--model {name}'}: building it raised {why}"
    if not isinstance(model, torch.nn.Module):
        return (
            f"{what or f'--model {name}'}: its factory returned {type(model).__name__}, "
            "not a torch.nn.Module"
        )
    return model


def _create_task_error(exc: AdminError, url: str, timeout: float | None = None) -> str:
    """The sentence for a create-task that failed; one that created its task but did not
    store the model names the task it left behind (`awaiting_model`, running no round).
    `timeout`: create-task's --timeout, named when the upload's answer did not come within it."""
    import httpx

    task_id = exc.task_id
    if task_id is None:
        return admin_error_text(exc, url, timeout=timeout)
    if exc.status == 0:
        got = exc.problem
        if timeout is not None and isinstance(exc.__cause__, httpx.TimeoutException):
            got = f"no answer from {url} within --timeout {timeout:g} s"
        return (
            f"task {task_id} was created but its initial model's upload got {got}; `plume "
            f"coordinator status --task {task_id}` shows whether it is active or still "
            "awaiting_model (then it runs no round)"
        )
    return (
        f"task {task_id} was created but its initial model was not stored: "
        f"{admin_error_text(exc, url, timeout=timeout)}; task {task_id} stays awaiting_model "
        "and runs no round (create-task again makes a new task)"
    )


def _task_flag_error(args: argparse.Namespace) -> str | None:
    """The first bad value among the flags whose library message would not name its flag
    (a codec's `topk`, which --topk and --downlink-topk both set; an aggregator spec)."""
    from mobile_sim.models import MODELS
    from protocol.messages import MAX_BATCH_SIZE, MAX_LOCAL_EPOCHS, CodecParams

    from .aggregators import build_aggregator

    if args.model not in MODELS:
        return f"unknown model {args.model!r} (--model); choose one of {', '.join(sorted(MODELS))}"
    if args.name == "":
        # It silently became the model's name (s48, helper-411).
        return "--name must not be empty; leave it out to name the task after --model"
    if not 0 <= args.seed < 2**63:
        # Before the model is built from it (torch refuses a seed past 64 bits in its own words).
        return f"seed must be in [0, 2**63) (--seed), got {args.seed}"
    for flag, value, top in (
        ("--local-epochs", args.local_epochs, MAX_LOCAL_EPOCHS),
        ("--batch-size", args.batch_size, MAX_BATCH_SIZE),
    ):
        if not 1 <= value <= top:
            # Named by its flag here; the task's check names the field (training.batch_size).
            return f"{flag} must be in 1..{top}, got {value}"
    codecs = (
        ("--topk", "--bits", args.topk, args.bits),
        ("--downlink-topk", "--downlink-bits", args.downlink_topk, args.downlink_bits),
    )
    for topk_flag, bits_flag, topk, bits in codecs:
        try:
            CodecParams(topk=topk, bits=bits).to_config()
        except ValueError as exc:
            # "topk must be in (0, 1], got 2.0": the flag in the field's place, as `plume
            # sim` says it (a --bits outside its choices is argparse's to refuse).
            text = str(exc)
            for field, flag in (("topk", topk_flag), ("bits", bits_flag)):
                if text.startswith(f"{field} "):
                    return flag + text[len(field) :]
            return f"{text} ({topk_flag}/{bits_flag})"
    try:
        build_aggregator(args.aggregator)
    except ValueError as exc:
        from mobile_sim.runner import AGGREGATORS

        if args.aggregator in AGGREGATORS:
            # As `plume sim --transport http` says of the same mistake.
            return (
                f"--aggregator {args.aggregator!r} is registered in this process (a --plugin's), "
                "but a coordinator builds only its own aggregators: choose one of those "
                "(`plume coordinator create-task --help` lists them)"
            )
        return f"--aggregator {args.aggregator!r}: {exc}"
    return None


# TaskConfig fields named in `validate_task`'s messages, and the create-task flag of each.
_TASK_FLAGS = {
    "clients_per_round": "--clients-per-round",
    "over_selection": "--over-selection",
    "min_reports": "--min-reports",
    "selection_timeout_s": "--selection-timeout",
    "deadline_s": "--deadline",
    "server_lr": "--server-lr",
    "training.local_epochs": "--local-epochs/--batch-size",
    "training.lr": "--lr",
    "rounds": "--rounds",
    "name": "--name",
    "seed": "--seed",
    "aggregator": "--aggregator",
    "codec.error_feedback": "--no-error-feedback",
    "noise": "--secure-noise",
    **{key: flag for flag, key, _, _ in _SECURE_FLAGS},
}


def _with_flag(message: str) -> str:
    """`message` with the flag that sets the field it starts with, e.g. `... (--rounds)`."""
    if message.startswith("--"):
        return message  # the CLI's own words, which begin with the flag
    secure_flags = {key: flag for flag, key, _, _ in _SECURE_FLAGS}
    message = re.sub(
        r"\bsecure\.(\w+)", lambda m: secure_flags.get(m.group(1), m.group(0)), message
    )
    if message.startswith("secure: "):
        # Bare SecureConfig fields after the first word ("noise needs noise_multiplier > 0");
        # only names with an underscore, which never occur as plain words. The first word
        # keeps its name and gets its flag in parentheses below.
        first, sep, rest = message.removeprefix("secure: ").partition(" ")
        rest = re.sub(
            r"(?<![\w-])([a-z]+_\w+)", lambda m: secure_flags.get(m.group(1), m.group(0)), rest
        )
        message = f"secure: {first}{sep}{rest}"
    head = message.removeprefix("secure: ")
    for field in sorted(_TASK_FLAGS, key=len, reverse=True):
        if re.match(rf"{re.escape(field)}\b", head):
            return f"{message} ({_TASK_FLAGS[field]})"
    # A field later in the sentence ("a secure task needs clients_per_round >= 3"): only
    # names with an underscore or a dot, which never occur as plain words.
    for field in sorted(_TASK_FLAGS, key=len, reverse=True):
        if ("_" in field or "." in field) and re.search(rf"(?<![\w.-]){re.escape(field)}\b", head):
            return f"{message} ({_TASK_FLAGS[field]})"
    return message


# The create-task flag of each `TaskConfig.secure` key.
_SECURE_KEY_FLAGS = {key: flag for flag, key, _, _ in _SECURE_FLAGS} | {
    "noise": "--secure-noise",
    "sketch": "--secure-no-sketch",
}


def _secure_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    """`TaskConfig.secure` from the --secure flags (None without --secure). ValueError for a
    flag given that the task would store and never use, naming it."""
    given = {k: getattr(args, f"secure_{k}") for k in _SECURE_KEY_FLAGS}
    if not args.secure:
        named = [_SECURE_KEY_FLAGS[k] for k, v in given.items() if v is not None]
        if named:
            # Named (s48, helper-411): "the secure-aggregation options" said not which.
            many = len(named) > 1
            raise ValueError(
                f"{' and '.join([', '.join(named[:-1]), named[-1]] if many else named)} "
                f"need{'' if many else 's'} --secure: "
                f"{'they set' if many else 'it sets'} a secure task's SecAgg+ rounds, and "
                "without --secure the task runs plain rounds"
            )
        return None
    spec = given["group_aggregator"]
    if spec is not None and given["group_size"] is None:
        # Stored and never read: without a group size the round is one SecAgg, no groups.
        raise ValueError(
            f"--secure-group-aggregator combines the group sums of grouped mode, which "
            f"--secure-group-size G turns on; without --secure-group-size it is unused (got "
            f"--secure-group-aggregator {spec!r})"
        )
    if spec is not None:
        from .aggregators import build_aggregator

        try:
            build_aggregator(spec)
        except ValueError as exc:  # its own words named no flag ("secure: unknown ...")
            raise ValueError(f"--secure-group-aggregator {spec!r}: {exc}") from None
    if given["coord_fraction"] is not None and given["upload_budget"] is not None:
        # The budget chooses |S_r| each round and the fraction was silently ignored.
        raise ValueError(
            "--secure-fraction and --secure-upload-budget both set the shared coordinates a "
            "round: with a budget, |S_r| is the largest that fits it and the fraction is "
            "unused; give one of them"
        )
    z = given["noise_multiplier"]
    if z is not None and not (math.isfinite(z) and z >= 0):
        raise ValueError(
            f"--secure-noise-multiplier must be a finite number >= 0 (0: no noise), got {z}"
        )
    if z and given["noise"] in (None, "none"):  # 0 is no noise, as without the flag
        # Accepted before, and the task's devices added no noise at all.
        raise ValueError(
            "--secure-noise-multiplier sets the noise of --secure-noise discrete_gaussian or "
            f"skellam; without --secure-noise (or with none) no device adds noise (got "
            f"--secure-noise-multiplier {z:g})"
        )
    dropout = given["expected_dropout"]
    if dropout is not None and given["noise"] in (None, "none"):
        # Read only to calibrate the noise (as --secure-noise-multiplier, refused above).
        raise ValueError(
            "--secure-expected-dropout is the dropout the noise of --secure-noise "
            "discrete_gaussian or skellam allows for; without --secure-noise (or with none) "
            f"no device adds noise and it is unused (got --secure-expected-dropout {dropout:g})"
        )
    typed: frozenset[str] = getattr(args, "_given", frozenset())
    codec = [flag for flag, dest in (("--topk", "topk"), ("--bits", "bits")) if dest in typed]
    if codec:
        # They set the plain upload codec, which a secure task's devices never use. Asked of
        # the flags typed: a value equal to the default was taken and ignored before (s48).
        many = len(codec) > 1
        raise ValueError(
            f"{' and '.join(codec)} set{'' if many else 's'} the plain upload codec, which a "
            "secure task's devices never use: they upload a masked sketch sized by "
            "--secure-fraction or --secure-upload-budget, --secure-bits bits a value; drop "
            f"{'them' if many else 'it'}"
        )
    return {k: v for k, v in given.items() if v is not None}


def _task_action(args: argparse.Namespace) -> int:
    import httpx

    from protocol.messages import to_json

    from .service import AdminError
    from .service.admin_client import PAGE_IGNORED

    last, before = getattr(args, "last", None), getattr(args, "before", None)
    privacy: str | None = None
    if args.task is None and (last is not None or before is not None):
        given = (
            "--last and --before need"
            if last and before
            else "--last needs"
            if last
            else "--before needs"
        )
        _fail(f"plume coordinator {args.action_name}", f"{given} --task", 2)
    try:
        with _admin(args) as admin:
            # pause, resume, stop: the task's line as `status` lists it (its whole config,
            # spec and codecs, is `status --task ID`'s).
            if args.action_name == "pause":
                out: Any = _task_line(to_json(admin.pause(args.task)))
            elif args.action_name == "stop":
                out = _task_line(to_json(admin.stop(args.task)))
            elif args.action_name == "resume":
                out = _task_line(to_json(admin.resume(args.task)))
            elif args.task is None:
                out = [_task_line(to_json(t)) for t in admin.tasks()]
                privacy = _privacy_line(admin)
            else:
                out = {
                    "task": to_json(admin.status(args.task)),
                    "rounds": [
                        to_json(r) for r in admin.rounds(args.task, last=last, before=before)
                    ],
                }
    except (AdminError, httpx.HTTPError) as exc:
        if (
            isinstance(exc, AdminError)
            and exc.status == 200
            and exc.problem.startswith(PAGE_IGNORED)
        ):
            # AdminClient's words are for a Python caller; this one gave flags.
            text = (
                f"the coordinator at {args.url} ignored --last/--before and answered every "
                f"round of task {args.task}: it predates them; upgrade it, or drop "
                "--last/--before"
            )
        else:
            text = admin_error_text(exc, args.url, timeout=args.timeout)
            if isinstance(exc, httpx.ReadTimeout) and args.action_name != "status":
                # The request went whole: the coordinator may have acted on it all the same.
                text += (
                    f"; the request was sent, so the {args.action_name} may have taken "
                    f"effect: `plume coordinator status --task {args.task}` shows"
                )
        print_error(f"plume coordinator {args.action_name}", text)
        return 1
    if isinstance(out, list):  # status without --task: a line each
        for row in out:
            print(json.dumps(row))
        if privacy is not None:  # on stderr: stdout stays one JSON line a task
            print(privacy, file=sys.stderr)
        if not out:  # else nothing at all: is it the coordinator meant?
            print(
                f"plume coordinator status: note: the coordinator at {args.url} has no task "
                "yet; `plume coordinator create-task` makes one",
                file=sys.stderr,
            )
        return 0
    if args.action_name != "status":
        print(json.dumps(out))
        return 0
    print(json.dumps(out, indent=2))
    return 0


def _privacy_line(admin: Any) -> str | None:
    """`status`'s line for the coordinator-wide epsilon (GET /healthz's `dp_all_tasks`,
    docs/privacy.md item 7), or None: no task is DP-accounted, or the coordinator does not
    say (one older than the field, or a /healthz that does not answer: the task lines are
    printed all the same)."""
    import httpx

    from .service import AdminError

    try:
        health = admin.healthz()
    except (AdminError, httpx.HTTPError):
        return None
    dp = health.get("dp_all_tasks") if isinstance(health, dict) else None
    if not isinstance(dp, dict):
        return None
    composed, tasks = dp.get("tasks_composed"), dp.get("tasks")
    eps, delta = dp.get("epsilon"), dp.get("delta")
    if not isinstance(composed, int) or not isinstance(tasks, int) or composed < 1:
        return None
    if dp.get("epsilon_infinite") is True:
        figure = "epsilon = infinite (a secure task released a round without noise)"
    elif isinstance(eps, int | float) and isinstance(delta, int | float):
        figure = f"epsilon = {eps:.3g} at delta = {delta:g}"
    elif eps == 0:
        figure = "epsilon = 0 (no round released yet)"
    else:
        return None
    missing = dp.get("not_running")
    partial = ""
    if dp.get("partial") is True and isinstance(missing, list) and missing:
        ids = ", ".join(str(t) for t in missing[:8]) + (", ..." if len(missing) > 8 else "")
        partial = f"; at least that: task {ids} not running, not in it"
    return (
        f"privacy across tasks: {figure}, composed over {composed} of {tasks} tasks (a "
        f"device in every DP-accounted task; reported, not enforced{partial})"
    )


def _task_line(status: dict[str, Any]) -> dict[str, Any]:
    """One task of `status` without --task: what tells tasks apart and how far each got (the
    config's spec and codecs are in `status --task ID`)."""
    config = status.get("config")
    config = config if isinstance(config, dict) else {}  # a refused task's stored object as is
    # A finished task (done, stopped) opens no round again: it has no pool to draw from. The
    # service reports 0 for both counts then (as for a task it does not run); null says there
    # is nothing to wait for, where 0 could read as a pool that is empty for now.
    from protocol.names import TaskState

    finished = status.get("state") in (TaskState.DONE, TaskState.STOPPED)
    return {
        "task_id": status.get("task_id"),
        "name": config.get("name"),
        "model_name": config.get("model_name"),
        "state": status.get("state"),
        "version": status.get("version"),
        "rounds_closed": status.get("rounds_closed"),
        "rounds": config.get("rounds"),
        "current_round": status.get("current_round"),
        "pool": None if finished else status.get("pool"),
        "pool_needed": None if finished else status.get("pool_needed"),
        "refused": status.get("refused"),
    }


_MODEL_FORMATS = ("snapshot", "pt", "npz")


def _model_format(args: argparse.Namespace) -> str:
    if args.format is not None:
        return str(args.format)
    suffix = Path(args.out).suffix.lower()
    return {".pt": "pt", ".pth": "pt", ".npz": "npz"}.get(suffix, "snapshot")


# In the detail of a 410 `version_gone` for an older version that the coordinator cannot
# rebuild from the initial model it keeps (app.py `_older_version`): a frame on the way is
# emptied or the store damaged, which the operator's copy of the initial model does not mend.
_REBUILD_REFUSED = "cannot be rebuilt"


def _get_model(args: argparse.Namespace) -> int:
    prog = "plume coordinator get-model"
    # Before anything else: the plugins register the model_name --format pt builds.
    if not _import_plugins(prog, args.plugin):
        return 2
    out = _path(args.out)
    if out.is_dir():
        _fail(prog, _folder_given("--out", args.out, "the file to write", "model.pt"), 2)
    if not out.resolve().parent.is_dir():
        _fail(
            prog, f"the folder of --out {args.out} does not exist; create it or pick another path"
        )
    if not os.access(out.resolve().parent, os.W_OK | os.X_OK):
        # Before the download (and an older version's rebuild), not after it.
        _fail(prog, _out_folder_error(args.out, out.resolve().parent))
    fmt = _model_format(args)
    if args.strip_prefix is not None and fmt == "snapshot":
        _fail(
            prog,
            "--strip-prefix renames the tensors of --format pt or npz; a snapshot has no names "
            "(give --out a .pt or .npz suffix, or --format pt or npz)",
            2,
        )
    if args.initial is not None and args.version is None:
        # It was ignored: the current model needs no rebuild, so no initial model.
        _fail(
            prog,
            f"--initial {args.initial} is the initial model an older --version is rebuilt "
            "from; without --version get-model downloads the current model and reads no "
            "--initial (give --version N, or drop --initial)",
            2,
        )
    if args.initial is not None:
        _need_file(prog, "--initial", args.initial, "the model file's path")
    # Never over a database or a file beside one (s48, helper-411: `--out p0.db` of a served
    # database made it an npz), as backup refuses: checked before the download.
    if (base := _database_beside(out)) is not None:
        _fail(
            prog,
            f"--out {args.out} is a side file of the database {base} (its -wal, -shm, "
            f"-journal or .lock file): {_NOT_OVER_A_DATABASE}",
        )
    lock = _out_lock(prog, args.out, out, "get-model")
    try:
        if _is_sqlite(out):  # one no coordinator serves now: a stopped one's, a backup
            _fail(prog, f"--out {args.out} is a SQLite database: {_NOT_OVER_A_DATABASE}")
        return _download_model(args, prog, out, fmt)
    finally:
        if lock is not None:
            os.close(lock)  # after the rename: no coordinator started on --out meanwhile


def _download_model(args: argparse.Namespace, prog: str, out: Path, fmt: str) -> int:
    """get-model's download (and rebuild) of the model, written to `out` in `fmt`."""
    import httpx

    from .service import AdminError

    try:
        with _admin(args) as admin:
            given = None
            if args.initial is not None and args.version is not None:
                # Read first: a file that does not load is an error even when the
                # coordinator rebuilds the version itself.
                given = _initial_model(args, admin.status(args.task).config)
            try:
                # An older version is rebuilt by the coordinator from the initial model it
                # keeps (checked against the version's digest there and here).
                exported = admin.model(args.task, args.version)
            except AdminError as exc:
                if exc.status != 410 or args.version is None:
                    raise
                if given is None and _REBUILD_REFUSED in exc.body:
                    raise  # a frame on the way emptied, or a damaged store: no initial helps
                # A task stored before the coordinator kept initial models (or the one it
                # keeps is damaged): rebuilt here from the operator's copy or the zoo's.
                initial, source = given or _initial_model(args, admin.status(args.task).config)
                try:
                    exported = admin.rebuild(args.task, args.version, initial)
                except AdminError as rebuilt:
                    if "base model given" in rebuilt.problem:
                        rebuilt.problem += f" ({source})"
                    raise
    except (AdminError, httpx.HTTPError) as exc:
        _fail(prog, admin_error_text(exc, args.url, timeout=args.timeout))
    except ValueError as exc:
        _fail(prog, str(exc))
    try:
        write = _model_writer(exported, fmt, args.strip_prefix)
        size = _write_atomic(out, write, prog)
    except ValueError as exc:
        _fail(prog, str(exc))
    except _NoTempFile as exc:
        _fail(prog, _out_folder_error(args.out, out.resolve().parent, exc.strerror))
    except OSError as exc:
        _fail(prog, f"cannot write --out {args.out}: {exc.strerror or exc}")
    wrote: dict[str, Any] = {
        "task_id": exported.task_id,
        "version": exported.version,
        "digest": exported.digest,
        "format": fmt,
        "out": str(out),
        "bytes": size,
        "params": exported.spec.size,
    }
    if args.strip_prefix is not None:
        wrote["strip_prefix"] = args.strip_prefix
    print(json.dumps(wrote))
    return 0


def _initial_model(args: argparse.Namespace, config: Any) -> tuple[Any, str]:
    """(float32[d] initial model, where it came from) to rebuild an older version from:
    --initial (a snapshot, .npz or .pt file as get-model writes them), else the zoo model's
    initial weights for the task's seed (what create-task uploaded). ValueError if neither
    fits; the coordinator checks it against version 0's digest."""
    from compression import ModelSpec

    if isinstance(config, dict):
        raise ValueError("the task's stored config does not parse; its model cannot be rebuilt")
    spec = ModelSpec.from_json([{"name": t.name, "shape": list(t.shape)} for t in config.spec])
    if args.initial is None:
        from mobile_sim.models import MODELS
        from sdk.flat import get_flat_params, spec_from_module

        if config.model_name not in MODELS:
            raise ValueError(
                f"version {args.version} is no longer the task's current model, so it is "
                f"rebuilt from the initial model and the stored deltas, and model_name "
                f"{config.model_name!r} is not a zoo model (nor one a --plugin registered) "
                "whose initial weights can be made here: pass the initial model with "
                "--initial FILE (a snapshot, .npz or .pt), or the plugin with --plugin MODULE"
            )
        model = _build_task_model(
            config.model_name, config.seed, f"the task's model_name {config.model_name!r}"
        )
        if isinstance(model, str):
            raise ValueError(model)
        if spec_from_module(model).entries != spec.entries:
            raise ValueError(
                f"the model {config.model_name!r} does not have the task's layout: pass "
                "the initial model with --initial FILE"
            )
        source = (
            f"made from the model {config.model_name!r} with seed {config.seed}, as "
            "create-task makes it; pass the task's initial model with --initial FILE"
        )
        return get_flat_params(model), source
    try:
        return _read_initial(_path(args.initial), spec), f"--initial {args.initial}"
    except _model_file_errors() as exc:
        raise ValueError(f"cannot read --initial {args.initial}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"--initial {args.initial}: {exc}") from None


def _read_initial(path: Path, spec: Any) -> Any:
    """float32[d] of the model in a local file get-model wrote: .npz (numpy.load without
    pickle), .pt/.pth (torch.load with weights_only), else a snapshot (decode_snapshot).
    Tensors the spec does not name are ignored (the coordinator checks the digest)."""
    return _read_model_file(path, spec, None)[0]


def _read_model_file(
    path: Path, spec: Any, not_sent: frozenset[str] | None
) -> tuple[npt.NDArray[np.float32], list[str]]:
    """(float32[d] in `spec`'s order, notes) from the operator's local model file: .npz
    (numpy.load without pickle; numeric arrays only), .pt/.pth (torch.load with
    weights_only=True: a dict of tensors), else an fp32 snapshot (decode_snapshot).

    Every spec entry must be there with its shape; a file whose names all differ from the
    spec's by one leading prefix of whole components added, removed or replaced by another
    (`1.weight` / `module.1.weight` for `net.1.weight`; `_match_names`) is read that way, and
    a note says so; a file two readings fit with different pairings is refused. `not_sent`: the other names the file may hold (the model's
    buffers), ignored; None ignores any other name. Values are converted to float32; a NaN,
    an inf or a value beyond float32's range is refused. ValueError says what does not fit;
    what does not read raises the reader's own error."""
    import numpy as np

    from compression import CodecError, decode_snapshot

    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = _npz_arrays(path)
    elif suffix in (".pt", ".pth"):
        arrays = _pt_arrays(path)
    else:
        try:
            return decode_snapshot(path.read_bytes(), spec), []
        except CodecError as exc:
            raise ValueError(
                f"not a snapshot of the task's model ({exc}); name a .npz or .pt file by its suffix"
            ) from None
    rename, note = _match_names(list(arrays), [e.name for e in spec.entries], not_sent)
    notes = [] if note is None else [note]
    parts = []
    for e in spec.entries:
        name = rename[e.name]
        called = repr(name) if name == e.name else f"{name!r} (the task's {e.name!r})"
        part = _float32_values(called, arrays[name])
        if part.shape != tuple(e.shape):
            raise _NotTheModel(
                f"tensor {called} has shape {tuple(part.shape)}, the task's model {tuple(e.shape)}",
                notes,
            )
        parts.append(part.reshape(-1))
    flat = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return flat, notes


def _npz_arrays(path: Path) -> dict[str, Any]:
    """Name -> array of an .npz file, read without pickle; an object array is refused."""
    import numpy as np

    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError:
        # numpy's words ("contains pickled (object) data ... load it unsafely") offer the
        # pickle this never uses.
        raise ValueError(
            "not an .npz archive (numpy.savez's zip of named arrays): numpy.load without pickle "
            "does not read it"
        ) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError("not an .npz archive (numpy.savez's zip of named arrays) but one array")
    with loaded as z:
        arrays = {}
        for name in z.files:
            try:
                arrays[name] = z[name]
            except ValueError as exc:
                if "allow_pickle" not in str(exc):
                    raise
                raise ValueError(
                    f"array {name!r} holds Python objects (an object array), which are "
                    "refused: only numeric arrays are read, never pickled data"
                ) from None
    return arrays


def _pt_arrays(path: Path) -> dict[str, Any]:
    """Name -> tensor of a torch state_dict file, read with torch.load(weights_only=True)."""
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            # torch warns, besides raising, that a TorchScript archive needs weights_only=False
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, weights_only=True, map_location="cpu")
    except (KeyError, EOFError) as exc:
        # What torch.load's unpickler raises for bytes that are no pickle ("hello": KeyError
        # 101, the opcode it does not know) or an empty or cut-short file: its bare text,
        # `cannot read --initial F: 101`, said nothing (s47 docs review).
        why = "empty or cut short" if isinstance(exc, EOFError) else f"{type(exc).__name__} {exc}"
        raise pickle.UnpicklingError(
            f"not a file torch.load(weights_only=True) reads ({why})"
        ) from None
    except RuntimeError as exc:
        if "TorchScript" not in str(exc):
            raise
        # torch's message offers weights_only=False, which Plume never uses
        raise ValueError(
            "a TorchScript archive (torch.jit.save), not a state_dict: save the model's "
            "state_dict alone, torch.save(model.state_dict(), FILE)"
        ) from None
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" not in text:
            raise
        # torch's message runs to a dozen lines and offers weights_only=False. A file that
        # pickles an object names the global it would not load ("WeightsUnpickler error:
        # Unsupported global: GLOBAL ...", or "Trying to load unsupported GLOBAL ..." for a
        # blocked module); a file that is no pickle at all says what after "WeightsUnpickler
        # error:" ("Unsupported operand 110").
        lines = [line.strip() for line in text.splitlines()]
        glob = next((line for line in lines if "GLOBAL" in line), None)
        if glob is None:
            after = text.partition("WeightsUnpickler error:")[2].strip()
            why = after.splitlines()[0].strip() if after else "not a torch pickle"
            raise pickle.UnpicklingError(
                f"not a file torch.load(weights_only=True) reads ({why})"
            ) from None
        why = glob.removeprefix("WeightsUnpickler error:").strip().split(" Please use")[0]
        raise ValueError(
            f"refused by torch.load(weights_only=True): {why} It holds Python objects besides "
            "tensors (a whole model saved with torch.save(model), a training checkpoint), and "
            "Plume never loads a full pickle: save the state_dict alone, "
            "torch.save(model.state_dict(), FILE)"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(
            f"not a state_dict of the task's model: it holds a {type(state).__name__}, not a "
            "dict of tensors by name (torch.save(model.state_dict(), FILE) writes one)"
        )
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            hint = (
                " (a checkpoint? save its model's state_dict alone)"
                if isinstance(value, dict)
                else ""
            )
            raise ValueError(
                f"not a state_dict of the task's model: {name!r} is not a tensor but "
                f"{type(value).__name__}{hint}"
            )
    return {str(name): value for name, value in state.items()}


def _match_names(
    names: list[str], wanted: list[str], not_sent: frozenset[str] | None
) -> tuple[dict[str, str], str | None]:
    """(task name -> the file's name for it, the note when they differ by a leading prefix)
    for the file's tensor `names` against the spec's `wanted`.

    The names are read as they are or, failing that, with one leading prefix replaced by
    another: a run of whole components (`module.`, `model.backbone.`) that all the file's
    names share removed, and/or one that all the task's names share added (`1.weight` for
    `net.1.weight`, `module.1.weight` for `net.1.weight`). A reading fits when it gives every
    wanted name and every other name it gives is in `not_sent` (None: any allowed); two
    readings that fit with different pairings are refused (ValueError naming both), as is no
    fit: ValueError naming the first missing tensor, or the first name neither wanted nor in
    `not_sent`, of the reading that finds the most."""
    want = set(wanted)
    readings = _name_readings(names, wanted)
    mappings = [{r.read(n): n for n in names} for r in readings]

    def fits(mapped: dict[str, str]) -> bool:
        return all(w in mapped for w in wanted) and (
            not_sent is None or all(t in want or t in not_sent for t in mapped)
        )

    if fits(mappings[0]):  # the names as they are
        return {w: mappings[0][w] for w in wanted}, None
    fitting: dict[tuple[str, ...], int] = {}  # pairing -> first (simplest) reading giving it
    for i, mapped in enumerate(mappings):
        if i and fits(mapped):
            fitting.setdefault(tuple(mapped[w] for w in wanted), i)
    if len(fitting) > 1:
        first = wanted[0]
        ways = [
            f"{readings[i].way} ({mappings[i][first]!r} as {first!r})"
            for i in sorted(fitting.values())
        ]
        raise ValueError(
            f"its tensor names fit the task's in {len(ways)} ways, {'; or '.join(ways)}: "
            f"rename them to the task's, which are {_names_text(wanted)}"
        )
    if fitting:
        (i,) = fitting.values()
        return {w: mappings[i][w] for w in wanted}, readings[i].note
    # No reading fits: say what is wrong with the one that finds the most (the first on a tie).
    i = max(range(len(mappings)), key=lambda j: (sum(w in mappings[j] for w in wanted), -j))
    mapped, how = mappings[i], readings[i].how
    for w in wanted:
        if w not in mapped:
            raise ValueError(
                f"it has no tensor {w!r}, a parameter of the task's model{how}; the "
                f"task's are {_names_text(wanted)}"
            )
    for task_name, name in mapped.items():
        if task_name not in want and not_sent is not None and task_name not in not_sent:
            raise ValueError(
                f"tensor {name!r} is not a parameter of the task's model{how}; the "
                f"task's are {_names_text(wanted)}"
            )
    raise AssertionError("a reading that finds every name and nothing else fits")


class _Reading(NamedTuple):
    """How `_match_names` reads a file's tensor names: `cut` removed from the front of each
    and `add` put there ("" and "": as they are), and the words for it."""

    cut: str
    add: str
    example: str  # the task's first name

    def read(self, name: str) -> str:
        """The task's name the file's `name` is read as (`name` starts with `cut`)."""
        return self.add + name[len(self.cut) :]

    @property
    def note(self) -> str | None:
        """The note create-task prints when the file is read this way."""
        cut, add, task = self.cut, self.add, self.example
        theirs = cut + task[len(add) :]
        if cut and add:
            return (
                f"its tensor names have a leading {cut!r} where the task's have {add!r} "
                f"({theirs!r} for {task!r}); read them with it replaced"
            )
        if add:
            return (
                f"its tensor names lack the task's leading {add!r} ({theirs!r} for {task!r}); "
                "read them with it added"
            )
        if cut:
            return (
                f"its tensor names have a leading {cut!r} that the task's lack ({theirs!r} "
                f"for {task!r}); read them without it"
            )
        return None

    @property
    def how(self) -> str:
        """The reading in an error's parenthesis."""
        return f" (reading its names {self.way})" if self.cut or self.add else ""

    @property
    def way(self) -> str:
        cut, add = self.cut, self.add
        if cut and add:
            return f"with their leading {cut!r} replaced by {add!r}"
        if add:
            return f"with a leading {add!r} added"
        if cut:
            return f"without their leading {cut!r}"
        return "as they are"


def _name_readings(names: list[str], wanted: list[str]) -> list[_Reading]:
    """The ways `_match_names` reads the file's `names`, in order: as they are; with a prefix
    the task's names all share added, shortest first; with one the file's names all share
    removed, shortest first; with one removed and another added (the same prefix both ways is
    reading them as they are)."""
    example = wanted[0] if wanted else ""
    adds = _shared_prefixes(wanted)
    cuts = _shared_prefixes(names)
    pairs = (
        [("", "")]
        + [("", add) for add in adds]
        + [(cut, "") for cut in cuts]
        + [(cut, add) for cut in cuts for add in adds if cut != add]
    )
    return [_Reading(cut, add, example) for cut, add in pairs]


def _shared_prefixes(names: list[str]) -> list[str]:
    """The leading runs of whole components (`a.`, `a.b.`) that every one of `names` starts
    with and is longer than, shortest first; none for no names."""
    if not names:
        return []
    parts = names[0].split(".")[:-1]
    found = []
    for k in range(1, len(parts) + 1):
        prefix = ".".join(parts[:k]) + "."
        if not all(n.startswith(prefix) and len(n) > len(prefix) for n in names):
            break
        found.append(prefix)
    return found


def _names_text(names: list[str], shown: int = 6) -> str:
    """`a, b, c` or `a, b, ... (N in all)`."""
    if len(names) <= shown:
        return ", ".join(names)
    return ", ".join(names[:shown]) + f", ... ({len(names)} in all)"


def _float32_values(called: str, value: Any) -> npt.NDArray[np.float32]:
    """`value` (a torch tensor or numpy array) as a float32 numpy array; ValueError for a
    non-numeric dtype, a NaN or inf, or a value float32 cannot hold."""
    import numpy as np

    if hasattr(value, "detach"):  # a torch tensor
        import torch

        if value.layout != torch.strided or value.is_quantized:
            raise ValueError(f"tensor {called} is {value.layout} or quantized, not dense")
        if value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"tensor {called} is {value.dtype}, not a real number type")
        if not value.is_floating_point():
            # float32 rounds an integer past 2**24 without a word
            raise ValueError(
                f"tensor {called} is {value.dtype}: a parameter is a floating-point tensor"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"tensor {called} holds NaN or inf")
        array = value.detach().to(torch.float32).numpy()
    else:
        array = np.asarray(value)
        if array.dtype.kind not in "fiu":
            raise ValueError(f"array {called} is {array.dtype}, not a real number type")
        if array.dtype.kind != "f":
            # float32 rounds an integer past 2**24 without a word
            raise ValueError(
                f"array {called} is {array.dtype}: a parameter is a floating-point array"
            )
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError(f"array {called} holds NaN or inf")
        with np.errstate(over="ignore"):
            array = array.astype(np.float32)
    if not np.isfinite(array).all():
        kind = "tensor" if hasattr(value, "detach") else "array"
        raise ValueError(f"{kind} {called} holds a value beyond float32's range (about 3.4e38)")
    return np.ascontiguousarray(array, dtype=np.float32)


def _model_writer(
    exported: Any, fmt: str, strip_prefix: str | None = None
) -> Callable[[IO[bytes]], None]:
    """What writes `exported` (an `ExportedModel`) in `fmt` to a binary file, with
    `strip_prefix` removed from the names that start with it (pt, npz); ValueError when the
    format does not fit the task (pt for a model neither in the zoo nor registered by a
    --plugin, or whose factory fails) or the prefix does not fit its names."""
    if fmt == "snapshot":

        def snapshot(f: IO[bytes]) -> None:
            f.write(exported.snapshot)

        return snapshot
    if fmt == "npz":
        arrays = _stripped(exported.arrays(), strip_prefix, exported)
        return lambda f: _write_npz(f, arrays)
    name = exported.config.model_name
    from mobile_sim.models import MODELS
    from sdk.flat import set_flat_params, spec_from_module

    if name not in MODELS:
        raise ValueError(
            f"task {exported.task_id}'s model_name {name!r} is not a zoo model "
            f"({', '.join(sorted(_ZOO_MODELS))}) nor one a --plugin registered, so there is no "
            "torch module to make a state_dict for; pass the plugin that registers it with "
            "--plugin MODULE, or use --format npz (an array per parameter, by name) or snapshot"
        )
    model = _build_task_model(name, 0, f"task {exported.task_id}'s model_name {name!r}")
    if isinstance(model, str):
        raise ValueError(model)
    layout = [(e.name, e.shape) for e in spec_from_module(model).entries]
    if layout != [(e.name, e.shape) for e in exported.spec.entries]:
        raise ValueError(
            f"task {exported.task_id}'s spec is not the layout of the model {name!r} (its "
            "parameter names or shapes differ); use --format npz or snapshot"
        )
    set_flat_params(model, exported.params)
    state = _stripped(model.state_dict(), strip_prefix, exported)

    def write(f: IO[bytes]) -> None:
        import torch

        torch.save(state, f)

    return write


def _stripped(tensors: dict[str, Any], prefix: str | None, exported: Any) -> dict[str, Any]:
    """`tensors` with `prefix` removed from the names that start with it (get-model
    --strip-prefix), in order; ValueError when none does or two would get the same name."""
    if prefix is None:
        return tensors
    names = list(tensors)
    what = f"task {exported.task_id}'s model ({exported.config.model_name})"
    if not any(n.startswith(prefix) for n in names):
        raise ValueError(
            f"--strip-prefix {prefix!r}: no tensor name of {what} starts with it (its "
            f"names: {_names_text(names)}); nothing written"
        )
    renamed: dict[str, str] = {}
    for n in names:
        new = n[len(prefix) :] if n.startswith(prefix) and n != prefix else n
        if new in renamed:
            first, second = sorted((renamed[new], n), key=lambda m: m == new)
            raise ValueError(
                f"--strip-prefix {prefix!r}: {first!r} would become {new!r}, and {what} "
                f"has {second!r} too; nothing written"
            )
        renamed[new] = n
    return {new: tensors[old] for new, old in renamed.items()}


def _write_npz(f: IO[bytes], arrays: dict[str, Any]) -> None:
    """`numpy.savez` of `arrays` (a member NAME.npy each), without its keyword arguments, which
    a parameter named `file` or `allow_pickle` would collide with."""
    import zipfile

    import numpy as np

    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        for name, array in arrays.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


_SIDE_SUFFIXES = ("-journal", "-wal", "-shm")  # SQLite's files beside a copy being written


def _locked_temp(path: Path, prog: str) -> tuple[int, str]:
    """A new temporary file for `path` in its folder (`.NAME.<8 random characters>.tmp`), its descriptor
    holding an exclusive flock until closed, so another writer of `path` can tell it is in
    use. Temporaries of `path` no process holds are what a killed writer (`kill -9`, a power
    cut, the OOM killer) left, a partial copy of a database or model each, which nothing would
    ever remove (s47 crash review: 44 MB of a killed backup, mode 0600): removed first, with
    their SQLite side files, and named in a note on stderr."""
    folder = path.resolve().parent
    for old in sorted(folder.glob(glob.escape(f".{path.name}.") + "*.tmp")):
        try:
            fd = os.open(old, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # gone meanwhile, a symlink, or not ours to read
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a running writer's
        try:
            for leftover in (str(old), *(f"{old}{side}" for side in _SIDE_SUFFIXES)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
        finally:
            os.close(fd)
        print(
            f"{prog}: note: removed {old.name}, a partial copy an interrupted run left",
            file=sys.stderr,
        )
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # a read-only or foreign folder (root too: /sys), a full disk
        raise _NoTempFile(exc.errno, exc.strerror or str(exc)) from exc
    fcntl.flock(fd, fcntl.LOCK_EX)  # a new file: nobody else holds it
    return fd, tmp


def _write_atomic(path: Path, write: Callable[[IO[bytes]], None], prog: str) -> int:
    """Write `path` through a temporary file in its folder, renamed over it once whole and
    synced: a reader never sees half a file, a failure leaves no file behind. Its size."""
    fd, tmp = _locked_temp(path, prog)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)  # before the close drops the flock
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path.stat().st_size


def _connect_existing(path: Path, *, immutable: bool = False) -> sqlite3.Connection:
    """A connection to the SQLite file at `path`, which must exist (a plain connect would
    create an empty database where a path was mistyped). `immutable`: read-only, and SQLite
    neither locks the file nor opens or creates anything beside it (a backup flagged WAL, as
    a `cp` of a served database or sqlite3's `.backup` of one is, otherwise gets a -wal and
    a -shm created beside it, and cannot be read at all where its folder is read-only); a
    -wal or -journal beside it is ignored, so `_backup_file_problem` refuses those first."""
    from urllib.parse import quote

    mode = "ro&immutable=1" if immutable else "rw"
    # The path as bytes: a file name that is not UTF-8 (surrogate escapes in `str`) quotes too.
    conn = sqlite3.connect(f"file:{quote(os.fsencode(path.resolve()))}?mode={mode}", uri=True)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _plume_info(conn: sqlite3.Connection, what: str) -> tuple[str, int]:
    """(schema version, number of tasks) of a Plume database; ValueError naming `what` when
    the file is not one: the store's rule (`schema_version_of`), and a `tasks` table."""
    from .service.store import schema_version_of, table_names

    try:
        tables = table_names(conn)
        version = schema_version_of(conn, tables)
        tasks = None
        if version is not None and "tasks" in tables:
            tasks = int(conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{what} is not a SQLite database or it is corrupt ({exc})") from None
    listed = ", ".join(sorted(tables)[:5]) or "none"
    if tables and version is None:
        # Another application's `meta(key, value)` (Chrome's History has one) is not Plume's.
        raise ValueError(
            f"{what} is a SQLite database of another application (tables: {listed}; no Plume "
            "schema version), not a Plume database"
        )
    if version is None or tasks is None:
        raise ValueError(f"{what} is not a Plume database (tables: {listed})")
    return version, tasks


def _not_a_file(path: Path) -> str:
    """Why `path`, given as a file, is not one: "is a folder" or "no such file" (a folder was
    called "no such file" before). The commands say a folder with `_folder_given` first."""
    if path.is_dir():
        return "is a folder, not a file"
    return "no such file" if not path.exists() else "is not a regular file"


def _folder_given(flag: str, given: str, what: str, example: str | None = None) -> str:
    """The one sentence of every command for a folder given where a file is wanted, a usage
    mistake (status 2, as serve's --db): `--db adir is a folder; give the database file's
    path, e.g. --db adir/plume.db` (s48, helper-411: five commands had four wordings)."""
    hint = f", e.g. {flag} {Path(given) / example}" if example else ""
    return f"{flag} {given} is a folder; give {what}{hint}"


def _need_file(prog: str, flag: str, given: str, what: str, example: str | None = None) -> None:
    """Fail unless `given` names a regular file: a folder is a usage mistake (status 2), a
    file that is not there status 1."""
    path = _path(given)
    if path.is_dir():
        _fail(prog, _folder_given(flag, given, what, example), 2)
    if not path.is_file():
        _fail(prog, f"{flag} {given}: {_not_a_file(path)}")


_SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def _is_sqlite(path: Path | str, *, empty: bool = False) -> bool:
    """Whether the file at `path` is a SQLite database (by its header; `empty`: an empty
    file too, as a database whose first commit is still in its -wal is)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_HEADER))
    except OSError:
        return False
    return head == _SQLITE_HEADER or (empty and head == b"" and os.path.isfile(path))


def _database_beside(out: Path) -> Path | None:
    """The SQLite database whose -wal, -shm, -journal or .lock file `out` is (`_is_side_file`,
    by any path: a symlink to one too), or None: what get-model must not write over, though it
    knows no --db (a served p0.db-wal became an npz, and the database its last commits)."""
    real = os.path.realpath(out)
    for side in (*_SIDE_SUFFIXES, ".lock"):
        base = Path(real.removesuffix(side))
        if real.endswith(side) and _is_sqlite(base, empty=True) and _is_side_file(out, base):
            return base
    return None


def _out_folder_error(given: str, folder: Path, why: str | None = None) -> str:
    """get-model's and backup's sentence for an --out whose folder this user may not create
    files in (the temporary file they write through): it names --out, not the temporary
    file (`[Errno 13] Permission denied: '/sys/.b.db.zf0jow51.tmp'` before)."""
    because = f" ({why})" if why else ""
    return (
        f"cannot write --out {given}: this user may not create files in {folder}{because}; "
        "pick another --out"
    )


class _NoTempFile(OSError):
    """The temporary file a write goes through could not be created in --out's folder."""


def _backup(args: argparse.Namespace) -> int:
    prog = "plume coordinator backup"
    db, out = _path(args.db), _path(args.out)
    _need_file(prog, "--db", args.db, "the database file's path", "plume.db")
    if out.exists() and out.samefile(db):
        _fail(prog, f"--out is the database itself ({args.out}); give another file")
    if _is_side_file(out, db):
        # Replacing the -wal loses its commits, the lock file lets a second serve start.
        _fail(
            prog,
            f"--out {args.out} is a side file of the database (its -wal, -shm, -journal or "
            ".lock file); give another file",
        )
    if out.is_dir():
        _fail(prog, _folder_given("--out", args.out, "the file to write", db.name), 2)
    if not out.resolve().parent.is_dir():
        _fail(prog, f"the folder of --out {args.out} does not exist; create it or pick another")
    if not os.access(out.resolve().parent, os.W_OK | os.X_OK):
        _fail(prog, _out_folder_error(args.out, out.resolve().parent))  # as get-model's
    lock = _out_lock(prog, args.out, out)
    try:
        with contextlib.closing(_connect_existing(db)) as source:
            version, tasks = _plume_info(source, f"--db {args.db}")
            size = _backup_atomic(source, out, prog)
    except ValueError as exc:
        _fail(prog, str(exc))
    except _NoTempFile as exc:  # access() lets root through where the file system refuses
        _fail(prog, _out_folder_error(args.out, out.resolve().parent, exc.strerror))
    except (sqlite3.Error, OSError) as exc:
        _fail(prog, f"cannot back up --db {args.db} to {args.out}: {exc}")
    finally:
        if lock is not None:
            os.close(lock)
    line = {"db": args.db, "out": args.out, "bytes": size, "schema_version": int(version)}
    print(json.dumps(line | {"tasks": tasks}))
    return 0


# get-model's refusal of an --out that is a database or a file beside one (s48, helper-411).
_NOT_OVER_A_DATABASE = "get-model does not write a model over a database; give another file"


def _out_lock(prog: str, given: str, out: Path, command: str = "backup") -> int | None:
    """Refuse a backup's (or get-model's: `command`) --out that is a database in use
    (helper-335: `backup --db old.bak --out plume.db`, the arguments swapped, renamed the copy
    over the file a coordinator served; its -wal then put the old state back; helper-411:
    `get-model --out p0.db` made a served database an npz): one a coordinator serves (its
    `.lock` held), or one with a -wal or -journal holding writes (replayed onto the copy when
    it is opened). Where a `.lock` lies beside --out, it is taken and returned, to hold while
    the file is renamed over --out, so no coordinator starts on it meanwhile; a `.lock` this
    user may not open is named with its owner and mode, as serve names it."""
    from .service.store import LockHeld, StoreError, lock_path, take_lock

    if command == "backup":
        refusal = (
            "backup does not write over a database in use; give another file, or stop its "
            "coordinator and put a backup in its place with `plume coordinator restore`"
        )
        replayed = "SQLite would replay onto the copy"
    else:
        refusal, replayed = _NOT_OVER_A_DATABASE, "in use"
    lock: int | None = None
    if os.path.lexists(lock_path(out)):
        if (why := _no_access(lock_path(out))) is not None:
            # Else take_lock's "cannot create its lock file ...; make its folder writable".
            _fail(
                prog,
                f"cannot write --out {given}: {why}, the lock file of the database --out "
                f"names; run {command} as its owner, or pick another --out",
            )
        try:
            lock = take_lock(out)
        except LockHeld as exc:
            _fail(
                prog,
                f"--out {given} is a database a coordinator (pid {exc.holder}) serves: {refusal}",
            )
        except StoreError as exc:
            _fail(prog, str(exc))
    if side := _unfolded_side(out):
        if lock is not None:
            os.close(lock)
        _fail(prog, f"--out {given} {side}, writes of a database {replayed}: {refusal}")
    return lock


def _backup_atomic(source: sqlite3.Connection, out: Path, prog: str) -> int:
    """SQLite's online backup of `source` into `out`, through a temporary file in its folder
    renamed over it once checked and synced: a failure leaves no file behind, and one a killed
    backup left is removed by the next (`_locked_temp`). Its size."""
    from .service.store import INCARNATION_KEY

    fd, tmp = _locked_temp(out, prog)
    try:
        with contextlib.closing(sqlite3.connect(tmp)) as copy:
            source.backup(copy)  # one step: a read transaction, so one consistent state
            # Without the incarnation (`Store.incarnation`): the database opened from this
            # file, however it is put back (restore, `cp`, sqlite3's `.restore`), gets a new
            # one, since it hands out again the round and task ids given after the backup.
            # Kept, a copy put back by hand named the old one and devices could not tell
            # (test_s54j_backup_incarnation.py). The database backed up keeps its own.
            copy.execute("DELETE FROM meta WHERE key=?", (INCARNATION_KEY,))
            copy.commit()
            # One file, no -wal/-shm beside it (serve turns WAL back on when it opens it).
            copy.execute("PRAGMA journal_mode=DELETE")
            _check_integrity(copy, "the copy")
        os.fsync(fd)
        os.replace(tmp, out)
    except BaseException:
        for leftover in (tmp, *(f"{tmp}{side}" for side in _SIDE_SUFFIXES)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        raise
    finally:
        os.close(fd)  # drops the flock, after the rename
    return out.stat().st_size


def _restore(args: argparse.Namespace) -> int:
    from .service.store import (
        INCARNATION_KEY,
        LockHeld,
        StoreError,
        lock_path,
        new_incarnation,
        others_may_read,
        schema_version_problem,
        take_lock,
    )

    prog = "plume coordinator restore"
    db, source_path = _path(args.db), _path(args.source)
    _need_file(prog, "--from", args.source, "the backup file's path")
    if db.is_dir():
        # Else "has 2 hard links" (a folder's link count) or sqlite's own words.
        _fail(prog, _folder_given("--db", args.db, "the database file's path", "plume.db"), 2)
    if db.exists() and db.samefile(source_path):
        _fail(prog, f"--from is the database itself ({args.source}); give the backup")
    if not db.resolve().parent.is_dir():
        _fail(prog, f"the folder of --db {args.db} does not exist; create it or pick another")
    if (problem := _db_access_error(args.db, "restore")) is not None:
        # serve's check and words (s48, helper-411): a lock file of another user, mode 0600,
        # was take_lock's "cannot create its lock file ...; make its folder writable".
        _fail(prog, problem)
    # What a refused restore removes again: the files it created (the lock file; for a --db
    # that did not exist, the database and the files SQLite made beside it), nothing else.
    lock_file = Path(lock_path(db))
    created: list[Path] = [] if lock_file.exists() else [lock_file]
    if not db.exists() and not db.is_symlink():
        beside = [db, *(Path(f"{db}{suffix}") for suffix in ("-journal", "-wal", "-shm"))]
        created = [f for f in beside if not f.exists()] + created
    restored = False
    rolled_back: list[dict[str, Any]] = []
    absent: set[int] = set()  # tasks of rolled_back the backup does not hold at all
    unreadable: str | None = None
    replaced: dict[str, Any] | None = None
    # serve's lock (Store(exclusive=True), beside the file a symlink names): held through the
    # restore, so a coordinator that serves the database refuses it, and one starting
    # meanwhile is refused, naming this process.
    try:
        lock = take_lock(db)
    except LockHeld as exc:
        _fail(
            prog,
            f"a coordinator (pid {exc.holder}) is serving --db {args.db}; stop it first "
            "(restore replaces the database under it)",
        )
    except StoreError as exc:
        _fail(prog, str(exc))
    try:
        links = db.stat().st_nlink if db.exists() else 1
        if links > 1 and not args.force:
            _fail(
                prog,
                f"--db {args.db} has {links} hard links, and a coordinator serving it under "
                "another name holds a lock restore cannot see; stop it, then give --force",
            )
        try:
            what = f"--from {args.source}"
            if problem := _backup_file_problem(source_path):
                raise ValueError(
                    f"{what} {problem}; make a one-file backup of it with `plume coordinator "
                    f"backup --db {args.source} --out FILE` and restore that file"
                )
            with contextlib.closing(_connect_existing(source_path, immutable=True)) as source:
                version, tasks = _plume_info(source, what)
                problem = schema_version_problem(
                    version, "a backup of a newer Plume: restore it with that version"
                )
                if problem is not None:
                    raise ValueError(f"{what}: {problem}")
                _check_integrity(source, what)
                # Through a connection to the database: its -wal (a killed coordinator's) is
                # recovered first, then every page is replaced in one transaction. A new --db
                # is created 0600 first, as serve creates one (SQLite would make it 0644,
                # readable by every user, and its -journal with it).
                # A dangling symlink's target too (helper-381: it was made 0644 there).
                existed = db.exists()
                # Its size before SQLite folds a -wal in (which it does once connected).
                size = _size_with_wal(db) if existed else 0
                if not existed:
                    target_path = os.path.realpath(db)
                    os.close(os.open(target_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                with contextlib.ExitStack() as stack:
                    target = stack.enter_context(contextlib.closing(sqlite3.connect(db)))
                    target.execute("PRAGMA busy_timeout=5000")
                    if not args.force and (problem := _restore_target_problem(target)):
                        raise ValueError(
                            f"--db {args.db} {problem}; check --db, or give --force to "
                            "replace it with the backup"
                        )
                    if existed:
                        replaced = {"bytes": size} | _database_summary(target)
                    rolled_back, unreadable = _privacy_rollback(source, target)
                    absent = _tasks_absent(source, [int(r["task"]) for r in rolled_back])
                    if unreadable and not args.allow_privacy_rollback:
                        raise ValueError(
                            f"{unreadable}: restore cannot tell whether --db {args.db} "
                            "released DP rounds the backup lacks; give "
                            "--allow-privacy-rollback to restore anyway"
                        )
                    if rolled_back and not args.allow_privacy_rollback:
                        raise ValueError(
                            f"--db {args.db} has released more DP rounds than the backup "
                            f"holds ({_rollback_text(rolled_back, absent)}): restored, a task would "
                            "count from the backup's figures and release those rounds again "
                            "against the same budget, overspending it; keep --db, restore a "
                            "later backup, or give --allow-privacy-rollback to restore anyway"
                        )
                    if _not_sqlite(target):
                        # Here only with --force: a file SQLite cannot read at all, which
                        # SQLite's backup cannot write over ("file is not a database"). Emptied
                        # (its mode kept) with its -wal and -journal, which SQLite would
                        # otherwise read into the new database; the lock is held throughout.
                        target.close()
                        _empty_database_file(db)
                        target = stack.enter_context(contextlib.closing(sqlite3.connect(db)))
                    source.backup(target)
                    # A new incarnation: the restored database hands out again the round and
                    # task ids given since the backup, which devices tell apart by it
                    # (docs/operations.md, "Persistence and recovery").
                    incarnation = new_incarnation()
                    with target:
                        target.execute(
                            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                            (INCARNATION_KEY, incarnation),
                        )
                    # One file, as `backup` writes, whatever the backup's header said: the
                    # -wal is checkpointed and deleted (serve turns WAL back on).
                    mode = target.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
                    if mode != "delete":
                        raise sqlite3.OperationalError(f"journal mode stayed {mode}")
        except ValueError as exc:
            _fail(prog, str(exc))
        except (sqlite3.Error, OSError) as exc:
            _fail(prog, f"cannot restore --db {args.db} from {args.source}: {exc}")
        restored = True
    finally:
        if not restored:
            # Removed while the lock is held: no coordinator can have opened them meanwhile.
            for f in created:
                with contextlib.suppress(OSError):
                    f.unlink()
        os.close(lock)  # drops the flock
    # What was written (the file itself: --db defaults to plume.db in the current folder, and
    # may be a symlink) and what it replaced (None: --db did not exist); until stop 49 the
    # line named only --db as given, and nothing of the database it had replaced.
    line: dict[str, Any] = {
        "db": args.db,
        "path": os.path.realpath(db),
        "from": args.source,
        "schema_version": int(version),
        "tasks": tasks,
        "replaced": replaced,
        "incarnation": incarnation,
    }
    if (note := others_may_read(db)) is not None:  # an existing --db keeps its mode
        print(f"{prog}: note: {note}", file=sys.stderr)
    # Given --allow-privacy-rollback: said, and in the line, not lost silently.
    if unreadable:
        print(f"{prog}: warning: {unreadable}; restored all the same", file=sys.stderr)
    if rolled_back:
        print(
            f"{prog}: warning: rolled back the DP accounting of --db "
            f"({_rollback_text(rolled_back, absent)}); those rounds reached devices and are no longer "
            "in the restored tasks' epsilon",
            file=sys.stderr,
        )
        line["privacy_rollback"] = rolled_back
    print(json.dumps(line))
    return 0


# The most tasks restore's `replaced` lists, the newest (highest ids); its `tasks` counts all.
_REPLACED_TASKS_SHOWN = 20


def _size_with_wal(db: Path) -> int:
    """Bytes of the database file at `db` (symlinks followed) and of the -wal beside it, whose
    commits (a killed coordinator's) are part of the database too."""
    real = os.path.realpath(db)
    size = os.stat(real).st_size
    with contextlib.suppress(OSError):
        size += os.stat(real + "-wal").st_size
    return size


def _database_summary(conn: sqlite3.Connection) -> dict[str, Any]:
    """What tells the database `conn` apart, for restore's line of what it replaced: its
    schema version, its number of tasks, and each task's state, model version and closed
    rounds (the newest `_REPLACED_TASKS_SHOWN` tasks), as `status` shows them. All None for a
    file that is not a Plume database (empty, another application's, or one too damaged to
    read: what --force replaces)."""
    from .service.store import schema_version_of, table_names

    unknown: dict[str, Any] = {"schema_version": None, "tasks": None, "task_versions": None}
    try:
        tables = table_names(conn)
        version = schema_version_of(conn, tables)
        if version is None or not {"tasks", "rounds"} <= tables:
            return unknown
        count = int(conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])
        rows = conn.execute(
            "SELECT t.task_id, t.state, t.version, (SELECT COUNT(*) FROM rounds r WHERE "
            "r.task_id = t.task_id AND r.state IN ('committed', 'abandoned')) "
            "FROM tasks t ORDER BY t.task_id DESC LIMIT ?",
            (_REPLACED_TASKS_SHOWN,),
        ).fetchall()
        shown = [
            {"task": int(task), "state": str(state), "version": int(v), "rounds_closed": int(n)}
            for task, state, v, n in reversed(rows)
        ]
        return {"schema_version": int(version), "tasks": count, "task_versions": shown}
    except (sqlite3.DatabaseError, ValueError, TypeError):  # a row damaged past reading
        return unknown


def _rollback_text(rolled_back: list[dict[str, Any]], absent: set[int] | None = None) -> str:
    """The tasks and figures of `_privacy_rollback`, for one line. `absent`: tasks the backup
    does not hold at all (one made after it), said so rather than "the backup: 0 rounds, epsilon
    0", which read as a task the backup has that released nothing (s53e)."""
    absent = absent or set()
    parts = [
        f"task {r['task']}: {r['rounds']} rounds, epsilon {r['epsilon']:.6g}; "
        + (
            f"the backup has no task {r['task']}"
            if r["task"] in absent
            else f"the backup: {r['backup_rounds']} rounds, epsilon {r['backup_epsilon']:.6g}"
        )
        for r in rolled_back[:8]
    ]
    more = f"; and {len(rolled_back) - 8} more tasks" if len(rolled_back) > 8 else ""
    return "; ".join(parts) + more


def _tasks_absent(conn: sqlite3.Connection, task_ids: list[int]) -> set[int]:
    """Those of `task_ids` that the Plume database `conn` (a backup) has no row of."""
    if not task_ids:
        return set()
    try:
        held = {int(t) for (t,) in conn.execute("SELECT task_id FROM tasks")}
    except sqlite3.DatabaseError:  # already read by _privacy_rollback; say nothing more
        return set()
    return set(task_ids) - held


def _privacy_rollback(
    source: sqlite3.Connection, target: sqlite3.Connection
) -> tuple[list[dict[str, Any]], str | None]:
    """What restoring the backup `source` over the database `target` rolls back of the DP
    accounting: one entry per task whose released rounds or epsilon in `target` are above the
    backup's (task, rounds, epsilon, backup_rounds, backup_epsilon; a task the backup lacks
    has 0 and 0 there), and why either's accounting cannot be read, if so (a damaged page or
    row: what it released is not known). A `target` that is not a Plume database (absent,
    empty, another application's, or not SQLite at all) has none."""
    figures = []
    for conn, what in ((target, "--db"), (source, "the backup")):
        try:
            figures.append(_dp_released(conn))
        except (sqlite3.DatabaseError, ValueError) as exc:
            return [], f"the DP accounting of {what} cannot be read ({exc})"
    had, held = figures
    out = []
    for task, (rounds, eps) in sorted(had.items()):
        b_rounds, b_eps = held.get(task, (0, 0.0))
        if rounds > b_rounds or eps > b_eps:
            out.append(
                {
                    "task": task,
                    "rounds": rounds,
                    "epsilon": eps,
                    "backup_rounds": b_rounds,
                    "backup_epsilon": b_eps,
                }
            )
    return out, None


def _dp_released(conn: sqlite3.Connection) -> dict[int, tuple[int, float]]:
    """(rounds released, epsilon spent) of each task of the Plume database `conn` with DP
    accounting, as its round records say: a plain task's committed rounds whose `dp` stage
    accounted epsilon (its measurements, found through wrappers' `inner`), a secure task's
    rounds whose noisy sum was unmasked (`dp` of a committed or abandoned round, `pending_dp`
    of one stopped while aggregating), as the coordinator counts them at a start. Rounds: the
    larger of the records' count and their own `rounds`; epsilon: the largest recorded. Not a
    Plume database: {}. SQLite's error, or ValueError for a row that does not parse."""
    from .service.store import schema_version_of, table_names

    try:
        tables = table_names(conn)
    except sqlite3.DatabaseError:
        return {}  # not SQLite, or too damaged to list its tables: --force's case
    if not {"tasks", "rounds"} <= tables or schema_version_of(conn, tables) is None:
        return {}
    secure = {}
    for task, text in conn.execute("SELECT task_id, config_json FROM tasks"):
        config = _stored_json(text)
        if not isinstance(config, dict):
            raise ValueError(f"task {task}: its stored config is not a JSON object")
        secure[int(task)] = bool(config.get("secure"))
    count: dict[int, int] = {}
    top: dict[int, tuple[int, float]] = {}
    rows = conn.execute(
        "SELECT task_id, round_id, state, measurements_json FROM rounds "
        "WHERE state IN ('committed', 'abandoned', 'aggregating')"
    )
    for task, round_id, state, text in rows:
        meas = _stored_json(text)
        if not isinstance(meas, dict):
            raise ValueError(f"round {round_id}: its stored measurements are not a JSON object")
        record = _released_dp_record(secure.get(int(task), False), state, meas)
        eps = None if record is None else record.get("epsilon")
        if not isinstance(eps, int | float) or isinstance(eps, bool):
            continue  # no release, or a dp stage that accounts no epsilon
        rounds = record.get("rounds") if record is not None else None
        rounds = rounds if isinstance(rounds, int) and not isinstance(rounds, bool) else 0
        task = int(task)
        count[task] = count.get(task, 0) + 1
        r0, e0 = top.get(task, (0, 0.0))
        top[task] = (max(r0, rounds), max(e0, float(eps)))
    return {t: (max(count[t], r), e) for t, (r, e) in top.items()}


def _stored_json(text: Any) -> Any:
    """A stored JSON column's value; None for one that is not JSON text (a blob, bytes that are
    not UTF-8, nesting deeper than the parser allows), which the callers refuse as not an
    object: one line, not a traceback, for a hand-damaged row."""
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return None


def _released_dp_record(secure: bool, state: str, meas: dict[str, Any]) -> dict[str, Any] | None:
    """The DP record of a round (in `state`, with `meas`) that released a noisy aggregate, or
    None (docs/privacy.md: an abandoned plain round published nothing)."""
    if secure:
        key = {"committed": "dp", "abandoned": "dp", "aggregating": "pending_dp"}.get(state)
        record = meas.get(key) if key is not None else None
        return record if isinstance(record, dict) else None
    node: Any = meas
    for _ in range(64):  # wrapper chains are a few stages deep
        if state != "committed" or not isinstance(node, dict):
            return None
        if "noise_multiplier" in node and "rounds" in node and "clip" in node:
            return node
        node = node.get("inner")
    return None


def _check_integrity(conn: sqlite3.Connection, what: str) -> None:
    """`ValueError` naming `what` unless SQLite's integrity check of `conn` passes."""
    try:
        check = conn.execute("PRAGMA integrity_check").fetchone()
    except sqlite3.DatabaseError as exc:  # too damaged to check: name the file, not the target
        raise ValueError(f"{what} fails SQLite's integrity check ({exc})") from None
    if check != ("ok",):
        raise ValueError(f"{what} fails SQLite's integrity check ({check[0]})")


def _backup_file_problem(path: Path) -> str | None:
    """Why the file at `path` is not a backup restore may read as it stands, or None: a
    coordinator serving it (its `.lock` held: read without creating anything), or a -wal or
    -journal beside it holding writes the file alone lacks (a database killed mid-write or
    in use, not a backup). An empty -wal (one a reader left) holds none."""
    from .service.store import lock_path

    with contextlib.suppress(OSError):
        fd = os.open(lock_path(path), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            return f"is a database a coordinator (pid {holder}) serves, not a backup"
        finally:
            os.close(fd)
    if side := _unfolded_side(path):
        return f"{side}: writes the file alone does not hold (a database a process was writing, not a backup)"
    return None


def _unfolded_side(path: Path) -> str | None:
    """ "has a -wal file beside it (N bytes)" when a non-empty -wal or -journal lies beside the
    file at `path` (SQLite replays it onto whatever file has that name when it opens it)."""
    for side in ("-wal", "-journal"):
        with contextlib.suppress(OSError):
            if (size := os.stat(os.path.realpath(path) + side).st_size) > 0:
                return f"has a {side} file beside it ({size} bytes)"
    return None


def _not_sqlite(conn: sqlite3.Connection) -> bool:
    """Whether the database `conn` opened is not SQLite at all, or too damaged for SQLite to
    list its tables (random bytes, another format)."""
    from .service.store import table_names

    try:
        table_names(conn)
    except sqlite3.DatabaseError:
        return True
    return False


def _empty_database_file(db: Path) -> None:
    """Truncate the file at `db` (symlinks followed; its mode and owner kept) and delete the
    -wal and -journal beside it, for restore --force over a file SQLite cannot read."""
    real = os.path.realpath(db)
    os.truncate(real, 0)
    for side in ("-wal", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(real + side)


def _restore_target_problem(conn: sqlite3.Connection) -> str | None:
    """Why the database restore would replace is not one to replace without --force (a
    mistyped --db naming another application's file), or None: absent, empty, or Plume's
    (the store's rule, `schema_version_of`, and a `tasks` table: a `meta` and a `tasks`
    table without Plume's schema version are another application's)."""
    from .service.store import schema_version_of, table_names

    try:
        tables = table_names(conn)
        plume = "tasks" in tables and schema_version_of(conn, tables) is not None
    except sqlite3.DatabaseError as exc:
        return f"is not a SQLite database or it is corrupt ({exc})"
    if tables and not plume:
        listed = ", ".join(sorted(tables)[:5])
        return (
            f"is not a Plume database (tables: {listed}; no Plume schema version: another "
            "application's?)"
        )
    return None


def _is_side_file(out: Path, db: Path) -> bool:
    """Whether `out` names one of the files SQLite and serve keep beside the database `db`
    (-wal, -shm, -journal, .lock), by any path: a symlink or the database's own link."""
    from .service.store import lock_path

    names = {lock_path(db)}
    for base in {str(db), os.path.realpath(db)}:
        names |= {os.path.realpath(base + side) for side in ("-wal", "-shm", "-journal")}
    if os.path.realpath(out) in names:
        return True
    return out.exists() and any(os.path.exists(n) and out.samefile(n) for n in names)


def _path(text: str) -> Path:
    """A path the user gave (a flag, or a --config value): `~` is the home folder."""
    return Path(text).expanduser()
