"""A lazily held fleet of simulated phones: tiers, compute, network, diurnal availability, dropout.

No per-device state is stored. Every attribute of device ``i`` is a deterministic function of
``(seed, i)`` through a counter-based hash (the SplitMix64 finaliser), and availability is a
function of those attributes and the simulated time, so a population of 10^6 (or 10^9) devices
costs a few hundred bytes until devices are looked at, and looking at a batch of devices is a
handful of vectorised numpy operations.

Sources and the parameters derived from them are documented in ``docs/simulator.md``. A user's
FedScale-format traces (``mobile_sim.traces``, docs/traces.md) can replace the compute speed,
the bandwidths and the availability: `PopulationConfig`'s ``capacity_trace`` and
``behaviour_trace``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

import numpy as np
import numpy.typing as npt

from .traces import BehaviourTrace, CapacityTrace

__all__ = [
    "Tier",
    "TierSpec",
    "DEFAULT_TIERS",
    "PopulationConfig",
    "DeviceProfile",
    "ProfileBatch",
    "Population",
    "PopulationError",
]

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_DAY_SALT = 0xD1B54A32D192ED03
_SECONDS_PER_DAY = 86_400.0


class PopulationError(ValueError):
    """A population was configured or queried with invalid arguments."""


class Tier(StrEnum):
    """Device class: budget, mid-range and flagship phones."""

    LOW = "low"
    MID = "mid"
    HIGH = "high"


@dataclass(frozen=True)
class TierSpec:
    """Parametric distributions for one device tier.

    Log-normal quantities are given by their median and the sigma of the log (natural log), so
    ``value = median * exp(sigma * z)`` with ``z ~ N(0, 1)``.
    """

    tier: Tier
    share: float  # fraction of the population in this tier
    compute_median_sps: float  # training samples/s on the reference model (MNIST CNN)
    compute_sigma: float
    down_median_mbps: float  # megabits/s
    down_sigma: float
    up_median_mbps: float
    up_sigma: float
    latency_median_ms: float  # one request round trip
    latency_sigma: float
    dropout_p: float  # chance of vanishing mid-round
    memory_gb: tuple[float, ...]  # RAM sizes in this tier, chosen uniformly
    home_wifi_p: float  # chance the device has unmetered wifi where it charges overnight


# Our parameter choices; docs/simulator.md states which published summary each one encodes.
# Bandwidth medians: Ookla's global fixed-network medians for Q3 2023, 83.95 Mbit/s down and
# 38.32 Mbit/s up ([Ookla 2023] in docs/simulator.md), are the fleet's medians. Each direction's
# three tier medians are the earlier 6 / 15 / 40 (down) and 1.5 / 4 / 12 (up) Mbit/s times one
# factor per direction, Ookla's median over the fleet's median with those values (14.17 and
# 3.762 Mbit/s over the first 200,000 devices of Population.build(10**6, 0)), rounded to three
# significant figures: 5.924 and 10.19. The tier shares and sigmas are unchanged, and so the
# fleet's medians come out at 83.96 and 38.29 Mbit/s.
# tests/mobile_sim/test_s64a_ookla_bandwidth.py recomputes the factors and the medians.
DEFAULT_TIERS: tuple[TierSpec, ...] = (
    TierSpec(
        Tier.LOW,
        share=0.30,
        compute_median_sps=30.0,
        compute_sigma=0.35,
        down_median_mbps=35.5,
        down_sigma=0.8,
        up_median_mbps=15.3,
        up_sigma=0.8,
        latency_median_ms=120.0,
        latency_sigma=0.5,
        dropout_p=0.10,
        memory_gb=(2.0, 3.0, 4.0),
        home_wifi_p=0.75,
    ),
    TierSpec(
        Tier.MID,
        share=0.50,
        compute_median_sps=90.0,
        compute_sigma=0.30,
        down_median_mbps=88.9,
        down_sigma=0.7,
        up_median_mbps=40.7,
        up_sigma=0.7,
        latency_median_ms=70.0,
        latency_sigma=0.45,
        dropout_p=0.08,
        memory_gb=(4.0, 6.0),
        home_wifi_p=0.85,
    ),
    TierSpec(
        Tier.HIGH,
        share=0.20,
        compute_median_sps=250.0,
        compute_sigma=0.25,
        down_median_mbps=237.0,
        down_sigma=0.6,
        up_median_mbps=122.0,
        up_sigma=0.6,
        latency_median_ms=40.0,
        latency_sigma=0.4,
        dropout_p=0.06,
        memory_gb=(8.0, 12.0),
        home_wifi_p=0.92,
    ),
)


_MAX_DEVICES = 2**63 - 1  # device ids are int64
_MAX_TIERS = 127  # tier indices are int8
# Simulated seconds and start-hour offsets whose day numbers stay far inside int64 (1e15 s is
# some 30 million years).
_MAX_SIM_S = 1e15
_MAX_HOURS = 1e9
# A night's start moves at most this far from its device's mean (hours): with nights of at most
# 12 h, the nights of days d-1..d+1 are the only ones that can cover a time of day d.
_MAX_JITTER_H = 12.0
# Largest sigma (natural-log spread) a tier may have: Box-Muller normals reach about 8.6 in
# magnitude, and exp(10 * 8.6) keeps every drawn bandwidth and speed finite and above zero (a
# larger sigma overflowed to inf or underflowed to 0 bits/s: a device that never finishes).
_MAX_SIGMA = 10.0
# Range of trace_compute_scale, a factor between FedScale's reference model and ours: below
# about 1e-290 the slowest trace speed underflows to 0 samples/s (a device that never
# finishes), and a factor of a million either way is already past any two models' ratio.
_MIN_COMPUTE_SCALE = 1e-6
_MAX_COMPUTE_SCALE = 1e6


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_tier(t: object) -> None:
    """Refuse a tier whose numbers would give NaN, infinite or zero speeds and times."""
    if not isinstance(t, TierSpec):
        raise PopulationError(f"tiers must be TierSpec objects, got {type(t).__name__}")
    if t.tier not in tuple(Tier):
        raise PopulationError(f"tier must be one of {[x.value for x in Tier]}, got {t.tier!r}")
    name = f"tier {Tier(t.tier).value}"

    def finite(field: str) -> float:
        value = getattr(t, field)
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise PopulationError(f"{name}: {field} must be a finite number, got {value!r}")
        return float(value)

    if not 0.0 <= finite("share") <= 1.0:
        raise PopulationError(f"{name}: share/probabilities out of range: share {t.share}")
    if not 0.0 <= finite("dropout_p") < 1.0:
        raise PopulationError(f"{name}: share/probabilities out of range: dropout_p {t.dropout_p}")
    if not 0.0 <= finite("home_wifi_p") <= 1.0:
        raise PopulationError(
            f"{name}: share/probabilities out of range: home_wifi_p {t.home_wifi_p}"
        )
    for median in ("compute_median_sps", "down_median_mbps", "up_median_mbps"):
        if not finite(median) > 0:
            raise PopulationError(
                f"{name}: medians must be positive: {median} is {getattr(t, median)} (a device "
                "with zero speed or bandwidth would never finish a round)"
            )
    if not finite("latency_median_ms") >= 0:
        raise PopulationError(f"{name}: latency_median_ms must be >= 0, got {t.latency_median_ms}")
    for sigma in ("compute_sigma", "down_sigma", "up_sigma", "latency_sigma"):
        if not 0.0 <= finite(sigma) <= _MAX_SIGMA:
            raise PopulationError(
                f"{name}: sigmas must be >= 0 and at most {_MAX_SIGMA:g}: {sigma} is "
                f"{getattr(t, sigma)}"
            )
    sizes = t.memory_gb
    if not sizes or not all(isinstance(m, numbers.Real) and 0 < m < math.inf for m in sizes):
        raise PopulationError(f"{name}: memory sizes must be finite and > 0 GiB, got {sizes!r}")


@dataclass(frozen=True)
class PopulationConfig:
    """The whole fleet: its size, seed, tiers and the shape of a simulated day.

    ``availability="always"`` makes every device eligible at every time (useful for small
    data-bound experiments); ``"diurnal"`` is the realistic charging-and-wifi model.

    Traces (docs/traces.md; `mobile_sim.traces` loads them): with ``capacity_trace``, device
    i's compute speed and both bandwidths come from trace entry ``floor(u x n)`` of its n
    entries, u uniform hashed from (seed, i) as every attribute is: ``compute_sps =
    trace_compute_scale x 1000 / (3 x computation)`` and ``down_bps = up_bps =
    communication x 1024``. With
    ``behaviour_trace`` (and ``availability="diurnal"``), device i is available at time t
    iff ``t mod finish_time`` of its entry (another hashed draw) is inside one of the
    entry's [active, inactive] windows; the diurnal model is then not used. The tier,
    latency, dropout and memory stay the tier model's either way.
    """

    num_devices: int
    seed: int = 0
    tiers: tuple[TierSpec, ...] = DEFAULT_TIERS
    availability: Literal["diurnal", "always"] = "diurnal"
    start_hour_utc: float = 20.0  # wall-clock hour (UTC) at simulated time 0
    tz_sigma_h: float = 2.0  # spread of device time zones around UTC+0, hours
    night_start_mean_h: float = 22.5  # local hour the overnight charge starts
    night_start_sd_h: float = 1.5  # across devices
    night_jitter_sd_h: float = 0.5  # the same device, night to night
    night_hours_mean: float = 7.5
    night_hours_sd: float = 1.5
    skip_night_p: float = 0.10  # nights a device is not plugged in at all
    day_session_p: float = 0.35  # days with a daytime charge on wifi (desk, car excluded)
    day_session_wifi_p: float = 0.6
    day_session_hours: tuple[float, float] = (0.5, 2.5)  # uniform range of its length
    capacity_trace: CapacityTrace | None = None  # compute and bandwidth from a trace
    behaviour_trace: BehaviourTrace | None = None  # availability from a trace
    # Our reference model's training samples/s per FedScale-derived sample/s (capacity_trace).
    trace_compute_scale: float = 1.0

    def __post_init__(self) -> None:
        if not _is_int(self.num_devices) or not 1 <= self.num_devices <= _MAX_DEVICES:
            raise PopulationError(
                f"num_devices must be an integer in [1, 2**63), got {self.num_devices!r}"
            )
        if not _is_int(self.seed) or self.seed < 0:
            raise PopulationError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not self.tiers:
            raise PopulationError("at least one tier is required")
        if len(self.tiers) > _MAX_TIERS:
            raise PopulationError(f"at most {_MAX_TIERS} tiers, got {len(self.tiers)}")
        for t in self.tiers:
            _check_tier(t)
        total = sum(t.share for t in self.tiers)
        if not math.isclose(total, 1.0, rel_tol=0, abs_tol=1e-9):
            raise PopulationError(f"tier shares must sum to 1, got {total}")
        probabilities = (self.skip_night_p, self.day_session_p, self.day_session_wifi_p)
        if not all(0.0 <= x <= 1.0 for x in probabilities):
            raise PopulationError(
                "skip_night_p, day_session_p and day_session_wifi_p must be in [0, 1]"
            )
        spreads = (self.tz_sigma_h, self.night_start_sd_h, self.night_jitter_sd_h)
        if not all(math.isfinite(x) and x >= 0 for x in (*spreads, self.night_hours_sd)):
            raise PopulationError("time-zone and night spreads must be finite and >= 0")
        if not (math.isfinite(self.start_hour_utc) and math.isfinite(self.night_start_mean_h)):
            raise PopulationError("start_hour_utc and night_start_mean_h must be finite")
        if not abs(self.start_hour_utc) <= _MAX_HOURS:
            # Day numbers are int64: a larger offset overflowed them (a numpy warning, garbage).
            raise PopulationError(
                f"start_hour_utc must be within +-{_MAX_HOURS:g} h, got {self.start_hour_utc}"
            )
        if not 0 < self.night_hours_mean <= 24:
            raise PopulationError("night_hours_mean must be in (0, 24]")
        if self.availability not in ("diurnal", "always"):
            raise PopulationError(
                f"availability must be 'diurnal' or 'always', got {self.availability!r}"
            )
        lo, hi = self.day_session_hours
        if not 0 < lo <= hi <= 8:
            raise PopulationError("day_session_hours must satisfy 0 < lo <= hi <= 8")
        self._check_traces()

    def _check_traces(self) -> None:
        if self.capacity_trace is not None and not isinstance(self.capacity_trace, CapacityTrace):
            raise PopulationError(
                "capacity_trace must be a CapacityTrace (mobile_sim.traces.load_capacity_trace), "
                f"got {type(self.capacity_trace).__name__}"
            )
        if self.behaviour_trace is not None and not isinstance(
            self.behaviour_trace, BehaviourTrace
        ):
            raise PopulationError(
                "behaviour_trace must be a BehaviourTrace "
                "(mobile_sim.traces.load_behaviour_trace), got "
                f"{type(self.behaviour_trace).__name__}"
            )
        if self.behaviour_trace is not None and self.availability != "diurnal":
            raise PopulationError(
                "behaviour_trace gives the availability: it needs availability='diurnal' (the "
                f"realistic fleet), not {self.availability!r}, where every device is available"
            )
        check_trace_compute_scale(self.trace_compute_scale, self.capacity_trace is not None)


def check_trace_compute_scale(scale: object, capacity_trace: bool) -> None:
    """`PopulationError` (a ValueError) unless `scale` is a valid trace_compute_scale, for a
    config with (`capacity_trace`) or without a capacity trace; SimConfig checks the same."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise PopulationError(f"trace_compute_scale must be a number, got {scale!r}")
    try:
        value = float(scale)
    except OverflowError:  # an int past float's range (10**400)
        value = math.inf
    if not (math.isfinite(value) and _MIN_COMPUTE_SCALE <= value <= _MAX_COMPUTE_SCALE):
        from coordinator.aggregators._base import shown  # 10**400 as 1e+400, as refusals do

        raise PopulationError(
            f"trace_compute_scale must be in [{_MIN_COMPUTE_SCALE:g}, {_MAX_COMPUTE_SCALE:g}], "
            f"got {shown(scale)}"
        )
    if scale != 1.0 and not capacity_trace:
        raise PopulationError(
            "trace_compute_scale scales the capacity trace's compute speed: it needs capacity_trace"
        )


@dataclass(frozen=True)
class DeviceProfile:
    """One device's fixed characteristics. Bandwidths in bits/s, times in seconds, memory in
    MiB (the tier's GiB x 1024)."""

    device_id: int
    tier: Tier
    compute_sps: float  # training samples/s on the reference model
    down_bps: float
    up_bps: float
    latency_s: float
    dropout_p: float
    memory_mb: float  # MiB
    tz_offset_h: float
    night_start_h: float  # local hour, mean over nights
    night_hours: float
    home_wifi: bool


@dataclass(frozen=True)
class ProfileBatch:
    """Profiles of many devices as parallel arrays (struct of arrays), all of length n."""

    device_ids: I64
    tier_index: npt.NDArray[np.int8]
    compute_sps: F64
    down_bps: F64
    up_bps: F64
    latency_s: F64
    dropout_p: F64
    memory_mb: F64
    tz_offset_h: F64
    night_start_h: F64
    night_hours: F64
    home_wifi: B
    tiers: tuple[Tier, ...] = field(default=(Tier.LOW, Tier.MID, Tier.HIGH))

    def __len__(self) -> int:
        return int(self.device_ids.shape[0])

    def __getitem__(self, i: int) -> DeviceProfile:
        return DeviceProfile(
            device_id=int(self.device_ids[i]),
            tier=self.tiers[int(self.tier_index[i])],
            compute_sps=float(self.compute_sps[i]),
            down_bps=float(self.down_bps[i]),
            up_bps=float(self.up_bps[i]),
            latency_s=float(self.latency_s[i]),
            dropout_p=float(self.dropout_p[i]),
            memory_mb=float(self.memory_mb[i]),
            tz_offset_h=float(self.tz_offset_h[i]),
            night_start_h=float(self.night_start_h[i]),
            night_hours=float(self.night_hours[i]),
            home_wifi=bool(self.home_wifi[i]),
        )

    def take(self, positions: npt.ArrayLike) -> ProfileBatch:
        """The sub-batch at `positions` (indices into this batch, not device ids)."""
        p = np.asarray(positions, dtype=np.int64)
        return ProfileBatch(
            device_ids=self.device_ids[p],
            tier_index=self.tier_index[p],
            compute_sps=self.compute_sps[p],
            down_bps=self.down_bps[p],
            up_bps=self.up_bps[p],
            latency_s=self.latency_s[p],
            dropout_p=self.dropout_p[p],
            memory_mb=self.memory_mb[p],
            tz_offset_h=self.tz_offset_h[p],
            night_start_h=self.night_start_h[p],
            night_hours=self.night_hours[p],
            home_wifi=self.home_wifi[p],
            tiers=self.tiers,
        )


# --- counter-based hashing -------------------------------------------------------------------


def _fmix_int(x: int) -> int:
    """SplitMix64 finaliser on a Python int (for scalar keys; no numpy overflow warnings)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _fmix(x: U64) -> U64:
    """SplitMix64 finaliser, vectorised; uint64 array arithmetic wraps modulo 2^64."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform(h: U64) -> F64:
    """Map 64-bit hashes to floats strictly inside (0, 1): 53 high bits plus half an ulp."""
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


class _Stream:
    """Independent uniform draws per (key, device): field j of device i is hash(key, i, j)."""

    def __init__(self, key: int, ids: I64, day: I64 | None = None) -> None:
        base = _fmix(ids.astype(np.uint64) ^ np.uint64(_fmix_int(key)))
        if day is not None:
            # Per-day draws: mix the (possibly negative) day number into each device's hash.
            base = _fmix(base ^ _fmix(day.astype(np.uint64) + np.uint64(_GOLDEN)))
        self._base = base

    def uniform(self, j: int) -> F64:
        return _uniform(_fmix(self._base + np.uint64(((j + 1) * _GOLDEN) & _MASK64)))

    def normal(self, j: int) -> F64:
        """Box-Muller on fields j and j+1."""
        u1, u2 = self.uniform(j), self.uniform(j + 1)
        return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)


def _entries(s: _Stream, j: int, n: int) -> I64:
    """Trace entries in [0, n), uniform, from field j of each device's stream."""
    return np.minimum((s.uniform(j) * n).astype(np.int64), n - 1)


# Field numbers: a fixed layout so adding a field never changes existing devices.
_F_TIER, _F_COMPUTE, _F_DOWN, _F_UP, _F_LAT = 0, 2, 4, 6, 8
_F_MEM, _F_TZ, _F_NIGHT_START, _F_NIGHT_HOURS, _F_WIFI = 10, 12, 14, 16, 18
# The trace entries of a device (capacity and behaviour traces, drawn independently).
_F_CAPACITY_ENTRY, _F_BEHAVIOUR_ENTRY = 20, 21
# Per-day fields (key mixes in the day number).
_D_SKIP, _D_JITTER, _D_SESSION, _D_SESSION_START, _D_SESSION_HOURS, _D_SESSION_WIFI = (
    0,
    2,
    4,
    5,
    6,
    7,
)


class Population:
    """A reproducible fleet of `config.num_devices` phones, derived on demand from the seed.

    Device ids are ``0 .. num_devices-1``. Memory use does not grow with the number of devices.
    """

    def __init__(self, config: PopulationConfig) -> None:
        self.config = config
        self._key = _fmix_int(config.seed * _GOLDEN + 0x5EED)
        shares = np.array([t.share for t in config.tiers], dtype=np.float64)
        self._tier_cdf = np.cumsum(shares)
        self._tier_cdf[-1] = 1.0
        self._tiers = tuple(t.tier for t in config.tiers)

    @classmethod
    def build(cls, num_devices: int, seed: int = 0, **kwargs: object) -> Population:
        """Shorthand for ``Population(PopulationConfig(num_devices, seed, **kwargs))``."""
        return cls(PopulationConfig(num_devices, seed, **kwargs))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.config.num_devices

    # -- profiles ---------------------------------------------------------------------------

    def _check_ids(self, device_ids: npt.ArrayLike) -> I64:
        ids = np.asarray(device_ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise PopulationError("device ids must be a 1-D integer array")
        # Checked before the cast to int64: a uint64 id above 2^63 - 1 wrapped to a negative
        # one and was reported as such (helper-337).
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.config.num_devices):
            raise PopulationError(
                f"device ids must be in [0, {self.config.num_devices}), "
                f"got range [{int(ids.min())}, {int(ids.max())}]"
            )
        return ids.astype(np.int64, copy=False)

    def profiles(self, device_ids: npt.ArrayLike) -> ProfileBatch:
        """Profiles of `device_ids` (int[n]), computed from the seed; same ids -> same profiles."""
        ids = self._check_ids(device_ids)
        s = _Stream(self._key, ids)
        raw_tier = np.searchsorted(self._tier_cdf, s.uniform(_F_TIER), side="right")
        tier_index = np.minimum(raw_tier, len(self._tiers) - 1).astype(np.int8)
        specs = self.config.tiers

        def per_tier(attr: str) -> F64:
            return np.array([float(getattr(t, attr)) for t in specs], dtype=np.float64)[tier_index]

        def lognormal(median: str, sigma: str, j: int) -> F64:
            return per_tier(median) * np.exp(per_tier(sigma) * s.normal(j))

        compute = lognormal("compute_median_sps", "compute_sigma", _F_COMPUTE)
        down = lognormal("down_median_mbps", "down_sigma", _F_DOWN) * 1e6
        up = lognormal("up_median_mbps", "up_sigma", _F_UP) * 1e6
        latency = lognormal("latency_median_ms", "latency_sigma", _F_LAT) / 1e3
        mem_u = s.uniform(_F_MEM)
        memory = np.empty(ids.shape[0], dtype=np.float64)
        for k, spec in enumerate(specs):
            sel = tier_index == k
            choices = np.asarray(spec.memory_gb, dtype=np.float64) * 1024.0
            memory[sel] = choices[
                np.minimum((mem_u[sel] * len(choices)).astype(np.int64), len(choices) - 1)
            ]
        cfg = self.config
        tz = np.clip(np.round(cfg.tz_sigma_h * s.normal(_F_TZ)), -12, 14)
        night_start = np.mod(
            cfg.night_start_mean_h + cfg.night_start_sd_h * s.normal(_F_NIGHT_START), 24.0
        )
        night_hours = np.clip(
            cfg.night_hours_mean + cfg.night_hours_sd * s.normal(_F_NIGHT_HOURS), 2.0, 12.0
        )
        wifi = s.uniform(_F_WIFI) < per_tier("home_wifi_p")
        trace = cfg.capacity_trace
        if trace is not None:
            entries = _entries(s, _F_CAPACITY_ENTRY, len(trace))
            compute = trace.compute_sps(entries, cfg.trace_compute_scale)
            down = trace.bandwidth_bps(entries)
            up = down.copy()
        return ProfileBatch(
            device_ids=ids,
            tier_index=tier_index,
            compute_sps=compute,
            down_bps=down,
            up_bps=up,
            latency_s=latency,
            dropout_p=per_tier("dropout_p"),
            memory_mb=memory,
            tz_offset_h=tz,
            night_start_h=night_start,
            night_hours=night_hours,
            home_wifi=wifi,
            tiers=self._tiers,
        )

    def profile(self, device_id: int) -> DeviceProfile:
        """The profile of one device."""
        if not _is_int(device_id):  # np.array(["5"], dtype=np.int64) parsed the text "5"
            raise PopulationError(f"a device id is an integer, got {device_id!r}")
        return self.profiles(np.array([int(device_id)]))[0]

    # -- availability -----------------------------------------------------------------------

    def local_hours(self, profiles: ProfileBatch, sim_time_s: float) -> F64:
        """Hours since local midnight of day 0 at `sim_time_s`, per device (float64[n])."""
        return self.config.start_hour_utc + sim_time_s / 3600.0 + profiles.tz_offset_h

    def available_mask(self, profiles: ProfileBatch, sim_time_s: float) -> B:
        """bool[n]: which devices are eligible (charging on unmetered wifi) at `sim_time_s`."""
        if not 0 <= sim_time_s <= _MAX_SIM_S:
            raise PopulationError(
                f"sim_time_s must be finite and >= 0 (at most {_MAX_SIM_S:g} s), got {sim_time_s}"
            )
        n = len(profiles)
        if self.config.availability == "always":
            return np.ones(n, dtype=np.bool_)
        cfg = self.config
        if cfg.behaviour_trace is not None:
            # FedScale's clock and ours both start at 0: no offset (docs/traces.md).
            s = _Stream(self._key, profiles.device_ids)
            entries = _entries(s, _F_BEHAVIOUR_ENTRY, len(cfg.behaviour_trace))
            return cfg.behaviour_trace.is_active(entries, sim_time_s)
        t = self.local_hours(profiles, sim_time_s)
        day = np.floor(t / 24.0).astype(np.int64)
        avail = np.zeros(n, dtype=np.bool_)
        # Overnight charge: the window of night d starts around local hour night_start_h of day
        # d and may end on day d+1. A night whose mean start is just after midnight can start
        # before it on a given night (negative jitter), i.e. on day d-1. The jitter is clipped
        # to +-12 h (`_MAX_JITTER_H`) and a night lasts at most 12 h, so at time t only the
        # nights of days d-1, d and d+1 can cover t (helper-337: with night_jitter_sd_h=6 an
        # unclipped jitter moved nights beyond them, and they were missed).
        for d in (day - 1, day, day + 1):
            s = self._day_stream(profiles.device_ids, d)
            skip = s.uniform(_D_SKIP) < cfg.skip_night_p
            jitter = np.clip(
                cfg.night_jitter_sd_h * s.normal(_D_JITTER), -_MAX_JITTER_H, _MAX_JITTER_H
            )
            start = 24.0 * d + profiles.night_start_h + jitter
            inside = (t >= start) & (t < start + profiles.night_hours)
            avail |= inside & ~skip & profiles.home_wifi
        # A daytime charge on wifi, at most one per day, starting 09:00-17:00 local. One that
        # starts late and lasts long (day_session_hours above 7 h) runs past midnight, so the
        # day before's session is looked at too (helper-337: it was cut at midnight).
        lo, hi = cfg.day_session_hours
        for d in (day - 1, day) if 17.0 + hi > 24.0 else (day,):
            s = self._day_stream(profiles.device_ids, d)
            has = s.uniform(_D_SESSION) < cfg.day_session_p
            start = 24.0 * d + 9.0 + 8.0 * s.uniform(_D_SESSION_START)
            length = lo + (hi - lo) * s.uniform(_D_SESSION_HOURS)
            wifi = s.uniform(_D_SESSION_WIFI) < cfg.day_session_wifi_p
            avail |= has & wifi & (t >= start) & (t < start + length)
        return avail

    def _day_stream(self, ids: I64, day: I64) -> _Stream:
        return _Stream(self._key ^ _DAY_SALT, ids, day)

    def is_available(self, device_ids: npt.ArrayLike, sim_time_s: float) -> B:
        """bool[n] availability of `device_ids` at `sim_time_s`."""
        return self.available_mask(self.profiles(device_ids), sim_time_s)

    def available_fraction(self, sim_time_s: float, sample: int = 20_000, seed: int = 0) -> float:
        """Estimated fraction of the fleet eligible at `sim_time_s` (from `sample` devices)."""
        if not _is_int(sample) or sample < 1:
            raise PopulationError(f"sample must be an integer >= 1, got {sample!r}")
        n = min(sample, self.config.num_devices)
        rng = np.random.default_rng(seed)
        if n == self.config.num_devices:
            ids = np.arange(n, dtype=np.int64)
        else:
            ids = rng.choice(self.config.num_devices, size=n, replace=False).astype(np.int64)
        return float(self.is_available(ids, sim_time_s).mean())

    def sample_available(
        self,
        n: int,
        sim_time_s: float,
        rng: np.random.Generator,
        *,
        min_memory_mb: float = 0.0,
        exclude: Sequence[int] | I64 | None = None,
    ) -> I64:
        """Up to `n` distinct device ids, uniform among devices eligible at `sim_time_s`.

        Eligible: available (charging on unmetered wifi) and with at least `min_memory_mb` of
        RAM, and not in `exclude`. Returns fewer than `n` ids (possibly none) when fewer are
        eligible; the caller decides whether that round can run. Cost grows with `n`, not with
        the population size, for large populations.
        """
        if not _is_int(n) or n < 0:
            raise PopulationError(f"n must be an integer >= 0, got {n!r}")
        if isinstance(min_memory_mb, bool) or not isinstance(min_memory_mb, numbers.Real):
            raise PopulationError(f"min_memory_mb must be a number (MiB), got {min_memory_mb!r}")
        if math.isnan(min_memory_mb):
            raise PopulationError("min_memory_mb must be a number (MiB), got nan")
        total = self.config.num_devices
        excluded = np.unique(np.asarray(() if exclude is None else exclude, dtype=np.int64))
        if n == 0:
            return np.zeros(0, dtype=np.int64)

        def eligible(ids: I64) -> I64:
            prof = self.profiles(ids)
            ok = self.available_mask(prof, sim_time_s) & (prof.memory_mb >= min_memory_mb)
            if excluded.size:
                ok &= ~np.isin(ids, excluded)
            return ids[ok]

        if total <= max(200_000, 8 * n):
            # Small fleet: look at everyone (chunked to bound memory), then choose uniformly.
            found = np.concatenate(
                [
                    eligible(np.arange(a, min(a + 262_144, total), dtype=np.int64))
                    for a in range(0, total, 262_144)
                ]
            )
            if found.size <= n:
                return rng.permutation(found)
            return rng.choice(found, size=n, replace=False)
        # Large fleet: rejection-sample random ids until n distinct eligible ones are found.
        picked: list[I64] = []
        seen = np.zeros(0, dtype=np.int64)
        count = 0
        for _ in range(64):
            batch = np.unique(rng.integers(0, total, size=max(4 * n, 4096), dtype=np.int64))
            batch = batch[~np.isin(batch, seen)]
            seen = np.concatenate([seen, batch])
            good = rng.permutation(eligible(batch))
            picked.append(good)
            count += int(good.size)
            if count >= n:
                return np.concatenate(picked)[:n]
        # Very few eligible devices: fall back to an exhaustive chunked scan.
        rest = [
            eligible(np.setdiff1d(np.arange(a, min(a + 262_144, total), dtype=np.int64), seen))
            for a in range(0, total, 262_144)
        ]
        found = np.concatenate([*picked, *rest])
        return rng.permutation(found)[:n]
