"""On-device training on plain onnxruntime against torch: step time, parity, sizes, RAM, accuracy.

For each model, on one thread (torch.set_num_threads(1), ORT intra_op_num_threads=1) and the
same batch: the median time of one SGD step in torch (zero_grad, forward, loss, backward, step)
and in onnxruntime (one run of the exported training-step graph, feeds and fetches included),
the two interleaved step by step so both see the same machine load. Also: parity of 1 and 50 steps on MNIST batches, artifact sizes, the installed size of the
runtime packages, the peak RSS (VmHWM, in MiB: `peak_rss_mib`, `after_imports_mib`,
`numpy_only_mib`; files written before 2026-12-04 named them `*_mb`) of an ORT-only process
(torch blocked) and of a torch process doing the same training, ORT session options tried, and a federated run mixing torch and ORT
devices against the same run with torch devices only.

    python bench/onnx_train.py            # the issue's setting (mnist_cnn headline, B=10)
    python bench/onnx_train.py --quick    # a smoke run (few steps, small mixed run), to
                                          # bench/results/onnx_train_quick.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench._common import RESULTS, command_line, git_provenance, out_file, write_results  # noqa: E402
from mobile_sim.data import load_mnist  # noqa: E402
from mobile_sim.models import build_model  # noqa: E402
from mobile_sim.report import machine_info  # noqa: E402
from sdk.onnx_export import export_training_artifacts  # noqa: E402
from sdk.ort import OrtTrainer  # noqa: E402

TARGET_RATIO = 1.5
TARGET_PP = 0.5
INPUT_SHAPE = {"mnist_cnn": (1, 28, 28), "mlp": (1, 28, 28)}


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _package_bytes(name: str) -> int | None:
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return _dir_bytes(Path(next(iter(spec.submodule_search_locations))))


def _time_both(
    trainer: OrtTrainer, model_name: str, x: np.ndarray, y: np.ndarray, steps: int, warmup: int
) -> tuple[float, float]:
    """Median seconds per step of torch and of onnxruntime, the two steps interleaved.

    Interleaving makes both see the same machine load (other processes come and go), so the
    ratio holds even when the absolute times drift.
    """
    model = build_model(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    params = [p.detach().numpy().copy() for p in build_model(model_name).parameters()]
    t_torch, t_ort = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        _, params, _ = trainer.step(params, [], x, y, 0.01)
        t2 = time.perf_counter()
        if i >= warmup:
            t_torch.append(t1 - t0)
            t_ort.append(t2 - t1)
    return statistics.median(t_torch), statistics.median(t_ort)


def _parity(trainer: OrtTrainer, model_name: str, data: Any, steps: int, seed: int) -> float:
    """Max over tensors of ||delta_ort - delta_torch|| / ||delta_torch|| after `steps` steps."""
    rng = np.random.default_rng(seed)
    model = build_model(model_name)
    start = [p.detach().numpy().copy() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    params = [p.copy() for p in start]
    for i in range(steps):
        idx = rng.choice(len(data.x_train), [7, 1, 5, 8, 3][i % 5], replace=False)
        x, y = data.x_train[idx], data.y_train[idx]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(
            model(torch.from_numpy(x)), torch.from_numpy(y)
        ).backward()
        opt.step()
        _, params, _ = trainer.step(params, [], x, y, 0.02)
    worst = 0.0
    for got, p, s in zip(params, model.parameters(), start, strict=True):
        want = p.detach().numpy() - s
        diff = np.linalg.norm((got - s - want).astype(np.float64))
        worst = max(worst, float(diff / np.linalg.norm(want.astype(np.float64))))
    return worst


_RSS_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, resource, sys

    def hwm_mib():
        # VmHWM is per address space, so it restarts at exec; ru_maxrss would carry over the
        # parent's peak (Linux keeps it across execve).
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    mode, art, data_path, steps, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    if mode == "ort":
        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked")
        sys.meta_path.insert(0, NoTorch())
    import numpy as np
    xy = np.fromfile(data_path, dtype=np.float32).reshape(-1, 785)
    x, y = xy[:, :784].reshape(-1, 1, 28, 28).copy(), xy[:, 784].astype(np.int64)
    base = hwm_mib()
    if mode == "ort":
        import onnxruntime
        from sdk.ort import OrtTrainer
        after_import = hwm_mib()
        trainer = OrtTrainer.from_dir(art)
        params = np.concatenate([np.full(e.size, 0.01, np.float32) for e in trainer.spec.entries])
        trainer.train(params, x[: steps * batch], y[: steps * batch], epochs=1,
                      batch_size=batch, lr=0.01, rng=np.random.default_rng(0))
    else:
        import torch
        torch.set_num_threads(1)
        from mobile_sim.models import build_model
        from sdk.flat import get_flat_params
        from sdk.trainer import TorchTrainer
        after_import = hwm_mib()
        trainer = TorchTrainer(build_model(art))
        params = get_flat_params(trainer.module)
        trainer.train(params, x[: steps * batch], y[: steps * batch], epochs=1,
                      batch_size=batch, lr=0.01, rng=np.random.default_rng(0))
    peak = hwm_mib()
    print(json.dumps({"peak_rss_mib": round(peak, 1), "after_imports_mib": round(after_import, 1),
                      "numpy_only_mib": round(base, 1),
                      "torch_loaded": "torch" in sys.modules}))
    """
)


def _peak_rss(mode: str, target: str, data_path: Path, steps: int, batch: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, mode, target, str(data_path), str(steps), str(batch)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=900,
    )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _mixed_run(quick: bool, artifacts: Path) -> dict[str, Any]:
    from mobile_sim.runner import SimConfig, run_simulation

    if quick:
        base = SimConfig(
            dataset="mnist",
            model="mlp",
            clients=20,
            per_round=5,
            rounds=3,
            local_epochs=1,
            topk=0.05,
            bits=4,
        )
    else:
        # The headline MNIST-CNN setting (issue 2): 100 clients, Dirichlet(0.5), 10 a round,
        # E=5, B=10, SGD lr 0.05, top-1% + 4 bits with error feedback, 20 rounds, seed 0.
        base = SimConfig(dataset="mnist", model="mnist_cnn", clients=100, per_round=10, rounds=20)
    torch_only = run_simulation(base, progress=True, label="torch")
    from dataclasses import replace

    mixed_cfg = replace(base, ort_fraction=0.5, ort_artifacts=str(artifacts))
    mixed = run_simulation(mixed_cfg, progress=True, label="mixed")
    acc_t, acc_m = torch_only.final_accuracy, mixed.final_accuracy
    assert acc_t is not None and acc_m is not None
    return {
        "config": {k: v for k, v in base.as_dict().items() if v is not None},
        "ort_fraction": 0.5,
        "torch_only_accuracy": acc_t,
        "mixed_accuracy": acc_m,
        "accuracy_gap_pp": round(100 * (acc_t - acc_m), 3),
        "target_pp": TARGET_PP,
        "meets_target": abs(100 * (acc_t - acc_m)) <= TARGET_PP,
        "torch_only_wall_s": round(sum(r.wall_s for r in torch_only.records), 2),
        "mixed_wall_s": round(sum(r.wall_s for r in mixed.records), 2),
    }


CANONICAL = RESULTS / "onnx_train.json"


def results_path(args: argparse.Namespace) -> Path:
    """Where this run's JSON goes (a --quick run never writes CANONICAL unless --out names it)."""
    return out_file(args.out, CANONICAL, args.quick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps and a small mixed run")
    parser.add_argument("--models", default="mnist_cnn,mlp", help="comma-separated zoo models")
    parser.add_argument("--batch-sizes", default="10,32", help="first one is the headline")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per measurement")
    parser.add_argument("--no-mixed", action="store_true", help="skip the federated mixed run")
    parser.add_argument(
        "--out",
        default=None,
        help="results file (default bench/results/onnx_train.json; with --quick "
        "bench/results/onnx_train_quick.json)",
    )
    git_provenance()  # the code this run starts from
    args = parser.parse_args(argv)
    steps = 20 if args.quick else args.steps
    warmup = 5 if args.quick else 20
    models = args.models.split(",")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    torch.set_num_threads(1)
    data = load_mnist()
    tmp = Path(tempfile.mkdtemp(prefix="plume_onnx_bench_"))
    try:
        return _bench(args, argv, tmp, steps, warmup, models, batches, data)
    finally:  # the exported artifacts and the data file: nothing of the run is kept there
        shutil.rmtree(tmp, ignore_errors=True)


def _bench(
    args: argparse.Namespace,
    argv: list[str] | None,
    tmp: Path,
    steps: int,
    warmup: int,
    models: list[str],
    batches: list[int],
    data: Any,
) -> int:
    """The body of `main`, writing its temporary files under `tmp` (removed by `main`)."""
    results: dict[str, Any] = {
        "benchmark": "onnx_train",
        "command": command_line(__file__, argv),
        "quick": bool(args.quick),
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "threads": 1,
        "steps_timed": steps,
        "target_ort_over_torch": TARGET_RATIO,
        "models": {},
    }
    worst_parity = 0.0
    n_tasks = len(models) * (len(batches) + 4)
    bar = tqdm(total=n_tasks, desc="onnx_train", unit="task")
    for name in models:
        art = tmp / name
        t0 = time.perf_counter()
        export_training_artifacts(
            build_model(name), torch.randn(4, *INPUT_SHAPE[name]), art, model_name=name
        )
        export_s = time.perf_counter() - t0
        bar.update()
        trainer = OrtTrainer.from_dir(art)
        entry: dict[str, Any] = {
            "params": trainer.spec.size,
            "export_seconds": round(export_s, 2),
            "artifact_bytes": {
                "train_step.onnx": (art / "train_step.onnx").stat().st_size,
                "infer.onnx": (art / "infer.onnx").stat().st_size,
                "manifest.json": (art / "manifest.json").stat().st_size,
            },
            "dense_params_bytes": 4 * trainer.spec.size,
            "step_time": {},
        }
        for b in batches:
            x, y = data.x_train[:b], data.y_train[:b]
            t_torch, t_ort = _time_both(trainer, name, x, y, steps, warmup)
            entry["step_time"][f"B={b}"] = {
                "torch_ms": round(1e3 * t_torch, 3),
                "ort_ms": round(1e3 * t_ort, 3),
                "ort_over_torch": round(t_ort / t_torch, 3),
            }
            bar.update()
        # Session options tried (headline batch): onnxruntime's graph optimisation levels,
        # stepped round-robin so load changes hit every level alike.
        x, y = data.x_train[: batches[0]], data.y_train[: batches[0]]
        names = ("disable", "basic", "extended", "all")
        sessions = {lv: OrtTrainer.from_dir(art, optimization=lv) for lv in names}
        start = [p.detach().numpy().copy() for p in build_model(name).parameters()]
        samples: dict[str, list[float]] = {lv: [] for lv in names}
        for i in range(warmup + max(steps // 2, 10)):
            for lv, sess in sessions.items():
                t0 = time.perf_counter()
                sess.step(start, [], x, y, 0.0)
                if i >= warmup:
                    samples[lv].append(time.perf_counter() - t0)
        levels = {lv: round(1e3 * statistics.median(v), 3) for lv, v in samples.items()}
        entry["ort_ms_by_optimization_level"] = levels
        bar.update()
        entry["parity_rel_err"] = {
            "1_step": _parity(trainer, name, data, 1, seed=1),
            "50_steps": _parity(trainer, name, data, 50, seed=50),
        }
        worst_parity = max(worst_parity, *entry["parity_rel_err"].values())
        bar.update()
        # Peak RSS: an ORT-only process (torch blocked) and a torch process, same training.
        data_path = tmp / "data.bin"
        n = 20 * batches[0]
        np.hstack(
            [data.x_train[:n].reshape(n, -1), data.y_train[:n, None].astype(np.float32)]
        ).astype(np.float32).tofile(data_path)
        entry["peak_rss"] = {
            "ort_process": _peak_rss("ort", str(art), data_path, 20, batches[0]),
            "torch_process": _peak_rss("torch", name, data_path, 20, batches[0]),
        }
        bar.update()
        results["models"][name] = entry
    bar.close()

    headline = results["models"][models[0]]["step_time"][f"B={batches[0]}"]
    results["headline"] = f"{models[0]}, B={batches[0]}, one thread"
    results["ort_over_torch_step_time"] = headline["ort_over_torch"]
    results["meets_step_time_target"] = headline["ort_over_torch"] <= TARGET_RATIO
    results["worst_ort_over_torch_step_time"] = max(
        v["ort_over_torch"] for m in results["models"].values() for v in m["step_time"].values()
    )
    results["parity_max_rel_err"] = worst_parity
    results["packages_installed_bytes"] = {
        name: _package_bytes(name) for name in ("onnxruntime", "numpy", "zstandard", "torch")
    }
    if not args.no_mixed:
        export_training_artifacts(
            build_model("mlp" if args.quick else "mnist_cnn"),
            torch.randn(4, 1, 28, 28),
            tmp / "mixed",
        )
        results["mixed_run"] = _mixed_run(args.quick, tmp / "mixed")

    write_results(results_path(args), results)
    print(json.dumps({k: v for k, v in results.items() if k != "models"}, indent=2))
    for name, entry in results["models"].items():
        print(name, json.dumps(entry["step_time"]), "parity", entry["parity_rel_err"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
