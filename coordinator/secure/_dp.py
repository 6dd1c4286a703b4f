"""Distributed DP for secure rounds: noise calibration and per-round accounting via dp_accounting.

Integer-domain sensitivity. A device's sent vector has L2 norm <= C; after rotation and the
affine map with scale s = (2^b - 1) / (2 C'), the zero-out neighbour (the device's values
replaced by zeros, i.e. q = s C' before rounding) differs by at most s C in L2 before
rounding, plus at most sqrt(k) from stochastic rounding: Delta = s C + sqrt(k).

Discrete Gaussian: each of n surviving devices adds N_Z(0, sigma^2) per coordinate. Kairouz,
Liu, Steinke (2021, Thm. 1) bound the sum: it is (eps^2 / 2)-concentrated DP with
    eps = min( sqrt(Delta^2 / (n sigma^2) + tau k / 2),  Delta / (sqrt(n) sigma) + tau sqrt(k) ),
    tau = 10 * sum_{j=1}^{n-1} exp(-2 pi^2 sigma^2 j / (j + 1)).
Each round is a `ZCDpEvent(eps^2 / 2)`; rounds compose in dp_accounting's RDP accountant, which
converts to (epsilon, delta). No subsampling amplification is claimed (conservative).

Skellam: the sum of n Skellam(mu) is Skellam(n mu), variance 2 n mu. It is accounted as a
Gaussian event of the same variance (`GaussianDpEvent`), which Agarwal, Kairouz, Liu (2021)
show is the limit of the Skellam RDP curve; this is reported as approximate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import dp_accounting
from dp_accounting import rdp

from protocol.secagg import NoiseKind

__all__ = ["integer_sensitivity", "ddg_epsilon", "DistributedDpAccountant"]


def integer_sensitivity(clip_norm: float, coord_bound: float, value_bits: int, k: int) -> float:
    """Delta = s C + sqrt(k), with s = (2^b - 1) / (2 C'): L2 sensitivity in quantized units."""
    scale = ((1 << value_bits) - 1) / (2.0 * coord_bound)
    return scale * clip_norm + math.sqrt(k)


def ddg_epsilon(sensitivity: float, sigma2: float, n: int, k: int) -> float:
    """The eps of Kairouz et al. Thm. 1: the sum of n discrete Gaussians is (eps^2/2)-zCDP."""
    if n < 1 or sigma2 <= 0:
        raise ValueError("need n >= 1 and sigma2 > 0")
    tau = 10.0 * sum(
        math.exp(-2.0 * math.pi**2 * sigma2 * j / (j + 1)) for j in range(1, min(n, 10_000))
    )
    a = math.sqrt(sensitivity**2 / (n * sigma2) + 0.5 * tau * k)
    b = sensitivity / (math.sqrt(n) * math.sqrt(sigma2)) + tau * math.sqrt(k)
    return float(min(a, b))


@dataclass
class DistributedDpAccountant:
    """Per-round DP events of a secure task, composed with dp_accounting's RDP accountant."""

    delta: float
    events: list[dp_accounting.DpEvent] = field(default_factory=list)
    approximate: bool = False

    def record_round(
        self,
        kind: NoiseKind,
        sensitivity: float,
        variance_per_device: float,
        survivors: int,
        k: int,
    ) -> None:
        """Add one released round. `survivors` devices each added noise of that variance."""
        if kind == NoiseKind.DISCRETE_GAUSSIAN:
            eps = ddg_epsilon(sensitivity, variance_per_device, survivors, k)
            self.events.append(dp_accounting.ZCDpEvent(eps**2 / 2.0))
        elif kind == NoiseKind.SKELLAM:
            total_std = math.sqrt(variance_per_device * survivors)
            self.events.append(dp_accounting.GaussianDpEvent(total_std / sensitivity))
            self.approximate = True
        else:
            self.events.append(dp_accounting.NonPrivateDpEvent())

    def epsilon(self) -> float:
        """Epsilon at `delta` after every recorded round (inf if any round was not private)."""
        if not self.events:
            return 0.0
        acc = rdp.RdpAccountant()
        acc.compose(dp_accounting.ComposedDpEvent(list(self.events)))
        return float(acc.get_epsilon(self.delta))
