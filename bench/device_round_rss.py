"""Peak RSS of a device's whole federated round on plain onnxruntime, torch unimportable.

bench/onnx_train.py's `peak_rss` measures training alone (no `Client`, no download, no encoding,
no app-directory writes, no upload). This measures what a device process holds for a real round:
`sdk.Client.participate` with an `OrtTrainer`, against `plume coordinator serve` on loopback,
which the script starts (and stops) with a task of one device a round. Each round runs in a
fresh device process, as an app's background job would, on the same app directory: the first
downloads the model as a whole snapshot, the later ones as a delta chain from the model held.
The figure is that process's `VmHWM` (peak resident set; per address space, so it restarts at
exec), in MiB (the kernel's "kB" there are KiB, divided by 1024; files written before
2026-12-04 named these fields `*_mb`), after the data are loaded (`numpy_only_mib`), after the device's imports
(`after_imports_mib`: numpy, onnxruntime, `sdk.ort.OrtTrainer`, `sdk.Client`) and at the end of
the round (`peak_rss_mib`). Every `import torch` in the device process raises.

    python bench/device_round_rss.py           # mnist_cnn, B=10, 200 MNIST examples, 3 rounds
    python bench/device_round_rss.py --quick   # a smoke run (mlp, 20 synthetic examples, 2
                                               # rounds), to bench/results/device_round_rss_quick.json
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
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

from bench._common import (  # noqa: E402
    RESULTS,
    command_line,
    git_provenance,
    out_file,
    start_serve,
    stop_serve,
    write_results,
)

CANONICAL = RESULTS / "device_round_rss.json"
INPUT_SHAPE = {"mnist_cnn": (1, 28, 28), "mlp": (1, 28, 28)}

# The device process: torch blocked before anything is imported, then the data, the imports, one
# `participate` round. Self-contained: nothing of this module (or of bench/) is imported there.
DEVICE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys, time

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked")

    sys.meta_path.insert(0, NoTorch())

    def hwm_mib():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc/self/status")

    url, app_dir, art, data_path, task_id = sys.argv[1:6]
    import numpy as np
    xy = np.fromfile(data_path, dtype=np.float32).reshape(-1, 785)
    x, y = xy[:, :784].reshape(-1, 1, 28, 28).copy(), xy[:, 784].astype(np.int64)
    del xy
    numpy_only = hwm_mib()
    import onnxruntime
    from sdk import Client
    from sdk.ort import OrtTrainer
    after_imports = hwm_mib()
    trainer = OrtTrainer.from_dir(art)
    t0 = time.perf_counter()
    with Client(url, app_dir=app_dir) as client:
        client.register()
        report = client.participate(trainer, x, y, task_id=int(task_id), max_wait_s=120)
    wall = time.perf_counter() - t0
    if report is None:
        raise SystemExit("no round was assigned within 120 s")
    print(json.dumps({
        "peak_rss_mib": round(hwm_mib(), 1),
        "after_imports_mib": round(after_imports, 1),
        "numpy_only_mib": round(numpy_only, 1),
        "round_id": report.round_id,
        "download_encoding": report.download_encoding,
        "bytes_down": report.bytes_down,
        "bytes_up": report.bytes_up,
        "accepted": bool(report.receipt.accepted),
        "round_wall_s": round(wall, 2),
        "torch_loaded": sys.modules.get("torch") is not None,
        "onnxruntime": onnxruntime.__version__,
    }))
    """
)


def results_path(args: argparse.Namespace) -> Path:
    """Where this run's JSON goes (a --quick run never writes CANONICAL unless --out names it)."""
    return out_file(args.out, CANONICAL, args.quick)


class Coordinator:
    """`plume coordinator serve` on loopback, in its own process, on a fresh database."""

    def __init__(self, db: Path, token: str, start_timeout_s: float = 120.0) -> None:
        self.url, self.proc = start_serve(
            db, token, poll_s=0.2, stderr=subprocess.PIPE, timeout_s=start_timeout_s
        )

    def stop(self) -> None:
        stop_serve(self.proc)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def write_data(path: Path, examples: int, synthetic: bool) -> None:
    """`examples` MNIST training examples (the first ones), or seeded random ones, as float32
    rows of 784 pixels and the label, the device process's input."""
    if synthetic:
        rng = np.random.default_rng(0)
        x = rng.random((examples, 784), dtype=np.float32)
        y = rng.integers(0, 10, examples).astype(np.float32)
    else:
        from mobile_sim.data import load_mnist

        data = load_mnist()
        x = data.x_train[:examples].reshape(examples, -1)
        y = data.y_train[:examples].astype(np.float32)
    np.hstack([x, y[:, None]]).astype(np.float32).tofile(path)


def export_model(name: str, art: Path) -> np.ndarray:
    """The model's ONNX training artifacts in `art` (torch, in this process only) and its
    initial parameters (seed 0), flat."""
    import torch

    from mobile_sim.models import build_model
    from sdk.flat import get_flat_params
    from sdk.onnx_export import export_training_artifacts

    torch.manual_seed(0)
    model = build_model(name)
    export_training_artifacts(model, torch.randn(4, *INPUT_SHAPE[name]), art, model_name=name)
    return np.asarray(get_flat_params(model), dtype=np.float32)


def device_round(url: str, app_dir: Path, art: Path, data: Path, task_id: int) -> dict[str, Any]:
    """One `participate` round in a fresh device process (torch blocked); what it measured."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", DEVICE_SCRIPT, url, str(app_dir), str(art), str(data), str(task_id)],
        capture_output=True, text=True, env=env, timeout=600, cwd=str(ROOT),
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"the device process failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def measure(
    model: str, batch: int, examples: int, rounds: int, synthetic: bool, tmp: Path
) -> dict[str, Any]:
    """`rounds` device rounds against a loopback coordinator; each round's figures."""
    from coordinator.service import AdminClient
    from protocol.messages import TaskConfig, TensorShape, TrainingParams
    from sdk.ort import OrtTrainer

    art, data, app = tmp / "artifacts", tmp / "data.bin", tmp / "app"
    params = export_model(model, art)
    write_data(data, examples, synthetic)
    spec = OrtTrainer.from_dir(art).spec
    task = TaskConfig(
        name="device_round_rss",
        model_name=model,
        spec=[TensorShape(e.name, list(e.shape)) for e in spec.entries],
        rounds=rounds,
        clients_per_round=1,
        over_selection=1.0,
        selection_timeout_s=1.0,
        deadline_s=600.0,
        training=TrainingParams(local_epochs=1, batch_size=batch, lr=0.05),
    )
    token = secrets.token_hex(8)
    server = Coordinator(tmp / "plume.db", token)
    try:
        with AdminClient(server.url, token) as admin:
            task_id = admin.create_task(task, params)
        per_round = []
        for _ in range(rounds):
            per_round.append(device_round(server.url, app, art, data, task_id))
            _wait_committed(server.url, token, task_id, len(per_round))
    finally:
        server.stop()
    return {"params": spec.size, "task_id": task_id, "rounds": per_round}


def _wait_committed(url: str, token: str, task_id: int, n: int, timeout_s: float = 60.0) -> None:
    """Until `n` rounds of the task are closed, so the next device round downloads the model
    they made (a delta chain from the one the device holds)."""
    from coordinator.service import AdminClient

    deadline = time.monotonic() + timeout_s
    with AdminClient(url, token) as admin:
        while admin.status(task_id).rounds_closed < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"round {n} of task {task_id} did not close in {timeout_s} s")
            time.sleep(0.1)


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline figures: the first round's (a snapshot download) and the later rounds'."""
    first, later = rounds[0], rounds[1:]
    out: dict[str, Any] = {
        "first_round_peak_rss_mib": first["peak_rss_mib"],
        "first_round_download": first["download_encoding"],
        "after_imports_mib": max(r["after_imports_mib"] for r in rounds),
        "torch_loaded": any(r["torch_loaded"] for r in rounds),
    }
    if later:
        out["later_rounds_peak_rss_mib"] = [r["peak_rss_mib"] for r in later]
        out["later_rounds_download"] = sorted({r["download_encoding"] for r in later})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="mlp, synthetic data, 2 rounds")
    parser.add_argument("--model", default="mnist_cnn", choices=sorted(INPUT_SHAPE))
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--examples", type=int, default=200, help="the device's training set")
    parser.add_argument("--rounds", type=int, default=3, help="device rounds, one process each")
    parser.add_argument(
        "--out",
        default=None,
        help="results file (default bench/results/device_round_rss.json; with --quick "
        "bench/results/device_round_rss_quick.json)",
    )
    git_provenance()  # the code this run starts from
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.examples, args.rounds = "mlp", 20, 2
    if args.rounds < 1 or args.examples < 1 or args.batch_size < 1:
        parser.error("--rounds, --examples and --batch-size must be at least 1")
    if not Path("/proc/self/status").exists():
        parser.error("needs Linux's /proc/self/status (VmHWM)")
    from mobile_sim.report import machine_info

    tmp = Path(tempfile.mkdtemp(prefix="plume_device_round_rss_"))
    try:
        measured = measure(args.model, args.batch_size, args.examples, args.rounds, args.quick, tmp)
    finally:  # the artifacts, data, database and app directory: nothing of the run is kept
        shutil.rmtree(tmp, ignore_errors=True)
    results: dict[str, Any] = {
        "benchmark": "device_round_rss",
        "command": command_line(__file__, argv),
        "quick": bool(args.quick),
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "model": args.model,
        "batch_size": args.batch_size,
        "examples": args.examples,
        "data": "synthetic (seed 0)" if args.quick else "MNIST, the first training examples",
        "threads": 1,
        **summarize(measured["rounds"]),
        "params": measured["params"],
        "rounds": measured["rounds"],
    }
    write_results(results_path(args), results)
    print(json.dumps({k: v for k, v in results.items() if k != "rounds"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
