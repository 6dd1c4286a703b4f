"""User-level DP mean (DP-FedAvg): clip each device's update, add Gaussian noise to the sum.

The mechanism per round (McMahan et al. 2018; Andrew et al. 2021 for adaptive clipping):
  1. clip every report to L2 norm C (whole-vector scaling, weights ignored: every device is one
     privacy unit and weighs 1);
  2. the inner aggregator takes the clipped reports (it must be a uniform mean, e.g.
     `FedAvg(uniform=True)` or a secure sum divided by the count, for the sensitivity to hold);
  3. sum = the inner FedAvg's float64 sum (another inner rule: its mean · n); release
     (sum + N(0, (z_u · C)² I_d)) / denominator, computed in float64 and rounded to float32 once.
With adaptive clipping the count of unclipped reports is released with Gaussian noise of
stddev sigma_b, and the update noise multiplier z_u is set so that both releases together are
one Gaussian mechanism of multiplier z: z_u = (z^-2 - (2 sigma_b)^-2)^-1/2 (Andrew et al. 2021).
The accountant (coordinator.privacy) then composes rounds of multiplier z.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from coordinator.privacy import (
    MIN_ACCOUNTED_NOISE_MULTIPLIER,
    FixedSizeSampling,
    PoissonSampling,
    PrivacyAccountant,
    PrivacyBudgetExhausted,
    PrivacyMetrics,
    Sampling,
)

from ._base import (
    AggregateOutput,
    AggregatorFactory,
    ClientUpdate,
    check_finite_reports,
    finite_number,
    shown,
    stages,
)
from ._clip import MIN_CLIP, AdaptiveClip, clip_update
from ._mean import FedAvg, _FedAvgProcess, add_float64, needs_float64

_log = logging.getLogger("plume.coordinator.dp")

__all__ = [
    "DPMean",
    "MAX_NOISE_SCALE",
    "MIN_CLIP",
    "MIN_ACCOUNTED_NOISE_MULTIPLIER",
    "accounted_sample_size",
    "delta_note",
    "delta_refusal",
    "find_dp",
    "returns_refused",
    "seed_note",
    "seed_refusal",
]

# Largest z·C / denominator (max(z, 1) and min(denominator, 1): the clipped reports and their
# noise, divided by the denominator, both scale with it) DPMean builds with. float32 holds
# 3.4e38; a noise sample beyond 8 standard deviations of 1e30 is not drawn in practice.
MAX_NOISE_SCALE = 1e30
_METHODS = ("auto", "pld", "rdp")


@dataclass(frozen=True, slots=True)
class DPMean:
    """Differentially private mean of per-device updates (central Gaussian noise).

    noise_multiplier: z, the total noise multiplier used by the accountant (> 0).
    clip: a fixed L2 norm C > 0, or an `AdaptiveClip` (its `count_stddev` sigma_b must satisfy
      2 sigma_b > z; 0 picks Andrew et al.'s default sigma_b = configured cohort / 20, see
      `configured_cohort`; its `maximum`, spec `max_clip=`, caps it below `clip_ceiling`:
      reports above the clip from more than 1 - quantile of a round raise it without limit).
    inner: a uniform-mean aggregator of the clipped reports.
    denominator: divide the noised sum by this (the expected cohort size). None divides by the
      number of reports, which is then treated as public (fixed-size sampling).
    sampling, delta, epsilon_budget: when `sampling` is given, each round reports epsilon at
      `delta` and sets `budget_exhausted` once another round would exceed `epsilon_budget`;
      a round that would exceed it is refused with PrivacyBudgetExhausted.
    seed: None draws each round's noise from a fresh OS-entropy seed (deployments); an int
      makes simulations repeatable (noise = f(seed, round): never for a deployment).
    metrics: optional PrivacyMetrics gauges (epsilon, delta, rounds, ...) updated every round.

    Memory beyond the reports and the float32[d] result, over a FedAvg inner: the float64[d]
    sum, one report's clipping temporaries and the previous report's clipped copy (it clips
    and adds one report at a time), then the float64[d] noise draw: 8·d + max(8·d, 36·k) +
    16·n, k the largest report's stored values, whatever the number of reports n. Another
    inner rule gets every clipped report at once (4 bytes a stored value more).
    """

    noise_multiplier: float
    clip: float | AdaptiveClip = 1.0
    inner: AggregatorFactory = field(default_factory=lambda: FedAvg(uniform=True))
    denominator: float | None = None
    sampling: Sampling | None = None
    delta: float = 1e-5
    epsilon_budget: float = math.inf
    accounting_method: str = "auto"
    seed: int | None = None
    metrics: PrivacyMetrics | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0 and finite_number(self.noise_multiplier)):
            raise ValueError(
                f"noise multiplier must be finite and > 0, got {shown(self.noise_multiplier)}"
            )
        if isinstance(self.clip, int | float) and not (self.clip > 0 and finite_number(self.clip)):
            raise ValueError(f"clip norm must be finite and > 0, got {shown(self.clip)}")
        first = self.clip.initial if isinstance(self.clip, AdaptiveClip) else self.clip
        if not first >= MIN_CLIP:
            # The clipped reports are float32: scaled to a smaller norm they round to 0 (or
            # to a few subnormal levels), and every release is noise around nothing.
            raise ValueError(
                f"clip (clip=) must be at least {MIN_CLIP:.8g}, float32's smallest normal "
                f"number (smaller, the clipped float32 reports round to 0), got {shown(first)}"
            )
        if self.denominator is not None and not (
            self.denominator > 0 and finite_number(self.denominator)
        ):
            # An infinite one made every release 0 and its noise_stddev 0.
            raise ValueError(
                f"denominator (denom=) must be finite and > 0, got {shown(self.denominator)}"
            )
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {shown(self.delta)}")
        if not self.epsilon_budget > 0:
            raise ValueError(f"epsilon budget must be > 0, got {shown(self.epsilon_budget)}")
        if self.sampling is None and finite_number(self.epsilon_budget):
            # Without a sampling model there is no accountant, so the budget would never be
            # checked: refuse it rather than let a user believe it holds.
            raise ValueError(
                f"an epsilon budget ({self.epsilon_budget:g}) needs a sampling model to be "
                "accounted against: give q= with denom= (Poisson) or population=,sample= "
                "(fixed size), or drop eps="
            )
        if self.accounting_method not in _METHODS:
            # Checked here, not when the accountant is made (the engine, after the service
            # stored the task's model), and also without sampling, where it is unused.
            raise ValueError(
                f"unknown accounting method {self.accounting_method!r}; use auto, pld or rdp"
            )
        if self.accounting_method == "pld" and isinstance(self.sampling, FixedSizeSampling):
            raise ValueError("dp_accounting's PLD accountant has no fixed-size sampling; use rdp")
        if self.sampling is not None and self.noise_multiplier < MIN_ACCOUNTED_NOISE_MULTIPLIER:
            raise ValueError(
                f"an accounted noise multiplier must be at least "
                f"{MIN_ACCOUNTED_NOISE_MULTIPLIER:g} (below it epsilon is meaningless and the "
                f"accountant's arithmetic breaks), got {self.noise_multiplier:g}"
            )
        if self.seed is not None and not self.seed >= 0:
            # np.random.default_rng refuses negative seeds: fail here, not in every round.
            raise ValueError(f"dp seed must be >= 0, got {shown(self.seed)}")
        if isinstance(self.clip, AdaptiveClip) and self.clip.count_stddev:
            # The split does not depend on the round either: a count_std at or below z / 2
            # would fail every round.
            self.update_noise_multiplier(1.0)
        if isinstance(self.clip, AdaptiveClip) and not self.clip.count_stddev:
            # The default sigma_b is (expected cohort) / 20, and the split of z needs
            # 2·sigma_b > z: with a cohort of at most 10·z devices every round would fail.
            most = self.configured_cohort()
            if most is not None and not 2.0 * most / 20.0 > self.noise_multiplier:
                raise ValueError(
                    f"adaptive clipping's default count noise stddev ({most:g} / 20) is too "
                    f"small for noise multiplier {self.noise_multiplier:g} (need 2·sigma_b > z): "
                    "set count_std= above z / 2, or sample more devices a round"
                )
        first_clip = self.clip.initial if isinstance(self.clip, AdaptiveClip) else self.clip
        if not first_clip <= self.clip_ceiling():
            # The released mean is float32 (at most 3.4e38): a noise of this scale overflows it
            # to inf, which the engine refuses, so every round would be abandoned.
            z_u = self._configured_update_noise_multiplier()
            raise ValueError(
                f"the noise z·C / denominator (z {z_u:g}, clip {first_clip:g}, denominator "
                f"{self.denominator if self.denominator is not None else 'n'}) must be at "
                f"most {MAX_NOISE_SCALE:g}: float32 could not hold the noised mean"
            )
        if isinstance(self.sampling, PoissonSampling) and self.denominator is None:
            # Under Poisson sampling the number of reports is itself private (adding a device
            # changes it): dividing by it releases more than the accounted noisy sum.
            raise ValueError(
                "Poisson sampling needs a fixed denominator (the expected cohort size q·N): "
                "dividing by the number of reports is not covered by the add/remove accounting"
            )

    @staticmethod
    def largest_clip(update_noise_multiplier: float, denominator: float) -> float:
        """The largest clip whose noised mean float32 holds: max(z_u, 1)·C / min(denominator,
        1) at most MAX_NOISE_SCALE (the clipped reports and their noise both scale with C).
        An adaptive clip is kept below it (post-processing of the noised count)."""
        return MAX_NOISE_SCALE * min(denominator, 1.0) / max(update_noise_multiplier, 1.0)

    def clip_ceiling(self) -> float:
        """The largest clip, fixed by the configuration: `largest_clip` at the configured
        cohort's z_u (z itself when no cohort is configured) and the denominator (1 without
        one; dividing by the reports, n >= 1, has the same min(denominator, 1)).

        The build checks the first clip against it and an adaptive clip is clamped to it.
        Computed from the round's z_u, which follows the number of reports when no cohort is
        configured, the clamp did too: a data-dependent quantity on the clip path.
        """
        denominator = self.denominator if self.denominator is not None else 1.0
        return self.largest_clip(self._configured_update_noise_multiplier(), denominator)

    def _configured_update_noise_multiplier(self) -> float:
        cohort = self.configured_cohort()
        return self.update_noise_multiplier(cohort) if cohort is not None else self.noise_multiplier

    def configured_cohort(self) -> float | None:
        """The expected cohort the default sigma_b is set from: `denominator`, else the
        `sample_size` of fixed-size sampling, else None (no cohort is configured).

        sigma_b, and with it the split z -> z_u, must not follow a round's number of reports:
        dropouts would then change the noise (a round of at most 10·z reports could not be
        split at all), and any dependence of the count on the data would reach the noise
        scale. Fixed from the configuration, the split is the same every round and the
        accountant's z holds whatever the dropouts.
        """
        if self.denominator is not None:
            return float(self.denominator)
        if isinstance(self.sampling, FixedSizeSampling):
            return float(self.sampling.sample_size)
        return None

    def count_stddev(self, expected_reports: float) -> float:
        """sigma_b for adaptive clipping (0 for a fixed clip): `count_stddev` if set, else the
        configured cohort / 20 (Andrew et al.), else `expected_reports` / 20."""
        if not isinstance(self.clip, AdaptiveClip):
            return 0.0
        if self.clip.count_stddev:
            return self.clip.count_stddev
        cohort = self.configured_cohort()
        return (cohort if cohort is not None else expected_reports) / 20.0

    def update_noise_multiplier(self, expected_reports: float) -> float:
        """z_u, the noise multiplier on the update sum once the count query takes its share."""
        if not isinstance(self.clip, AdaptiveClip):
            return self.noise_multiplier
        sb = self.count_stddev(expected_reports)
        rest = self.noise_multiplier**-2 - (2.0 * sb) ** -2
        if rest <= 0:
            raise ValueError(
                f"count noise stddev {sb} is too small for noise multiplier "
                f"{self.noise_multiplier}: need 2·sigma_b > z"
            )
        return float(rest**-0.5)

    def create(self, size: int) -> _DPMeanProcess:
        accountant = None
        if self.sampling is not None:
            accountant = PrivacyAccountant(
                self.noise_multiplier,
                self.sampling,
                self.accounting_method,  # type: ignore[arg-type]
            )
        return _DPMeanProcess(self, size, self.inner.create(size), accountant)


class _DPMeanProcess:
    def __init__(
        self, cfg: DPMean, size: int, inner: Any, accountant: PrivacyAccountant | None
    ) -> None:
        self.cfg, self.size, self.inner, self.accountant = cfg, size, inner, accountant

    def initialize(self) -> Any:
        c = (
            self.cfg.clip.initial
            if isinstance(self.cfg.clip, AdaptiveClip)
            else float(self.cfg.clip)
        )
        return (0, c, self.inner.initialize())

    def _rng(self, rnd: int) -> np.random.Generator:
        if self.cfg.seed is None:
            # A fresh 256-bit OS seed every round, not one PCG64 stream for the task's life:
            # PCG64 is not a cryptographic generator, and the DP adversary may know every
            # report of a round its target skipped, hence that round's exact noise. From one
            # stream's outputs the state, and so every later round's noise, is recoverable in
            # principle; across independently seeded rounds there is nothing to recover.
            return np.random.default_rng(_os_seed())
        return np.random.default_rng([int(self.cfg.seed), rnd])

    def next(self, state: Any, updates: Sequence[ClientUpdate]) -> AggregateOutput:
        rnd, clip, inner_state = state
        cfg = self.cfg
        privacy: dict[str, Any] = {}
        if self.accountant is not None:
            eps = self.accountant.epsilon(rnd + 1, cfg.delta)
            if eps > cfg.epsilon_budget:
                raise PrivacyBudgetExhausted(
                    f"round {rnd + 1} would reach epsilon {eps:.4g} > budget {cfg.epsilon_budget}"
                )
            eps_next = self.accountant.epsilon(rnd + 2, cfg.delta)
            privacy = {
                "epsilon": eps,
                "delta": cfg.delta,
                "budget_exhausted": bool(eps_next > cfg.epsilon_budget),
            }
        n = len(updates)
        if isinstance(self.cfg.sampling, FixedSizeSampling) and n > self.cfg.sampling.sample_size:
            # More reports than the accounted cohort: the sampling rate is higher than the one
            # epsilon is computed for (e.g. over-selection not counted in sample=).
            raise ValueError(
                f"{n} reports but the accountant assumes a cohort of "
                f"{self.cfg.sampling.sample_size}: account the selected cohort (sample=)"
            )
        # A NaN report would make the whole noised sum NaN (its clip factor is NaN): refuse it
        # by name, as `Clip` does, rather than let the engine refuse an anonymous NaN aggregate.
        check_finite_reports(updates)
        denom = float(cfg.denominator) if cfg.denominator is not None else float(max(n, 1))
        norms = np.empty(n, dtype=np.float64)
        total: npt.NDArray[np.float64]
        if isinstance(self.inner, _FedAvgProcess):
            # The float64 sum FedAvg divides, not its float32 mean times n: that mean's
            # rounding, times n, let one device move the noised sum by 2C (1 + 7.4e-5) at
            # n = 5,000 (docs/privacy.md, assumption 3). Summed here one clipped report at a
            # time, bit for bit FedAvg's `next_sum` over the list of them (its chunked sum is
            # the `add_to` loop's), without holding a clipped copy of every report.
            inner_out, total = self._fedavg_sum(inner_state, updates, clip, norms)
            weight = float(inner_out.measurements["total_weight"])
            if not (weight == n or weight <= 0):
                # Every weight is 1 (FedAvg's max_weight W < 1 makes them all W: divided out).
                total *= n / weight
        else:
            # Another uniform mean (a secure sum over the count, say): its mean times n. It
            # needs every clipped report at once.
            clipped = []
            for i, cu in enumerate(updates):
                norms[i] = self._norm(cu)
                clipped.append(self._clipped(cu, clip))
            inner_out = self.inner.next(inner_state, clipped)
            del clipped
            total = inner_out.result.astype(np.float64)
            total *= n  # in place: the same products as result.astype(float64) * n
        # Only its state and measurements are kept: its float32[d] mean is not needed.
        inner_state, inner_measurements = inner_out.state, inner_out.measurements
        del inner_out
        z_u = cfg.update_noise_multiplier(denom)
        rng = self._rng(rnd)
        noise_std = z_u * clip
        # Noise added in float64; the one float32 rounding is of the noised mean
        # (post-processing). In place: the same sums and quotient as total + noise, / denom.
        total += rng.normal(0.0, noise_std, size=self.size)
        total /= denom
        result = total.astype(np.float32)
        del total

        new_clip = clip
        noised: dict[str, Any] = {}
        if isinstance(cfg.clip, AdaptiveClip):
            sb = cfg.count_stddev(denom)
            # Centred bits (b - 1/2) halve the count's sensitivity; see the module docstring.
            centred = float(np.count_nonzero(norms <= clip)) - n / 2.0
            noised_fraction = (centred + float(rng.normal(0.0, sb))) / denom + 0.5
            new_clip = min(max(cfg.clip.step(clip, noised_fraction), MIN_CLIP), cfg.clip_ceiling())
            noised["unclipped_fraction_noised"] = noised_fraction
        if cfg.metrics is not None:
            cfg.metrics.observe(
                epsilon=privacy.get("epsilon"),
                delta=cfg.delta,
                rounds=rnd + 1,
                noise_multiplier=cfg.noise_multiplier,
                clip=clip,
                budget_exhausted=bool(privacy.get("budget_exhausted", False)),
            )
        # Under Poisson sampling (add/remove) the number of reports is itself private: one
        # device more is one report more, and the accounting covers only the noised sum over
        # a fixed denominator. So neither it nor the inner mean's measurements (its `clients`
        # and `total_weight` are that count) are published; under fixed-size sampling
        # (replace-one) the count is public and both are.
        count_public = not isinstance(cfg.sampling, PoissonSampling)
        measurements: dict[str, Any] = {
            **({"clients": n} if count_public else {}),
            "clip": clip,
            # No exact count of clipped reports: measurements reach every registered device
            # (GET /v1/rounds/{id}), and that count is data the noise is meant to hide.
            **noised,
            "noise_multiplier": cfg.noise_multiplier,
            "update_noise_multiplier": z_u,
            "noise_stddev": noise_std / denom,
            "rounds": rnd + 1,
            **privacy,
            **({"inner": inner_measurements} if count_public else {}),
        }
        return AggregateOutput((rnd + 1, new_clip, inner_state), result, measurements)

    def _norm(self, cu: ClientUpdate) -> float:
        if cu.update.size != self.size:
            raise ValueError(f"update of size {cu.update.size}, expected {self.size}")
        return math.sqrt(cu.update.squared_norm())

    @staticmethod
    def _clipped(cu: ClientUpdate, clip: float) -> ClientUpdate:
        # Weight 1: example counts are data-dependent and would break the sensitivity bound.
        # always_scale: the same arithmetic for every report, so that the round's
        # aggregation time does not count the clipped ones (see clip_update).
        return ClientUpdate(cu.device_id, clip_update(cu.update, clip, always_scale=True), 1.0)

    def _fedavg_sum(
        self,
        inner_state: Any,
        updates: Sequence[ClientUpdate],
        clip: float,
        norms: npt.NDArray[np.float64],
    ) -> tuple[AggregateOutput, npt.NDArray[np.float64]]:
        """`self.inner.next_sum(inner_state, [every report clipped])`, bit for bit, clipping
        and adding one report at a time; fills `norms` (one float64 per report).

        FedAvg weighs every clipped report (weight 1) by W = 1, or by its max_weight when
        below 1, and adds the product W · values (float32) into a float64 accumulator in
        report order: `add_to` does exactly that for one report, and FedAvg's chunked sum is
        the `add_to` loop's bit for bit. Its float64 redo of a sum that overflowed cannot
        happen here: a clipped value is a finite float32 and W <= 1, so no product overflows
        and n of them sum to far below float64's range.

        Memory: the float64[d] sum and, for the report being clipped (k stored values),
        `clip_update`'s temporaries (its float64 copy and product, float32 clipped values and
        float64 check: 20·k, 32·k when the factor is shrunk once; `add_to` takes less) and the
        previous report's clipped float32 values (4·k): at most 8·d + 36·k, k the largest
        report's, whatever the number of reports. Before, a clipped float32 copy of every
        report (4·N) was held at once (28 MB for 64 dense reports of d = 100,000).
        """
        inner = self.inner
        assert isinstance(inner, _FedAvgProcess)
        weights, weight_total, capped = inner._weights((cu.device_id, 1.0) for cu in updates)
        wide = needs_float64(weights)  # a max_weight below 2^-24: FedAvg sums in float64
        acc = np.zeros(self.size, dtype=np.float64)
        previous: ClientUpdate | None = None
        for i, cu in enumerate(updates):
            norms[i] = self._norm(cu)
            clipped = self._clipped(cu, clip)
            if wide:
                add_float64(acc, clipped.update, weights[i])
            else:
                clipped.update.add_to(acc, weights[i])
            # The previous report's clipped copy is held until this one is summed (4·k bytes):
            # freed at once, glibc returned the heap's top, every report's temporaries, to the
            # OS after each report, and the next report faulted them in again (38,000 minor
            # faults instead of 6,000 for 64 dense reports of d = 100,000; about twice the
            # close's time).
            previous = clipped
        del previous
        return inner._finish(inner_state, acc, weight_total, len(updates), capped), acc


def _os_seed() -> int:
    """256 bits from the OS CSPRNG, as an int seed for numpy (a module function, so tests can
    pin it)."""
    return int.from_bytes(os.urandom(32), "little")


def find_dp(factory: object) -> DPMean | None:
    """The `DPMean` stage inside `factory`, found through wrappers' `.inner` (a server
    optimizer, a screen), or None."""
    return next((s for s in stages(factory) if isinstance(s, DPMean)), None)


def returns_refused(factory: object) -> bool:
    """Whether a device puts the content of an upload the round did not take (a straggler's,
    a closed or abandoned round's) back into its error-feedback residual, to go out with its
    next upload: True (what devices always did) unless `factory` has a dp stage, accounted or
    not. With one it is dropped as if delivered. Which device a round refuses depends on
    arrival order, and so on other devices' data: a returned upload would let one device's data
    move another device's next report, a round's clipped sum by 4C instead of the 2C that
    replace-one accounts (docs/privacy.md, item 2). The coordinator service tells devices
    (`Assignment.return_refused`) and `plume sim` follows it for its own devices."""
    return find_dp(factory) is None


def accounted_sample_size(factory: object) -> int | None:
    """The `sample_size` a fixed-size-sampling `DPMean` inside `factory` accounts for; None
    without one.

    The round engine compares it with the cohort it selects: accounting a smaller cohort than
    the selected one under-counts epsilon without any error at aggregation time.
    """
    dp = find_dp(factory)
    s = dp.sampling if dp is not None else None
    return s.sample_size if isinstance(s, FixedSizeSampling) else None


def delta_refusal(dp: DPMean | None) -> str | None:
    """Why a new task or run may not use `dp`'s delta, or None: a delta of at least 1/N when
    the sampling model gives the population N (`population=N,sample=k`). A mechanism that
    publishes one device's data in full, a device chosen at random, is (0, 1/N)-DP, so such
    a delta allows that (docs/privacy.md, assumption 8). None without a dp stage, without
    sampling, and under Poisson sampling (q= gives no N).

    Not checked by `DPMean` itself, hence not by `build_aggregator`: the coordinator service
    builds a stored task's aggregator with it when it loads the task, and a task stored
    before this check must still load and run. So only the paths that create a new task or
    run call this (not a restart)."""
    s = dp.sampling if dp is not None else None
    if dp is None or not isinstance(s, FixedSizeSampling) or dp.delta < 1.0 / s.population:
        if (note := delta_note(dp)) is not None:
            _log.warning("%s", note)
        return None
    return (
        f"dp: delta {dp.delta:g} is not below 1/N = 1/{s.population} (population="
        f"{s.population}): a mechanism that publishes one device's data in full, a device "
        "chosen at random, is (0, 1/N)-DP, so this delta allows that; pick delta well below "
        "1/N (docs/privacy.md, assumption 8)"
    )


def seed_refusal(dp: DPMean | None) -> str | None:
    """Why a new service task may not use `dp`, or None: a fixed noise `seed=` together with
    accounting (`population=`/`q=`, and so any `eps=`). The noise is then a function of the
    seed and the round, so whoever knows or guesses the seed subtracts it, and the epsilon the
    task reports (and its budget) bounds nothing. None without a dp stage, without a seed, or
    without accounting (an unaccounted seeded dp stage claims no epsilon).

    Not checked by `DPMean`, `build_aggregator` or `delta_refusal`: a seeded run is what makes
    a simulation repeatable (`plume sim`, the benchmarks), and a task stored with one must
    still load. The coordinator service calls it when it creates a task."""
    if dp is None or dp.seed is None or dp.sampling is None:
        return None
    return (
        f"dp: seed={dp.seed} with accounting ({_accounting(dp)}): the noise is then a function "
        "of the seed and the round, so whoever knows or guesses the seed can subtract it, and "
        "the epsilon this task reports (and any eps= budget) means nothing; drop seed= (each "
        "round's noise then comes from the OS's random source). A seed is for simulations "
        "(plume sim) only (docs/privacy.md)"
    )


def seed_note(dp: DPMean | None) -> str | None:
    """A warning, or None: `dp` has a fixed noise `seed=` (None without a dp stage or a seed).
    A new service task with one exists only when `seed_refusal` passes it (no accounting: the
    stage claims no epsilon, yet its noise can be subtracted all the same) or the service
    allows seeded dp (`ServiceConfig.allow_seeded_dp`, for simulations and tests). The
    coordinator logs it when it creates such a task and answers it among the task's
    `warnings`."""
    if dp is None or dp.seed is None:
        return None
    return (
        f"its dp stage has seed={dp.seed}: the noise is a function of the seed and the round, "
        "so whoever knows or guesses the seed can subtract it and its epsilon means nothing "
        "(docs/privacy.md); leave seed= to simulations"
    )


def _accounting(dp: DPMean) -> str:
    s = dp.sampling
    if isinstance(s, FixedSizeSampling):
        return f"population={s.population},sample={s.sample_size}"
    return f"q={s.probability:g}" if isinstance(s, PoissonSampling) else "none"


def delta_note(dp: DPMean | None) -> str | None:
    """A warning, or None: `dp`'s delta is below 1/N (`delta_refusal` takes it) but above
    1/(10 N), N the population of its `population=N,sample=k` accounting. docs/privacy.md
    (assumption 8) asks for delta well below 1/N: (0, delta)-DP with delta close to 1/N still
    allows publishing one device's data in full with probability close to 1/N. Not a refusal:
    stored tasks and existing configs use such deltas. `delta_refusal` logs it (logger
    plume.coordinator.dp), so the paths that create a new task or run warn; the coordinator
    also answers it among a new task's `warnings` (`plume coordinator create-task` prints
    them)."""
    s = dp.sampling if dp is not None else None
    if dp is None or not isinstance(s, FixedSizeSampling):
        return None
    n = s.population
    if not 1.0 / (10.0 * n) < dp.delta < 1.0 / n:
        return None
    return (
        f"dp: delta {dp.delta:g} is below 1/N = 1/{n} (population={n}) but above 1/(10 N) = "
        f"{1.0 / (10.0 * n):g}: publishing a device chosen at random in full, with "
        f"probability delta N = {dp.delta * n:.2g}, is (0, delta)-DP, so the guarantee allows "
        "that; pick delta well below 1/N (docs/privacy.md, assumption 8)"
    )


def amplified_population(dp: DPMean | None) -> int:
    """The devices a round must select its cohort from for `dp`'s epsilon to hold: N of a
    `FixedSizeSampling(N, k)` accounting with N > k (a uniform k of M >= N devices is a
    uniform k of a uniform N of them: a same-weight mixture of the accounted k-of-N round and
    of rounds without the device, so accounting at N is then conservative); 0 when there is
    no amplification to protect (no dp stage, no sampling accounted, or N == k). The
    coordinator service and the simulator open a round only once this many devices wait."""
    s = dp.sampling if dp is not None else None
    if isinstance(s, FixedSizeSampling) and s.population > s.sample_size:
        return int(s.population)
    return 0


def amplified_cohort(factory: object) -> tuple[int, int] | None:
    """(population N, sample k) of the `dp` stage inside `factory` when it accounts epsilon
    with amplification by fixed-size sampling (N > k), else None: the setting whose epsilon
    rests on an unproven assumption while devices keep an error-feedback residual
    (docs/privacy.md, item 5; the coordinator's create-task note and `plume sim`'s)."""
    dp = find_dp(factory)
    if dp is None or not (population := amplified_population(dp)):
        return None
    assert isinstance(dp.sampling, FixedSizeSampling)  # amplified_population checked it
    return population, int(dp.sampling.sample_size)
