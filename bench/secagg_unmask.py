"""Cost of the honest SecAgg+ unmask: strict Shamir reconstruction and the server's `finish`.

Part 1: one secret (32 bytes, as every SecAgg secret) reconstructed strictly by
`combine_shares` from m shares at t = m // 2 + 1, caches cleared before each call ("cold") and
again with the same x coordinates ("warm"); also from m shares of m + m // 10 holders (a tenth
missing, the holder numbers a round with dropouts leaves: the closed-form weights then cost
O(m * missing)). The former O(m t) function (tests/protocol/test_s24a_fast_combine.py's
`_reference_combine`) is timed in the same run at m <= --old-max as the baseline.

Part 2: a whole honest unmask (`SecAggServer.finish`) of a complete-graph group of k + 1
nodes (degree k, t = k // 2 + 1, vector of 4 elements in Z_2^8, as
tests/protocol/test_h224_robust_decode_cost.py measured before), every node alive. The server
is real and receives every message through its public methods; the nodes are not simulated
(their dealing is O(k t) each, O(k^3) for the group: hours at k = 2,048). Instead each node's
advertised keys are fresh X25519 keys, its key-sharing bundles are stand-in bytes (the server
only routes them), its masked input is its value plus its self-mask (with nobody dropped the
pairwise masks cancel in the sum and `finish` never computes them), and its unmask response
holds, for each neighbour, that neighbour's Shamir share of its own 32-byte self-mask seed at
the x coordinate the server expects. Dealer d's shares are valid shares on its own polynomial
of degree < t, f_A + (d + 1) f_B, built from two `create_shares` calls (f_A of a random seed,
f_B of the seed 1): O(k) per dealer. `finish` must return the exact sum, which checks all of
them. The former `combine_shares` is timed in `finish` at k <= --old-max, and at
k <= --liars-max the group runs again with 8 survivors that each return one share moved off its
dealer's polynomial (8 secrets error-corrected, the most a group allows; the 8 must be named).

    python bench/secagg_unmask.py     # writes bench/results/secagg_unmask.json (a few minutes)
    python bench/secagg_unmask.py --quick   # k, m <= 240 only, to secagg_unmask_quick.json
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import RESULTS, command_line, git_provenance, out_file, write_results  # noqa: E402
from mobile_sim.report import machine_info, utc_now  # noqa: E402
from protocol.secagg import (  # noqa: E402
    AdvertiseKeys,
    MaskedInput,
    SecAggServer,
    ShareKeys,
    ShareKind,
    UnmaskResponse,
    _server,
    _shamir,
    create_shares,
    generate_keypair,
    pack_bits,
    self_mask,
)
from protocol.secagg._plan import ProtocolParams  # noqa: E402
from protocol.secagg._shamir import (  # noqa: E402
    _HEADER,
    CHECK_BYTES,
    COMMIT_BYTES,
    PRIME,
    VERSION,
    Y_BYTES,
    _check,
    _commit,
    _parse,
    combine_shares,
)
from tests.protocol.test_s24a_fast_combine import _reference_combine  # noqa: E402

KEY = 32
BITS, LENGTH = 8, 4


def _cold() -> None:
    """Forget every cached weight table, so a call pays for its own."""
    for cached in (
        _shamir._bary_weights,
        _shamir._weights_cached,
        _shamir._master_poly,
        _shamir._fast_weights,
        _shamir._powers,
    ):
        cached.cache_clear()
    _shamir._FACTORIALS = ((1,), (1,))
    gc.collect()


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def strict(ms: list[int], old_max: int, repeats: int) -> list[dict[str, Any]]:
    rng = random.Random(24)
    rows = []
    for m in ms:
        t = m // 2 + 1
        secret = bytes(rng.randrange(256) for _ in range(KEY))
        holders = m + m // 10
        shares = create_shares(secret, t, holders)
        rng.shuffle(shares)
        gappy, full = shares[:m], sorted(shares, key=lambda s: _parse(s).x)[:m]
        row: dict[str, Any] = {"m": m, "t": t}
        cold = []
        for _ in range(repeats):
            _cold()
            cold.append(_timed(functools.partial(combine_shares, full)))
        row["new_cold_s"] = round(statistics.median(cold), 5)
        row["new_warm_s"] = round(
            statistics.median(
                _timed(functools.partial(combine_shares, full)) for _ in range(repeats)
            ),
            5,
        )
        gaps = []
        for _ in range(repeats):
            _cold()
            gaps.append(_timed(functools.partial(combine_shares, gappy)))
        row["new_cold_tenth_missing_s"] = round(statistics.median(gaps), 5)
        row["holders_when_a_tenth_missing"] = holders
        assert combine_shares(full) == combine_shares(gappy) == secret
        if m <= old_max:
            old = []
            for _ in range(max(1, repeats // 2)):
                _cold()
                old.append(_timed(functools.partial(_reference_combine, full)))
            row["old_cold_s"] = round(statistics.median(old), 5)
            row["speedup_cold"] = round(row["old_cold_s"] / row["new_cold_s"], 1)
            assert _reference_combine(full) == secret
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _dealer_shares(k: int, t: int, seed: bytes) -> tuple[list[bytes], list[list[bytes]]]:
    """(seeds, shares): dealer d's 32-byte seed and its k shares (x = 1..k), on the polynomial
    f_A + (d + 1) f_B with f_A dealing `seed` and f_B dealing the seed 1 (chunk 0 is 1, the
    others 0): seed_d is `seed` with d + 1 added to its first 15-byte chunk."""
    a = [_parse(s).ys for s in create_shares(seed, t, k)]
    b = [_parse(s).ys for s in create_shares(b"\x01" + bytes(KEY - 1), t, k)]
    base = int.from_bytes(seed[:15], "little")
    seeds, out = [], []
    for d in range(k + 1):
        secret = (base + d + 1).to_bytes(15, "little") + seed[15:]
        commit = _commit(secret)
        mine = []
        for x in range(1, k + 1):
            body = _HEADER.pack(VERSION, t, x, KEY) + commit
            body += b"".join(
                ((ya + (d + 1) * yb) % PRIME).to_bytes(Y_BYTES, "little")
                for ya, yb in zip(a[x - 1], b[x - 1], strict=True)
            )
            mine.append(body + _check(body))
        seeds.append(secret)
        out.append(mine)
    return seeds, out


def _moved(share: bytes) -> bytes:
    """The share with its first y moved off the polynomial, re-sealed (what a lying survivor
    can send: right x, threshold and length, a valid check)."""
    at = _HEADER.size + COMMIT_BYTES
    body = bytearray(share[:-CHECK_BYTES])
    y = int.from_bytes(body[at : at + Y_BYTES], "little")
    body[at : at + Y_BYTES] = ((y + 7) % PRIME).to_bytes(Y_BYTES, "little")
    return bytes(body) + _check(bytes(body))


def _group(k: int, liars: int = 0) -> tuple[SecAggServer, int, float]:
    """A server of a complete-graph group of k + 1 nodes, every unmask response received:
    (server, the sum `finish` must return, seconds the server spent receiving the responses).
    Survivor i < `liars` returns its share of node n // 2 + i's seed moved off the polynomial
    (one corrected secret each, as tests/protocol/test_h224_robust_decode_cost.py's liars)."""
    n = k + 1
    t = k // 2 + 1
    rng = random.Random(k)
    seed = (
        bytes(rng.randrange(256) for _ in range(14))
        + b"\x00"
        + bytes(rng.randrange(256) for _ in range(KEY - 15))
    )  # chunk 0 below 2^112: adding d + 1 never leaves 120 bits
    p = ProtocolParams(9, n, k, t, BITS, LENGTH, bytes(range(32)), b"\x24" * 32)
    server = SecAggServer(p)
    for i in range(n):
        server.receive_advertise(AdvertiseKeys(9, i, generate_keypair()[1], generate_keypair()[1]))
    server.close_advertise()
    bundle = bytes(16)  # the server routes bundles without reading them
    for i in range(n):
        others = tuple((j, bundle) for j in range(n) if j != i)
        server.receive_share_keys(ShareKeys(9, i, others))
    server.close_share_keys()
    seeds, shares = _dealer_shares(k, t, seed)
    mask = (1 << BITS) - 1
    for i in range(n):
        y = (np.full(LENGTH, i, np.uint64) + self_mask(seeds[i], LENGTH, BITS)) & np.uint64(mask)
        server.receive_masked_input(MaskedInput(9, i, LENGTH, BITS, pack_bits(y, BITS)))
    server.close_masked_input()
    responses = []
    for i in range(n):
        # holder i's x in dealer d's directory (the other k nodes in order): i + 1 if i < d
        answer = tuple(
            (d, ShareKind.SELF_MASK, shares[d][i if i < d else i - 1]) for d in range(n) if d != i
        )
        if i < liars:
            answer = tuple(
                (d, kind, _moved(share) if d == n // 2 + i else share) for d, kind, share in answer
            )
        responses.append(UnmaskResponse(9, i, answer))
    del shares
    t0 = time.perf_counter()
    for msg in responses:
        server.receive_unmask(msg)
    receive = time.perf_counter() - t0
    return server, sum(range(n)) & mask, receive


def unmask(ks: list[int], old_max: int, liars_max: int) -> list[dict[str, Any]]:
    rows = []
    for k in ks:
        row: dict[str, Any] = {"k": k, "n": k + 1, "t": k // 2 + 1}
        arms: list[tuple[str, Callable[[list[bytes]], bytes], int]] = [("new", combine_shares, 0)]
        if k <= old_max:
            arms.append(("old", _reference_combine, 0))
        if k <= liars_max:
            arms.append(("new_8_liars", combine_shares, 8))
        for name, fn, liars in arms:
            t0 = time.perf_counter()
            server, want, receive = _group(k, liars)
            if name == "new":
                row["setup_s"] = round(time.perf_counter() - t0 - receive, 2)
                row["receive_unmask_s"] = round(receive, 2)
            _cold()
            real = vars(_server)["combine_shares"]
            setattr(_server, "combine_shares", fn)  # noqa: B010 (the name finish calls)
            try:
                t0 = time.perf_counter()
                res = server.finish()
                took = time.perf_counter() - t0
            finally:
                setattr(_server, "combine_shares", real)  # noqa: B010
            assert res.total.tolist() == [want] * LENGTH
            assert res.suspects == tuple(range(liars)) and server.state.robust_decodes == liars
            row[f"finish_{name}_s"] = round(took, 3)
            del server, res
            gc.collect()
        if "finish_old_s" in row:
            row["speedup"] = round(row["finish_old_s"] / row["finish_new_s"], 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--m", type=int, nargs="+", default=[60, 240, 1024, 2048])
    ap.add_argument("--k", type=int, nargs="+", default=[60, 240, 1024, 2048])
    ap.add_argument(
        "--old-max", type=int, default=240, help="largest m and k the former function runs at"
    )
    ap.add_argument(
        "--liars-max", type=int, default=1024, help="largest k run again with 8 lying survivors"
    )
    ap.add_argument("--repeats", type=int, default=5, help="calls per strict figure (median)")
    ap.add_argument("--quick", action="store_true", help="m and k <= 240 only")
    ap.add_argument("--out", type=Path, default=None)
    git_provenance()  # the code this run starts from
    args = ap.parse_args(argv)
    ms, ks = args.m, args.k
    if args.quick:
        ms, ks = [m for m in ms if m <= 240], [k for k in ks if k <= 240]
    doc: dict[str, Any] = {
        "benchmark": "bench/secagg_unmask.py",
        "command": command_line(__file__, argv),
        "date": utc_now(),
        "machine": machine_info(),
        "quick": args.quick,
        "strict_reconstruction": strict(ms, args.old_max, args.repeats),
        "honest_unmask": unmask(ks, args.old_max, args.liars_max),
        "notes": [
            "strict: one 32-byte secret from m shares, t = m // 2 + 1; cold = weight caches "
            "cleared before the call; tenth_missing = m of m + m // 10 holders (gaps in x); "
            "old = the former O(m t) combine_shares (tests/protocol/test_s24a_fast_combine.py)",
            "honest_unmask: SecAggServer.finish of a complete graph of k + 1 nodes, all alive, "
            "vector of 4 elements in Z_2^8 (self-mask expansion is negligible at this size); "
            "receive_unmask_s is the server's receive_unmask calls before it (not in finish); "
            "setup_s builds the messages; caches cleared before finish; finish_new_8_liars_s: "
            "survivors 0..7 each return one share moved off its polynomial (8 secrets "
            "error-corrected, the most a group allows; the 8 named)",
            "shared 2-core machine with other jobs running: compare the ratios of this run",
        ],
    }
    out = out_file(args.out, RESULTS / "secagg_unmask.json", args.quick)
    write_results(out, doc)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
