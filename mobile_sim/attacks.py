"""Byzantine and backdoor attacks for the simulated fleet (data poisoning and crafted updates).

Every attack has two hooks, and the runner calls both for each malicious device:
- `poison_data(x, y, rng) -> (x, y)` before local training (identity for model attacks);
- `craft(own, benign, rng) -> float32[d]` on the trained delta, before the device's own
  clipping, error feedback and compression (identity for data attacks). `benign` holds this
  round's benign deltas (the omniscient, colluding attacker). Because the crafted delta then
  goes through the real encoder, attackers always submit valid frames.

`build_attack("alie")`, `build_attack("ipm:epsilon=0.1")` or `build_attack("alie", n=10, f=2)`
make one; ATTACKS lists the names.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "ATTACKS",
    "AlieAttack",
    "Attack",
    "BackdoorAttack",
    "GaussianAttack",
    "IpmAttack",
    "LabelFlipAttack",
    "MAX_FACTOR",
    "ScalingAttack",
    "SignFlipAttack",
    "alie_z",
    "backdoor_accuracy",
    "build_attack",
]

F32 = npt.NDArray[np.float32]


class Attack(Protocol):
    """What the runner needs from an attack."""

    @property
    def name(self) -> str: ...

    def poison_data(
        self, x: npt.NDArray[Any], y: npt.NDArray[np.int64], rng: np.random.Generator
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64]]: ...

    def craft(self, own: F32, benign: Sequence[F32], rng: np.random.Generator) -> F32: ...


class _ModelAttack:
    """Base for attacks that only craft the update (their data is left alone)."""

    name: ClassVar[str] = ""

    def poison_data(
        self, x: npt.NDArray[Any], y: npt.NDArray[np.int64], rng: np.random.Generator
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64]]:
        return x, y


class _DataAttack:
    """Base for attacks that only poison local data (the trained delta is sent as is)."""

    name: ClassVar[str] = ""

    def craft(self, own: F32, benign: Sequence[F32], rng: np.random.Generator) -> F32:
        return np.asarray(own, dtype=np.float32)


# The largest |factor| a model attack multiplies an update by (signflip scale, scaling and
# backdoor boost, ipm epsilon, alie z, gaussian std): a typical delta times it stays finite in
# float32 (max ~3.4e38). A factor of inf, nan or 1e39 made round 1 fail with "delta + residual
# is not finite"; `build_attack` now refuses it.
MAX_FACTOR = 1e6
_MAX_TEXT = "1e6"


def _check_factor(attack: str, key: str, value: object, *, nonnegative: bool = False) -> None:
    """Refuse a factor that is not a finite number with |value| <= MAX_FACTOR (and >= 0 when
    `nonnegative`), naming the attack and the parameter."""
    x = math.nan  # not a number (a string, a bool): refused as nan is
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        x = float(value)
    if not (math.isfinite(x) and abs(x) <= MAX_FACTOR and not (nonnegative and x < 0)):
        bound = f"in [0, {_MAX_TEXT}]" if nonnegative else f"with |{key}| <= {_MAX_TEXT}"
        negative = -MAX_FACTOR <= x < 0
        why = "" if negative else " (beyond that, crafted updates overflow float32)"
        raise ValueError(f"{attack} needs a finite {key} {bound}{why}, got {value!r}")


def _benign_mean(own: F32, benign: Sequence[F32]) -> npt.NDArray[np.float64]:
    if not benign:
        return np.asarray(own, dtype=np.float64)
    acc = np.zeros(own.shape[0], dtype=np.float64)
    for b in benign:
        acc += b
    return acc / len(benign)


@dataclass(frozen=True)
class SignFlipAttack(_ModelAttack):
    """Send -scale · own delta."""

    scale: float = 1.0
    name: ClassVar[str] = "signflip"

    def __post_init__(self) -> None:
        _check_factor("signflip", "scale", self.scale)

    def craft(self, own: F32, benign: Sequence[F32], rng: np.random.Generator) -> F32:
        return (-self.scale * np.asarray(own, dtype=np.float32)).astype(np.float32)


@dataclass(frozen=True)
class ScalingAttack(_ModelAttack):
    """Model replacement (Bagdasaryan et al. 2020): send boost · own delta."""

    boost: float = 10.0
    name: ClassVar[str] = "scaling"

    def __post_init__(self) -> None:
        _check_factor("scaling", "boost", self.boost)

    def craft(self, own: F32, benign: Sequence[F32], rng: np.random.Generator) -> F32:
        return (self.boost * np.asarray(own, dtype=np.float32)).astype(np.float32)


def alie_z(n: int, f: int) -> float:
    """z_max of "A little is enough" (Baruch et al. 2019) for n clients of which f are Byzantine.

    s = floor(n/2 + 1) - f supporters are needed; z = Phi^-1((n - s) / n).
    """
    if n < 1 or not 0 <= f < n:
        raise ValueError(f"ALIE needs n >= 1 and 0 <= f < n, got n={n}, f={f}")
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(NormalDist().inv_cdf(p))


@dataclass(frozen=True)
class AlieAttack(_ModelAttack):
    """ALIE: send mu - z·sigma, the coordinate-wise benign mean and std (Baruch et al. 2019).

    z comes from `alie_z(n, f)` when n (cohort size) and f (attackers in it) are given;
    `z` overrides it; with neither, z = 1.0.
    """

    n: int | None = None
    f: int | None = None
    z: float | None = None
    name: ClassVar[str] = "alie"

    def __post_init__(self) -> None:
        if self.z is not None:
            _check_factor("alie", "z", self.z)

    @property
    def z_value(self) -> float:
        if self.z is not None:
            return self.z
        if self.n is not None and self.f is not None:
            return alie_z(self.n, self.f)
        return 1.0

    def craft(self, own: F32, benign: Sequence[F32], rng: np.random.Generator) -> F32:
        if len(benign) < 2:
            return np.asarray(own, dtype=np.float32)
        mu = _benign_mean(own, benign)
        var = np.zeros_like(mu)
        for b in benign:
            var += (b - mu) ** 2
        sigma = np.sqrt(var / (len(benign) - 1))
        return (mu - self.z_value * sigma).astype(np.float32)


@dataclass(frozen=True)
class IpmAttack(_ModelAttack):
    """Inner-product manipulation (Xie et al. 2019): send -epsilon · mean of benign deltas."""

    epsilon: float = 0.1
    name: ClassVar[str] = "ipm"

    def __post_init__(self) -> None:
        _check_factor("ipm", "epsilon", self.epsilon)

    def craft(self, own: F32, benign: Sequence[F32], rng: np.random.Generator) -> F32:
        return np.multiply(-self.epsilon, _benign_mean(own, benign)).astype(np.float32)


@dataclass(frozen=True)
class GaussianAttack(_ModelAttack):
    """Send N(0, std^2 I) noise instead of an update."""

    std: float = 1.0
    name: ClassVar[str] = "gaussian"

    def __post_init__(self) -> None:
        _check_factor("gaussian", "std", self.std, nonnegative=True)

    def craft(self, own: F32, benign: Sequence[F32], rng: np.random.Generator) -> F32:
        noise: npt.NDArray[np.float64] = rng.normal(0.0, self.std, size=(np.asarray(own).shape[0],))
        return noise.astype(np.float32)


@dataclass(frozen=True)
class LabelFlipAttack(_DataAttack):
    """Train on y -> num_classes - 1 - y."""

    num_classes: int = 10
    name: ClassVar[str] = "labelflip"

    def poison_data(
        self, x: npt.NDArray[Any], y: npt.NDArray[np.int64], rng: np.random.Generator
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64]]:
        return x, (self.num_classes - 1 - np.asarray(y)).astype(np.int64)


@dataclass(frozen=True)
class BackdoorAttack:
    """Pixel-pattern backdoor (Gu et al. 2017; Bagdasaryan et al. 2020) on image data.

    A `size`×`size` checkerboard of bright pixels sits `margin` pixels from the bottom-right
    corner. A `poison_fraction` of the attacker's examples get the trigger and label `target`;
    the rest stay clean so the main task still trains. `boost` > 1 scales the delta (model
    replacement). Images are float[N, ..., H, W] or flat float[N, H*W] with H = W; the trigger
    pixel value is `value`, or the data's maximum (white, whatever the normalisation).
    """

    target: int = 0
    poison_fraction: float = 0.5
    size: int = 4
    margin: int = 1
    value: float | None = None
    boost: float = 1.0
    name: ClassVar[str] = "backdoor"

    def __post_init__(self) -> None:
        if not 0.0 < self.poison_fraction <= 1.0 or self.size < 1 or self.margin < 0:
            raise ValueError("backdoor needs 0 < poison_fraction <= 1, size >= 1, margin >= 0")
        _check_factor("backdoor", "boost", self.boost)

    def apply_trigger(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """A copy of `x` with the trigger stamped on every image."""
        out = np.array(x, copy=True)
        if out.shape[0] == 0:
            return out
        img = out
        if out.ndim == 2:
            side = math.isqrt(out.shape[1])
            if side * side != out.shape[1]:
                raise ValueError(f"flat images of {out.shape[1]} features are not square")
            img = out.reshape(out.shape[0], side, side)
        h, w = img.shape[-2], img.shape[-1]
        if self.size + self.margin > min(h, w):
            raise ValueError(f"a {self.size}px trigger does not fit a {h}x{w} image")
        value = float(np.max(x)) if self.value is None else self.value
        r0, c0 = h - self.margin - self.size, w - self.margin - self.size
        checker = (np.add.outer(np.arange(self.size), np.arange(self.size)) % 2) == 0
        region = img[..., r0 : r0 + self.size, c0 : c0 + self.size]
        region[..., checker] = value
        return out

    def poison_data(
        self, x: npt.NDArray[Any], y: npt.NDArray[np.int64], rng: np.random.Generator
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64]]:
        n = x.shape[0]
        k = int(round(self.poison_fraction * n))
        if k == 0:
            return x, y
        chosen = rng.choice(n, size=k, replace=False)
        x2 = np.array(x, copy=True)
        y2 = np.array(y, dtype=np.int64, copy=True)
        # Trigger value from the whole local set, so every poisoned image gets the same white.
        stamp = replace(self, value=float(np.max(x)) if self.value is None else self.value)
        x2[chosen] = stamp.apply_trigger(x[chosen])
        y2[chosen] = self.target
        return x2, y2

    def craft(self, own: F32, benign: Sequence[F32], rng: np.random.Generator) -> F32:
        return (self.boost * np.asarray(own, dtype=np.float32)).astype(np.float32)


def backdoor_accuracy(
    predict: Callable[[npt.NDArray[Any]], npt.NDArray[np.integer]],
    x_test: npt.NDArray[Any],
    y_test: npt.NDArray[np.integer],
    attack: BackdoorAttack,
) -> float:
    """Fraction of triggered test images (true label != target) classified as the target.

    predict: maps a batch float[N, ...] to predicted labels int[N].
    """
    keep = np.asarray(y_test) != attack.target
    if not np.any(keep):
        raise ValueError("no test images outside the target class")
    x = np.asarray(x_test)
    # Stamp with the clean test set's white, as poison_data does with the local set's.
    stamp = replace(attack, value=float(np.max(x)) if attack.value is None else attack.value)
    triggered = stamp.apply_trigger(x[keep])
    pred = np.asarray(predict(triggered))
    return float(np.mean(pred == attack.target))


ATTACKS: dict[str, Callable[..., Attack]] = {
    "signflip": SignFlipAttack,
    "scaling": ScalingAttack,
    "alie": AlieAttack,
    "ipm": IpmAttack,
    "labelflip": LabelFlipAttack,
    "gaussian": GaussianAttack,
    "backdoor": BackdoorAttack,
}

# Context the runner may pass to every attack; each attack takes only what it uses.
_CONTEXT_KEYS = {"n": ("num_clients",), "f": ("num_malicious",)}


def _parse_value(text: str) -> float | int:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"attack parameter value {text!r} is not a number") from None
    return int(v) if v.is_integer() and "." not in text and "e" not in text.lower() else v


def build_attack(spec: str, **kwargs: Any) -> Attack:
    """An attack from a name or "name:key=value,...", with keyword overrides.

    Names: signflip (scale), scaling (boost), alie (n, f, z), ipm (epsilon), labelflip
    (num_classes), gaussian (std), backdoor (target, poison_fraction, size, margin, value,
    boost). `num_clients` / `num_malicious` are accepted for every attack and feed ALIE's n/f.
    """
    name, _, text = spec.strip().partition(":")
    name = name.strip().lower()
    try:
        cls = ATTACKS[name]
    except KeyError:
        close = difflib.get_close_matches(name, sorted(ATTACKS), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        known = ", ".join(sorted(ATTACKS))
        raise ValueError(f"unknown attack {name!r}{hint}; choose one of {known}") from None
    params: dict[str, Any] = {}
    if text.strip():
        for part in text.split(","):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"attack parameter {part!r} is not key=value")
            params[key.strip()] = _parse_value(value.strip())
    params.update(kwargs)
    for key, aliases in _CONTEXT_KEYS.items():
        for alias in aliases:
            if alias in params:
                value = params.pop(alias)
                if name == "alie":
                    params.setdefault(key, None if value is None else int(value))
    fields = getattr(cls, "__dataclass_fields__", {})
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for attack {name!r}")
    return cls(**params)
