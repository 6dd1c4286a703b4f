"""Codec speed and size: encode/decode of one MNIST-CNN update at several (topk, bits), one core.

The update is real: the parameter delta of the McMahan et al. MNIST CNN (1,663,370 scalars)
after one local epoch of SGD (B=10, lr=0.05) on 600 MNIST images, seed 0. Each setting is timed
many times, interleaved with a memory copy of the same dense bytes (the floor for touching the
update at all) so machine noise hits both alike; medians are reported.

    python bench/codec.py             # the issue's settings; writes bench/results/codec.json
    python bench/codec.py --quick     # few repetitions, a smoke run
    python bench/codec.py --no-explore  # skip the knob exploration (codec_knobs.json)
"""

from __future__ import annotations

import os

# One core: pin the thread pools before numpy and torch load them.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench._common import command_line, git_provenance, quick_stem, write_results  # noqa: E402
from compression import CodecConfig, ModelSpec, UpdateCodec  # noqa: E402
from compression._index import BitmapCoding, EliasFanoCoding, RiceCoding  # noqa: E402
from compression._topk import exact_topk, sampled_topk  # noqa: E402

DEFAULT = (0.01, 4)
SETTINGS: list[tuple[float, int]] = [
    (0.01, 4),
    (0.01, 2),
    (0.01, 8),
    (0.001, 4),
    (0.003, 4),
    (0.003, 2),
    (0.03, 4),
    (0.1, 8),
    (0.01, 16),
    (0.01, 32),
    (1.0, 16),
    (1.0, 32),
]
TARGET_ENCODE_MS = 20.0
TARGET_DECODE_MS = 3.0
F32 = npt.NDArray[np.float32]


def realistic_update(seed: int = 0, images: int = 600) -> tuple[ModelSpec, F32]:
    """`(spec, delta)`: one local epoch of the MNIST CNN on `images` MNIST training images."""
    import torch

    from mobile_sim.data import load_mnist
    from mobile_sim.models import build_model
    from sdk.flat import get_flat_params, spec_from_module
    from sdk.trainer import TorchTrainer

    torch.set_num_threads(1)
    model = build_model("mnist_cnn", seed=seed)
    spec = spec_from_module(model)
    start = get_flat_params(model)
    data = load_mnist(seed=seed)
    result = TorchTrainer(model).train(
        start,
        data.x_train[:images],
        data.y_train[:images],
        epochs=1,
        batch_size=10,
        lr=0.05,
        rng=np.random.default_rng(seed),
    )
    delta: F32 = (result.params - start).astype(np.float32)
    return spec, delta


def _ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1e6


def _stats(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {
        "median": round(statistics.median(s), 4),
        "min": round(s[0], 4),
        "p90": round(s[min(len(s) - 1, int(0.9 * len(s)))], 4),
    }


def bench_setting(spec: ModelSpec, u: F32, topk: float, bits: int, reps: int) -> dict[str, Any]:
    codec = UpdateCodec(spec, CodecConfig(topk=topk, bits=bits))
    frame, dense, report = codec.roundtrip(u, np.random.default_rng(0))
    enc, dec, copy_dense, copy_frame = [], [], [], []
    stage_s: dict[str, list[float]] = {}
    for rep in range(reps + 2):
        rng = np.random.default_rng(rep)
        c = _ms(lambda: np.copy(u))
        t0 = time.perf_counter_ns()
        _, rep_report = codec.encode(u, rng)
        e = (time.perf_counter_ns() - t0) / 1e6
        d = _ms(lambda: codec.decode(frame))
        f = _ms(lambda: bytearray(frame))
        if rep < 2:  # warm-up: page faults, zstd context creation
            continue
        enc.append(e)
        dec.append(d)
        copy_dense.append(c)
        copy_frame.append(f)
        for s in rep_report.stages:
            stage_s.setdefault(s.name.split(":")[0], []).append(s.seconds * 1e3)
    err = dense.astype(np.float64) - u
    enc_ms, dec_ms, copy_ms = (statistics.median(x) for x in (enc, dec, copy_dense))
    return {
        "topk": topk,
        "bits": bits,
        "nnz": report.nnz,
        "frame_bytes": report.frame_bytes,
        "dense_bytes": report.dense_bytes,
        "ratio_vs_dense": round(report.ratio, 2),
        "bits_per_kept_value": round(8 * report.frame_bytes / max(report.nnz, 1), 3),
        "index_coding": report.index_coding,
        "zstd_kept": report.compressed,
        "encode_ms": _stats(enc),
        "decode_ms": _stats(dec),
        "memcpy_dense_ms": _stats(copy_dense),
        "memcpy_frame_ms": _stats(copy_frame),
        "encode_over_memcpy": round(enc_ms / copy_ms, 2),
        "decode_over_memcpy": round(dec_ms / copy_ms, 2),
        "stage_ms": {k: round(statistics.median(v), 4) for k, v in stage_s.items()},
        "stage_bytes_out": {s.name: s.bytes_out for s in report.stages},
        "relative_l2_error": round(float(np.linalg.norm(err) / np.linalg.norm(u)), 5),
    }


def _time_median(fn: Callable[[], object], reps: int) -> float:
    fn()
    return round(statistics.median(_ms(fn) for _ in range(reps)), 4)


def _full_topk(mag: F32, k: int) -> npt.NDArray[np.intp]:
    n = mag.shape[0]
    return np.sort(np.argpartition(mag, n - k)[n - k :])


def explore(spec: ModelSpec, u: F32, reps: int) -> dict[str, Any]:
    """Knob exploration: index codings, top-k modes, scope, block size, zstd, bits."""
    d = spec.size
    mag = np.abs(u)
    out: dict[str, Any] = {}

    rows = []
    for topk in (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3):
        k = max(1, round(topk * d))
        idx = exact_topk(mag, k)
        entropy = (math.lgamma(d + 1) - math.lgamma(k + 1) - math.lgamma(d - k + 1)) / math.log(2)
        row: dict[str, Any] = {
            "topk": topk,
            "k": k,
            "entropy_bits_per_index": round(entropy / k, 3),
        }
        for coding in (BitmapCoding(), RiceCoding(), EliasFanoCoding()):
            size, param = coding.plan(idx, d)
            row[coding.name] = {
                "bytes": size,
                "param": param,
                "bits_per_index": round(8 * size / k, 3),
            }
        row["auto_choice"] = min(("rice", "ef", "bitmap"), key=lambda n: row[n]["bytes"])
        rows.append(row)
    out["index_coding_sizes"] = {
        "what": "bytes of each index coding for the exact top-k of the real update",
        "rows": rows,
    }

    rows = []
    for topk in (0.001, 0.01, 0.1):
        k = max(1, round(topk * d))
        full_ms = _time_median(partial(_full_topk, mag, k), reps)
        exact_ms = _time_median(partial(exact_topk, mag, k), reps)
        sampled_ms = _time_median(partial(sampled_topk, mag, k, np.random.default_rng(0)), reps)
        got = sampled_topk(mag, k, np.random.default_rng(0))
        exact_idx = exact_topk(mag, k)
        rows.append(
            {
                "topk": topk,
                "k": k,
                "full_argpartition_ms": full_ms,
                "exact_ms": exact_ms,
                "sampled_ms": sampled_ms,
                "sampled_nnz": int(got.shape[0]),
                "sampled_energy_vs_exact": round(
                    float(
                        np.sum(u[got].astype(np.float64) ** 2)
                        / np.sum(u[exact_idx].astype(np.float64) ** 2)
                    ),
                    5,
                ),
            }
        )
    out["topk_modes"] = {
        "what": "selection time on precomputed |u| (ms); exact = sample-threshold prefilter + "
        "argpartition on the candidates; full_argpartition = argpartition over all d + sort",
        "rows": rows,
    }

    def quality(cfg: CodecConfig) -> dict[str, Any]:
        codec = UpdateCodec(spec, cfg)
        frame, dense, report = codec.roundtrip(u, np.random.default_rng(0))
        err = dense.astype(np.float64) - u
        kept = dense != 0
        return {
            "frame_bytes": len(frame),
            "ratio_vs_dense": round(report.ratio, 2),
            "nnz": report.nnz,
            "relative_l2_error": round(float(np.linalg.norm(err) / np.linalg.norm(u)), 5),
            "energy_kept": round(
                float(np.sum(u[kept].astype(np.float64) ** 2) / np.sum(u.astype(np.float64) ** 2)),
                5,
            ),
            "encode_ms": _time_median(lambda: codec.encode(u, np.random.default_rng(0)), reps),
        }

    out["scope"] = {
        "what": "global vs per-tensor top-k at topk=0.01, bits=4",
        "global": quality(CodecConfig(0.01, 4)),
        "per_tensor": quality(CodecConfig(0.01, 4, scope="per_tensor")),
        "global_sampled": quality(CodecConfig(0.01, 4, topk_mode="sampled")),
    }
    out["block"] = {
        "what": "scale block size at topk=0.01, bits=4 (8 bytes of scales per block)",
        **{
            str(b): quality(CodecConfig(0.01, 4, block=b))
            for b in (32, 64, 128, 256, 512, 1024, 4096)
        },
    }
    out["bits"] = {
        "what": "value bits at topk=0.01 (32 = lossless values: the error is the top-k error alone)",
        **{str(b): quality(CodecConfig(0.01, b)) for b in (1, 2, 4, 8, 16, 32)},
    }
    zrows = {}
    for level in (1, 3, 9, 19):
        codec = UpdateCodec(spec, CodecConfig(0.01, 4, zstd_level=level))
        reports = [codec.encode(u, np.random.default_rng(i))[1] for i in range(reps + 1)][1:]
        z = reports[0].stage("zstd")
        zrows[str(level)] = {
            "raw_payload_bytes": z.bytes_in,
            "stored_payload_bytes": z.bytes_out,
            "zstd_ms": round(statistics.median(r.stage("zstd").seconds * 1e3 for r in reports), 4),
        }
    out["zstd_level"] = {"what": "zstd over the payload at topk=0.01, bits=4", **zrows}
    return out


def results_path(args: argparse.Namespace, stem: str = "codec") -> Path:
    """This run's JSON in the --out folder: codec.json (codec_knobs.json for the knob sweep),
    `_quick` before `.json` for a --quick run."""
    return Path(args.out) / (quick_stem(stem, args.quick) + ".json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time encode/decode of one MNIST-CNN update at several (topk, bits) on one "
        "core, next to a memory copy of the dense update; write bench/results/codec.json."
    )
    parser.add_argument("--quick", action="store_true", help="few repetitions, a smoke run")
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="timed repetitions per setting (default 200; 5 with --quick)",
    )
    parser.add_argument("--no-explore", action="store_true", help="skip the knob exploration")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results",
        help="result folder (codec.json; a --quick run writes codec_quick.json)",
    )
    git_provenance()  # the code this run starts from
    args = parser.parse_args(argv)
    reps = args.reps or (5 if args.quick else 200)

    from mobile_sim.report import machine_info, utc_now

    load_before = os.getloadavg()
    print("training one local epoch of the MNIST CNN for a realistic update ...", flush=True)
    spec, u = realistic_update()
    results = []
    for topk, bits in tqdm(SETTINGS, desc="settings", unit="setting"):
        # fewer repetitions for the slow dense settings keeps the run short
        n = reps if topk < 0.5 else max(3, reps // 10)
        results.append(bench_setting(spec, u, topk, bits, n))

    default = next(r for r in results if (r["topk"], r["bits"]) == DEFAULT)
    table = [
        f"{'topk':>7} {'bits':>4} {'frame B':>9} {'ratio':>8} {'enc ms':>8} {'dec ms':>8} {'memcpy ms':>9} {'index':>6}"
    ]
    for r in results:
        table.append(
            f"{r['topk']:>7} {r['bits']:>4} {r['frame_bytes']:>9} {r['ratio_vs_dense']:>8} "
            f"{r['encode_ms']['median']:>8.3f} {r['decode_ms']['median']:>8.3f} "
            f"{r['memcpy_dense_ms']['median']:>9.3f} {r['index_coding']:>6}"
        )
    print("\n".join(table))

    enc, dec = default["encode_ms"]["median"], default["decode_ms"]["median"]
    doc: dict[str, Any] = {
        "benchmark": "bench/codec.py",
        "command": command_line(__file__, argv),
        "quick": bool(args.quick),
        "date": utc_now(),
        "machine": machine_info(),
        "threads": 1,
        "load_average_1m": {
            "before": round(load_before[0], 2),
            "after": round(os.getloadavg()[0], 2),
        },
        "noise_note": "shared machine: other jobs preempt this one, so medians sit above the "
        "uncontended cost; `min` in each setting is the closest figure to it",
        "update": {
            "what": "MNIST CNN parameter delta after 1 local epoch, SGD B=10 lr=0.05, 600 MNIST images, seed 0",
            "d": spec.size,
            "dense_bytes": spec.dense_bytes,
            "l2_norm": round(float(np.linalg.norm(u)), 6),
            "max_abs": float(np.abs(u).max()),
        },
        "repetitions": reps,
        "default_setting": {"topk": DEFAULT[0], "bits": DEFAULT[1], "block": 256, "index": "auto"},
        "encode_ms": enc,
        "decode_ms": dec,
        "memcpy_dense_ms": default["memcpy_dense_ms"]["median"],
        "frame_bytes": default["frame_bytes"],
        "ratio_vs_dense": default["ratio_vs_dense"],
        "targets": {
            "encode_ms": TARGET_ENCODE_MS,
            "decode_ms": TARGET_DECODE_MS,
            "encode_met": enc <= TARGET_ENCODE_MS,
            "decode_met": dec <= TARGET_DECODE_MS,
        },
        "settings": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = results_path(args)
    write_results(path, doc)
    print(
        f"default topk={DEFAULT[0]} bits={DEFAULT[1]}: encode {enc:.3f} ms (target {TARGET_ENCODE_MS}), "
        f"decode {dec:.3f} ms (target {TARGET_DECODE_MS}), {default['frame_bytes']} bytes, "
        f"{default['ratio_vs_dense']}x vs dense; wrote {path}"
    )
    if not args.no_explore:
        print("exploring knobs ...", flush=True)
        knobs = {
            "command": doc["command"],
            "quick": doc["quick"],
            "date": doc["date"],
            "machine": doc["machine"],
            "update": doc["update"],
            **explore(spec, u, max(3, reps // 4)),
        }
        kpath = results_path(args, "codec_knobs")
        write_results(kpath, knobs)
        print(f"wrote {kpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
