"""Many jobs' RNGs at once: the exact streams of `job_rng`, seeded without per-job objects.

`job_rng(job, stream)` is `numpy.random.default_rng([seed, round, device, stream])`: a
`SeedSequence` hashes the four words, `PCG64` turns four 64-bit words of its output into a
128-bit state and increment, and a `Generator` wraps it. That costs about 10 us per job (30 us
on a loaded machine), twice per update: a fifth of a 1,000-client round of the digits MLP.
`RngPool` computes the SeedSequence hash for the whole cohort with vectorised uint32
arithmetic (numpy's published algorithm, `numpy/random/bit_generator.pyx`), does PCG64's
seeding steps in Python integers, and loads the result into reused generators through the
documented `bit_generator.state` setter. The test checks the draws equal `job_rng`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ._base import TrainJob, job_rng

__all__ = ["RngPool", "seed_state_words"]

_M32 = 0xFFFFFFFF
# SeedSequence's hash constants (numpy/random/bit_generator.pyx).
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R = 0xCA01F9DD, 0x4973F715
_XSHIFT = np.uint32(16)
_POOL = 4
# PCG64's 128-bit LCG multiplier (PCG_DEFAULT_MULTIPLIER_128).
_PCG_MULT = (2549297995355413924 << 64) + 4865540595714422341
_M128 = (1 << 128) - 1


def seed_state_words(entropy: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint64]:
    """`SeedSequence(row).generate_state(4, np.uint64)` for each row of uint32[n, 4] words."""
    n = entropy.shape[0]
    hash_const = _INIT_A

    def hashmix(value: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
        nonlocal hash_const
        value = value ^ np.uint32(hash_const)
        hash_const = (hash_const * _MULT_A) & _M32
        value = value * np.uint32(hash_const)
        return value ^ (value >> _XSHIFT)

    def mix(x: npt.NDArray[np.uint32], y: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
        result: npt.NDArray[np.uint32] = np.uint32(_MIX_MULT_L) * x - np.uint32(_MIX_MULT_R) * y
        mixed: npt.NDArray[np.uint32] = result ^ (result >> _XSHIFT)
        return mixed

    pool = np.empty((n, _POOL), dtype=np.uint32)
    for i in range(_POOL):
        pool[:, i] = hashmix(np.ascontiguousarray(entropy[:, i]))
    for i_src in range(_POOL):
        for i_dst in range(_POOL):
            if i_src != i_dst:
                pool[:, i_dst] = mix(pool[:, i_dst], hashmix(pool[:, i_src]))
    out = np.empty((n, 8), dtype=np.uint32)
    hash_const_b = _INIT_B
    for i in range(8):
        value = pool[:, i % _POOL] ^ np.uint32(hash_const_b)
        hash_const_b = (hash_const_b * _MULT_B) & _M32
        value = value * np.uint32(hash_const_b)
        out[:, i] = value ^ (value >> _XSHIFT)
    return out.astype("<u4").view("<u8").astype(np.uint64)


def _pcg64_state(words: Sequence[int]) -> dict[str, object]:
    """PCG64's `state` dict after seeding with 4 words (pcg_setseq_128_srandom_r)."""
    initstate = (words[0] << 64) | words[1]
    inc = (((words[2] << 64) | words[3]) << 1 | 1) & _M128
    state = inc  # state = 0, then one step: 0 * mult + inc
    state = (state + initstate) & _M128
    state = (state * _PCG_MULT + inc) & _M128
    return {
        "bit_generator": "PCG64",
        "state": {"state": state, "inc": inc},
        "has_uint32": 0,
        "uinteger": 0,
    }


class RngPool:
    """Reusable generators, reseeded per call to the streams `job_rng(job, stream)` gives.

    The generators returned by `for_jobs` are reseeded by the next call: use them before
    calling it again, and do not share one pool between threads.
    """

    def __init__(self) -> None:
        self._gens: list[np.random.Generator] = []

    def for_jobs(self, jobs: Sequence[TrainJob], stream: int = 0) -> list[np.random.Generator]:
        """One generator per job, in order; each draws exactly what `job_rng(job, stream)` draws."""
        n = len(jobs)
        while len(self._gens) < n:
            self._gens.append(np.random.Generator(np.random.PCG64(0)))
        raw = [(job.seed, job.round_id, job.device_index, stream) for job in jobs]
        # Words below 2**32 are one SeedSequence word each; anything else takes job_rng.
        small = [all(isinstance(v, (int, np.integer)) and 0 <= v <= _M32 for v in r) for r in raw]
        out: list[np.random.Generator] = []
        fast = [i for i in range(n) if small[i]]
        words = (
            seed_state_words(np.array([raw[i] for i in fast], dtype=np.uint32)).tolist()
            if fast
            else []
        )
        it = iter(words)
        for i, job in enumerate(jobs):
            if small[i]:
                gen = self._gens[i]
                gen.bit_generator.state = _pcg64_state(next(it))
                out.append(gen)
            else:
                out.append(job_rng(job, stream))
        return out
