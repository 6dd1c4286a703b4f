"""How often the secure encoder's per-coordinate clip bites after the randomized Hadamard
rotation, on a real MNIST-CNN device update at the default SecureConfig (C = 1, b = 3, gamma =
2.5, |S_r| = 1.25% of d), with the rotation as the protocol does it (S_r sorted by model index,
contiguous power-of-two Hadamard blocks, largest first) and with S_r permuted pseudorandomly
before the same rotation (what a spread over all of S_r would give).

docs/secure-aggregation.md ("Compression and masking together", step 3) quotes these figures:

    .venv/bin/python -m tests.coordinator.test_s24_rotation_clip

The update: the zoo's `mnist_cnn` (seed 0) trained as `plume sim` trains a device by default
(80 MNIST training images, 5 epochs, batches of 10, SGD lr 0.05, one torch thread); S_r is the
coordinator's round-1 selection and a round-2 selection scored by |delta|.
"""

from __future__ import annotations

import numpy as np
import torch

from coordinator.secure import SecureConfig, SecureCoordinator, make_plan
from mobile_sim.data import load_mnist
from mobile_sim.models import build_model
from protocol.secagg import rotate, rotation_blocks
from sdk.flat import get_flat_params, spec_from_module


def _clip_figures() -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_model("mnist_cnn", seed=0)
        spec = spec_from_module(model)
        p0 = get_flat_params(model).copy()
        data = load_mnist(train_size=8000)
        x, y = torch.from_numpy(data.x_train[:80]), torch.from_numpy(data.y_train[:80])
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(5):
            for b in range(0, 80, 10):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x[b : b + 10]), y[b : b + 10])
                loss.backward()
                opt.step()
        delta = (get_flat_params(model) - p0).astype(np.float32)
    finally:
        torch.set_num_threads(threads)
    cfg = SecureConfig()
    coord = SecureCoordinator(p0, cfg, spec=spec)
    d = coord.size
    k = round(cfg.coord_fraction * d)
    last = spec.entries[-2:]  # fc2's weight and bias: the model's last coordinates
    fc2_start = d - sum(int(np.prod(e.shape)) for e in last)
    out: dict[str, dict[str, float]] = {}
    selections = (
        ("round 1 (prior)", coord.policy.select(1, d, k, coord.score)),
        ("round 2 (|delta|)", coord.policy.select(2, d, k, np.abs(delta))),
    )
    for label, chosen in selections:
        plan = make_plan(cfg, 1, 10, d, chosen.astype(np.int64), coord.sketch_segments)
        u = delta[chosen].astype(np.float64)
        u *= min(1.0, cfg.clip_norm / float(np.linalg.norm(u)))
        bound = plan.coord_bound
        for how, order in (
            ("as the protocol rotates", np.arange(k)),
            ("permuted first", np.random.default_rng(0).permutation(k)),
        ):
            v = rotate(u[order], plan.rotation_seed)
            over = np.abs(v) > bound
            lost = np.clip(np.abs(v) - bound, 0, None) ** 2
            row = {
                "coords_clipped": float(over.mean()),
                "energy_clipped": float(lost.sum() / (v**2).sum()),
                "blocks": float(len(rotation_blocks(k))),
            }
            if how == "as the protocol rotates":
                # Each block mixes only its own stretch of sorted S_r: a rotated coordinate
                # belongs to fc2's stretch when the S_r entry at its position is fc2's.
                in_fc2 = chosen >= fc2_start
                row["energy_clipped_in_fc2"] = float(lost[in_fc2].sum() / max(lost.sum(), 1e-300))
            out[f"{label}, {how}"] = row
    return out


def test_the_rotation_clips_more_than_a_spread_over_s_r_would() -> None:
    figures = _clip_figures()
    for label in ("round 1 (prior)", "round 2 (|delta|)"):
        actual = figures[f"{label}, as the protocol rotates"]
        spread = figures[f"{label}, permuted first"]
        # The doc's claim: the protocol's layout clips more coordinates and more energy than
        # a spread over all of S_r, and the energy it clips is mostly in the output layer.
        # The trained update differs by CPU (oneDNN's kernels): round 2's coordinate ratio is
        # 1.58x on the Intel Xeon VM of 2026-11-30 and 1.39x on the AMD EPYC of 2026-12-01.
        assert actual["coords_clipped"] > 1.25 * spread["coords_clipped"], figures
        assert actual["energy_clipped"] > 3 * spread["energy_clipped"], figures
        assert actual["energy_clipped_in_fc2"] > 0.7, figures
        assert spread["coords_clipped"] < 0.015, figures


if __name__ == "__main__":
    for name, row in _clip_figures().items():
        where = ""
        if "energy_clipped_in_fc2" in row:
            where = f" ({100 * row['energy_clipped_in_fc2']:.0f}% of that in fc2's stretch)"
        print(
            f"{name}: {100 * row['coords_clipped']:.2f}% of coordinates clipped, "
            f"{100 * row['energy_clipped']:.2f}% of the energy{where}"
        )
