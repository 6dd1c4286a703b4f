"""docs/simulator.md's bound on the MNIST-CNN ratio on the AVX2-only AMD EPYC is what
`python bench/cnn_bound.py` computes from the committed result files (until stop 50 it was
summed by hand, and two of its figures were off in the last digit)."""

from __future__ import annotations

import re
from pathlib import Path

from bench.cnn_bound import bound, main

ROOT = Path(__file__).resolve().parents[2]


def _paragraph() -> str:
    text = (ROOT / "docs" / "simulator.md").read_text(encoding="utf-8")
    start = text.index("- How far 0.5x is on this CPU, from these files")
    return " ".join(text[start : text.index("\n- ", start + 1)].split())


def test_the_doc_quotes_the_bound_the_script_computes() -> None:
    # Prepare
    b = bound()
    k = b["kernels_ms"]
    doc = _paragraph()

    # Assert: each figure, rounded as the doc rounds it
    expected = [
        "python bench/cnn_bound.py",
        f"conv2 {k['conv2_forward_backward']:.2f} ms",
        f"fc1 {k['fc1_three_products_and_update']:.2f} ms",
        f"conv1's forward {k['conv1_forward']:.2f} ms",
        f"unfolded weight gradient {k['conv1_weight_gradient_unfold']:.2f} ms: "
        f"{b['kernel_ms']:.2f} ms, {100 * b['kernel_share_of_step']:.0f}% of the "
        f"{b['step_ms']:.2f} ms step",
        f"its {b['pool_train_s']:.1f} s, {b['train_s_at_most']:.1f} s",
        f"about {b['forward_mflop_per_image']:.1f} MFLOP each, {b['eval_gflop']:.0f} GFLOP over "
        f"the {b['rounds']} rounds",
        f"at least {b['eval_s_at_least']:.1f} s on two cores at "
        f"{b['eval_gflop_per_s_per_core']:.0f} GFLOP/s (the pool's took {b['pool_eval_s']:.1f} s)",
        f"encoding ({b['encode_s']:.1f} s)",
        f"aggregation ({b['aggregate_s']:.1f} s)",
        f"about {b['run_s_at_least']:.0f} s: **{b['ratio_at_least']:.2f}x** of the slower plain "
        f"loop ({b['plain_loop_s']:.1f} s), {b['ratio_vs_faster_plain_loop']:.2f}x of the faster "
        f"one ({b['faster_plain_loop_s']:.1f} s)",
    ]
    missing = [e for e in expected if e not in doc]
    assert not missing, f"docs/simulator.md does not quote: {missing}\n{doc}"


def test_the_bound_is_short_of_the_target_and_the_script_prints_it(capsys: object) -> None:
    # Execute
    assert main([]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    # Assert: the bound is above 0.5x (the doc's conclusion), and the summary line says so
    b = bound()
    assert 0.5 < b["ratio_at_least"] < 1.0
    assert re.search(rf"= {b['ratio_at_least']:.2f}x of the plain loop", out)
