"""Where the MNIST-CNN client update spends its time on this CPU, and what makes it faster.

Each experiment is an interleaved A/B (variants take turns, repetition after repetition, so a
shared machine's load hits them alike) and reports the median seconds per repetition and the
ratio to the experiment's first variant. The clients are real ones: the `plume sim` defaults
(100 clients, Dirichlet 0.5 over MNIST, E=5, B=10, lr 0.05, mnist_cnn).

Experiments (default: all):
  linear    fc1 (3136 -> 512) at B=10, forward + both backward products: BLAS vs oneDNN.
  layout    one client's steps: NCHW vs channels_last.
  trainer   TorchTrainer with and without the oneDNN linear path; the plain-loop client
            (deepcopy + DataLoader + SGD) at 1 and 2 torch threads.
  maxpool   TorchTrainer with torch's max-pool kernel vs `fast_max_pool` (1 and 2 threads).
  optim     SGD for-loop vs foreach, zero_grad to None vs to zeros.
  eval      the 2,000-image test evaluation: no_grad vs inference_mode.
  bf16      bfloat16 autocast (AVX512-BF16 is present): speed only; NOT used, it changes numerics.
  compile   torch.compile (inductor) of the training step: compile seconds and step time.
  pool      a whole round's training (10 clients): sequential backend at 2 threads vs the process
            pool (2 workers x 1 thread), plus pickle / transfer costs of params and deltas.
  share     of the plain loop's round: training, codec, evaluation, per-client setup.
  ceiling   this machine's best fp32 rates at 2 threads: a 2048^3 GEMM, and the CNN's own
            training step (torch's default kernels) at batch 10, 64 and 256; with `share` in
            the same run, the rate one round's training would need to fit in half the plain
            loop's round.
  ops       one real client's training step (the product's `TorchTrainer`, one thread) next
            to its big kernels timed alone at B=10 (conv1, conv2 forward + backward, fc1's
            three oneDNN products and SGD update), their GFLOP/s, and a 1-thread oneDNN
            2048^3 GEMM (the per-core ceiling); the step minus the kernels is the rest.
  fftconv   conv2 (10x32x14x14, 64 filters 5x5) forward + backward: oneDNN's direct kernel vs
            an FFT convolution (16x16 rfft, one complex matmul per frequency), one thread.
  winograd  conv2 forward + backward, one thread: oneDNN's direct kernel vs Winograd's minimal
            filtering F(2x2,5x5) and F(4x4,5x5) written in torch ops (tiles by unfold and the
            input transform as a matmul, or as a strided 1-channel convolution; one batched
            matmul over the transform points; the output transform as a matmul), with the
            output back in NCHW and, the best case for a fused step that would pool in
            Winograd's tile layout, left in that layout; forward alone too; how far each one's
            output and gradients are from the direct kernel's.
  fused     the cohort's training, one thread: TorchTrainer's autograd path (fused=False) vs
            its autograd-free step (fused=True, the default, sdk/_fused.py) and that step with
            fc1's SGD update folded into an in-place addmm_ (fold_update=True, opt-in), and how
            far each one's trained parameters are from autograd's.
  conv1     conv1's weight gradient (1 input channel, B=10 real images), one thread: oneDNN's
            convolution_backward vs unfold (im2col) + one batched matmul, and each one's
            error against float64; conv1's oneDNN forward for scale; and the cohort's training
            with the fused step either way (TorchTrainer's unfold_conv=False / True).

The trainer, maxpool and ops experiments time TorchTrainer's autograd path (fused=False), the
path their fast_linear / fast_pool switches act on.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pickle
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

RESULT = RESULTS / "cnn_speed_explore.json"
# Forward + backward FLOPs of one mnist_cnn training sample: conv1 627k MACs + conv2 10.0M +
# fc 1.6M forward, about 3x that for forward + backward (conv1 has no input gradient).
CNN_TRAIN_FLOP_PER_SAMPLE = 72e6


EXPERIMENTS = (
    "linear",
    "layout",
    "trainer",
    "maxpool",
    "optim",
    "eval",
    "bf16",
    "compile",
    "pool",
    "share",
    "ceiling",
    "ops",
    "fftconv",
    "fused",
    "winograd",
    "conv1",
)


def _ab(variants: dict[str, Callable[[], Any]], reps: int, desc: str) -> dict[str, Any]:
    """Interleaved timing: each repetition runs every variant once, in turn (the order rotates
    so no variant always follows the same one). One untimed warm-up call per variant."""
    from tqdm import tqdm

    names = list(variants)
    for name in names:
        variants[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in tqdm(range(reps), desc=desc, unit="rep", leave=False):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times[names[0]])
    return {
        n: {
            "median_s": statistics.median(t),
            "min_s": min(t),
            "ratio_to_first": statistics.median(t) / base,
            "reps": len(t),
        }
        for n, t in times.items()
    }


class _Setup:
    """The `plume sim` default data, partition and model, and a few real clients."""

    def __init__(self) -> None:
        from mobile_sim.runner import SimConfig, prepare

        self.cfg = SimConfig(seed=0)
        setup = prepare(self.cfg)
        self.data = setup.data
        self.parts = setup.parts
        self.model = setup.model
        self.spec = setup.spec
        from sdk.flat import get_flat_params

        self.params = get_flat_params(self.model)
        rng = np.random.default_rng(5)
        self.cohort = [int(c) for c in rng.choice(self.cfg.clients, 10, replace=False)]
        # A median-sized client for the per-client experiments.
        sizes = [len(self.parts[c]) for c in self.cohort]
        self.client = self.cohort[int(np.argsort(sizes)[len(sizes) // 2])]

    def xy(self, dev: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.parts[dev]
        return self.data.x_train[idx], self.data.y_train[idx]


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


# --- linear -----------------------------------------------------------------------------------


def exp_linear(s: _Setup, reps: int) -> dict[str, Any]:
    import torch

    from sdk.trainer import onednn_linear_available

    _threads(1)
    out: dict[str, Any] = {"onednn_available": onednn_linear_available()}
    op = torch.ops.mkldnn._linear_pointwise
    for n_in, n_out in ((3136, 512), (512, 10), (64, 32), (784, 200)):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(10, n_in, generator=gen)
        w = torch.randn(n_out, n_in, generator=gen)
        b = torch.randn(n_out, generator=gen)
        g = torch.randn(10, n_out, generator=gen)

        def blas(x: Any = x, w: Any = w, b: Any = b, g: Any = g) -> None:
            for _ in range(20):
                torch.addmm(b, x, w.t())
                g.mm(w)
                g.t().mm(x)

        def onednn(x: Any = x, w: Any = w, b: Any = b, g: Any = g) -> None:
            for _ in range(20):
                op(x, w, b, "none", [], "")
                op(g, w.t(), None, "none", [], "")
                op(g.t(), x.t(), None, "none", [], "")

        res = _ab({"blas": blas, "onednn": onednn}, reps, f"linear {n_in}x{n_out}")
        flop = 20 * 3 * 2 * 10 * n_in * n_out
        for v in res.values():
            v["gflop_per_s"] = flop / v["median_s"] / 1e9
        out[f"{n_in}x{n_out}_B10_fwd_bwd_x20"] = res
    return out


# --- one client's steps -----------------------------------------------------------------------


def _client_steps(
    s: _Setup,
    *,
    channels_last: bool = False,
    fast_linear: bool = False,
    foreach: bool = False,
    zero_to_none: bool = True,
    autocast_bf16: bool = False,
) -> Callable[[], None]:
    import contextlib

    import torch

    from mobile_sim.models import build_model
    from sdk.trainer import onednn_linear

    m = build_model("mnist_cnn")
    x, y = s.xy(s.client)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        xt = xt.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, foreach=foreach)
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(x)))

    def run() -> None:
        kern = onednn_linear(m) if fast_linear else contextlib.nullcontext(0)
        amp = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if autocast_bf16
            else contextlib.nullcontext()
        )
        with kern:
            for start in range(0, len(x), 10):
                idx = order[start : start + 10]
                opt.zero_grad(set_to_none=zero_to_none)
                with amp:
                    out = m(xt.index_select(0, idx))
                torch.nn.functional.cross_entropy(out.float(), yt[idx]).backward()
                opt.step()

    return run


def exp_layout(s: _Setup, reps: int) -> dict[str, Any]:
    _threads(1)
    return _ab(
        {
            "nchw": _client_steps(s),
            "channels_last": _client_steps(s, channels_last=True),
        },
        reps,
        "layout",
    )


def _plain_client(s: _Setup) -> Callable[[], None]:
    """The benchmark's plain loop for one client (bench/sim_throughput.py `_PlainLoop.round`)."""
    import torch

    from mobile_sim.models import build_model

    model = build_model("mnist_cnn")
    x, y = s.xy(s.client)

    def run() -> None:
        local = copy.deepcopy(model)
        opt = torch.optim.SGD(local.parameters(), lr=0.05)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
            batch_size=10,
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
        )
        for _ in range(5):
            for xb, yb in loader:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(local(xb), yb).backward()
                opt.step()

    return run


def _trainer_client(
    s: _Setup, fast_linear: bool, fast_pool: bool = True, fused: bool = False
) -> Callable[[], None]:
    """One client's E=5 training with `TorchTrainer`; by default on its autograd path
    (`fused=False`), the path the fast_linear and fast_pool experiments measure."""
    from mobile_sim.models import build_model
    from sdk.trainer import TorchTrainer

    trainer = TorchTrainer(
        build_model("mnist_cnn"), fast_linear=fast_linear, fast_pool=fast_pool, fused=fused
    )
    x, y = s.xy(s.client)

    def run() -> None:
        trainer.train(
            s.params, x, y, epochs=5, batch_size=10, lr=0.05, rng=np.random.default_rng(0)
        )

    return run


def exp_trainer(s: _Setup, reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {"client_examples": len(s.parts[s.client]), "epochs": 5}
    for threads in (1, 2):
        _threads(threads)
        out[f"threads_{threads}"] = _ab(
            {
                "plain_loop_client": _plain_client(s),
                "trainer_blas": _trainer_client(s, False, fast_pool=False),
                "trainer_onednn_linear": _trainer_client(s, True, fast_pool=False),
            },
            reps,
            f"trainer {threads}t",
        )
    # The same client's delta from both kernel paths: how far apart the numerics are.
    from mobile_sim.models import build_model
    from sdk.trainer import TorchTrainer

    _threads(1)
    x, y = s.xy(s.client)
    res = [
        TorchTrainer(build_model("mnist_cnn"), fast_linear=f, fused=False).train(
            s.params, x, y, epochs=5, batch_size=10, lr=0.05, rng=np.random.default_rng(0)
        )
        for f in (False, True)
    ]
    d0, d1 = res[0].params - s.params, res[1].params - s.params
    out["delta_max_abs_diff"] = float(np.abs(d0 - d1).max())
    out["delta_max_abs"] = float(np.abs(d0).max())
    out["delta_rel_l2_diff"] = float(np.linalg.norm(d0 - d1) / np.linalg.norm(d0))
    return out


def exp_maxpool(s: _Setup, reps: int) -> dict[str, Any]:
    """One client's E=5 local training with torch's max-pool kernel vs `fast_max_pool`, at 1
    and 2 threads, and whether the two give bit-identical parameters."""
    from mobile_sim.models import build_model
    from sdk.trainer import TorchTrainer

    out: dict[str, Any] = {"client_examples": len(s.parts[s.client]), "epochs": 5}
    for threads in (1, 2):
        _threads(threads)
        out[f"threads_{threads}"] = _ab(
            {
                "torch_max_pool": _trainer_client(s, True, fast_pool=False),
                "fast_max_pool": _trainer_client(s, True, fast_pool=True),
            },
            reps,
            f"maxpool {threads}t",
        )
    x, y = s.xy(s.client)
    params = [
        TorchTrainer(build_model("mnist_cnn"), fast_pool=fast, fused=False)
        .train(s.params, x, y, epochs=5, batch_size=10, lr=0.05, rng=np.random.default_rng(0))
        .params
        for fast in (False, True)
    ]
    out["bit_identical_params"] = bool(np.array_equal(params[0], params[1]))
    return out


def exp_optim(s: _Setup, reps: int) -> dict[str, Any]:
    _threads(1)
    return _ab(
        {
            "for_loop_to_none": _client_steps(s),
            "foreach_to_none": _client_steps(s, foreach=True),
            "for_loop_zeroed": _client_steps(s, zero_to_none=False),
        },
        reps,
        "optim",
    )


def exp_bf16(s: _Setup, reps: int) -> dict[str, Any]:
    _threads(1)
    res = _ab(
        {"fp32": _client_steps(s), "bf16_autocast": _client_steps(s, autocast_bf16=True)},
        reps,
        "bf16",
    )
    res["note"] = "speed only: bf16 changes the numerics far beyond float tolerance; not used"
    return res


# --- evaluation -------------------------------------------------------------------------------


def exp_eval(s: _Setup, reps: int) -> dict[str, Any]:
    import torch

    from mobile_sim.models import build_model
    from sdk.flat import set_flat_params

    m = build_model("mnist_cnn")
    xt, yt = torch.from_numpy(s.data.x_test), torch.from_numpy(s.data.y_test)

    def run(batch: int, inference: bool) -> Callable[[], None]:
        def go() -> None:
            set_flat_params(m, s.params)
            m.eval()
            with torch.inference_mode() if inference else torch.no_grad():
                for start in range(0, len(xt), batch):
                    logits = m(xt[start : start + batch])
                    float(torch.nn.functional.cross_entropy(logits, yt[start : start + batch]))

        return go

    out: dict[str, Any] = {"test_images": len(xt)}
    for threads in (1, 2):
        _threads(threads)
        out[f"threads_{threads}"] = _ab(
            {
                "no_grad_batch_1000 (old default)": run(1000, False),
                "inference_mode_batch_1000": run(1000, True),
                "inference_mode_batch_250 (new default)": run(250, True),
                "inference_mode_batch_100": run(100, True),
            },
            reps,
            f"eval {threads}t",
        )
    return out


# --- torch.compile ----------------------------------------------------------------------------


def exp_compile(s: _Setup, reps: int) -> dict[str, Any]:
    import shutil

    import torch

    from mobile_sim.models import build_model

    _threads(1)
    out: dict[str, Any] = {"cxx": shutil.which("c++") or shutil.which("g++")}
    m = build_model("mnist_cnn")
    x, y = s.xy(s.client)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)

    def step(xb: Any, yb: Any) -> Any:
        loss = torch.nn.functional.cross_entropy(m(xb), yb)
        loss.backward()
        return loss

    compiled = torch.compile(step, dynamic=False)
    t0 = time.perf_counter()
    try:
        opt.zero_grad(set_to_none=True)
        compiled(xt[:10], yt[:10])
    except Exception as exc:  # report why compile is unusable here, and move on
        out["error"] = f"{type(exc).__name__}: {exc}"[:500]
        return out
    out["compile_s_first_step"] = time.perf_counter() - t0
    n_full = (len(x) // 10) * 10

    def run(fn: Callable[..., Any]) -> Callable[[], None]:
        def go() -> None:
            for start in range(0, n_full, 10):
                opt.zero_grad(set_to_none=True)
                fn(xt[start : start + 10], yt[start : start + 10])
                opt.step()

        return go

    out["steps"] = _ab({"eager": run(step), "compiled": run(compiled)}, reps, "compile")
    per_step_gain = (out["steps"]["eager"]["median_s"] - out["steps"]["compiled"]["median_s"]) / (
        n_full // 10
    )
    out["seconds_saved_per_step"] = per_step_gain
    out["steps_to_pay_back_compile"] = (
        out["compile_s_first_step"] / per_step_gain if per_step_gain > 0 else None
    )
    return out


# --- process pool -----------------------------------------------------------------------------


def exp_pool(s: _Setup, reps: int) -> dict[str, Any]:
    from mobile_sim.backends import SequentialBackend, TrainContext, TrainJob
    from mobile_sim.backends.process_pool import ProcessPoolBackend

    out: dict[str, Any] = {}
    d = s.params
    t0 = time.perf_counter()
    blob = pickle.dumps(d, protocol=pickle.HIGHEST_PROTOCOL)
    out["pickle_params_ms"] = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    pickle.loads(blob)
    out["unpickle_params_ms"] = (time.perf_counter() - t0) * 1e3
    out["params_mb"] = d.nbytes / 1e6
    ctx = TrainContext("mnist_cnn", s.data.x_train, s.data.y_train, 5, 10, 0.05)
    jobs = [TrainJob(f"dev-{c}", c, 1, 0, s.parts[c]) for c in s.cohort]
    out["cohort_examples"] = [len(s.parts[c]) for c in s.cohort]
    out["two_process_parallel_efficiency"] = _parallel_efficiency()
    _threads(2)
    seq = SequentialBackend()
    seq.start(ctx)
    seq1 = SequentialBackend()
    t0 = time.perf_counter()
    pool = ProcessPoolBackend(workers=2, inner="sequential")
    pool.start(ctx)
    out["pool_start_s"] = time.perf_counter() - t0
    try:
        seq1.start(ctx)

        def one_thread() -> None:
            _threads(1)
            try:
                seq1.train(d, jobs)
            finally:
                _threads(2)

        res = _ab(
            {
                "sequential_2_threads": lambda: seq.train(d, jobs),
                "sequential_1_thread": one_thread,
                "pool_2x1": lambda: pool.train(d, jobs),
            },
            reps,
            "pool",
        )
        a, b = seq.train(d, jobs), pool.train(d, jobs)
        out["max_abs_delta_diff"] = max(
            float(np.abs(ra.delta - rb.delta).max()) for ra, rb in zip(a, b, strict=True)
        )
    finally:
        pool.close()
    out["round_training"] = res
    return out


_PROBE = """
import time, torch
torch.set_num_threads(1)
m = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 5, padding=2), torch.nn.ReLU(),
                        torch.nn.Conv2d(32, 64, 5, padding=2))
x = torch.randn(10, 1, 28, 28)
for _ in range(5): m(x).sum().backward()
t0 = time.perf_counter()
for _ in range(60): m(x).sum().backward()
print(time.perf_counter() - t0)
"""


def _parallel_efficiency() -> dict[str, float]:
    """The same single-threaded conv work in one process, then in two at once: on an idle
    2-core machine the pair takes as long as one (efficiency 1.0); on a loaded one, longer."""
    import subprocess

    def launch(n: int) -> list[float]:
        procs = [
            subprocess.Popen([sys.executable, "-c", _PROBE], stdout=subprocess.PIPE, text=True)
            for _ in range(n)
        ]
        return [float(p.communicate()[0]) for p in procs]

    single = launch(1)[0]
    pair = launch(2)
    return {"one_process_s": single, "two_processes_s": max(pair), "efficiency": single / max(pair)}


# --- shares of the plain loop's round ---------------------------------------------------------


def exp_share(s: _Setup, reps: int) -> dict[str, Any]:
    """Time each part of the benchmark plain loop's round separately (2 threads)."""
    import torch

    from compression import UpdateCodec
    from mobile_sim.models import build_model
    from sdk.device import UpdateEncoder
    from sdk.flat import get_flat_params
    from sdk.trainer import evaluate

    _threads(2)
    cfg = s.cfg
    model = build_model("mnist_cnn")
    codec = UpdateCodec(s.spec, cfg.codec())
    parts: dict[str, list[float]] = {
        "setup_s": [],
        "train_s": [],
        "codec_s": [],
        "eval_s": [],
    }
    steps = sum(5 * -(-len(s.parts[c]) // 10) for c in s.cohort)
    for _ in range(reps):
        setup = train = cod = 0.0
        acc = np.zeros_like(s.params)
        for dev in s.cohort:
            x, y = s.xy(dev)
            t0 = time.perf_counter()
            local = copy.deepcopy(model)
            opt = torch.optim.SGD(local.parameters(), lr=cfg.lr)
            loader = torch.utils.data.DataLoader(
                torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
                batch_size=10,
                shuffle=True,
                generator=torch.Generator().manual_seed(dev),
            )
            t1 = time.perf_counter()
            for _ in range(cfg.local_epochs):
                for xb, yb in loader:
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(local(xb), yb).backward()
                    opt.step()
            t2 = time.perf_counter()
            delta = get_flat_params(local) - s.params
            enc = UpdateEncoder(s.spec, cfg.codec())
            frame, _ = enc.encode(delta, np.random.default_rng(dev), float(len(x)))
            codec.decode(frame).add_to(acc, float(len(x)))
            t3 = time.perf_counter()
            setup += t1 - t0
            train += t2 - t1
            cod += t3 - t2
        t0 = time.perf_counter()
        evaluate(model, s.params, s.data.x_test, s.data.y_test, fast_pool=False)
        parts["eval_s"].append(time.perf_counter() - t0)
        parts["setup_s"].append(setup)
        parts["train_s"].append(train)
        parts["codec_s"].append(cod)
    med = {k: statistics.median(v) for k, v in parts.items()}
    total = sum(med.values())
    samples = sum(5 * len(s.parts[c]) for c in s.cohort)
    return {
        "median_s": med,
        "fraction": {k: v / total for k, v in med.items()},
        "steps": steps,
        "training_samples": samples,
        "train_gflop_per_s": samples * CNN_TRAIN_FLOP_PER_SAMPLE / med["train_s"] / 1e9,
    }


def _best_rate(fn: Callable[[], Any], flop: float, reps: int) -> dict[str, float]:
    """GFLOP/s of `fn` (doing `flop` FLOPs) from its fastest of `reps` timed calls, after one
    warm-up: the fastest call is the one least disturbed by other load on a shared machine."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {
        "best_s": min(times),
        "median_s": statistics.median(times),
        "gflop_per_s": flop / min(times) / 1e9,
    }


def exp_ceiling(s: _Setup, reps: int) -> dict[str, Any]:
    """Upper bounds on what any backend can reach here, at 2 threads (both cores)."""
    import torch

    from mobile_sim.models import build_model

    _threads(2)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    gemm = _best_rate(lambda: torch.mm(a, b), 2.0 * n**3, max(reps, 5))
    model = build_model("mnist_cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    steps: dict[str, dict[str, float]] = {}
    for batch in (10, 64, 256):
        x = torch.from_numpy(np.ascontiguousarray(s.data.x_train[:batch]))
        y = torch.from_numpy(np.ascontiguousarray(s.data.y_train[:batch])).long()

        def step(x: Any = x, y: Any = y) -> None:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        reps_b = max(reps, 5) * max(1, 256 // batch)
        steps[f"batch_{batch}"] = _best_rate(step, batch * CNN_TRAIN_FLOP_PER_SAMPLE, reps_b)
    best_step = max(v["gflop_per_s"] for v in steps.values())
    out: dict[str, Any] = {
        "threads": 2,
        "gemm_2048": gemm,
        "cnn_train_step": steps,
        "cnn_train_step_best_gflop_per_s": best_step,
        "train_flop_per_sample": CNN_TRAIN_FLOP_PER_SAMPLE,
    }
    share = _LAST.get("share")
    if share is not None:
        round_s = sum(share["median_s"].values())
        flop = share["training_samples"] * CNN_TRAIN_FLOP_PER_SAMPLE
        # Even with evaluation, codec and setup free, training alone would have to finish in
        # half the plain loop's round.
        need = flop / (0.5 * round_s) / 1e9
        out["half_plain_round"] = {
            "plain_round_s": round_s,
            "train_gflop_per_round": flop / 1e9,
            "needed_gflop_per_s": need,
            "needed_over_gemm_best": need / gemm["gflop_per_s"],
            "needed_over_cnn_step_best": need / best_step,
            "share_measured_in_this_run": True,
        }
    return out


# --- ops: where one step's time goes ------------------------------------------------------------

_CONV2_FLOP = 2.0 * 10 * 64 * 14 * 14 * 32 * 25  # one forward at B=10
_CONV1_FLOP = 2.0 * 10 * 32 * 28 * 28 * 25
_FC1_FLOP = 2.0 * 10 * 3136 * 512  # each of fc1's three products


def _per_call_ms(fn: Callable[[], Any], reps: int, calls: int = 50) -> float:
    """Median over `reps` timed loops of `calls` calls, in ms per call (after a warm-up loop)."""
    for _ in range(calls):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    return 1e3 * statistics.median(times)


def exp_ops(s: _Setup, reps: int) -> dict[str, Any]:
    """A real client's training step (product `TorchTrainer`, one thread) next to its big
    kernels timed alone at B=10, cache-warm: what is left is everything else (pooling, ReLU,
    loss, the small layers, SGD on the other tensors, autograd and Python)."""
    import torch

    _threads(1)
    reps = max(reps, 5)
    run = _trainer_client(s, fast_linear=True)
    x, _ = s.xy(s.client)
    steps = 5 * -(-len(x) // 10)
    run()
    client = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        client.append(time.perf_counter() - t0)
    step_ms = 1e3 * statistics.median(client) / steps

    gen = torch.Generator().manual_seed(0)
    images = torch.from_numpy(np.ascontiguousarray(x[:10]))
    w1 = (0.1 * torch.randn(32, 1, 5, 5, generator=gen)).requires_grad_()
    b1 = torch.zeros(32, requires_grad=True)
    g1 = torch.randn(10, 32, 28, 28, generator=gen)
    a2 = torch.relu(torch.randn(10, 32, 14, 14, generator=gen)).requires_grad_()
    w2 = (0.05 * torch.randn(64, 32, 5, 5, generator=gen)).requires_grad_()
    b2 = torch.zeros(64, requires_grad=True)
    g2 = torch.randn(10, 64, 14, 14, generator=gen)
    conv = torch.nn.functional.conv2d
    op = torch.ops.mkldnn._linear_pointwise
    w3 = 0.01 * torch.randn(512, 3136, generator=gen)
    b3 = torch.zeros(512)
    a3 = torch.relu(torch.randn(10, 3136, generator=gen))
    g3 = 1e-3 * torch.randn(10, 512, generator=gen)
    grad3 = torch.empty_like(w3)
    kernels = {
        "conv1_forward": lambda: conv(images, w1, b1, padding=2),
        "conv1_forward_backward": lambda: conv(images, w1, b1, padding=2).backward(g1),
        "conv2_forward": lambda: conv(a2, w2, b2, padding=2),
        "conv2_forward_backward": lambda: conv(a2, w2, b2, padding=2).backward(g2),
        "fc1_forward": lambda: op(a3, w3, b3, "none", [], ""),
        "fc1_input_gradient": lambda: op(g3, w3.t(), None, "none", [], ""),
        "fc1_weight_gradient": lambda: op(g3.t(), a3.t(), None, "none", [], ""),
        "fc1_sgd_update": lambda: w3.add_(grad3, alpha=-1e-9),
    }
    with torch.no_grad():
        grad3.copy_(op(g3.t(), a3.t(), None, "none", [], ""))
    ms = {}
    for name, fn in kernels.items():
        if name.endswith("_backward"):
            ms[name] = _per_call_ms(fn, reps)
        else:
            with torch.no_grad():
                ms[name] = _per_call_ms(fn, reps)
    big = {
        "conv1_forward_backward": ms["conv1_forward_backward"],
        "conv2_forward_backward": ms["conv2_forward_backward"],
        "fc1_three_products_and_update": ms["fc1_forward"]
        + ms["fc1_input_gradient"]
        + ms["fc1_weight_gradient"]
        + ms["fc1_sgd_update"],
    }
    big["everything_else"] = step_ms - sum(big.values())
    flop = {
        "conv1_forward": _CONV1_FLOP,
        "conv1_forward_backward": 2 * _CONV1_FLOP,  # the image needs no gradient
        "conv2_forward": _CONV2_FLOP,
        "conv2_forward_backward": 3 * _CONV2_FLOP,
        "fc1_forward": _FC1_FLOP,
        "fc1_input_gradient": _FC1_FLOP,
        "fc1_weight_gradient": _FC1_FLOP,
    }
    gemm_n = 2048
    a, b = torch.randn(gemm_n, gemm_n), torch.randn(gemm_n, gemm_n)
    gemm = _best_rate(lambda: op(a, b, None, "none", [], ""), 2.0 * gemm_n**3, reps)
    return {
        "threads": 1,
        "client_examples": len(x),
        "steps": steps,
        "client_step_ms": step_ms,
        "kernel_ms_alone": ms,
        "kernel_gflop_per_s": {k: flop[k] / (ms[k] / 1e3) / 1e9 for k in flop},
        "step_ms_by_part": big,
        "step_fraction_by_part": {k: v / step_ms for k, v in big.items()},
        "onednn_gemm_2048_1_thread": gemm,
    }


def exp_fftconv(s: _Setup, reps: int) -> dict[str, Any]:
    """Could a cheaper convolution algorithm pay at B=10? conv2 by FFT against oneDNN."""
    import torch

    _threads(1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 32, 14, 14, generator=gen, requires_grad=True)
    w = (0.05 * torch.randn(64, 32, 5, 5, generator=gen)).requires_grad_()
    bias = torch.zeros(64, requires_grad=True)
    size = 16  # >= 14 + 2: the circular wrap lands only on zero padding

    def fft_conv(x: Any, w: Any, bias: Any) -> Any:
        freqs = size * (size // 2 + 1)
        xf = torch.fft.rfft2(x, s=(size, size)).permute(2, 3, 0, 1).reshape(freqs, 10, 32)
        kf = torch.fft.rfft2(torch.flip(w, dims=(2, 3)), s=(size, size))
        kf = kf.permute(2, 3, 1, 0).reshape(freqs, 32, 64)
        yf = torch.bmm(xf, kf).reshape(size, size // 2 + 1, 10, 64).permute(2, 3, 0, 1)
        y = torch.fft.irfft2(yf, s=(size, size))
        return y[:, :, 2:16, 2:16] + bias.view(1, -1, 1, 1)

    def direct(x: Any, w: Any, bias: Any) -> Any:
        return torch.nn.functional.conv2d(x, w, bias, padding=2)

    grad = torch.randn(10, 64, 14, 14, generator=gen)

    def step(f: Callable[..., Any]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(20):
                f(x, w, bias).backward(grad)

        return run

    with torch.no_grad():
        diff = float((direct(x, w, bias) - fft_conv(x, w, bias)).abs().max())
        scale = float(direct(x, w, bias).abs().max())
    timing = _ab({"direct": step(direct), "fft": step(fft_conv)}, reps, "fftconv")
    return {
        "threads": 1,
        "calls_per_rep": 20,
        "fwd_bwd": timing,
        "max_abs_diff": diff,
        "max_abs_output": scale,
    }


def exp_conv1(s: _Setup, reps: int) -> dict[str, Any]:
    """conv1's weight gradient (one input channel, 32 filters 5x5, B=10 real images), one
    thread: oneDNN's `convolution_backward` (what autograd and the fused step call) against
    the same product written as unfold (im2col) and one batched matmul."""
    import torch

    from sdk._conv import conv_param_grads

    _threads(1)
    x, _ = s.xy(s.client)
    images = torch.from_numpy(np.ascontiguousarray(x[:10]))
    gen = torch.Generator().manual_seed(0)
    w = 0.1 * torch.randn(32, 1, 5, 5, generator=gen)
    grad = 1e-3 * torch.randn(10, 32, 28, 28, generator=gen)
    aten = torch.ops.aten

    def onednn() -> Any:
        return aten.convolution_backward(
            grad, images, w, [32], [1, 1], [2, 2], [1, 1], False, [0, 0], 1,
            [False, True, True],
        )[1]  # fmt: skip

    def unfold_bmm() -> Any:  # what TorchTrainer(unfold_conv=True) runs (sdk/_conv.py)
        return conv_param_grads(grad, images, w.shape, (5, 5), (1, 1), (2, 2), (1, 1), False)[0]

    def forward() -> Any:
        return aten.convolution(images, w, None, [1, 1], [2, 2], [1, 1], False, [0, 0], 1)

    with torch.no_grad():
        ref = onednn().double()
        exact = torch.nn.grad.conv2d_weight(images.double(), w.shape, grad.double(), padding=2)
        ms = {
            "weight_gradient_onednn": _per_call_ms(onednn, reps),
            "weight_gradient_unfold_bmm": _per_call_ms(unfold_bmm, reps),
            "forward_onednn": _per_call_ms(forward, reps),
        }
        scale = float(exact.abs().max())
        err = {
            "onednn": float((ref - exact).abs().max()) / scale,
            "unfold_bmm": float((unfold_bmm().double() - exact).abs().max()) / scale,
        }
    cohort = _unfold_cohort(s, reps)
    return {
        "threads": 1,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cohort_training": cohort,
        "ms_per_call": ms,
        "gflop_per_s": {k: _CONV1_FLOP / (v * 1e6) for k, v in ms.items()},
        "unfold_bmm_over_onednn": ms["weight_gradient_unfold_bmm"] / ms["weight_gradient_onednn"],
        "max_error_relative_to_float64": err,
    }


def _cohort_ab(
    s: _Setup, trainers: dict[str, Any], reps: int, desc: str
) -> tuple[dict[str, Any], int, Callable[[str, int], Any]]:
    """The cohort's 10 real clients' E=5 training (B=10, lr 0.05) with each trainer, timed by
    `_ab` with each variant's ms per step added; returns (timing, steps per repetition, a
    function training one trainer on one client)."""

    def train(name: str, dev: int) -> Any:
        x, y = s.xy(dev)
        return trainers[name].train(
            s.params, x, y, epochs=5, batch_size=10, lr=0.05, rng=np.random.default_rng(0)
        )

    def cohort(name: str) -> Callable[[], None]:
        def run() -> None:
            for dev in s.cohort:
                train(name, dev)

        return run

    timing = _ab({name: cohort(name) for name in trainers}, reps, desc)
    steps = sum(5 * -(-len(s.parts[dev]) // 10) for dev in s.cohort)
    for v in timing.values():
        v["ms_per_step"] = 1e3 * v["median_s"] / steps
    return timing, steps, train


def _unfold_cohort(s: _Setup, reps: int) -> dict[str, Any]:
    """The cohort's 10 real clients' E=5 training with the fused step, one thread, oneDNN's
    conv1 weight gradient (`unfold_conv=False`) against the unfolded one (`unfold_conv=True`),
    interleaved; and how far the median client's trained parameters move between the two."""
    from mobile_sim.models import build_model
    from sdk.trainer import TorchTrainer

    trainers = {
        "onednn": TorchTrainer(build_model("mnist_cnn"), unfold_conv=False),
        "unfold": TorchTrainer(build_model("mnist_cnn"), unfold_conv=True),
    }

    timing, steps, train = _cohort_ab(s, trainers, reps, "conv1 cohort")
    ref = train("onednn", s.client).params - s.params
    delta = train("unfold", s.client).params - s.params
    return {
        "steps_per_rep": steps,
        "timing": timing,
        "delta_max_abs": float(np.abs(ref).max()),
        "delta_max_abs_diff": float(np.abs(delta - ref).max()),
        "delta_rel_l2_diff": float(np.linalg.norm(delta - ref) / np.linalg.norm(ref)),
    }


def winograd_matrices(m: int, r: int, points: list[float]) -> tuple[Any, Any, Any]:
    """Cook-Toom matrices (A^T, G, B^T) of Winograd's F(m, r): y = A^T [(G g) * (B^T d)] for
    the correlation y_i = sum_k d_(i+k) g_k, from m + r - 2 finite interpolation points and the
    point at infinity. A^T and G are the textbook ones; B^T is solved for in float64 (the
    system is consistent) and checked on a random tile."""
    n = m + r - 1
    if len(points) != n - 1:
        raise ValueError(f"F({m},{r}) needs {n - 1} finite points, got {len(points)}")
    if len(set(points)) != len(points):
        raise ValueError(f"F({m},{r})'s interpolation points must be distinct: {points}")
    p = np.asarray(points, dtype=np.float64)
    at = np.zeros((m, n))
    for i in range(m):
        at[i, : n - 1] = p**i
    at[m - 1, n - 1] = 1.0
    g = np.zeros((n, r))
    for j in range(n - 1):
        g[j] = p[j] ** np.arange(r) / np.prod([p[j] - p[k] for k in range(n - 1) if k != j])
    g[n - 1, r - 1] = 1.0
    rows = np.array([at[i] * g[:, k] for i in range(m) for k in range(r)])
    bt = np.zeros((n, n))
    for col in range(n):
        rhs = np.array([1.0 if col == i + k else 0.0 for i in range(m) for k in range(r)])
        bt[:, col] = np.linalg.lstsq(rows, rhs, rcond=None)[0]
    rng = np.random.default_rng(0)
    d, w = rng.standard_normal(n), rng.standard_normal(r)
    want = np.array([d[i : i + r] @ w for i in range(m)])
    if not np.allclose(at @ ((g @ w) * (bt @ d)), want, rtol=1e-9, atol=1e-9):
        raise ArithmeticError(f"F({m},{r}) matrices do not reproduce the correlation")
    return at, g, bt


def exp_winograd(s: _Setup, reps: int) -> dict[str, Any]:
    """Could Winograd's minimal filtering pay for conv2 at B=10 where FFT did not? F(2x2,5x5)
    needs 9 multiplications per output against the direct kernel's 25, F(4x4,5x5) 4; the
    transforms are extra memory passes. Built from torch ops; autograd gives the backward
    (fold, or a transposed strided convolution, for the input transform; two batched matmuls;
    a matmul)."""
    import torch
    import torch.nn.functional as F

    _threads(1)
    gen = torch.Generator().manual_seed(0)
    batch, cin, cout, size, r = 10, 32, 64, 14, 5
    x = torch.randn(batch, cin, size, size, generator=gen).relu_().requires_grad_()
    w = (0.05 * torch.randn(cout, cin, r, r, generator=gen)).requires_grad_()
    bias = torch.zeros(cout, requires_grad=True)
    points = {2: [0.0, 1.0, -1.0, 2.0, -2.0], 4: [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5]}

    def make(m: int, nchw: bool, conv_transform: bool = False) -> Callable[..., Any]:
        at, g, bt = winograd_matrices(m, r, points[m])
        n = m + r - 1
        tiles = -(-size // m)
        padded = tiles * m + r - 1
        f32 = torch.float32
        wb = torch.tensor(np.einsum("ai,bj->abij", bt, bt).reshape(n * n, 1, n, n), dtype=f32)
        kb = torch.tensor(np.kron(bt, bt), dtype=f32)  # [n*n, n*n]
        kg = torch.tensor(np.kron(g, g).T, dtype=f32)  # [r*r, n*n]
        kat = torch.tensor(np.kron(at, at), dtype=f32)  # [m*m, n*n]

        def conv(x: Any, w: Any, bias: Any) -> Any:
            xp = F.pad(x, (2, padded - size - 2, 2, padded - size - 2))
            if conv_transform:  # B^T d B of every tile as one strided 1-channel convolution
                z = F.conv2d(xp.reshape(batch * cin, 1, padded, padded), wb, stride=m)
                v = z.reshape(batch * cin, -1).t().reshape(n * n, tiles * tiles * batch, cin)
            else:  # the tiles by unfold (its backward is fold), then one matmul
                col = F.unfold(xp, n, stride=m).reshape(batch, cin, n * n, tiles * tiles)
                v = torch.matmul(kb, col).permute(2, 3, 0, 1)
                v = v.reshape(n * n, tiles * tiles * batch, cin)
            u = (w.reshape(cout * cin, r * r) @ kg).reshape(cout, cin, n * n).permute(2, 1, 0)
            y = (kat @ torch.bmm(v, u).reshape(n * n, -1)).reshape(m * m, -1, cout) + bias
            if not nchw:
                return y  # [m*m, tiles*tiles*batch, cout]: (i, j), (t1, t2, b), o
            y = y.reshape(m, m, tiles, tiles, batch, cout).permute(4, 5, 2, 0, 3, 1)
            return y.reshape(batch, cout, tiles * m, tiles * m)[:, :, :size, :size]

        return conv

    def direct(x: Any, w: Any, bias: Any) -> Any:
        return F.conv2d(x, w, bias, padding=2)

    convs = {
        "direct": direct,
        "winograd_f2": make(2, True),
        "winograd_f4": make(4, True),
        "winograd_f4_tile_layout": make(4, False),
        "winograd_f4_conv_transform": make(4, True, conv_transform=True),
    }
    grad = torch.randn(batch, cout, size, size, generator=gen)
    # The tile-layout variant's gradient: the same values, in its layout (zero on the rows and
    # columns of the padded 16x16 that are not outputs).
    tile_grad = torch.zeros(batch, cout, 16, 16)
    tile_grad[:, :, :size, :size] = grad
    tile_grad = tile_grad.reshape(batch, cout, 4, 4, 4, 4).permute(3, 5, 2, 4, 0, 1)
    tile_grad = tile_grad.reshape(16, 16 * batch, cout).contiguous()

    def grads(name: str) -> dict[str, Any]:
        g_out = tile_grad if name.endswith("tile_layout") else grad
        y = convs[name](x, w, bias)
        dx, dw, db = torch.autograd.grad(y, (x, w, bias), g_out)
        if name.endswith("tile_layout"):
            y = y.reshape(4, 4, 4, 4, batch, cout).permute(4, 5, 2, 0, 3, 1)
            y = y.reshape(batch, cout, 16, 16)[:, :, :size, :size]
        return {"y": y.detach(), "dx": dx, "dw": dw, "db": db}

    want = grads("direct")
    with torch.no_grad():
        x64, w64 = x.detach().double(), w.detach().double()
        y64 = F.conv2d(x64, w64, padding=2)
    accuracy: dict[str, Any] = {
        "direct_output_vs_float64": float((want["y"].double() - y64).abs().max())
        / float(y64.abs().max())
    }
    for name in convs:
        if name == "direct":
            continue
        got = grads(name)
        accuracy[name] = {
            k: float((got[k] - want[k]).abs().max()) / float(want[k].abs().max()) for k in want
        }

    def fwd_bwd(name: str) -> Callable[[], None]:
        f = convs[name]
        g_out = tile_grad if name.endswith("tile_layout") else grad

        def run() -> None:
            for _ in range(20):
                f(x, w, bias).backward(g_out)

        return run

    def fwd(name: str) -> Callable[[], None]:
        f = convs[name]

        def run() -> None:
            with torch.inference_mode():
                for _ in range(20):
                    f(x, w, bias)

        return run

    return {
        "threads": 1,
        "calls_per_rep": 20,
        "fwd_bwd": _ab({k: fwd_bwd(k) for k in convs}, reps, "winograd fwd+bwd"),
        "fwd_only": _ab({k: fwd(k) for k in convs}, reps, "winograd fwd"),
        "max_rel_diff_to_direct": accuracy,
    }


def exp_fused(s: _Setup, reps: int) -> dict[str, Any]:
    """The cohort's 10 real clients' E=5 training, one thread, interleaved per client:
    `TorchTrainer` on its autograd path (`fused=False`) vs the fused step (`fused=True`, the
    default) vs the fused step with fc1's SGD update folded into its weight-gradient product
    (`fold_update=True`, opt-in: it changes float rounding). Also
    how far the median client's trained parameters are from the autograd path's."""
    import torch

    from mobile_sim.models import build_model
    from sdk.trainer import TorchTrainer

    _threads(1)
    trainers = {
        "autograd": TorchTrainer(build_model("mnist_cnn"), fused=False),
        "fused": TorchTrainer(build_model("mnist_cnn")),
        "fused_fold_update": TorchTrainer(build_model("mnist_cnn"), fold_update=True),
    }

    timing, steps, train = _cohort_ab(s, trainers, reps, "fused")
    used = all(p.grad is None for p in trainers["fused"].module.parameters())
    want = train("autograd", s.client).params
    ref = want - s.params
    agreement = {}
    for name in ("fused", "fused_fold_update"):
        got = train(name, s.client).params
        delta = got - s.params
        agreement[name] = {
            # the trained parameters, bit for bit (equal deltas can hide a rounding difference)
            "bit_identical": bool(np.array_equal(got.view(np.uint32), want.view(np.uint32))),
            "delta_max_abs_diff": float(np.abs(delta - ref).max()),
            "delta_rel_l2_diff": float(np.linalg.norm(delta - ref) / np.linalg.norm(ref)),
        }
    return {
        "threads": torch.get_num_threads(),
        "clients": len(s.cohort),
        "steps_per_rep": steps,
        "fused_path_used": used,
        "timing": timing,
        "delta_max_abs": float(np.abs(ref).max()),
        "agreement_with_autograd": agreement,
    }


# Results of the experiments run so far in this invocation (ceiling reads `share`).
_LAST: dict[str, dict[str, Any]] = {}


RUNNERS: dict[str, Callable[[_Setup, int], dict[str, Any]]] = {
    "linear": exp_linear,
    "layout": exp_layout,
    "trainer": exp_trainer,
    "maxpool": exp_maxpool,
    "optim": exp_optim,
    "eval": exp_eval,
    "bf16": exp_bf16,
    "compile": exp_compile,
    "pool": exp_pool,
    "share": exp_share,
    "ceiling": exp_ceiling,
    "ops": exp_ops,
    "fftconv": exp_fftconv,
    "fused": exp_fused,
    "winograd": exp_winograd,
    "conv1": exp_conv1,
}


def results_path(args: argparse.Namespace) -> Path:
    """The file experiments merge into (a --quick run never writes RESULT unless --out names
    it)."""
    return out_file(args.out, RESULT, args.quick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 repetitions each")
    parser.add_argument("--only", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    parser.add_argument("--reps", type=int, default=7, help="interleaved repetitions")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results file, merged into (default bench/results/cnn_speed_explore.json; with "
        "--quick bench/results/cnn_speed_explore_quick.json)",
    )
    git_provenance()  # the code this run starts from
    args = parser.parse_args(argv)
    args.out = results_path(args)
    reps = 2 if args.quick else args.reps

    from mobile_sim.report import machine_info

    doc: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    doc.setdefault("experiments", {})
    s = _Setup()
    for name in args.only:
        t0 = time.perf_counter()
        load0 = os.getloadavg()
        res = RUNNERS[name](s, reps)
        _LAST[name] = res
        res["load_average_before_after"] = [load0, os.getloadavg()]
        res["wall_s"] = time.perf_counter() - t0
        res["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        res["quick"] = bool(args.quick)
        # Each experiment keeps its own machine, command and code; the top level is the last one's.
        res["machine"] = machine_info()
        res["command"] = command_line(__file__, argv)
        res.update(git_provenance())
        doc["experiments"][name] = res
        doc["machine"] = res["machine"]
        doc["date"] = time.strftime("%Y-%m-%d", time.gmtime())
        doc["command"] = res["command"]
        write_results(args.out, doc)
        print(name, json.dumps(res, indent=1)[:3000], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
