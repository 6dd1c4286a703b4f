"""FedProx's synthetic(alpha, beta) data (Li et al. 2020, after Shamir et al. 2014).

Device k draws u_k ~ N(0, alpha^2) and B_k ~ N(0, beta^2) (the paper writes N(0, alpha); its
generator draws with standard deviation alpha, as here); its labelling model is
W_k ~ N(u_k, 1) in R^{10x60}, b_k ~ N(u_k, 1) in R^10, and its inputs are x ~ N(v_k, Sigma)
with v_k ~ N(B_k, 1) in R^60 and Sigma = diag(j^-1.2). Labels are argmax(softmax(W_k x + b_k)).
alpha controls how much the devices' models differ, beta how much their inputs differ;
synthetic(0, 0) is still non-IID by device, `iid=True` gives the IID control (one shared model
and input distribution). Device sizes follow FedProx's power law: lognormal(4, 2) + 50, capped.
"""

from __future__ import annotations

import math

import numpy as np

from ._types import NaturalData

__all__ = ["load_synthetic"]

_DIM, _CLASSES = 60, 10
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def load_synthetic(
    alpha: float = 1.0,
    beta: float = 1.0,
    *,
    num_devices: int = 30,
    seed: int = 0,
    iid: bool = False,
    train_fraction: float = 0.9,
    max_samples: int = 2000,
) -> NaturalData:
    """synthetic(alpha, beta) over `num_devices` devices; x float32[N, 60], y int64[N] in 0..9."""
    for param, value in (("alpha", alpha), ("beta", beta)):
        # `not >= 0` also refuses NaN, which every comparison lets through
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(
                f"synthetic({alpha:g},{beta:g}): {param} must be a finite number >= 0, "
                f"got {value:g}"
            )
    alpha, beta = alpha + 0.0, beta + 0.0  # -0.0 as 0.0: numpy refuses a scale of -0.0
    if num_devices < 1:
        raise ValueError("num_devices must be >= 1")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError("train_fraction must be in (0, 1)")
    if max_samples < 51:
        raise ValueError("max_samples must be > 50 (every device holds at least 50)")
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.lognormal(4.0, 2.0, num_devices).astype(np.int64) + 50, max_samples)
    cov_diag = np.arange(1, _DIM + 1, dtype=np.float64) ** -1.2
    shared_w = rng.normal(0.0, 1.0, (_CLASSES, _DIM))
    shared_b = rng.normal(0.0, 1.0, _CLASSES)
    xs_tr, ys_tr, xs_te, ys_te, groups, test_groups = [], [], [], [], [], []
    n_tr = n_te = 0
    for k in range(num_devices):
        if iid:
            w, b, v = shared_w, shared_b, np.zeros(_DIM)
        else:
            u_k = rng.normal(0.0, alpha)
            big_b = rng.normal(0.0, beta)
            w = rng.normal(u_k, 1.0, (_CLASSES, _DIM))
            b = rng.normal(u_k, 1.0, _CLASSES)
            v = rng.normal(big_b, 1.0, _DIM)
        x = rng.normal(v, np.sqrt(cov_diag), (int(sizes[k]), _DIM))
        logits = x @ w.T + b
        finite = np.isfinite(logits).all() and np.abs(x).max() <= _FLOAT32_MAX
        if not (finite and np.ptp(logits, axis=1).any()):
            # alpha or beta so large that the generator is float64 noise: logits or float32
            # inputs overflow (beta 1e39), or W_k ~ N(u_k, 1) rounds to u_k everywhere (alpha
            # 1e300) and every example's ten logits tie. argmax then labels every example 0.
            raise ValueError(
                f"synthetic({alpha:g},{beta:g}): alpha and beta this large overflow the "
                "generator (logits or float32 inputs not finite, or every label a tie); use "
                "smaller values (FedProx uses 0 to 1)"
            )
        y = np.argmax(logits, axis=1).astype(np.int64)  # softmax is monotone
        cut = min(max(1, int(round(len(x) * train_fraction))), len(x) - 1)
        xs_tr.append(x[:cut])
        ys_tr.append(y[:cut])
        xs_te.append(x[cut:])
        ys_te.append(y[cut:])
        groups.append(np.arange(n_tr, n_tr + cut, dtype=np.int64))
        test_groups.append(np.arange(n_te, n_te + len(x) - cut, dtype=np.int64))
        n_tr += cut
        n_te += len(x) - cut
    name = "synthetic_iid" if iid else f"synthetic({alpha:g},{beta:g})"
    return NaturalData(
        name,
        np.concatenate(xs_tr).astype(np.float32),
        np.concatenate(ys_tr),
        np.concatenate(xs_te).astype(np.float32),
        np.concatenate(ys_te),
        _CLASSES,
        train_groups=tuple(groups),
        test_groups=tuple(test_groups),
        group_names=tuple(f"device{k:04d}" for k in range(num_devices)),
    )
