"""What the coordinator's JSON strictness checks cost a check-in, next to the check-in itself.

Every JSON route (registration, check-in, task creation) parses its body twice: FastAPI's
parse, which keeps the last value of a repeated key, and the route dependency's own
(`coordinator.service.app._refuse_repeated_keys`, with the unpaired-surrogate search), which
refuses a key given twice in one object (422). This script times, round-robin in one run on
the bodies the SDK really sends:
  - `parse_us`: `json.loads(body)`, the parse FastAPI makes anyway (the baseline);
  - `checks_us`: the strictness checks `_media` adds for a JSON body;
  - `check_in_ms`: one whole signed check-in (`Client.check_in()`) over loopback HTTP to a
    coordinator running in this process's thread (`ServerThread`) with no task, so answered
    "wait" at its least work: the share below is an upper bound for a check-in a round
    gathers on.
and reports the checks as a share of a check-in and as a multiple of the parse.

    python bench/json_checks.py          # writes bench/results/json_checks.json
    python bench/json_checks.py --quick  # a smoke run: json_checks_quick.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import command_line, git_provenance, out_file, write_results  # noqa: E402
from coordinator.service import ServerThread, ServiceConfig  # noqa: E402
from coordinator.service.app import _SURROGATE_ESCAPE, _refuse_repeated_keys  # noqa: E402
from mobile_sim.report import machine_info, utc_now  # noqa: E402
from sdk import Client  # noqa: E402

RESULTS = ROOT / "bench" / "results"


class _Recording(httpx.HTTPTransport):
    """httpx's own transport, keeping the last body sent to each route (by its last path
    segment): the bytes the coordinator's routes parse."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: dict[str, bytes] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies[request.url.path.rsplit("/", 1)[-1]] = request.read()
        return super().handle_request(request)


def _checks(body: bytes) -> None:
    """What `_media` adds for a JSON body (coordinator/service/app.py)."""
    if _SURROGATE_ESCAPE.search(body):
        raise AssertionError("the SDK's body holds no surrogate escape")
    _refuse_repeated_keys(body)


def _per_call_us(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--repeats", type=int, default=None, help="round-robin rounds (default 30; 3 --quick)"
    )
    ap.add_argument(
        "--check-ins", type=int, default=50, help="check-ins timed per round (default 50)"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: writes json_checks_quick.json, marked quick, never published",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the JSON goes (default: bench/results/json_checks.json, or "
        "json_checks_quick.json beside it with --quick)",
    )
    git_provenance()
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 30
    if args.repeats < 1 or args.check_ins < 1:
        ap.error("--repeats and --check-ins must be at least 1")
    args.out = out_file(args.out, RESULTS / "json_checks.json", args.quick)
    calls = 200 if args.quick else 2000
    with tempfile.TemporaryDirectory() as scratch:
        cfg = ServiceConfig(db_path=str(Path(scratch) / "plume.db"), admin_token="bench-token")
        parse: list[float] = []
        checks: list[float] = []
        check_in: list[float] = []
        sent = _Recording()
        device = Path(scratch) / "device"
        with ServerThread(cfg) as url, Client(url, device, transport=sent) as client:
            client.register()
            client.check_in()  # the first request's connection and key set-up, untimed
            body = sent.bodies["checkin"]
            for _ in range(args.repeats):  # round-robin: noise hits every part alike
                parse.append(_per_call_us(lambda: json.loads(body), calls))
                checks.append(_per_call_us(lambda: _checks(body), calls))
                per_us = _per_call_us(lambda: client.check_in(), args.check_ins)
                check_in.append(per_us / 1000.0)
    parse_us, checks_us = statistics.median(parse), statistics.median(checks)
    check_in_ms = statistics.median(check_in)
    doc: dict[str, Any] = {
        "benchmark": "bench/json_checks.py",
        "command": command_line(__file__, argv),
        "date": utc_now(),
        "machine": machine_info(),
        "quick": args.quick,
        "repeats": args.repeats,
        "check_in_body_bytes": len(body),
        "register_body_bytes": len(sent.bodies["devices"]),
        "parse_us": round(parse_us, 2),
        "checks_us": round(checks_us, 2),
        "check_in_ms": round(check_in_ms, 3),
        "checks_over_parse": round(checks_us / parse_us, 2),
        "checks_share_of_check_in_pct": round(checks_us / (check_in_ms * 1000.0) * 100.0, 3),
        "note": "medians over the round-robin rounds; a check-in is the SDK's whole signed "
        "request (naming no task) and its 'wait' answer over loopback, client and coordinator "
        "in one process on the same cores; a coordinator with a task to gather for does more "
        "per check-in, so the share is an upper bound",
    }
    write_results(args.out, doc)
    for key in ("parse_us", "checks_us", "check_in_ms", "checks_over_parse"):
        print(f"{key:32s} {doc[key]}")
    print(f"{'checks_share_of_check_in_pct':32s} {doc['checks_share_of_check_in_pct']} %")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
