"""Distributed DP for secure rounds: noise calibration and per-round RDP accounting, exact bounds.

Integer-domain sensitivity (zero-out neighbour: one device's sent values replaced by zeros).
After the L2 clip to C, the rotation (orthogonal) and the per-coordinate clip to [-C', C'], a
device's values v have ||v||_2 <= C; the affine map x = s (v + C'), s = (2^b - 1) / (2 C'),
moves by d = s v against the neighbour's x' = s C', so ||d||_2 <= s C. Stochastic rounding is
q = floor(x) + [U < frac(x)] = ceil(x - U) with U ~ U[0, 1)^k, monotone in x. Couple the two
datasets through the same U (and the same noise of every other device): then |q_j - q'_j| <=
ceil(|d_j|) < |d_j| + 1, so the integer difference e = q - q' has
    ||e||_2 <= s C + sqrt(k) = Delta2                                (`integer_sensitivity`)
    ||e||_1 <= min(sqrt(k) Delta2, Delta2^2) = Delta1                (`l1_sensitivity`).
The released sum is a mixture over U of shifted noise distributions with the same mixing law on
both sides, and the Renyi divergence is jointly quasi-convex, so an RDP bound for every shift
of norm <= (Delta1, Delta2) bounds the mixture.

Discrete Gaussian: each of n surviving devices adds N_Z(0, sigma^2) per coordinate. For
sigma >= 1/2, Kairouz, Liu, Steinke (2021, Prop. 14, from which their Thm. 1 follows) bound
the Renyi divergence of the sum at every order alpha >= 1 by the least of three terms, two of
them
    alpha Delta2^2 / (2 n sigma^2) + tau k    and    (alpha / 2) (Delta2 / (sqrt(n) sigma) + tau sqrt(k))^2,
    tau = 10 * sum_{j=1}^{n-1} exp(-2 pi^2 sigma^2 j / (j + 1)).
As tau k <= alpha tau k for alpha >= 1, the sum is (eps^2 / 2)-concentrated DP with
    eps = min( sqrt(Delta2^2 / (n sigma^2) + 2 tau k),  Delta2 / (sqrt(n) sigma) + tau sqrt(k) ).
(The authors' accounting code, google-research distributed_dp, evaluates Prop. 14 with this
tau k term; the tau k / 2 inside the root used here before is not implied by it.) tau is
summed over all n - 1 terms. For any sigma, one survivor's noise alone is
(Delta2^2 / (2 sigma^2))-zCDP (Canonne, Kamath, Steinke 2020) and adding the other survivors'
independent noise is post-processing, so eps <= Delta2 / sigma too; below sigma = 1/2, where
Prop. 14 does not apply, that is the bound used. Each round is a `ZCDpEvent(eps^2 / 2)`, whose
RDP curve dp_accounting's `RdpAccountant` gives. In the settings Plume plans (sigma^2 in the
thousands) tau underflows to 0 and eps is Delta2 / (sqrt(n) sigma), as before.

Skellam: each device adds Sk(m, m) = Poisson(m) - Poisson(m) per coordinate (variance 2 m).
Sums of independent Skellams are Skellam, so the survivors' noise is exactly Sk(mu, mu) with
mu = n m, variance V = 2 mu. Agarwal, Kairouz, Liu (NeurIPS 2021, "The Skellam Mechanism for
Differentially Private Federated Learning", Thm. 3.5, multi-dimensional Skellam mechanism) give,
in their parametrization by the variance V (their Sk_{0,V} has pmf e^{-V} I_j(V)), for integer
orders alpha > 1:
    rdp(alpha) = alpha Delta2^2 / (2 V)
                 + min( ((2 alpha - 1) Delta2^2 + 6 Delta1) / (4 V^2),  3 Delta1 / (2 V) )
(with mu = V / 2: alpha Delta2^2 / (4 mu) + min(((2 alpha - 1) Delta2^2 + 6 Delta1) / (16 mu^2),
3 Delta1 / (4 mu))). The first term is the Gaussian mechanism's RDP at the same variance, so the
bound is never below it and tends to it as V grows. At a non-integer order of the grid the bound
at ceil(alpha) is used: Renyi divergence is non-decreasing in the order.

Rounds compose by adding RDP curves at `RDP_ORDERS` (dp_accounting's default grid); a
non-private round adds inf. dp_accounting's `compute_epsilon` converts the total to (eps, delta).
No subsampling amplification is claimed (conservative).

An epsilon budget needs the least a round can add (`min_round_rho`). A group of N devices
adds per-device variance (z Delta2)^2 / n_min with n_min = max(t, ceil((1 - expected_dropout)
N)) >= (1 - expected_dropout) N, and n <= N of them survive, so n sigma^2 <= N sigma^2 <=
(z Delta2)^2 / (1 - dropout), i.e. Delta2^2 / (n sigma^2) >= (1 - dropout) / z^2. Every bound above is at least Delta2 / (sqrt(n) sigma) (discrete Gaussian: each
of the three terms; Skellam: its Gaussian term alone, at every order), so every round, of any
size, |S_r| or grouping, is at least rho-zCDP's RDP curve with rho = (1 - dropout) / (2 z^2).
`DistributedDpAccountant.epsilon_after(rho)` composes one such round: if even that passes the
budget, no next round can stay within it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from protocol.secagg import NoiseKind, SecurePlan

# dp_accounting (and scipy with it) is slow to import; the accountant's methods import it.
if TYPE_CHECKING:
    import dp_accounting

__all__ = [
    "account_released_groups",
    "RDP_ORDERS",
    "integer_sensitivity",
    "l1_sensitivity",
    "ddg_epsilon",
    "ddg_tau",
    "skellam_rdp",
    "DistributedDpAccountant",
    "min_round_rho",
    "released_group_weakness",
]

# dp_accounting's `rdp_privacy_accountant.DEFAULT_RDP_ORDERS`, built the same way, as floats
# (a test checks that they are equal).
RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)]
    + [float(a) for a in range(11, 64)]
    + [128.0, 256.0, 512.0, 1024.0]
)


def integer_sensitivity(clip_norm: float, coord_bound: float, value_bits: int, k: int) -> float:
    """Delta2 = s C + sqrt(k), with s = (2^b - 1) / (2 C'): L2 sensitivity in quantized units."""
    scale = ((1 << value_bits) - 1) / (2.0 * coord_bound)
    return scale * clip_norm + math.sqrt(k)


def l1_sensitivity(l2_sensitivity: float, k: int) -> float:
    """Delta1 = min(sqrt(k) Delta2, Delta2^2): L1 bound of an integer k-vector of L2 norm <= Delta2.

    Cauchy-Schwarz gives sqrt(k) Delta2; integer entries have |e_j| <= e_j^2, which gives
    Delta2^2. No tighter bound follows from the clip: as every |d_j| = s C / sqrt(k) tends to
    an integer from above, ||e||_1 tends to sqrt(k) s C + k = sqrt(k) Delta2 (with
    coord_bound_sigmas >= 1, C' >= C / sqrt(k), so the per-coordinate clip does not bind there).
    """
    if l2_sensitivity < 0 or k < 1:
        raise ValueError("need l2_sensitivity >= 0 and k >= 1")
    return float(min(math.sqrt(k) * l2_sensitivity, l2_sensitivity**2))


def ddg_tau(sigma2: float, n: int) -> float:
    """tau = 10 sum_{j=1}^{n-1} exp(-2 pi^2 sigma2 j / (j + 1)) of Kairouz et al. (all n - 1 terms)."""
    if n < 1 or not sigma2 > 0:
        raise ValueError("need n >= 1 and sigma2 > 0")
    j = np.arange(1, n, dtype=np.float64)
    return float(10.0 * np.exp(-2.0 * math.pi**2 * sigma2 * j / (j + 1.0)).sum())


def ddg_epsilon(sensitivity: float, sigma2: float, n: int, k: int) -> float:
    """eps such that the sum of n discrete Gaussians N_Z(0, sigma2)^k is (eps^2 / 2)-zCDP for
    shifts of L2 norm <= `sensitivity` (integer units): Kairouz et al.'s bound for sigma >= 1/2,
    never above one survivor's Delta2 / sigma (see the module docstring)."""
    if n < 1 or not sigma2 > 0 or k < 1 or sensitivity < 0:
        raise ValueError("need n >= 1, sigma2 > 0, k >= 1 and sensitivity >= 0")
    single = sensitivity / math.sqrt(sigma2)
    if sigma2 < 0.25:
        return float(single)
    tau = ddg_tau(sigma2, n)
    a = math.sqrt(sensitivity**2 / (n * sigma2) + 2.0 * tau * k)
    b = sensitivity / (math.sqrt(n) * math.sqrt(sigma2)) + tau * math.sqrt(k)
    return float(min(a, b, single))


def skellam_rdp(
    orders: npt.ArrayLike, l2_sensitivity: float, l1_sensitivity: float, variance: float
) -> npt.NDArray[np.float64]:
    """Agarwal et al. Thm. 3.5 RDP of Skellam noise of total `variance` V per coordinate.

    `orders` (> 1) are rounded up to integers; sensitivities are in integer units. float64[len].
    """
    a = np.ceil(np.asarray(orders, dtype=np.float64))
    if a.size and not np.all(a >= 2):
        raise ValueError("RDP orders must be > 1")
    if not variance > 0 or l2_sensitivity < 0 or l1_sensitivity < 0:
        raise ValueError("need variance > 0 and non-negative sensitivities")
    d2sq, d1, v = l2_sensitivity**2, l1_sensitivity, variance
    gaussian = a * d2sq / (2.0 * v)
    extra = np.minimum(((2.0 * a - 1.0) * d2sq + 6.0 * d1) / (4.0 * v * v), 3.0 * d1 / (2.0 * v))
    out: npt.NDArray[np.float64] = gaussian + extra
    return out


@dataclass
class DistributedDpAccountant:
    """Per-round privacy of a secure task, composed as RDP curves at `RDP_ORDERS`.

    `events` holds the dp_accounting events of discrete-Gaussian and non-private rounds;
    `skellam` the summed Skellam RDP curve (float64[len(RDP_ORDERS)]).
    """

    delta: float
    events: list[dp_accounting.DpEvent] = field(default_factory=list)
    skellam: npt.NDArray[np.float64] = field(
        default_factory=lambda: np.zeros(len(RDP_ORDERS), dtype=np.float64)
    )
    rounds: int = 0

    def record_round(
        self,
        kind: NoiseKind,
        sensitivity: float,
        variance_per_device: float,
        survivors: int,
        k: int,
    ) -> None:
        """Add one released round. `survivors` devices each added noise of that variance.

        `sensitivity` is Delta2 in integer units (`integer_sensitivity`); Delta1 is derived
        from it with `l1_sensitivity`, so a replay from stored measurements is identical.
        """
        import dp_accounting

        if kind == NoiseKind.DISCRETE_GAUSSIAN:
            eps = ddg_epsilon(sensitivity, variance_per_device, survivors, k)
            self.events.append(dp_accounting.ZCDpEvent(eps**2 / 2.0))
        elif kind == NoiseKind.SKELLAM:
            if survivors < 1 or not variance_per_device > 0:
                raise ValueError("need survivors >= 1 and variance_per_device > 0")
            total = variance_per_device * survivors  # Sk(n m, n m): the survivors' summed noise
            self.skellam = self.skellam + skellam_rdp(
                RDP_ORDERS, sensitivity, l1_sensitivity(sensitivity, k), total
            )
        else:
            self.events.append(dp_accounting.NonPrivateDpEvent())
        self.rounds += 1

    def rdp(self) -> npt.NDArray[np.float64]:
        """The composed RDP curve at `RDP_ORDERS` (inf if any round was not private)."""
        import dp_accounting
        from dp_accounting.rdp import rdp_privacy_accountant

        acc = rdp_privacy_accountant.RdpAccountant(RDP_ORDERS)
        acc.compose(dp_accounting.ComposedDpEvent(list(self.events)))
        out: npt.NDArray[np.float64] = np.asarray(acc.rdp, dtype=np.float64) + self.skellam
        return out

    def epsilon(self) -> float:
        """Epsilon at `delta` after every recorded round (inf if any round was not private)."""
        from dp_accounting.rdp import rdp_privacy_accountant

        if self.rounds == 0:
            return 0.0
        eps, _ = rdp_privacy_accountant.compute_epsilon(RDP_ORDERS, self.rdp(), self.delta)
        return float(eps)

    def epsilon_after(self, rho: float) -> float:
        """Epsilon at `delta` if one more round, rho-zCDP, were recorded (nothing recorded).
        With `min_round_rho` it bounds from below the epsilon after any next round."""
        import dp_accounting
        from dp_accounting.rdp import rdp_privacy_accountant

        acc = rdp_privacy_accountant.RdpAccountant(RDP_ORDERS)
        acc.compose(dp_accounting.ComposedDpEvent([*self.events, dp_accounting.ZCDpEvent(rho)]))
        rdp = np.asarray(acc.rdp, dtype=np.float64) + self.skellam
        eps, _ = rdp_privacy_accountant.compute_epsilon(RDP_ORDERS, rdp, self.delta)
        return float(eps)


def min_round_rho(noise_multiplier: float, expected_dropout: float) -> float:
    """rho such that every distributed-DP round is at least rho-zCDP's RDP curve:
    (1 - expected_dropout) / (2 z^2) (see the module docstring)."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"need a finite noise_multiplier > 0, got {noise_multiplier}")
    if not 0.0 <= expected_dropout < 1.0:
        raise ValueError(f"need expected_dropout in [0, 1), got {expected_dropout}")
    return (1.0 - expected_dropout) / (2.0 * noise_multiplier**2)


def released_group_weakness(group: tuple[int, SecurePlan]) -> float:
    """How weak the bound of one released group, (survivors, plan), is: larger is weaker. For
    the discrete Gaussian its `ddg_epsilon` (zCDP curves are ordered by it); for Skellam minus
    its summed noise n sigma^2 (a round's groups share |S_r| and so their sensitivities)."""
    n, p = group
    if p.noise == NoiseKind.DISCRETE_GAUSSIAN:
        sens = integer_sensitivity(p.clip_norm, p.coord_bound, p.value_bits, p.k)
        return ddg_epsilon(sens, p.noise_variance, n, p.k)
    return -n * p.noise_variance


def account_released_groups(
    accountant: DistributedDpAccountant,
    released: Sequence[tuple[int, SecurePlan]],
    noise_multiplier: float,
) -> dict[str, Any]:
    """Record one round in `accountant` and return its `dp` measurements.

    `released` holds (survivors, plan) of every group whose noisy sum the server unmasked, also
    those it then refused to decode or commit: the server has seen those sums, so they count.
    Groups hold disjoint devices (parallel composition), so the group with the weakest bound
    binds: for Skellam the least summed noise n sigma^2, for the discrete Gaussian the largest
    `ddg_epsilon` (its zCDP curves are ordered by it). Per-device variances differ with the
    group size, so survivors and variance are taken from the same group.
    """
    if not released:
        raise ValueError("no released group to account")
    survivors, plan = max(released, key=released_group_weakness)
    sens = integer_sensitivity(plan.clip_norm, plan.coord_bound, plan.value_bits, plan.k)
    accountant.record_round(plan.noise, sens, plan.noise_variance, survivors, plan.k)
    # The survivors' summed noise in units of the sensitivity: the z the released sum carried.
    # The plan calibrated it to `noise_multiplier` for n_min survivors; fewer carry less.
    summed = survivors * plan.noise_variance
    return {
        "epsilon": accountant.epsilon(),
        "delta": accountant.delta,
        "noise": plan.noise.name.lower(),
        "noise_multiplier": noise_multiplier,
        "noise_variance_per_device": plan.noise_variance,
        "sensitivity": sens,
        "l1_sensitivity": l1_sensitivity(sens, plan.k),
        "survivors": survivors,
        "effective_noise_multiplier": math.sqrt(summed) / sens,
        "noise_below_plan": summed < (noise_multiplier * sens) ** 2 * (1.0 - 1e-12),
        "k": plan.k,
        "rounds": accountant.rounds,
    }
