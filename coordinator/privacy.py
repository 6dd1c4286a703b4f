"""User-level DP accounting for rounds of DP-FedAvg, built on Google's `dp_accounting` (RDP, PLD).

One round releases the noised sum of clipped per-device updates: a Gaussian mechanism with
noise multiplier z (noise stddev / clip norm), applied to a sampled cohort. Rounds compose.

- `PoissonSampling(q)`: every device joins a round independently with probability q.
  Neighbouring relation: add/remove one device (all of its data). The L2 sensitivity of the
  clipped sum is C, so the Gaussian event has noise multiplier z. PLD (tight) or RDP.
- `FixedSizeSampling(population, sample_size)`: a uniform cohort of exactly `sample_size`
  devices out of `population`. Neighbouring relation: replace one device (the population size
  is public). Replacing a device moves the clipped sum by up to 2C, so the event's noise
  multiplier is z / 2. `dp_accounting` supports this only with RDP; "auto" caps each round's
  RDP curve by the unsampled Gaussian's (sampling never costs privacy, and dp_accounting's
  sampled bound is far looser than no sampling when the cohort is most of the population).

The accountant is a frozen value: `epsilon(rounds, delta)` composes `rounds` identical rounds.
Epsilons are cached, and so is one round's PLD (self-composed to each round count) or RDP
curve (scaled by it): building them is the same work for every round count.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

# dp_accounting (and scipy with it) is slow to import, so the functions that account import
# it, and PrivacyMetrics imports prometheus_client: the aggregators and `plume --help` import
# this module and need neither.
if TYPE_CHECKING:
    import dp_accounting
    from prometheus_client import CollectorRegistry

__all__ = [
    "FixedSizeSampling",
    "MIN_ACCOUNTED_NOISE_MULTIPLIER",
    "PoissonSampling",
    "PrivacyAccountant",
    "PrivacyBudgetExhausted",
    "PrivacyMetrics",
    "Sampling",
    "calibrate_noise_multiplier",
    "clear_accounting_caches",
    "composed_rdp_epsilon",
    "rdp_curve",
    "rdp_orders",
    "pld_value_interval",
    "PLD_FINE_Z",
    "PLD_VALUE_INTERVAL",
]

Method = Literal["auto", "pld", "rdp"]

# Smallest noise multiplier Plume accounts: DPMean refuses a smaller z with sampling, and
# calibrate_noise_multiplier never answers below it. Below it one round's epsilon is already
# in the hundreds of thousands, and the RDP accountant's arithmetic breaks further down
# (z = 1e-160 gave epsilon 0, z = 1e-300 a ZeroDivisionError). The docs' weakest dp runs use
# z = 0.005.
MIN_ACCOUNTED_NOISE_MULTIPLIER = 1e-3

# dp_accounting's PLD grid step on the privacy loss (its default value_discretization_interval).
PLD_VALUE_INTERVAL = 1e-4
# Below this noise multiplier the PLD grid is coarsened. A Gaussian's privacy loss spans about
# 1/z^2 (plus a few 1/z), so at the default step the grid grows as 1/z^2: dp_accounting builds
# it point by point in Python (a hundred times the points at z = 0.05 as at 0.5; at small z one
# epsilon took minutes). Scaled by (PLD_FINE_Z / z)^2, the grid
# stays at most the size it has at PLD_FINE_Z.
PLD_FINE_Z = 0.5


def _shown(v: object) -> str:
    """`v` as a refusal writes it (`aggregators._base.shown`): an int of 16 digits or more in
    exponent form (1e+400), not its every digit. Imported here: the aggregators import this
    module."""
    from coordinator.aggregators._base import shown

    return shown(v)


def _finite(v: float) -> bool:
    """math.isfinite, False (not OverflowError) for an int past a float's range (10**400)."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _check_rounds(rounds: object) -> None:
    """Refuse a round count that is not a whole number >= 0 (an int or a numpy integer; not a
    bool). Before, only a negative one was refused, and only by `dp_event` and `rdp_curve`:
    `epsilon` answered 0.0 for -1 fixed-size rounds (a negative RDP curve) and an epsilon for
    2.5, and `rdp_curve` 2.5 times a round's curve."""
    if isinstance(rounds, bool) or not isinstance(rounds, numbers.Integral):
        raise ValueError(f"rounds must be a whole number, got {_shown(rounds)}")
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {_shown(rounds)}")


class PrivacyBudgetExhausted(RuntimeError):
    """Releasing another round would push epsilon past the task's budget."""


@dataclass(frozen=True, slots=True)
class PoissonSampling:
    """Each device takes part in a round independently with `probability` q in (0, 1]."""

    probability: float

    def __post_init__(self) -> None:
        if not 0.0 < self.probability <= 1.0:
            raise ValueError(
                f"sampling probability must be in (0, 1], got {_shown(self.probability)}"
            )


@dataclass(frozen=True, slots=True)
class FixedSizeSampling:
    """A uniformly random cohort of `sample_size` devices out of `population`, per round."""

    population: int
    sample_size: int

    def __post_init__(self) -> None:
        if not 1 <= self.sample_size <= self.population:
            raise ValueError(
                "need 1 <= sample_size <= population, got "
                f"{_shown(self.sample_size)}/{_shown(self.population)}"
            )


Sampling = PoissonSampling | FixedSizeSampling


def _round_event(noise_multiplier: float, sampling: Sampling) -> dp_accounting.DpEvent:
    import dp_accounting

    if isinstance(sampling, PoissonSampling):
        return dp_accounting.PoissonSampledDpEvent(
            sampling.probability, dp_accounting.GaussianDpEvent(noise_multiplier)
        )
    # Replace-one: sensitivity 2C, so the Gaussian's multiplier relative to it is z / 2.
    return dp_accounting.SampledWithoutReplacementDpEvent(
        sampling.population,
        sampling.sample_size,
        dp_accounting.GaussianDpEvent(noise_multiplier / 2.0),
    )


def pld_value_interval(noise_multiplier: float) -> float:
    """The PLD accountant's grid step for noise multiplier z: dp_accounting's default 1e-4 for
    z >= PLD_FINE_Z (0.5), else 1e-4 · (0.5 / z)^2 (coarser, so the grid is no larger than at
    0.5). dp_accounting rounds the privacy loss pessimistically onto the grid, so a coarser
    grid gives a (slightly) larger epsilon, never a smaller one than the true value."""
    if noise_multiplier >= PLD_FINE_Z:
        return PLD_VALUE_INTERVAL
    return PLD_VALUE_INTERVAL * (PLD_FINE_Z / noise_multiplier) ** 2


def _make_accountant(sampling: Sampling, method: Method) -> dp_accounting.PrivacyAccountant:
    import dp_accounting
    from dp_accounting import pld, rdp

    fixed = isinstance(sampling, FixedSizeSampling)
    relation = (
        dp_accounting.NeighboringRelation.REPLACE_ONE
        if fixed
        else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    chosen = ("rdp" if fixed else "pld") if method == "auto" else method
    if chosen == "pld":
        if fixed:
            raise ValueError("dp_accounting's PLD accountant has no fixed-size sampling; use rdp")
        return pld.PLDAccountant(
            neighboring_relation=relation,
            value_discretization_interval=PLD_VALUE_INTERVAL,
        )
    if chosen == "rdp":
        return rdp.RdpAccountant(neighboring_relation=relation)
    raise ValueError(f"unknown accounting method {method!r}; use auto, pld or rdp")


@dataclass(frozen=True, slots=True)
class PrivacyAccountant:
    """(epsilon, delta) of `rounds` rounds of the sampled Gaussian mechanism.

    noise_multiplier: noise stddev on the clipped sum divided by the clip norm C (> 0).
    method: "pld" (tight; Poisson only), "rdp" (dp_accounting's RdpAccountant as it is), or
      "auto": PLD for Poisson; for fixed size, RDP with each round's curve capped by the
      unsampled Gaussian's (multiplier z / 2), which is tighter for m near N (`_round_rdp`).
    PLD's grid step is `pld_value_interval(noise_multiplier)`: dp_accounting's default from
    z = 0.5 up, coarser below, so a small z takes about as long as z = 0.5.
    """

    noise_multiplier: float
    sampling: Sampling
    method: Method = "auto"

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0 and _finite(self.noise_multiplier)):
            raise ValueError(
                f"noise multiplier must be finite and > 0, got {_shown(self.noise_multiplier)}"
            )
        _make_accountant(self.sampling, self.method)  # validates the method/sampling pair

    def dp_event(self, rounds: int) -> dp_accounting.DpEvent:
        """The dp_accounting event of `rounds` rounds (rounds >= 0)."""
        import dp_accounting

        _check_rounds(rounds)
        return dp_accounting.SelfComposedDpEvent(
            _round_event(self.noise_multiplier, self.sampling), int(rounds)
        )

    def epsilon(self, rounds: int, delta: float) -> float:
        """Smallest epsilon with (epsilon, delta)-DP after `rounds` rounds (0 for 0 rounds);
        `rounds` a whole number >= 0 (`_check_rounds`)."""
        _check_rounds(rounds)
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {_shown(delta)}")
        if rounds == 0:
            return 0.0
        return _epsilon_cached(self, int(rounds), delta)

    def max_rounds(self, epsilon: float, delta: float, limit: int = 1_000_000) -> int:
        """The largest number of rounds whose epsilon stays <= `epsilon` (capped at `limit`,
        so 0 for `limit` 0). A negative `limit` is refused (ValueError)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a non-negative round count, got {limit!r}")
        if limit == 0 or self.epsilon(1, delta) > epsilon:
            return 0
        lo, hi = 1, 2
        while hi <= limit and self.epsilon(hi, delta) <= epsilon:
            lo, hi = hi, hi * 2
        hi = min(hi, limit + 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.epsilon(mid, delta) <= epsilon:
                lo = mid
            else:
                hi = mid
        return lo


@functools.lru_cache(maxsize=4096)
def _epsilon_cached(acc: PrivacyAccountant, rounds: int, delta: float) -> float:
    if isinstance(acc.sampling, PoissonSampling) and acc.method in ("auto", "pld"):
        return _pld_epsilon(acc.noise_multiplier, acc.sampling.probability, rounds, delta)
    return _rdp_epsilon(acc.noise_multiplier, acc.sampling, rounds, delta, acc.method == "auto")


# 1,024 configs: the coordinator-wide figure (`coordinator.service.dp_total`) walks every
# accounted task's config at each change, and with more configs than the cache holds each walk
# recomputed every curve (about 0.25 s each; helper-215). One entry is two float64 arrays of
# about 100 orders.
@functools.lru_cache(maxsize=1024)
def _round_rdp(
    noise_multiplier: float, sampling: Sampling, capped: bool = False
) -> tuple[Any, Any]:
    """(orders, one round's RDP curve) from dp_accounting's RdpAccountant: float64[orders].

    `capped` (method "auto") under fixed-size sampling: the curve is the per-order minimum of
    the sampled bound and the unsampled Gaussian's (multiplier z / 2, replace-one). Sampling
    cannot cost privacy: the sampled release is a mixture, with the same weights on both
    sides, over cohorts whose two releases are equal (the device is out) or replace-one
    neighbours (it is in), and the Renyi divergence is jointly quasi-convex, so the
    Gaussian's RDP bounds every round too. The
    sampled bound (Wang et al. 2019, Thm. 27) is far looser than that just below m = N
    (epsilon 43.2 against the Gaussian's 22.0 at N = 110, m = 100, z = 4, 50 rounds), where
    dp_accounting uses it as it is, and at small z far below m = N too: at z = 0.5 from m = 8
    of N = 50 (10 rounds), at z = 0.2 even at m = 1 (docs/privacy.md). Method "rdp"
    keeps dp_accounting's curve as it is, to the bit.
    """
    import numpy as np

    a = _make_accountant(sampling, "rdp")
    a.compose(PrivacyAccountant(noise_multiplier, sampling, "rdp").dp_event(1))
    orders, curve = a.orders, a.rdp.copy()  # the accountant starts at 0: 0 + 1·curve = curve
    if (
        capped
        and isinstance(sampling, FixedSizeSampling)
        and sampling.sample_size < sampling.population
    ):
        # The Gaussian's RDP alpha / (2 sigma^2), sigma = z / 2, as dp_accounting's
        # accountant computes it for a GaussianDpEvent (the same floats; tests compare them).
        sigma = noise_multiplier / 2.0
        gaussian = np.array([alpha / (2 * sigma**2) for alpha in orders], dtype=np.float64)
        curve = np.minimum(curve, gaussian)
    curve.setflags(write=False)
    return orders, curve


def _rdp_epsilon(
    noise_multiplier: float, sampling: Sampling, rounds: int, delta: float, capped: bool = False
) -> float:
    """RDP epsilon of `rounds` rounds from the cached one-round curve.

    dp_accounting's RdpAccountant composes `SelfComposedDpEvent(round, rounds)` as
    zeros + rounds · (the round's curve) and reads epsilon with `compute_epsilon`; this does
    the same arithmetic, so the same floats (tests/coordinator/test_h82_rdp_cache.py), with
    the curve, the costly part (every order of the sampled Gaussian), computed once. With
    `capped` (method "auto") a fixed-size round's curve is also capped by the unsampled
    Gaussian's (`_round_rdp`).
    """
    import numpy as np
    from dp_accounting.rdp import rdp_privacy_accountant

    orders, curve = _round_rdp(noise_multiplier, sampling, capped)
    total = np.zeros_like(curve)
    total += rounds * curve
    return float(rdp_privacy_accountant.compute_epsilon(orders, total, delta)[0])


def rdp_orders() -> Any:
    """dp_accounting's default RDP orders (float64, read-only): the grid every curve below,
    `_round_rdp`'s and a secure task's (`coordinator.secure._dp.RDP_ORDERS`), is on."""
    import numpy as np
    from dp_accounting.rdp import rdp_privacy_accountant

    orders = np.array(rdp_privacy_accountant.DEFAULT_RDP_ORDERS, dtype=np.float64)
    orders.setflags(write=False)
    return orders


def rdp_curve(accountant: PrivacyAccountant, rounds: int) -> Any:
    """The RDP curve (float64 at `rdp_orders()`) of `rounds` rounds as `accountant` would
    account them under RDP: dp_accounting's curve of its round event times `rounds`, and under
    method "auto" with fixed-size sampling each round capped by the unsampled Gaussian's
    (`_round_rdp`). A PLD-accounted (Poisson) task's curve is dp_accounting's RDP one: PLDs of
    different tasks would compose too, but not with a secure task's zCDP rounds or a
    fixed-size task's capped curve, which only RDP holds."""
    import numpy as np

    _check_rounds(rounds)
    _, curve = _round_rdp(
        accountant.noise_multiplier, accountant.sampling, accountant.method == "auto"
    )
    total = np.zeros_like(curve)
    total += int(rounds) * curve  # as dp_accounting composes SelfComposedDpEvent(round, rounds)
    return total


def composed_rdp_epsilon(curves: Any, delta: float) -> float:
    """Epsilon at `delta` of the composition of mechanisms with these RDP curves (each at
    `rdp_orders()`): the curves add, as dp_accounting's RdpAccountant adds its events' curves
    for a ComposedDpEvent (in the same order, so the same floats), and dp_accounting's
    `compute_epsilon` converts the sum. 0 for no curve; inf if a curve is (a round that was
    not private)."""
    import numpy as np
    from dp_accounting.rdp import rdp_privacy_accountant

    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {_shown(delta)}")
    orders = rdp_orders()
    total = np.zeros(len(orders), dtype=np.float64)
    n = 0
    for curve in curves:
        curve = np.asarray(curve, dtype=np.float64)
        if curve.shape != total.shape:
            raise ValueError(f"an RDP curve of {curve.shape} values, expected {total.shape}")
        total += curve
        n += 1
    if n == 0:
        return 0.0
    return float(rdp_privacy_accountant.compute_epsilon(orders, total, delta)[0])


# A few megabytes each at z = 0.5 (two float64 arrays of about 2·10^5 points); a run asks for
# one (z, q), a calibration's PLD checks for a handful.
@functools.lru_cache(maxsize=8)
def _round_pld(
    noise_multiplier: float, probability: float
) -> dp_accounting.pld.privacy_loss_distribution.PrivacyLossDistribution:
    """One round's PLD, with the arguments dp_accounting's PLDAccountant passes for a
    `PoissonSampledDpEvent(q, GaussianDpEvent(z))` under add/remove."""
    import dp_accounting
    from dp_accounting.pld import privacy_loss_distribution

    return privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=noise_multiplier,
        value_discretization_interval=pld_value_interval(noise_multiplier),
        sampling_prob=probability,
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
    )


def _pld_epsilon(noise_multiplier: float, probability: float, rounds: int, delta: float) -> float:
    """PLD epsilon of `rounds` Poisson-sampled Gaussian rounds, from the cached one-round PLD.

    The same dp_accounting calls, in the same order, as a fresh `PLDAccountant` composing
    `SelfComposedDpEvent(round, rounds)` (its `_maybe_compose` builds the round's PLD,
    self-composes it `rounds` times and composes that onto its identity PLD), so the same
    floats: only the build, the same for every round count, is done once instead of per call.
    tests/coordinator/test_h82_pld_cache.py compares the two with ==.
    """
    from dp_accounting.pld import privacy_loss_distribution

    composed = _round_pld(noise_multiplier, probability).self_compose(rounds)
    start = privacy_loss_distribution.identity(pld_value_interval(noise_multiplier))
    return float(start.compose(composed).get_epsilon_for_delta(delta))


def clear_accounting_caches() -> None:
    """Forget every cached epsilon, one-round PLD and RDP curve (for tests that count work)."""
    _epsilon_cached.cache_clear()
    _round_pld.cache_clear()
    _round_rdp.cache_clear()


def calibrate_noise_multiplier(
    epsilon: float, delta: float, rounds: int, sampling: Sampling, method: Method = "auto"
) -> float:
    """A noise multiplier z giving (epsilon, delta)-DP after `rounds` rounds.

    Under RDP the smallest such z (to the search tolerance) for dp_accounting's bound; under
    fixed-size sampling with "auto", where capping each round by the unsampled Gaussian (as
    `PrivacyAccountant(..., "auto")` does) lowers that z's epsilon by more than 0.1%, a z
    bisected below it to 0.001·z_rdp, as for PLD. Under PLD a z in [floor, z_rdp] whose PLD
    epsilon on its own grid, the figure `PrivacyAccountant(z, sampling).epsilon` reports, is
    at most the target, and at most 0.001·z_rdp above one that misses it; where PLD already
    meets the target at z_rdp / 2 (small q and epsilon), at most 0.001 of the bracket's upper
    end (between z and 2z) above one that misses it. Sufficient, and minimal to that
    tolerance where the (discretised) epsilon falls with z. Never below the floor
    MIN_ACCOUNTED_NOISE_MULTIPLIER (0.001), the smallest z DPMean accounts: a target the floor
    already meets (under the chosen method) is refused with a ValueError rather than answered
    with a z nothing would account.
    """
    if not epsilon > 0 or rounds < 1:  # NaN too: it reached brentq's bracket error
        raise ValueError(f"need epsilon > 0 and rounds >= 1, got {epsilon!r} and {rounds!r}")
    import dp_accounting

    chosen: Method = (
        ("rdp" if isinstance(sampling, FixedSizeSampling) else "pld")
        if method == "auto"
        else method
    )
    floor = MIN_ACCOUNTED_NOISE_MULTIPLIER
    # As reported: "auto" is PLD for Poisson and the capped RDP for fixed size (`_round_rdp`).
    at_floor = PrivacyAccountant(floor, sampling, method).epsilon(rounds, delta)
    if at_floor <= epsilon:
        # Before, RDP's search for a bracket went up from the floor and gave up after 2^30 of
        # it (NoBracketIntervalFoundError), and PLD's, from half the RDP answer, could return
        # a z below the floor.
        raise ValueError(
            f"target epsilon {epsilon:g} at delta {delta:g} needs less noise than "
            f"z = {floor:g}, the smallest noise multiplier Plume accounts (its epsilon after "
            f"{rounds} round(s) is already {at_floor:.6g}, {chosen}): ask for a smaller epsilon"
        )

    def make_event(z: float) -> dp_accounting.DpEvent:
        return PrivacyAccountant(z, sampling, "rdp").dp_event(rounds)

    # RDP first: it is cheap even for tiny z, where PLD's grids get enormous. RDP is never
    # tighter than PLD, so its answer is an upper end for the PLD search (and, PLD's epsilon
    # at the floor being above the target, so is RDP's: the bracket search starts below the
    # answer).
    z_rdp = max(
        floor,
        float(
            dp_accounting.calibrate_dp_mechanism(
                lambda: _make_accountant(sampling, "rdp"),
                make_event,
                epsilon,
                delta,
                dp_accounting.LowerEndpointAndGuess(floor, 1.0),
            )
        ),
    )
    if chosen == "rdp":

        def rdp_gap(z: float) -> float:
            return PrivacyAccountant(z, sampling, method).epsilon(rounds, delta) - epsilon

        # dp_accounting searched the sampled bound alone; under fixed-size sampling "auto"
        # also caps each round by the unsampled Gaussian (`_round_rdp`). Where that cap
        # lowers epsilon at z_rdp by more than 0.1%, less noise is enough: bisect for it as
        # below, from the floor, whose epsilon is above the target (before, the answer was
        # z = 9.50 where 5.71 is enough for epsilon 8 after 20 rounds at N = 110, m = 100).
        if method == "auto" and isinstance(sampling, FixedSizeSampling):
            if rdp_gap(z_rdp) < -1e-3 * epsilon:
                return _bisect_noise(rdp_gap, floor, z_rdp, 1e-3 * z_rdp)
        return z_rdp

    def pld_gap(z: float) -> float:
        # On z's own grid: the figure DPMean will report for z, which a search on one grid
        # for every z (as before) did not bound: the pessimistic rounding is not monotone in
        # the step, so its answer could read above the target on its own grid.
        return PrivacyAccountant(z, sampling, "pld").epsilon(rounds, delta) - epsilon

    lo = max(z_rdp / 2, floor)
    if pld_gap(lo) <= 0:
        # PLD is more than twice as tight here (small q and epsilon). Halve down to a z that
        # misses the target (the floor does: checked above) and bisect above it. Before,
        # this answered half the RDP noise as it was: z = 1.51 (epsilon 0.0028) for a target
        # of 0.1 at q = 0.001, one round, where 0.599 is enough; z = 50 for 0.003.
        hi, lo = lo, max(lo / 2, floor)
        while pld_gap(lo) <= 0:
            hi, lo = lo, max(lo / 2, floor)
        return _bisect_noise(pld_gap, lo, hi, 1e-3 * hi)
    hi = z_rdp
    for _ in range(64):  # RDP's answer fits under PLD in practice: no doubling at all
        if pld_gap(hi) <= 0:
            break
        lo, hi = hi, 2 * hi
    else:
        raise ValueError(f"no noise multiplier up to {hi:g} meets epsilon {epsilon:g} under PLD")
    return _bisect_noise(pld_gap, lo, hi, 1e-3 * z_rdp)


def _bisect_noise(gap: Callable[[float], float], lo: float, hi: float, tol: float) -> float:
    """Bisection keeping gap(lo) > 0 >= gap(hi) (the caller has seen both): the answer meets
    the target whether or not the (discretised) epsilon is monotone in z."""
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if gap(mid) <= 0:
            hi = mid
        else:
            lo = mid
    return hi


class PrivacyMetrics:
    """Prometheus gauges for the privacy spent, in a registry of their own (or one passed in).

    `DPMean(..., metrics=m)` updates them every round; serve `m.registry` with
    `prometheus_client.generate_latest`.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        self.registry = registry if registry is not None else CollectorRegistry()
        self.epsilon = Gauge(
            "plume_dp_epsilon", "Epsilon spent so far at the task's delta", registry=self.registry
        )
        self.delta = Gauge("plume_dp_delta", "The task's delta", registry=self.registry)
        self.rounds = Gauge("plume_dp_rounds", "DP rounds released so far", registry=self.registry)
        self.noise_multiplier = Gauge(
            "plume_dp_noise_multiplier",
            # z, not the update's share z_u (above z with adaptive clipping): the multiplier
            # epsilon is accounted at, noise stddev / clip over both releases of a round.
            "Noise multiplier z epsilon is accounted at (noise stddev / clip norm; with "
            "adaptive clipping the update noise uses update_noise_multiplier, above z)",
            registry=self.registry,
        )
        self.clip = Gauge("plume_dp_clip_norm", "Clip norm used this round", registry=self.registry)
        self.budget_exhausted = Gauge(
            "plume_dp_budget_exhausted",
            "1 once another round would exceed the epsilon budget",
            registry=self.registry,
        )

    def observe(
        self,
        *,
        epsilon: float | None,
        delta: float,
        rounds: int,
        noise_multiplier: float,
        clip: float,
        budget_exhausted: bool,
    ) -> None:
        if epsilon is not None:
            self.epsilon.set(epsilon)
        self.delta.set(delta)
        self.rounds.set(rounds)
        self.noise_multiplier.set(noise_multiplier)
        self.clip.set(clip)
        self.budget_exhausted.set(1.0 if budget_exhausted else 0.0)
