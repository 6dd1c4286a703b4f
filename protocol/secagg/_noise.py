"""Integer noise for distributed DP: exact discrete Gaussian (Canonne, Kamath, Steinke 2020) and
Skellam, both from cryptographically seeded generators.

The discrete Gaussian sampler uses only integer and rational arithmetic (Algorithms 1-3 of
CKS 2020), with uniform integers drawn from an AES-CTR keystream keyed by 32 bytes from the OS
CSPRNG. It is exact but runs in Python, about 10-20 us per sample. Skellam(mu) =
Poisson(mu) - Poisson(mu) is vectorised with numpy's PCG64 seeded from the OS CSPRNG: fast, but
PCG64 is not itself a cryptographic generator (stated in docs/secure-aggregation.md).
"""

from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from ._prg import prg_bytes

__all__ = ["CtrRandom", "discrete_gaussian", "rational_variance", "skellam"]

_BUFFER = 1 << 16


class CtrRandom:
    """Uniform integers from an AES-256-CTR keystream (a CSPRNG), buffered."""

    def __init__(self, seed: bytes | None = None) -> None:
        self._seed = os.urandom(32) if seed is None else seed
        self._block = 0
        self._buf = b""
        self._pos = 0

    @property
    def seed(self) -> bytes:
        """The keystream's key."""
        return self._seed

    @property
    def position(self) -> int:
        """How many bytes of the keystream the generator has used (given out): everything it
        will give next follows from its seed and this (`at`)."""
        return self._block * _BUFFER - (len(self._buf) - self._pos)

    @classmethod
    def at(cls, seed: bytes, position: int) -> CtrRandom:
        """A generator of `seed` that has used `position` bytes: it gives the bytes the one it
        stands for would give next (the simulator keeps an idle device's noise stream as its
        seed and position)."""
        if position < 0:
            raise ValueError(f"position must be >= 0, got {position}")
        rng = cls(seed)
        rng._block = position // _BUFFER
        rng._bytes(position % _BUFFER)  # regenerates that block, then skips what was used
        return rng

    def _bytes(self, n: int) -> bytes:
        while self._pos + n > len(self._buf):
            self._buf = self._buf[self._pos :] + prg_bytes(
                self._seed, _BUFFER, b"ctr-random-" + self._block.to_bytes(8, "little")
            )
            self._block += 1
            self._pos = 0
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def randbelow(self, n: int) -> int:
        """Uniform in [0, n), by rejection on the smallest enclosing power of two."""
        if n <= 0:
            raise ValueError("randbelow needs n >= 1")
        bits = (n - 1).bit_length()
        if bits == 0:
            return 0
        nbytes = (bits + 7) // 8
        mask = (1 << bits) - 1
        while True:
            r = int.from_bytes(self._bytes(nbytes), "little") & mask
            if r < n:
                return r


def _bernoulli(p: Fraction, rng: CtrRandom) -> bool:
    return rng.randbelow(p.denominator) < p.numerator


def _bernoulli_exp_le1(gamma: Fraction, rng: CtrRandom) -> bool:
    """Bernoulli(exp(-gamma)) for 0 <= gamma <= 1 (CKS Algorithm 1, first case)."""
    k = 1
    while _bernoulli(gamma / k, rng):
        k += 1
    return k % 2 == 1


def _bernoulli_exp(gamma: Fraction, rng: CtrRandom) -> bool:
    """Bernoulli(exp(-gamma)) for gamma >= 0 (CKS Algorithm 1)."""
    whole = math.floor(gamma)
    for _ in range(whole):
        if not _bernoulli_exp_le1(Fraction(1), rng):
            return False
    return _bernoulli_exp_le1(gamma - whole, rng)


def _discrete_laplace(s: int, t: int, rng: CtrRandom) -> int:
    """Discrete Laplace with scale t/s (CKS Algorithm 2)."""
    while True:
        u = rng.randbelow(t)
        if not _bernoulli_exp(Fraction(u, t), rng):
            continue
        v = 0
        while _bernoulli_exp(Fraction(1), rng):
            v += 1
        x = (u + t * v) // s
        negative = rng.randbelow(2) == 1
        if negative and x == 0:
            continue
        return -x if negative else x


def _discrete_gaussian_one(sigma2: Fraction, rng: CtrRandom) -> int:
    """One sample of N_Z(0, sigma2) (CKS Algorithm 3)."""
    t = math.floor(math.sqrt(sigma2)) + 1
    while True:
        y = _discrete_laplace(1, t, rng)
        c = (abs(y) - sigma2 / t) ** 2 / (2 * sigma2)
        if _bernoulli_exp(c, rng):
            return y


def rational_variance(sigma2: Fraction | int | float) -> Fraction:
    """sigma2 as a rational >= sigma2 with denominator <= 10^6 (exact if it already is one).

    The nearest such fraction (`limit_denominator`) is below sigma2 about half the time; the
    accountant bounds privacy for the sigma2 it was given, so the sampler must not use less.
    """
    exact = Fraction(sigma2)
    if not exact > 0:
        raise ValueError("sigma2 must be positive")
    if exact.denominator <= 10**6:
        return exact
    return Fraction(math.ceil(exact * 10**6), 10**6)


def discrete_gaussian(
    sigma2: Fraction | int | float, count: int, rng: CtrRandom | None = None
) -> npt.NDArray[np.int64]:
    """`count` exact samples of the discrete Gaussian with variance parameter sigma2 (int64).

    The parameter actually sampled is `rational_variance(sigma2)`: sigma2 rounded *up* to a
    multiple of 10^-6, so the sampler's arithmetic stays on small integers and the noise is
    never below what the accountant assumes.
    """
    s2 = rational_variance(sigma2)
    gen = rng or CtrRandom()
    return np.fromiter((_discrete_gaussian_one(s2, gen) for _ in range(count)), np.int64, count)


def skellam(mu: float, count: int, seed: bytes | None = None) -> npt.NDArray[np.int64]:
    """`count` samples of Skellam(mu, mu) (variance 2 mu), from OS-seeded PCG64 (int64)."""
    if mu <= 0:
        raise ValueError("mu must be positive")
    s = os.urandom(32) if seed is None else seed
    gen = np.random.Generator(np.random.PCG64(int.from_bytes(s, "little")))
    return (gen.poisson(mu, count) - gen.poisson(mu, count)).astype(np.int64)
