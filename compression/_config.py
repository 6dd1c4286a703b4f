"""Encoder settings (`CodecConfig`) and decoder caps (`DecodeLimits`)."""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from decimal import MAX_EMAX, ROUND_HALF_EVEN, Context, Decimal

from ._spec import ModelSpec

__all__ = [
    "CodecConfig",
    "DecodeLimits",
    "QUANTIZED_BITS",
    "VALID_BITS",
    "INDEX_CHOICES",
    "MIN_BLOCK",
    "MAX_BLOCK",
    "MAX_WEIGHT",
    "check_weight",
    "check_zstd_level",
]

# Bit widths with per-block scales (2, 4, 8: stochastic rounding; 1: the sign and the sign
# groups' means); 16 is fp16 and 32 raw fp32.
QUANTIZED_BITS = (1, 2, 4, 8)
VALID_BITS = (*QUANTIZED_BITS, 16, 32)
INDEX_CHOICES = ("auto", "bitmap", "rice", "ef")
TOPK_MODES = ("exact", "sampled")
SCOPES = ("global", "per_tensor")
# A block below 8 values would spend more on scales (8 bytes a block) than on values.
MIN_BLOCK = 8
MAX_BLOCK = 1 << 20
# The largest FedAvg weight (example count) a frame may carry: 2^53, the end of exactly
# representable integers in float64. Far above any real count, and low enough that weight x value
# sums stay finite (a weight near 1.8e308 made FedAvg overflow and abandon the whole round).
MAX_WEIGHT = float(1 << 53)


# At or above this a whole number is written in exponent form in a refusal (`short_whole`).
LARGE_WHOLE = 10**15

# A whole number of 16 digits or more standing alone in a text (not part of a word, an id or
# a decimal fraction).
_LONG_WHOLE = re.compile(r"(?<![\w.])-?[0-9]{16,}(?![\w.])")


def short_whole(n: int | Decimal) -> str:
    """A whole number as a refusal writes one of 16 digits or more: 6 significant digits in
    exponent form (1e+308, -1.23457e+400), never its every digit. From the int's binary
    digits: Python's int-to-text limit (4,300 digits) does not apply. The coordinator's
    messages use it too (`coordinator.aggregators._base.shown`)."""
    exact = n if isinstance(n, Decimal) else Decimal(n)
    text = str(exact.normalize(Context(prec=6, rounding=ROUND_HALF_EVEN, Emax=MAX_EMAX)))
    return text.replace("E+", "e+")


def short_digits(text: str) -> str:
    """`text` with each whole number of 16 digits or more written as `short_whole` writes it."""
    return _LONG_WHOLE.sub(lambda m: short_whole(Decimal(m.group())), text)


def _whole(value: object, exact_below: int) -> str | None:
    """`short_whole` of an int (a numpy one too) at or above `exact_below` in magnitude, else None."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        n = int(value)
        if abs(n) >= exact_below:
            return short_whole(n)
    return None


def _number(value: object) -> str:
    """A numeric field's value as its refusal writes it: `repr`, a huge int short (1e+308)."""
    return _whole(value, LARGE_WHOLE) or repr(value)


def _shown(value: object, exact_below: int = LARGE_WHOLE) -> str:
    """`_number(value)`, anything else (a Fraction of a thousand digits) cut after 60
    characters."""
    if (short := _whole(value, exact_below)) is not None:
        return short
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


# A weight's int is written whole up to an int64's or uint64's digits: 6 digits of 2^53 + 1
# (9.0072e+15) would read as the bound itself.
_WEIGHT_EXACT_BELOW = 10**20


def check_weight(weight: object) -> None:
    """Raise ValueError unless `weight` is a real number in [0, MAX_WEIGHT] (bools refused)."""
    if type(weight) is float and 0 <= weight <= MAX_WEIGHT:
        return  # the common case, without the numbers.Real ABC check below
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise ValueError(f"weight must be a real number, got {weight!r}")
    bad = ValueError(
        f"weight must be a finite number in [0, 2^53], got {_shown(weight, _WEIGHT_EXACT_BELOW)}"
    )
    if isinstance(weight, numbers.Rational):
        # Compared exactly (ints, numpy ints, Fractions): as a float, 2^53 + 1 would round
        # down to 2^53 and pass, and 2^1100 would raise OverflowError, not this ValueError.
        num, den = int(weight.numerator), int(weight.denominator)  # den > 0
        if not 0 <= num <= den << 53:
            raise bad
        return
    try:
        value = float(weight)
    except OverflowError:
        raise bad from None
    if not (math.isfinite(value) and 0 <= value <= MAX_WEIGHT):
        raise bad


def _is_int(value: object) -> bool:
    """An int or a numpy integer, not a bool (nor a float holding a whole number)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_zstd_level(level: object, name: str = "zstd_level") -> None:
    """ValueError unless `level` is an int in [-7, 22], the zstd levels `CodecConfig` and
    `encode_snapshot` take (there 2**63 was an OverflowError inside zstandard, and -2**31 a
    level zstd quietly clamps)."""
    if isinstance(level, bool) or not isinstance(level, int):
        raise ValueError(f"{name} must be an int, got {_shown(level)}")
    if not -7 <= level <= 22:
        raise ValueError(f"{name} must be in [-7, 22], got {_number(level)}")


@dataclass(frozen=True, slots=True)
class CodecConfig:
    """How the device encodes an update. The decoder never needs this: the frame says it all.

    topk: fraction of the d coordinates kept, 0 < topk <= 1 (1.0 keeps all, no indices sent).
    bits: 2, 4 or 8 (stochastic rounding with per-block scales), 1 (the sign, per-block means
        of each sign group), 16 (fp16) or 32 (raw fp32).
    block: values per scale block (only for bits <= 8).
    index: "auto" picks the smallest of bitmap, Golomb-Rice and Elias-Fano for each frame.
    topk_mode: "exact" (the k largest magnitudes) or "sampled" (DGC threshold from a sample).
    scope: "global" top-k over the whole vector or "per_tensor" (k split by tensor size,
        at least one per tensor when k allows; `compression._topk.split_k`).
    zstd_level: level of the zstd pass over the payload (kept only when it shrinks it).
    """

    topk: float
    bits: int
    block: int = 256
    index: str = "auto"
    topk_mode: str = "exact"
    scope: str = "global"
    zstd_level: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.topk, bool) or not isinstance(self.topk, (int, float)):
            raise ValueError(f"topk must be a number in (0, 1], got {self.topk!r}")
        # 0 < topk first: math.isfinite raises OverflowError for an int past a float's range.
        if not (0.0 < self.topk <= 1.0 and math.isfinite(self.topk)):
            raise ValueError(f"topk must be in (0, 1], got {_shown(self.topk)}")
        # A whole float (4.0) is `in VALID_BITS` too, but the header's u8 is packed by struct,
        # which raised struct.error (no ValueError) at the first encode.
        if not _is_int(self.bits) or self.bits not in VALID_BITS:
            raise ValueError(f"bits must be one of {VALID_BITS}, got {_number(self.bits)}")
        if (
            isinstance(self.block, bool)
            or not isinstance(self.block, int)
            or not MIN_BLOCK <= self.block <= MAX_BLOCK
        ):
            raise ValueError(
                f"block must be an int in [{MIN_BLOCK}, {MAX_BLOCK}], got {_number(self.block)}"
            )
        if self.index not in INDEX_CHOICES:
            raise ValueError(f"index must be one of {INDEX_CHOICES}, got {self.index!r}")
        if self.topk_mode not in TOPK_MODES:
            raise ValueError(f"topk_mode must be one of {TOPK_MODES}, got {self.topk_mode!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        check_zstd_level(self.zstd_level)

    @classmethod
    def dense(cls) -> CodecConfig:
        """The fp32 baseline: every coordinate, raw float32 (zstd still tried)."""
        return cls(topk=1.0, bits=32)

    def k_for(self, size: int) -> int:
        """Coordinates kept out of `size`: round(topk * size), at least 1, at most size."""
        return max(1, min(size, int(round(self.topk * size))))


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Caps the decoder enforces before it allocates. Sizes in bytes.

    max_header_bytes: largest header length a frame may declare.
    max_frame_bytes: largest frame accepted; None derives it from the spec (`frame_cap`).
    zstd_max_window_log: largest zstd window (2**log bytes) a frame may ask for.
    """

    max_header_bytes: int = 4096
    max_frame_bytes: int | None = None
    zstd_max_window_log: int = 24

    def __post_init__(self) -> None:
        # Ints only: a NaN max_frame_bytes compared False with every length, so step 1 (and the
        # encoders' own cap) let any frame through, and a window log of 24.5 was a TypeError
        # at `1 << log` when a codec was built.
        for name in ("max_header_bytes", "max_frame_bytes", "zstd_max_window_log"):
            value = getattr(self, name)
            if not _is_int(value) and not (name == "max_frame_bytes" and value is None):
                raise ValueError(f"{name} must be an int, got {_shown(value)}")
        if not 64 <= self.max_header_bytes <= 65535:
            raise ValueError(
                f"max_header_bytes must be in [64, 65535], got {_number(self.max_header_bytes)}"
            )
        if self.max_frame_bytes is not None and self.max_frame_bytes < 64:
            raise ValueError(f"max_frame_bytes must be >= 64, got {_number(self.max_frame_bytes)}")
        if not 10 <= self.zstd_max_window_log <= 31:
            raise ValueError(
                f"zstd_max_window_log must be in [10, 31], got {_number(self.zstd_max_window_log)}"
            )

    def frame_cap(self, spec: ModelSpec) -> int:
        """Largest frame for `spec`: the explicit cap, or the largest encoder frame plus slack.

        The largest frame `UpdateCodec` writes with index "auto" is fp32 values with at most a
        bitmap's index: 4*d + ceil(d/8) payload bytes plus a 60-byte envelope; 1 KiB of slack
        covers it. (Headers may declare wider Rice/Elias-Fano sections; they must fit too.)
        """
        if self.max_frame_bytes is not None:
            return self.max_frame_bytes
        d = spec.size
        return 4 * d + (d + 7) // 8 + 1024

    @property
    def zstd_max_window(self) -> int:
        return 1 << int(self.zstd_max_window_log)  # an int for a numpy log too (ZstdCodec)
