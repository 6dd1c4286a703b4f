"""The simulator's derived noise seeds are streams of their own (review h157, item 2).

numpy's SeedSequence pads a short entropy list with zeros, so SeedSequence([seed, 0xD9, i]) (the
--secure noise key of device i) was the PCG64 seed of job_rng(round 217, device i, stream 0),
and SeedSequence([seed, 0xD9]) (dp_seed_for) was the engine's round-217 selection sequence and
the secure run's round-217 cohort sequence. Both now put 0xD9 in the spawn key."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest

from mobile_sim.backends._base import job_rng
from mobile_sim.runner import dp_seed_for
from mobile_sim.secure import _noise_key

ROUNDS = range(1, 600)


def _words(entropy: list[int], n: int) -> bytes:
    return np.random.SeedSequence(entropy).generate_state(n, np.uint32).tobytes()


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("index", [0, 3])
def test_the_noise_key_is_no_training_rng_seed(seed: int, index: int) -> None:
    key = _noise_key(seed, index)

    # Assert: review h157's case: job_rng(round 217, device index, stream 0) seeds its PCG64
    # with SeedSequence([seed, 217, index, 0])'s first 256 bits, which the key was
    job = NS(seed=seed, round_id=0xD9, device_index=index)
    pcg = np.random.PCG64(np.random.SeedSequence([seed, 0xD9, index, 0]))
    assert job_rng(job, 0).bit_generator.state == pcg.state
    assert key != _words([seed, 0xD9, index, 0], 8)
    # and no round's job_rng / engine / aggregator sequence for the first rounds either
    seeds = {_words([seed, r, index, s], 8) for r in ROUNDS for s in range(4)}
    seeds |= {_words([seed, r], 8) for r in ROUNDS}
    assert key not in seeds


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_the_dp_seed_is_no_round_selection_seed(seed: int) -> None:
    # Before: dp_seed_for(0) == SeedSequence([0, 217]).generate_state(1)[0] >> 1 (226242408)
    rounds = {
        int(np.random.SeedSequence([seed, r]).generate_state(1, np.uint32)[0]) >> 1 for r in ROUNDS
    }
    assert dp_seed_for(seed) not in rounds
    assert 0 <= dp_seed_for(seed) < 2**31


def test_the_streams_differ_by_seed_and_device() -> None:
    assert len({_noise_key(s, i) for s in range(3) for i in range(4)}) == 12
    assert len({dp_seed_for(s) for s in range(20)}) == 20
