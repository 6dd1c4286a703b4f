"""Review of the simulated fleet against its spec: population, clock, partitions, reports."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import CodecConfig, ModelSpec, UpdateCodec
from coordinator.aggregators import FedAvg
from coordinator.cli import main as plume
from coordinator.engine import EngineConfig, RoundEngine
from mobile_sim.clock import SimClock
from mobile_sim.data import load_digits_data
from mobile_sim.datasets import load_synthetic
from mobile_sim.fleet import SimFleet
from mobile_sim.partition import dirichlet, iid, natural, shards
from mobile_sim.population import (
    DEFAULT_TIERS,
    Population,
    PopulationConfig,
    PopulationError,
    Tier,
    TierSpec,
)
from mobile_sim.report_extra import RunDirError, load_runs, rebuild_run_dir

# -- population ---------------------------------------------------------------------------------


def test_a_night_that_starts_before_midnight_counts_from_its_start() -> None:
    # Prepare: every device's nights start at local midnight on average, jittered by N(0, 2 h)
    # night to night; nothing else (no skipped nights, no day sessions, one time zone, wifi).
    tier = replace(DEFAULT_TIERS[1], share=1.0, home_wifi_p=1.0)
    pop = Population(
        PopulationConfig(
            20_000,
            seed=3,
            tiers=(tier,),
            start_hour_utc=0.0,
            tz_sigma_h=0.0,
            night_start_mean_h=0.0,
            night_start_sd_h=0.0,
            night_jitter_sd_h=2.0,
            skip_night_p=0.0,
            day_session_p=0.0,
        )
    )
    ids = np.arange(20_000)

    # Execute: 23:00 local on day 0, one hour before the next night's mean start.
    at_2300 = pop.is_available(ids, 23 * 3600.0).mean()

    # Assert: the next night has started iff its jitter is below -1 h: P = Phi(-0.5) = 0.309.
    # (Before the fix only nights d-1 and d were looked at, so this was 0.)
    assert at_2300 == pytest.approx(0.5 * math.erfc(0.5 / math.sqrt(2)), abs=0.015)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**40),
    ids=st.lists(st.integers(0, 10**6 - 1), min_size=1, max_size=30, unique=True),
    hours=st.floats(0.0, 24.0 * 9),
    warmup=st.integers(0, 5_000),
)
def test_a_device_is_the_same_whatever_was_looked_at_before(
    seed: int, ids: list[int], hours: float, warmup: int
) -> None:
    # Prepare: two populations from the same seed; one has already materialized other devices.
    fresh = Population.build(10**6, seed=seed)
    used = Population.build(10**6, seed=seed)
    used.profiles(np.arange(warmup))
    used.sample_available(50, hours * 3600.0, np.random.default_rng(seed))
    t = hours * 3600.0

    # Execute: one batch in reversed order against each device alone.
    batch = used.profiles(np.asarray(ids[::-1]))
    avail = used.available_mask(batch, t)[::-1]

    # Assert: also the same device in a fleet just big enough to hold it.
    small = Population.build(max(ids) + 1, seed=seed)
    for k, i in enumerate(ids):
        assert batch[len(ids) - 1 - k] == fresh.profile(i) == small.profile(i)
        assert bool(avail[k]) == bool(fresh.is_available([i], t)[0])


def test_units_from_tier_spec_to_round_time() -> None:
    # Prepare: one tier with no spread, so every device sits at the medians.
    spec = TierSpec(
        Tier.MID,
        share=1.0,
        compute_median_sps=50.0,
        compute_sigma=0.0,
        down_median_mbps=8.0,  # megabits/s
        down_sigma=0.0,
        up_median_mbps=2.0,
        up_sigma=0.0,
        latency_median_ms=100.0,
        latency_sigma=0.0,
        dropout_p=0.0,
        memory_gb=(4.0,),  # GiB
        home_wifi_p=1.0,
    )
    pop = Population(PopulationConfig(5, seed=0, tiers=(spec,), availability="always"))
    prof = pop.profiles(np.arange(5))

    # Execute: 1 MB (10^6 bytes) down, 250 kB up, 100 samples x 2 epochs.
    down, comp, up = SimClock(0).device_times(prof, 1_000_000, 250_000, 100, epochs=2)

    # Assert: bytes*8 over bits/s, milliseconds to seconds, GiB to MiB.
    np.testing.assert_allclose(prof.down_bps, 8e6)
    np.testing.assert_allclose(prof.latency_s, 0.1)
    np.testing.assert_allclose(prof.memory_mb, 4096.0)
    np.testing.assert_allclose(down, 0.1 + 1.0)
    np.testing.assert_allclose(up, 0.1 + 1.0)
    np.testing.assert_allclose(comp, 4.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"skip_night_p": 1.5}, r"must be in \[0, 1\]"),
        ({"day_session_wifi_p": -0.1}, r"must be in \[0, 1\]"),
        ({"night_jitter_sd_h": -1.0}, "spreads"),
        ({"start_hour_utc": math.nan}, "finite"),
        ({"night_hours_mean": 0.0}, "night_hours_mean"),
        ({"tiers": (replace(DEFAULT_TIERS[1], share=1.0, down_sigma=-0.5),)}, "sigmas"),
        ({"tiers": (replace(DEFAULT_TIERS[1], share=1.0, memory_gb=(0.0,)),)}, "memory"),
    ],
)
def test_out_of_range_day_and_tier_parameters_are_refused(
    kwargs: dict[str, object], match: str
) -> None:
    # Before, these built a population that silently made every night skipped, etc.
    with pytest.raises(PopulationError, match=match):
        PopulationConfig(100, 0, **kwargs)  # type: ignore[arg-type]


# -- fleet and clock ----------------------------------------------------------------------------


def test_wait_for_a_cohort_the_fleet_cannot_fill_stops_at_its_best_time() -> None:
    # Prepare: 10 devices, a cohort of 13 (10 per round, 30 % over-selection): never reachable.
    fleet = SimFleet(10, seed=0)
    counts = [
        int(fleet.population.is_available(np.arange(10), k * 900.0).sum()) for k in range(193)
    ]
    best = int(np.argmax(counts))  # the first step with the most eligible devices

    # Execute
    ids = fleet.wait_for(13, np.random.default_rng(0))

    # Assert: the largest cohort seen, at the first time it was seen; before the fix the
    # clock moved two whole days each round and the cohort was whatever was eligible then.
    assert ids.size == counts[best] > 0
    assert fleet.idle_s == fleet.now_s == best * 900.0 < 86_400.0
    assert fleet.population.is_available(ids, fleet.now_s).all()


def test_wait_for_with_a_selection_timeout_opens_like_the_coordinator() -> None:
    # Prepare: the service opens a round with the full cohort, or after its selection timeout
    # with at least min_reports devices.
    fleet = SimFleet(40, seed=2)
    counts = [
        int(fleet.population.is_available(np.arange(40), k * 900.0).sum()) for k in range(193)
    ]
    first = next(k for k, c in enumerate(counts) if c >= 30 or (k * 900.0 >= 1800.0 and c >= 3))

    # Execute
    ids = fleet.wait_for(30, np.random.default_rng(0), selection_timeout_s=1800.0, min_n=3)

    # Assert
    assert first >= 2
    assert fleet.now_s == first * 900.0
    assert ids.size == min(counts[first], 30) >= 3
    with pytest.raises(ValueError, match="min_n"):
        fleet.wait_for(3, np.random.default_rng(0), min_n=0)


def test_wait_for_that_succeeds_is_the_step_by_step_wait() -> None:
    # Prepare: 20 % of 2,000 devices wanted at 20:00 UTC, when about 12 % are eligible.
    fleet = SimFleet(2_000, seed=1)
    ref_pop = Population.build(2_000, seed=1)
    ref_clock = SimClock(1)
    rng_ref = np.random.default_rng(5)
    while (ref := ref_pop.sample_available(400, ref_clock.now_s, rng_ref)).size < 400:
        ref_clock.advance(900.0)

    # Execute
    ids = fleet.wait_for(400, np.random.default_rng(5))

    # Assert: the same devices at the same float time as advancing 15 minutes at a time.
    assert ref_clock.now_s > 0
    assert fleet.now_s == ref_clock.now_s == fleet.idle_s
    np.testing.assert_array_equal(ids, ref)


def test_each_round_reports_when_it_started_and_how_long_it_waited() -> None:
    # Prepare: a fleet that must idle before its first cohort (20 % wanted, 12 % eligible).
    fleet = SimFleet(2_000, seed=1, deadline_s=600.0)
    cohort = fleet.wait_for(400, np.random.default_rng(5))
    waited = fleet.idle_s

    # Execute: two rounds. At the first one's close its stragglers are still uploading and
    # cannot be selected (helper-265, s25/clock finding 4), so fewer than 400 are free: the
    # second waits one step (before that change it found its cohort at once, stragglers
    # included).
    first = fleet.time_round(
        1, cohort, down_bytes=10**6, up_bytes=10**4, samples=50, epochs=1, per_round=300
    )
    fleet.advance(first)
    again = fleet.wait_for(400, np.random.default_rng(6))
    second = fleet.time_round(
        2, again, down_bytes=10**6, up_bytes=10**4, samples=50, epochs=1, per_round=300
    )

    # Assert: the idle wait used to be in no report; the rounds' sim seconds exclude it.
    assert waited > 0
    assert first.summary()["waited_s"] == waited and first.summary()["start_s"] == waited
    assert first.stragglers.size > 0
    assert second.summary()["waited_s"] == 900.0
    assert second.summary()["start_s"] == waited + first.duration_s + 900.0


_SPEC = ModelSpec.from_shapes([("w", (4,))])


@settings(max_examples=30, deadline=None)
@given(
    cohort=st.integers(1, 12),
    per_round=st.integers(1, 12),
    deadline=st.one_of(st.none(), st.floats(5.0, 400.0)),
    round_id=st.integers(1, 50),
    seed=st.integers(0, 1000),
)
def test_the_clock_keeps_what_the_engine_keeps(
    cohort: int, per_round: int, deadline: float | None, round_id: int, seed: int
) -> None:
    # Prepare: a cohort of real devices; every survivor's upload reaches the engine in arrival
    # order unless it is past the deadline (the service refuses it then).
    fleet = SimFleet(200, seed=seed, deadline_s=deadline)
    devices = np.random.default_rng(seed).choice(200, size=cohort, replace=False)
    engine = RoundEngine(
        _SPEC,
        np.zeros(4, np.float32),
        FedAvg(),
        EngineConfig(per_round, codec=CodecConfig.dense(), seed=seed),
    )
    plan = engine.open_round([str(d) for d in devices])
    selected = [int(d) for d in plan.selected]
    timing = fleet.time_round(
        round_id,
        selected,
        down_bytes=6_653_480,
        up_bytes=[20_000 + 1_000 * i for i in range(len(selected))],
        samples=[40 + 10 * i for i in range(len(selected))],
        epochs=2,
        per_round=plan.target_reports,
    )
    order = np.argsort(timing.finish_s, kind="stable")
    on_time = [
        selected[i]
        for i in order
        if np.isfinite(timing.finish_s[i]) and (deadline is None or timing.finish_s[i] <= deadline)
    ]
    codec = UpdateCodec(_SPEC, CodecConfig.dense())
    frame, _ = codec.encode(np.ones(4, np.float32), np.random.default_rng(0), 1.0)

    # Execute
    outcome = engine.submit_many(plan.round_id, [(str(d), frame) for d in on_time])

    # Assert: the engine accepts exactly the clock's kept devices, in the same order.
    accepted = [r.device_id for r in outcome if not isinstance(r, Exception)]
    assert accepted == [str(d) for d in timing.kept.tolist()]
    s = timing.summary()
    assert s["kept"] + s["stragglers"] + s["dropped"] == s["selected"] == len(selected)
    finished = timing.finish_s[timing.kept_mask]
    assert (finished <= timing.duration_s).all()
    if deadline is not None:
        assert timing.duration_s <= deadline


# -- partitions and data ------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    size=st.integers(1, 400),
    n=st.integers(1, 40),
    per=st.integers(1, 4),
    classes=st.integers(1, 10),
    seed=st.integers(0, 10_000),
)
def test_every_example_lands_in_exactly_one_client(
    size: int, n: int, per: int, classes: int, seed: int
) -> None:
    labels = np.random.default_rng(seed).integers(0, classes, size).astype(np.int64)
    rng = np.random.default_rng(seed)
    splits = []
    if n <= size:
        splits.append(iid(labels, n, rng))
    if n * per <= size:
        splits.append(shards(labels, n, per, rng))
    if 2 * n <= size:
        try:
            splits.append(dirichlet(labels, n, 1.0, rng, max_tries=50))
        except ValueError as exc:
            assert "draws" in str(exc)  # possible but unlucky: a clear error, not a crash
    for parts in splits:
        assert len(parts) == n
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(size))
        assert min(p.size for p in parts) >= 1


def test_impossible_splits_are_refused_up_front() -> None:
    labels = np.zeros(15, dtype=np.int64)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="need 20, there are 15"):
        dirichlet(labels, 10, 0.5, rng)  # 10 clients of >= 2 examples from 15
    with pytest.raises(ValueError, match="min_size must be >= 1"):
        dirichlet(labels, 3, 0.5, rng, min_size=0)
    with pytest.raises(ValueError, match="shards_per_client must be >= 1"):
        shards(labels, 3, 0, rng)
    with pytest.raises(ValueError, match="16 examples, there are 15"):
        shards(labels, 8, 2, rng)


def test_natural_refuses_a_client_with_no_examples() -> None:
    # Before: the empty client was returned and only failed when a round selected it.
    with pytest.raises(ValueError, match=r"group\(s\) \[1\] hold no examples"):
        natural([[0, 1], [], [2]])
    with pytest.raises(ValueError, match="negative"):
        natural([[0, -1]])


def test_synthetic_inputs_follow_fedprox() -> None:
    # Prepare: beta = 0 so every device's input mean v_k ~ N(0, 1) per coordinate.
    data = load_synthetic(0.0, 0.0, num_devices=30, seed=4, max_samples=5_000)
    big = max(data.train_groups, key=len)
    x = data.x_train[big].astype(np.float64)

    # Execute
    var = x.var(axis=0, ddof=1)
    means = np.stack([data.x_train[g].mean(axis=0) for g in data.train_groups if len(g) > 200])

    # Assert: Sigma_jj = j^-1.2 (j from 1), and device means spread like N(0, 1).
    assert len(big) > 800
    np.testing.assert_allclose(var, np.arange(1, 61) ** -1.2, rtol=0.25)
    assert 0.8 < means.std() < 1.2
    assert data.y_train.min() >= 0 and data.y_train.max() <= 9


# -- reports ------------------------------------------------------------------------------------


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_report_rebuilds_the_run_byte_for_byte(tmp_path: Path) -> None:
    # Prepare: a small real run.
    out = tmp_path / "run"
    args = ["sim", "--dataset", "digits", "--clients", "6", "--per-round", "3", "--rounds", "2"]
    args += ["--local-epochs", "1", "--partition", "iid", "--no-progress", "--out", str(out)]
    assert plume(args) == 0
    before = _digests(out)

    # Execute
    assert plume(["sim", "report", str(out)]) == 0

    # Assert: CSV, JSON and every PNG identical (the accuracy plot used to lose its title).
    assert _digests(out) == before
    assert {"accuracy_vs_upload_bytes.png", "bytes_per_round.png", "round_durations.png"} <= set(
        before
    )


def _write(folder: Path, doc: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rounds.json").write_text(json.dumps(doc) if not isinstance(doc, str) else doc)


def test_the_baseline_run_is_plotted_last_as_in_the_run(tmp_path: Path) -> None:
    row = {"round": 1, "bytes_up": 10, "bytes_down": 20, "wall_s": 0.1, "accuracy": 0.5}
    _write(tmp_path / "secure", {"summary": {"label": "secure"}, "rounds": [row]})
    _write(tmp_path / "dense", {"summary": {"label": "dense"}, "rounds": [row]})
    assert [label for label, _ in load_runs(tmp_path)] == ["secure", "dense"]


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ("{not json", "cannot read"),
        ([1, 2], "expected a JSON object"),
        ({"rounds": {"1": {}}}, "no 'rounds' list"),
        ({"rounds": [{"round": 1, "bytes_up": 3}]}, "lacks"),
    ],
)
def test_a_corrupt_run_folder_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], doc: object, match: str
) -> None:
    _write(tmp_path, doc)
    with pytest.raises(RunDirError, match=match):
        rebuild_run_dir(tmp_path)
    assert plume(["sim", "report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "rounds.json" in err and match in err and "Traceback" not in err
    assert not (tmp_path / "accuracy_vs_upload_bytes.png").exists()


def test_a_missing_run_folder_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert plume(["sim", "report", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert plume(["sim", "report", str(tmp_path)]) == 2
    assert "no rounds.json" in capsys.readouterr().err


def test_a_reused_run_folder_is_read_as_its_latest_run(tmp_path: Path) -> None:
    # Prepare: `plume sim --out X` then `plume sim --compare-dense --out X` into the same folder.
    row = {"round": 1, "bytes_up": 10, "bytes_down": 20, "wall_s": 0.1, "accuracy": 0.5}
    _write(tmp_path, {"summary": {"label": "old"}, "rounds": [row]})
    _write(tmp_path / "compressed", {"summary": {"label": "compressed"}, "rounds": [row]})
    _write(tmp_path / "dense", {"summary": {"label": "dense"}, "rounds": [row]})
    os.utime(tmp_path / "rounds.json", ns=(10**18, 10**18))
    for sub in ("compressed", "dense"):
        os.utime(tmp_path / sub / "rounds.json", ns=(2 * 10**18, 2 * 10**18))

    # Execute
    newer_pair = [label for label, _ in load_runs(tmp_path)]
    os.utime(tmp_path / "rounds.json", ns=(3 * 10**18, 3 * 10**18))  # then a single run again
    newer_single = [label for label, _ in load_runs(tmp_path)]

    # Assert: before, the stale top-level run always won, so the plots showed the old run.
    assert newer_pair == ["compressed", "dense"]
    assert newer_single == ["old"]


def test_digits_refuses_a_test_fraction_that_leaves_no_training_data() -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits_data(test_fraction=1.0)
