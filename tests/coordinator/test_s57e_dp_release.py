"""What a central-DP round releases, against docs/privacy.md's claims that had no test: the
measurements hold no un-noised statistic of the reports, the Prometheus gauges, the noise's
seeding (a fixed seed and round, or 256 fresh OS bits a round), adaptive clipping's step on the
published noised fraction, and device-side clipping that does not bound what is sent."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from compression import CodecConfig, ModelSpec, SparseUpdate, UpdateCodec
from coordinator.aggregators import (
    AdaptiveClip,
    AggregatorSpecError,
    ClientUpdate,
    DPMean,
    FedAvg,
    build_aggregator,
)
from coordinator.aggregators._dp import find_dp
from coordinator.privacy import FixedSizeSampling, PrivacyMetrics
from sdk.device import UpdateEncoder


def _reports(rows: np.ndarray, weights: list[float] | None = None) -> list[ClientUpdate]:
    ws = weights if weights is not None else [1.0] * len(rows)
    return [
        ClientUpdate(f"d{i}", SparseUpdate.from_dense(np.asarray(r, dtype=np.float32)), w)
        for i, (r, w) in enumerate(zip(rows, ws, strict=True))
    ]


def _one_round(dp: DPMean, rows: np.ndarray, weights: list[float] | None = None) -> dict:
    proc = dp.create(rows.shape[1])
    return proc.next(proc.initialize(), _reports(rows, weights)).measurements


def _accounted(clip: float | AdaptiveClip) -> DPMean:
    return DPMean(
        1.1,
        clip=clip,
        inner=FedAvg(uniform=False, max_weight=3.0),
        sampling=FixedSizeSampling(100, 6),
        delta=1e-6,
        epsilon_budget=50.0,
        seed=4,
    )


def test_fixed_clip_measurements_do_not_depend_on_the_reports() -> None:
    # "DPMean puts no un-noised statistic of the updates in its measurements": under fixed-size
    # sampling the count of reports is public; nothing else of them may show. Two rounds of
    # six reports, one all tiny (none clipped) and one all huge with wild example counts (all
    # clipped), give the same measurements.
    rng = np.random.default_rng(0)
    small = rng.normal(size=(6, 5)) * 1e-3
    large = rng.normal(size=(6, 5)) * 1e4
    # Execute
    a = _one_round(_accounted(0.5), small)
    b = _one_round(_accounted(0.5), large, [1e9, 0.0, 3.0, 7.0, 1.0, 2.0])
    # Assert
    assert a == b
    assert a["clients"] == 6 and a["inner"]["clients"] == 6


def test_adaptive_clip_measurements_differ_only_in_the_noised_fraction() -> None:
    # "adaptive clipping shows only its noised fraction unclipped_fraction_noised"
    rng = np.random.default_rng(1)
    small = rng.normal(size=(6, 5)) * 1e-3
    large = rng.normal(size=(6, 5)) * 1e4
    clip = AdaptiveClip(initial=0.5, target_quantile=0.5, count_stddev=2.0)
    # Execute
    a = _one_round(_accounted(clip), small)
    b = _one_round(_accounted(clip), large)
    # Assert: the same keys and values, but for the noised fraction (same seed: the same
    # count noise, so the two differ by exactly the 6 reports' count over the cohort, 6 / 6)
    fa, fb = a.pop("unclipped_fraction_noised"), b.pop("unclipped_fraction_noised")
    assert a == b
    assert fa - fb == pytest.approx(6 / 6, abs=1e-12)


def test_the_gauges_read_the_rounds_figures() -> None:
    # "the gauges plume_dp_epsilon, plume_dp_delta, plume_dp_rounds, plume_dp_noise_multiplier,
    # plume_dp_clip_norm and plume_dp_budget_exhausted, updated every round"; the clip gauge
    # is the round's own clip, which adaptive clipping moves from round to round.
    metrics = PrivacyMetrics()
    dp = DPMean(
        1.3,
        clip=AdaptiveClip(initial=2.0, target_quantile=0.5, learning_rate=0.5),
        sampling=FixedSizeSampling(1000, 40),
        delta=1e-6,
        seed=2,
        metrics=metrics,
    )
    proc = dp.create(3)
    state = proc.initialize()
    rows = np.full((40, 3), 0.01)  # every report under the clip: C shrinks each round
    seen = []
    # Execute
    for _ in range(3):
        clip_used = state[1]
        out = proc.next(state, _reports(rows))
        state = out.state
        seen.append((clip_used, out.measurements))
        value = metrics.registry.get_sample_value
        # Assert, after every round
        assert value("plume_dp_clip_norm") == clip_used == out.measurements["clip"]
        assert value("plume_dp_epsilon") == out.measurements["epsilon"]
        assert value("plume_dp_delta") == 1e-6
        assert value("plume_dp_noise_multiplier") == 1.3
        assert value("plume_dp_rounds") == out.measurements["rounds"]
        assert value("plume_dp_budget_exhausted") == 0.0
    assert seen[0][0] == 2.0 and seen[2][0] < seen[1][0] < seen[0][0]
    # the noise-multiplier gauge is the accounted z (1.3), not the update's share z_u; its
    # help said "Noise stddev / clip norm", which z_u is under adaptive clipping
    assert seen[0][1]["update_noise_multiplier"] == pytest.approx((1.3**-2 - 4.0**-2) ** -0.5)
    help_text = {f.name: f.documentation for f in metrics.registry.collect()}
    assert "accounted" in help_text["plume_dp_noise_multiplier"]


def test_a_fixed_seeds_noise_is_a_function_of_the_seed_and_the_round() -> None:
    # "the noise is then a function of the seed and the round number": round r's noise is
    # numpy's Gaussian of stddev z·C on the generator default_rng([seed, r])
    z, clip, denom, size, seed = 0.7, 0.3, 5.0, 64, 9
    proc = DPMean(z, clip=clip, denominator=denom, seed=seed).create(size)
    state = proc.initialize()
    zeros = np.zeros((3, size))
    got = []
    # Execute
    for _ in range(3):
        out = proc.next(state, _reports(zeros))
        state = out.state
        got.append(out.result)
    # Assert
    for r in range(3):
        noise = np.random.default_rng([seed, r]).normal(0.0, z * clip, size=size)
        np.testing.assert_array_equal(got[r], (noise / denom).astype(np.float32))
    assert not np.array_equal(got[0], got[1])


def test_unseeded_noise_is_seeded_from_256_fresh_os_bits_every_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "draws each round's noise from numpy's Gaussian on a PCG64 seeded afresh from 256 bits of
    # OS entropy (os.urandom(32)), which numpy's SeedSequence hashes into its 128-bit pool":
    # each round reads 32 bytes of os.urandom and seeds with all of them
    asked: list[int] = []
    pool = iter([bytes([i]) * 32 for i in (0x11, 0x22, 0x33)])

    def urandom(n: int) -> bytes:
        asked.append(n)
        return next(pool)

    z, clip, size = 1.2, 0.5, 32
    proc = DPMean(z, clip=clip, denominator=1.0).create(size)
    state = proc.initialize()
    got = []
    # Execute
    with monkeypatch.context() as m:
        m.setattr(os, "urandom", urandom)
        for _ in range(3):
            out = proc.next(state, _reports(np.zeros((2, size))))
            state = out.state
            got.append(out.result)
    # Assert: one 32-byte read a round, the whole of it the seed, which numpy's SeedSequence
    # hashes into a pool of 4 32-bit words: "the generator starts from at most 128 bits"
    assert asked == [32, 32, 32]
    for r, byte in enumerate((0x11, 0x22, 0x33)):
        seed = int.from_bytes(bytes([byte]) * 32, "little")
        assert seed.bit_length() > 248
        pool = np.random.SeedSequence(seed).pool
        assert pool.size * pool.itemsize * 8 == 128
        want = np.random.default_rng(seed).normal(0.0, z * clip, size=size)
        np.testing.assert_array_equal(got[r], want.astype(np.float32))


@pytest.mark.parametrize("norm", [0.01, 100.0])
def test_adaptive_dp_steps_the_clip_by_the_published_noised_fraction(norm: float) -> None:
    # "moves C geometrically towards a target quantile: C <- C·exp(-eta (b~ - gamma))", b~ the
    # noised fraction it publishes (so the step is post-processing of a noised release)
    clip = AdaptiveClip(initial=1.0, target_quantile=0.3, learning_rate=0.4)
    proc = DPMean(0.5, clip=clip, denominator=20.0, seed=3).create(2)
    state = proc.initialize()
    rows = np.full((20, 2), norm / math.sqrt(2))
    # Execute
    for _ in range(4):
        before = state[1]
        out = proc.next(state, _reports(rows))
        state = out.state
        b = out.measurements["unclipped_fraction_noised"]
        # Assert
        assert out.measurements["clip"] == before
        assert state[1] == pytest.approx(before * math.exp(-0.4 * (b - 0.3)), rel=1e-12)
    # small reports (all unclipped) shrink C, large ones (all clipped) grow it
    assert (state[1] < 1.0) == (norm < 1.0)


def test_device_side_clipping_does_not_bound_the_upload_but_the_server_clip_does() -> None:
    # Assumption 4: "the transmitted vector u = clip(Δ) + residual can exceed C ... The server
    # clips it again." A device clipping each fresh delta to 1 behind top-k 25% and error
    # feedback sends the residual on top: its third upload decodes to norm 1.5.
    spec = ModelSpec.from_shapes([("w", (16,))])
    device = UpdateEncoder(spec, CodecConfig(topk=0.25, bits=32), clip_norm=1.0)
    server = UpdateCodec(spec, CodecConfig(topk=1.0, bits=32))
    rng = np.random.default_rng(0)
    delta = np.ones(16, dtype=np.float32)
    norms = []
    frames = []
    for _ in range(3):
        frame, _ = device.encode(delta, rng, 1.0)
        device.accepted()
        frames.append(server.decode_frame(frame))
        norms.append(math.sqrt(frames[-1].update.squared_norm()))
    assert norms == pytest.approx([0.5, 1.0, 1.5])
    other = ClientUpdate("other", SparseUpdate.from_dense(np.full(16, 0.1, np.float32)), 1.0)
    mine = ClientUpdate("me", frames[2].update, frames[2].weight)
    dp = DPMean(0.8, clip=1.0, denominator=2.0, seed=5)

    def released(updates: list[ClientUpdate]) -> np.ndarray:
        proc = dp.create(16)
        return proc.next(proc.initialize(), updates).result.astype(np.float64) * 2.0

    # Execute
    moved = float(np.linalg.norm(released([other, mine]) - released([other])))
    # Assert: the device moves the noised sum by C = 1, not by the 1.5 it sent
    assert moved == pytest.approx(1.0, rel=1e-6)
    assert moved <= 1.0 * (1 + 1e-6)


@pytest.mark.parametrize("optimizer", ["avgm", "adagrad", "adam", "yogi"])
def test_only_a_server_optimizer_or_the_collusion_screen_comes_before_dp(optimizer: str) -> None:
    # Item 6: "DPMean must be the outermost aggregation stage (build_aggregator refuses anything
    # else; a server optimizer ... may still come first ...)". Until stop 57 the page said
    # collusion was the one stage allowed in front of dp, while every server optimizer is taken
    # there: it turns dp's released mean into the model step (post-processing).
    accounted = "dp:clip=1,z=1,population=100,sample=10,eps=8+fedavg"
    # Execute / Assert: taken, and the accounted stage is found through the optimizer
    dp = find_dp(build_aggregator(f"{optimizer}+{accounted}"))
    assert dp is not None and dp.sampling == FixedSizeSampling(100, 10)
    assert find_dp(build_aggregator("collusion+dp:clip=1,z=1+fedavg")) is not None
    for spec in (f"cosfilter+{accounted}", f"{optimizer}+normbound:1+{accounted}"):
        with pytest.raises(AggregatorSpecError, match="outermost"):
            build_aggregator(spec)
