"""`plume coordinator`: serve the HTTP coordinator, and admin helpers (create-task, status)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["register"]

_EXAMPLES = """\
examples:
  plume coordinator serve --db plume.db --host 127.0.0.1 --port 8080 --admin-token s3cret
  plume coordinator serve --db plume.db --host 0.0.0.0 --port 8443 \\
      --tls-cert cert.pem --tls-key key.pem
  plume coordinator create-task --url http://127.0.0.1:8080 --admin-token s3cret \\
      --model mlp --rounds 20 --clients-per-round 10 --topk 0.01 --bits 4
  plume coordinator create-task --url http://127.0.0.1:8080 --admin-token s3cret \\
      --model mlp --rounds 20 --clients-per-round 10 --secure --secure-fraction 0.05 \\
      --stage-timeout 30
  plume coordinator status --url http://127.0.0.1:8080 --admin-token s3cret --task 1
  plume coordinator pause  --url http://127.0.0.1:8080 --admin-token s3cret --task 1

The admin token can also come from the PLUME_ADMIN_TOKEN environment variable.
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
    ("--stage-timeout", "stage_timeout_s", float, "a stage closes this long after it opened"),
    ("--stage-idle", "stage_idle_s", float, "or this long after its latest upload"),
)


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

    s = csub.add_parser("serve", help="serve the coordinator until interrupted")
    s.add_argument("--db", default="plume.db", help="SQLite database file (created if missing)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument(
        "--admin-token",
        default=os.environ.get("PLUME_ADMIN_TOKEN"),
        help="bearer token of the admin API (default $PLUME_ADMIN_TOKEN; unset disables it)",
    )
    s.add_argument("--tls-cert", default=None, help="PEM certificate chain (enables HTTPS)")
    s.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    s.add_argument(
        "--signature-window", type=float, default=300.0, help="accepted clock skew, seconds"
    )
    s.add_argument("--poll", type=float, default=0.25, help="retry-after while gathering, s")
    s.add_argument(
        "--register-rate",
        type=float,
        default=0.0,
        help="registrations per second allowed per client address (IPv6: per /64), refilling "
        "a bucket of --register-burst; over it, 429 + Retry-After. 0 (default) = unlimited: "
        "phones behind carrier NAT share addresses, so per-IP limits belong at the edge "
        "(docs/operations.md)",
    )
    s.add_argument(
        "--register-burst",
        type=int,
        default=20,
        help="registrations one address may make at once before --register-rate applies "
        "(default 20)",
    )
    s.add_argument(
        "--body-timeout",
        type=float,
        default=120.0,
        help="seconds a request body may take to arrive in full, else 408 and the connection "
        "closes (default 120: a 24 KB update at 2G speeds takes about 10 s; 0 = no limit)",
    )
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=_serve)

    def admin_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--url", default="http://127.0.0.1:8080", help="coordinator base URL")
        q.add_argument("--admin-token", default=os.environ.get("PLUME_ADMIN_TOKEN"))
        q.add_argument("--cacert", default=None, help="CA bundle to verify an HTTPS coordinator")

    c = csub.add_parser("create-task", help="create a task with a zoo model's initial weights")
    admin_args(c)
    c.add_argument("--name", default=None)
    c.add_argument("--model", default="mlp", help="mobile_sim zoo model (mlp, mnist_cnn, ...)")
    c.add_argument("--seed", type=int, default=0, help="initial weights and round seeds")
    c.add_argument("--rounds", type=int, default=10)
    c.add_argument("--clients-per-round", type=int, default=10)
    c.add_argument("--over-selection", type=float, default=1.3)
    c.add_argument("--deadline", type=float, default=60.0, help="round deadline, seconds")
    c.add_argument("--min-reports", type=int, default=1)
    c.add_argument("--selection-timeout", type=float, default=10.0)
    c.add_argument("--topk", type=float, default=0.01)
    c.add_argument("--bits", type=int, default=4)
    c.add_argument("--downlink-topk", type=float, default=0.02)
    c.add_argument("--downlink-bits", type=int, default=8)
    c.add_argument("--aggregator", default="fedavg")
    c.add_argument("--server-lr", type=float, default=1.0)
    c.add_argument("--local-epochs", type=int, default=1)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--lr", type=float, default=0.05)
    g = c.add_argument_group(
        "secure aggregation (SecAgg+; unset knobs keep the SecureConfig defaults)"
    )
    g.add_argument("--secure", action="store_true", help="run every round under SecAgg+")
    for flag, key, kind, helptext in _SECURE_FLAGS:
        g.add_argument(flag, dest=f"secure_{key}", type=kind, default=None, help=helptext)
    g.add_argument(
        "--secure-noise",
        dest="secure_noise",
        choices=("none", "discrete_gaussian", "skellam"),
        default=None,
        help="distributed DP noise each device adds (with --secure-noise-multiplier)",
    )
    g.add_argument(
        "--secure-no-sketch",
        dest="secure_sketch",
        action="store_false",
        default=None,
        help="choose S_r from |global update| instead of the row/column energy sketch",
    )
    c.set_defaults(func=_create_task)

    for name, helptext in (
        ("status", "print a task's status and rounds as JSON"),
        ("pause", "stop opening rounds for a task"),
        ("resume", "resume a paused task"),
    ):
        q = csub.add_parser(name, help=helptext)
        admin_args(q)
        q.add_argument("--task", type=int, required=True)
        q.set_defaults(func=_task_action, action_name=name)


def _serve(args: argparse.Namespace) -> int:
    from .service import ServiceConfig, serve

    if (args.tls_cert is None) != (args.tls_key is None):
        print("error: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if not 0 <= args.register_rate < float("inf") or args.register_burst < 1:
        print("error: --register-rate must be >= 0 and --register-burst >= 1", file=sys.stderr)
        return 2
    if not 0 <= args.body_timeout < float("inf"):
        print("error: --body-timeout must be a number of seconds >= 0", file=sys.stderr)
        return 2
    config = ServiceConfig(
        db_path=args.db,
        admin_token=args.admin_token,
        signature_window_s=args.signature_window,
        poll_s=args.poll,
        register_rate_per_s=args.register_rate,
        register_burst=args.register_burst,
        body_timeout_s=args.body_timeout,
    )
    serve(
        config,
        args.host,
        args.port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        log_level=args.log_level,
    )
    return 0


def _admin(args: argparse.Namespace) -> Any:
    from .service import AdminClient

    if not args.admin_token:
        raise SystemExit("error: an admin token is required (--admin-token or PLUME_ADMIN_TOKEN)")
    return AdminClient(args.url, args.admin_token, verify=args.cacert or True)


def _create_task(args: argparse.Namespace) -> int:
    from mobile_sim.models import build_model
    from protocol.messages import CodecParams, TaskConfig, TensorShape, TrainingParams
    from sdk.flat import get_flat_params, spec_from_module

    from .service import AdminError

    try:
        model = build_model(args.model, seed=args.seed)
        spec = spec_from_module(model)
        config = TaskConfig(
            name=args.name or args.model,
            model_name=args.model,
            spec=[TensorShape(e.name, list(e.shape)) for e in spec.entries],
            rounds=args.rounds,
            clients_per_round=args.clients_per_round,
            over_selection=args.over_selection,
            deadline_s=args.deadline,
            min_reports=args.min_reports,
            selection_timeout_s=args.selection_timeout,
            codec=CodecParams(topk=args.topk, bits=args.bits),
            downlink=CodecParams(topk=args.downlink_topk, bits=args.downlink_bits),
            aggregator=args.aggregator,
            server_lr=args.server_lr,
            seed=args.seed,
            training=TrainingParams(args.local_epochs, args.batch_size, args.lr),
            secure=_secure_settings(args),
        )
        with _admin(args) as admin:
            task_id = admin.create_task(config, get_flat_params(model))
    except (ValueError, AdminError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"task_id": task_id, "model": args.model, "params": spec.size}))
    return 0


def _secure_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    """`TaskConfig.secure` from the --secure flags (None without --secure)."""
    keys = [key for _, key, _, _ in _SECURE_FLAGS] + ["noise", "sketch"]
    given = {k: getattr(args, f"secure_{k}") for k in keys}
    if not args.secure:
        if any(v is not None for v in given.values()):
            raise ValueError("the secure-aggregation options need --secure")
        return None
    return {k: v for k, v in given.items() if v is not None}


def _task_action(args: argparse.Namespace) -> int:
    from protocol.messages import to_json

    from .service import AdminError

    try:
        with _admin(args) as admin:
            if args.action_name == "pause":
                out: Any = to_json(admin.pause(args.task))
            elif args.action_name == "resume":
                out = to_json(admin.resume(args.task))
            else:
                out = {
                    "task": to_json(admin.status(args.task)),
                    "rounds": [to_json(r) for r in admin.rounds(args.task)],
                }
    except AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0
