"""How far the MNIST-CNN simulator's 0.5x target is on the AVX2-only AMD EPYC: the bound that
docs/simulator.md ("On an AVX2-only AMD EPYC") states, computed from committed result files.

    python bench/cnn_bound.py            # prints the bound and each of its terms
    python bench/cnn_bound.py --json     # the same as one JSON object

No timing is run here: every input is a measurement in bench/results/ (named below, with the
command that made it). The bound assumes a training step made of nothing but its big kernels at
their measured one-thread rates, an evaluation at conv2's rate on both cores, and encoding and
aggregation as the pool's run measured them. tests/mobile_sim/test_s50_cnn_bound.py checks that
the doc quotes these figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import RESULTS  # noqa: E402

# The three runs the bound is made of (commands as each file records them).
OPS = "cnn_speed_ops_amd_avx2.json"  # explore_cnn_speed.py --only ops conv1: kernels alone
CONV1 = "cnn_speed_conv1_amd_avx2.json"  # explore_cnn_speed.py --only conv1: the cohort's step
SIM = "sim_throughput_amd_avx2_unfold.json"  # sim_throughput.py: the pool and its plain loop
SIM_SLOWER_PLAIN = "sim_throughput_amd_avx2.json"  # the same before unfold_conv: its plain loop

# One mnist_cnn forward pass per image, in multiply-adds (mobile_sim/models.py's MnistCNN):
# conv1 1->32 5x5 on 28x28, conv2 32->64 5x5 on 14x14, fc1 3136->512, fc2 512->10.
FORWARD_MACS = 32 * 28 * 28 * 25 + 64 * 14 * 14 * 32 * 25 + 7 * 7 * 64 * 512 + 512 * 10
# The simulator's MNIST test set: t10k less load_mnist's default 8,000 training images.
TEST_IMAGES = 10_000 - 8_000
CORES = 2


def _load(name: str) -> dict[str, Any]:
    with open(RESULTS / name, encoding="utf-8") as fh:
        return dict(json.load(fh))


def bound() -> dict[str, Any]:
    """Every term of the bound, from the result files (milliseconds, seconds, ratios)."""
    ops = _load(OPS)["experiments"]["ops"]
    conv1 = _load(CONV1)["experiments"]["conv1"]
    mnist = _load(SIM)["sections"]["mnist"]
    pool = mnist["results"]["pool"]
    rounds = int(mnist["settings"]["rounds"])
    faster_plain = float(_load(SIM_SLOWER_PLAIN)["sections"]["mnist"]["results"]["pool"][
        "plain_loop_wall_s"
    ])  # fmt: skip

    parts = ops["step_ms_by_part"]
    kernels = {
        "conv2_forward_backward": float(parts["conv2_forward_backward"]),
        "fc1_three_products_and_update": float(parts["fc1_three_products_and_update"]),
        "conv1_forward": float(conv1["ms_per_call"]["forward_onednn"]),
        "conv1_weight_gradient_unfold": float(conv1["ms_per_call"]["weight_gradient_unfold_bmm"]),
    }
    kernel_ms = sum(kernels.values())
    step_ms = float(conv1["cohort_training"]["timing"]["unfold"]["ms_per_step"])
    kernel_share = kernel_ms / step_ms

    phases = pool["phase_wall_s"]
    train_s = kernel_share * float(phases["train"])
    eval_gflop = TEST_IMAGES * 2 * FORWARD_MACS * rounds / 1e9
    eval_rate = float(ops["kernel_gflop_per_s"]["conv2_forward_backward"])
    eval_s = eval_gflop / (CORES * eval_rate)
    round_s = train_s + eval_s + float(phases["encode"]) + float(phases["aggregate"])
    slower_plain = float(pool["plain_loop_wall_s"])
    return {
        "kernels_ms": kernels,
        "kernel_ms": kernel_ms,
        "step_ms": step_ms,
        "kernel_share_of_step": kernel_share,
        "pool_train_s": float(phases["train"]),
        "train_s_at_most": train_s,
        "forward_mflop_per_image": 2 * FORWARD_MACS / 1e6,
        "eval_gflop": eval_gflop,
        "eval_gflop_per_s_per_core": eval_rate,
        "pool_eval_s": float(phases["eval"]),
        "eval_s_at_least": eval_s,
        "encode_s": float(phases["encode"]),
        "aggregate_s": float(phases["aggregate"]),
        "run_s_at_least": round_s,
        "plain_loop_s": slower_plain,
        "faster_plain_loop_s": faster_plain,
        "ratio_at_least": round_s / slower_plain,
        "ratio_vs_faster_plain_loop": round_s / faster_plain,
        "rounds": rounds,
        "from": [OPS, CONV1, SIM, SIM_SLOWER_PLAIN],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print the terms as one JSON object")
    args = parser.parse_args(argv)
    b = bound()
    if args.json:
        print(json.dumps(b, indent=1))
        return 0
    k = b["kernels_ms"]
    print(f"from bench/results/: {', '.join(b['from'])}")
    print(
        "kernels of one step: "
        + " + ".join(f"{name} {ms:.2f}" for name, ms in k.items())
        + f" = {b['kernel_ms']:.2f} ms of a {b['step_ms']:.2f} ms step "
        f"({100 * b['kernel_share_of_step']:.0f}%)"
    )
    print(f"training: {b['kernel_share_of_step']:.2f} x {b['pool_train_s']:.1f} s = "
          f"{b['train_s_at_most']:.1f} s at most")  # fmt: skip
    print(
        f"evaluation: {b['forward_mflop_per_image']:.1f} MFLOP x {TEST_IMAGES:,} images x "
        f"{b['rounds']} rounds = {b['eval_gflop']:.0f} GFLOP at {b['eval_gflop_per_s_per_core']:.0f} GFLOP/s "
        f"on {CORES} cores = {b['eval_s_at_least']:.1f} s at least (the pool's: "
        f"{b['pool_eval_s']:.1f} s)"
    )
    print(f"encoding {b['encode_s']:.1f} s, aggregation {b['aggregate_s']:.1f} s")
    print(
        f"run: {b['run_s_at_least']:.1f} s at least = {b['ratio_at_least']:.2f}x of the plain "
        f"loop's {b['plain_loop_s']:.1f} s ({b['ratio_vs_faster_plain_loop']:.2f}x of the "
        f"faster {b['faster_plain_loop_s']:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
