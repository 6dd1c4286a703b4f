"""`SecureCoordinator`'s round bookkeeping at its edges: the round-wide min_reports check at a
group's masked-input close counts what each group can still hold, the lazy group list, and
the upload-budget search.

Mutation hunt on coordinator/secure/_coordinator.py (helper s61d): each test names the
mutation of that file it kills (line, the change) that the suite before it let through.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from compression import ModelSpec
from coordinator.secure import SecureConfig, SecureCoordinator, SecureRound
from coordinator.secure._coordinator import budget_k, make_plan, plan_numbers
from mobile_sim.secure import run_secure_round
from protocol.secagg import NoiseKind, RoundAborted, Stage, device_upload_bytes
from sdk.secure import SecureParticipant

from .test_s61d_secagg_registry_refusals import RID, _Round


def _two_groups(min_reports: int) -> tuple[_Round, list[str], list[str]]:
    """Ten devices in two SecAgg groups of five (complete graph, t = 3)."""
    r = _Round(10, group_size=5, min_contributors=min_reports)
    a, b = (list(ids) for ids in r.task.members)
    assert len(a) == len(b) == 5
    return r, a, b


@pytest.mark.parametrize("min_reports", [9, 10])
def test_a_group_behind_at_masked_input_counts_its_senders(min_reports: int) -> None:
    """Kills _coordinator.py:759 (`if sr.stage == Stage.MASKED_INPUT` -> False): a group
    still in its masked-input stage counted all five of its devices, not the four that shared
    keys, so a round that could end with at most 9 masked inputs ran an unmask stage for a
    min_reports of 10 (and, at 9, the round may go on)."""
    # Prepare: group B's share-keys stage closes at its deadline with 4 senders (t = 100..130)
    r, a, b = _two_groups(min_reports)
    r.run(Stage.ADVERTISE_KEYS)
    r.run(Stage.SHARE_KEYS, b[:4])
    r.clock.now += 10.0
    r.run(Stage.SHARE_KEYS, a)
    r.clock.now += 20.0
    assert r.reg.close_due(RID, 30.0) == 1
    gb = r.task.groups[r.task.group_of[b[0]]]
    assert gb.stage == Stage.MASKED_INPUT and len(gb.server.state.senders) == 4
    # Execute: group A's masked-input stage closes with its five inputs
    r.run(Stage.MASKED_INPUT, a)
    # Assert
    ga = r.task.groups[r.task.group_of[a[0]]]
    if min_reports == 9:
        assert ga.stage == Stage.UNMASK and r.reg.abort_reasons(RID) == []
    else:
        assert ga.stage == Stage.ABORTED
        (why,) = r.reg.abort_reasons(RID)
        assert "at most 9 masked inputs" in why and "below the round's 10 (min_reports)" in why


@pytest.mark.parametrize("min_reports", [9, 10])
def test_a_group_behind_at_share_keys_counts_its_advertised_keys(min_reports: int) -> None:
    """Kills _coordinator.py:761 (`if sr.stage == Stage.SHARE_KEYS` -> False): a group still
    in its share-keys stage counted all five of its devices, not the four with keys."""
    # Prepare: group B's advertise-keys stage closes at its deadline with 4 keys
    r, a, b = _two_groups(min_reports)
    r.run(Stage.ADVERTISE_KEYS, b[:4])
    r.clock.now += 10.0
    r.run(Stage.ADVERTISE_KEYS, a)
    r.clock.now += 20.0
    assert r.reg.close_due(RID, 30.0) == 1
    gb = r.task.groups[r.task.group_of[b[0]]]
    assert gb.stage == Stage.SHARE_KEYS and len(gb.server.state.keys) == 4
    # Execute
    r.run(Stage.SHARE_KEYS, a)
    r.run(Stage.MASKED_INPUT, a)
    # Assert
    ga = r.task.groups[r.task.group_of[a[0]]]
    assert ga.stage == (Stage.UNMASK if min_reports == 9 else Stage.ABORTED)


def test_a_slice_of_the_lazy_groups_plans_each_group() -> None:
    """Kills _coordinator.py:247 (`if isinstance(i, slice)` -> False): a slice returned the
    cache list itself, None for every group not planned yet."""
    config = SecureConfig(coord_fraction=0.2, sketch=False, group_size=5, seed=3)
    task = SecureCoordinator(np.zeros(60, np.float32), config).open_round(
        [f"dev-{i}" for i in range(15)], RID
    )
    groups = task.groups
    assert groups.built(0) and not groups.built(1) and not groups.built(2)  # type: ignore[attr-defined]
    # Execute
    got = groups[1:]
    # Assert
    assert len(got) == 2 and all(isinstance(sr, SecureRound) for sr in got)
    assert [sr.device_ids for sr in got] == [tuple(m) for m in task.members[1:]]
    assert groups.built(2) and got[1] is groups[2] and groups[-1] is groups[2]  # type: ignore[attr-defined]


def test_budget_k_without_an_upload_budget_says_so() -> None:
    """Kills _coordinator.py:130 (`if budget is None` -> False): the search compared byte
    costs with None and raised a TypeError."""
    with pytest.raises(ValueError, match="config has no upload_budget"):
        budget_k(SecureConfig(coord_fraction=0.2), 10, 1000)
    assert np.isscalar(budget_k(SecureConfig(upload_budget=100_000), 10, 1000))


def test_a_spec_gives_the_small_tensor_prior_before_any_feedback() -> None:
    """Kills _coordinator.py:353 (`if spec is not None and self._prior` -> False): without it
    the first round chose S_r with no score at all instead of preferring the coordinates of
    small tensors."""
    spec = ModelSpec.from_shapes([("w", (50, 10)), ("b", (10,))])
    coord = SecureCoordinator(
        np.zeros(510, np.float32), SecureConfig(coord_fraction=0.05), spec=spec
    )
    assert coord.score is not None and coord.carried_state()["prior"] is True
    np.testing.assert_array_equal(coord.score[:500], np.float32(1 / 500))
    np.testing.assert_array_equal(coord.score[500:], np.float32(1 / 10))


@pytest.mark.parametrize(
    "score",
    [np.zeros(60, np.float64), np.zeros(59, np.float32), np.zeros((60, 1), np.float32), [0.0] * 60],
)
def test_carried_scores_of_another_dtype_or_shape_are_refused(score: object) -> None:
    """Kills _coordinator.py:373 (the carried-score check -> False): a restore took scores of
    any type or shape, which the next round's selection then read."""
    coord = SecureCoordinator(np.zeros(60, np.float32), SecureConfig(coord_fraction=0.2))
    with pytest.raises(ValueError, match=r"carried coordinate scores must be float32\[60\]"):
        coord.restore_carried_state({"score": score, "prior": False, "aggregator": None})
    assert coord.score is None
    good = np.ones(60, np.float32)
    coord.restore_carried_state({"score": good, "prior": False, "aggregator": None})
    assert coord.score is good


@pytest.mark.parametrize("round_id", [0, -1])
def test_a_round_id_below_one_is_refused_before_anything_changes(round_id: int) -> None:
    """Kills _coordinator.py:450 (`if round_id is not None and round_id < 1` -> False): a
    round named 0 or below opened (and moved the coordinator's counter to it)."""
    coord = SecureCoordinator(np.zeros(60, np.float32), SecureConfig(coord_fraction=0.2))
    with pytest.raises(ValueError, match=f"round_id must be positive, got {round_id}"):
        coord.open_round([f"dev-{i}" for i in range(5)], round_id)
    assert coord.round_id == 0
    assert coord.open_round([f"dev-{i}" for i in range(5)], 1).round_id == 1


def test_a_cohort_listing_a_device_twice_is_refused() -> None:
    """Kills _coordinator.py:459 (the duplicate-id check -> False): the device's second entry
    silently overwrote its first in `group_of`, and the round planned a group with a repeated
    id."""
    coord = SecureCoordinator(np.zeros(60, np.float32), SecureConfig(coord_fraction=0.2))
    with pytest.raises(ValueError, match="a device is listed twice in the cohort"):
        coord.open_round(["dev-0", "dev-1", "dev-2", "dev-0"], RID)
    assert coord.round_id == 0


def test_close_round_refuses_min_contributors_below_one() -> None:
    """Kills _coordinator.py:605 (`if min_contributors < 1` -> False): a close with 0 went on
    as if it were 1."""
    r = _Round()
    for stage in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK):
        r.run(stage)
    with pytest.raises(ValueError, match="min_contributors must be >= 1, got 0"):
        r.coord.close_round(r.task, min_contributors=0)
    assert r.coord.version == 0 and r.task.groups[0].stage == Stage.UNMASK
    assert r.coord.close_round(r.task).committed and r.coord.version == 1


def test_a_spec_of_another_size_than_the_params_is_refused() -> None:
    """Kills _coordinator.py:346 (`if spec.size != self.size` -> False): the sketch was laid
    out over tensors that are not the model's."""
    spec = ModelSpec.from_shapes([("w", (50,))])
    with pytest.raises(ValueError, match="spec of size 50, params of size 60"):
        SecureCoordinator(np.zeros(60, np.float32), SecureConfig(sketch=True), spec=spec)


def _cost(config: SecureConfig, n: int, k: int) -> int:
    """A device's four-stage upload for |S_r| = k, as `budget_k` prices it (no sketch)."""
    degree, *_, ring = plan_numbers(config, n, k)
    return device_upload_bytes(degree, k + 1, ring)


def test_budget_k_is_the_largest_fitting_k_whatever_the_guess() -> None:
    """Kills _coordinator.py:141 (`near == model_size` -> `!=`: any guess below the model
    size was taken without checking that near + 1 does not fit; and `cost(near + 1) > budget`
    -> `>=`: a guess one below a k that costs exactly the budget was taken) and :144
    (`cost(1) > budget` -> `>=`: a budget of exactly one coordinate's cost was refused)."""
    n, d = 10, 1000
    probe = SecureConfig(upload_budget=1 << 30)
    budget = _cost(probe, n, 50)
    config = dataclasses.replace(probe, upload_budget=budget)
    best = budget_k(config, n, d)
    # The search's answer: it fits exactly, and one more coordinate does not
    assert best >= 50 and _cost(config, n, best) == budget < _cost(config, n, best + 1)
    for near in (1, 10, best - 1, best, best + 1, d, None):
        assert budget_k(config, n, d, near=near) == best, near
    one = dataclasses.replace(probe, upload_budget=_cost(probe, n, 1))
    assert budget_k(one, n, d) == budget_k(one, n, d, near=1) >= 1
    short = dataclasses.replace(probe, upload_budget=_cost(probe, n, 1) - 1)
    with pytest.raises(ValueError, match="upload budget of .* B is below the"):
        budget_k(short, n, d)


def test_a_plan_like_another_over_other_coordinates_keeps_its_own() -> None:
    """Kills _coordinator.py:215 (`like.indices is indices` -> `is not`): a plan over other
    coordinates than `like`'s took `like`'s S_r."""
    config = SecureConfig(coord_fraction=0.2, sketch=False)
    first = make_plan(config, RID, 5, 60, np.arange(0, 12, dtype=np.int64))
    same = make_plan(config, RID, 5, 60, np.arange(0, 12, dtype=np.int64), like=first)
    other = make_plan(config, RID, 5, 60, np.arange(12, 24, dtype=np.int64), like=first)
    np.testing.assert_array_equal(same.indices, first.indices)
    np.testing.assert_array_equal(other.indices, np.arange(12, 24))
    assert other.to_bytes() != first.to_bytes()


def test_a_budget_equal_to_the_next_round_floor_is_not_exhausted() -> None:
    """Kills _coordinator.py:410 (`next_round_floor() > epsilon_budget` -> `>=`): a budget the
    most favourable next round would reach exactly, and not pass, stopped the task."""
    dp = {"coord_fraction": 0.2, "noise": NoiseKind.DISCRETE_GAUSSIAN, "noise_multiplier": 1.0}
    probe = SecureCoordinator(np.zeros(60, np.float32), SecureConfig(**dp, epsilon_budget=1e9))
    floor = probe.next_round_floor()
    at = SecureCoordinator(np.zeros(60, np.float32), SecureConfig(**dp, epsilon_budget=floor))
    assert at.next_round_floor() == floor and not at.budget_exhausted()
    assert at.open_round([f"dev-{i}" for i in range(5)], RID).round_id == RID
    below = SecureConfig(**dp, epsilon_budget=math.nextafter(floor, 0.0))
    assert SecureCoordinator(np.zeros(60, np.float32), below).budget_exhausted()


def test_a_cohort_of_three_is_sized_to_the_upload_budget() -> None:
    """Kills _coordinator.py:469 (`len(ids) >= 3` -> `>`): a cohort of exactly three took
    |S_r| from coord_fraction, ignoring the upload budget."""
    budget = _cost(SecureConfig(), 3, 40)
    config = SecureConfig(coord_fraction=0.5, upload_budget=budget, sketch=False)
    coord = SecureCoordinator(np.zeros(1000, np.float32), config)
    task = coord.open_round(["a", "b", "c"], RID)
    assert task.indices.size == budget_k(config, 3, 1000) < coord.k


def test_the_unmask_record_is_handed_over_only_when_a_weaker_group_asks() -> None:
    """Kills _coordinator.py:528 (`if weakest is task.unmask_weakest: return` -> False): every
    group's unmask request re-sent the round's unchanged `pending_dp` record to the store,
    which `SecureTask.on_unmask_request` is only for when the record changes."""
    # Prepare: two groups of five under distributed DP, each with all five inputs
    config = SecureConfig(
        coord_fraction=0.2,
        sketch=False,
        group_size=5,
        seed=3,
        noise=NoiseKind.DISCRETE_GAUSSIAN,
        noise_multiplier=1.0,
    )
    r = _Round(10, config=config)
    calls: list[dict[str, object]] = []
    r.task.on_unmask_request = calls.append
    a, b = (list(ids) for ids in r.task.members)
    for stage in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS):
        r.run(stage)
    # Execute: group A's masked-input stage closes, then group B's (as weak as A's)
    r.run(Stage.MASKED_INPUT, a)
    first = list(calls)
    r.run(Stage.MASKED_INPUT, b)
    # Assert: one record, the first group's; both groups were asked to unmask
    assert len(first) == 1 and calls == first
    assert all(sr.stage == Stage.UNMASK for sr in r.task.groups)
    assert calls[0] == r.coord.pending_dp(r.task)


def _dp_round(budget: float) -> tuple[_Round, list[dict[str, float]]]:
    """A single-group round of five under distributed DP with this epsilon budget, every
    device through every stage, its unmask records kept."""
    config = SecureConfig(
        coord_fraction=0.2,
        sketch=False,
        seed=3,
        noise=NoiseKind.DISCRETE_GAUSSIAN,
        noise_multiplier=1.0,
        epsilon_budget=budget,
    )
    r = _Round(5, config=config)
    records: list[dict[str, float]] = []
    r.task.on_unmask_request = records.append
    for stage in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK):
        r.run(stage)
    return r, records


def test_a_round_whose_epsilon_reaches_the_budget_exactly_is_released() -> None:
    """Kills _coordinator.py:534 and :632 (`not pending["epsilon"] <= budget` -> `<`): a round
    that would spend exactly the epsilon budget, and not pass it, was refused before its
    unmask request (:534) or at its close (:632)."""
    # Prepare: the round's epsilon, from the same round under a budget it cannot reach
    _, (probe,) = _dp_round(1e9)
    eps = probe["epsilon"]
    # Execute
    r, records = _dp_round(eps)
    out = r.reg.finish(RID)
    # Assert
    assert [rec["epsilon"] for rec in records] == [eps]
    assert out.committed and sorted(out.contributors) == r.devs
    assert out.measurements["dp"]["epsilon"] == eps
    assert "dp_refused" not in out.measurements
    assert r.coord.budget_exhausted() and not r.coord.budget_stopped


def test_budgeted_needs_distributed_dp_and_a_finite_budget() -> None:
    """Kills _coordinator.py:397 (`self.config.dp and math.isfinite(...)` -> `or`): a DP task
    without a budget counted as budgeted (its `dp` measurements then carried an infinite
    `epsilon_budget`)."""
    dp = SecureConfig(coord_fraction=0.2, noise=NoiseKind.DISCRETE_GAUSSIAN, noise_multiplier=1.0)
    assert not SecureCoordinator(np.zeros(60, np.float32), dp).budgeted
    assert not SecureCoordinator(np.zeros(60, np.float32), SecureConfig()).budgeted
    capped = dataclasses.replace(dp, epsilon_budget=5.0)
    assert SecureCoordinator(np.zeros(60, np.float32), capped).budgeted


def test_a_spec_of_another_size_gives_no_prior() -> None:
    """Kills _coordinator.py:353 (`spec is not None and self._prior` -> `or`): a spec whose
    size is not the model's (allowed with the sketch off) laid its tensors' prior over the
    wrong coordinates, leaving the rest of the scores uninitialised."""
    spec = ModelSpec.from_shapes([("w", (50,))])
    coord = SecureCoordinator(np.zeros(60, np.float32), SecureConfig(sketch=False), spec=spec)
    assert coord.score is None and coord.carried_state()["prior"] is False


def test_a_round_without_dp_hands_no_unmask_record_to_the_store() -> None:
    """Kills _coordinator.py:516 (`if not self.config.dp or (...)` -> False, and its `or` ->
    `and`): the service sets `on_unmask_request` on every secure task, and a round without
    distributed DP then handed the store an epsilon record for a release that spends none."""
    # Prepare: no DP, a callback as the service sets one
    r = _Round(10, group_size=5)
    calls: list[dict[str, object]] = []
    r.task.on_unmask_request = calls.append
    # Execute
    for stage in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK):
        r.run(stage)
    out = r.reg.finish(RID)
    # Assert
    assert calls == [] and r.task.unmask_weakest is None
    assert out.committed and "dp" not in out.measurements
    # Nothing aborted: no abort reasons (kills :686, `if reasons:` -> True, an empty list)
    assert out.aborted_groups == 0 and "abort_reasons" not in out.measurements


def test_without_a_store_callback_the_budget_is_still_checked_before_unmasking() -> None:
    """Kills _coordinator.py:516 (`not self.budgeted` -> `self.budgeted`): a budgeted task
    driven without `on_unmask_request` (in process, or over the loopback router) skipped the
    budget check before the unmask request, so the server got the survivors' answers, and
    could unmask the sum, for a round its close then refused."""
    # Prepare: a budget between the least any round can spend and this round's epsilon, and
    # no callback
    probe_round, (probe,) = _dp_round(1e9)
    floor = probe_round.coord.next_round_floor()  # before the probe's close recorded anything
    assert floor < probe["epsilon"]
    budget = (floor + probe["epsilon"]) / 2
    r = _Round(5, config=dataclasses.replace(probe_round.coord.config, epsilon_budget=budget))
    assert r.task.on_unmask_request is None
    for stage in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS):
        r.run(stage)
    # Execute
    r.run(Stage.MASKED_INPUT)
    # Assert: refused at the masked-input close, no unmask request went out
    assert r.task.groups[0].stage == Stage.ABORTED and r.task.budget_refused is not None
    (why,) = r.reg.abort_reasons(RID)
    assert "epsilon_budget" in why and "no unmask request sent" in why
    with pytest.raises(RoundAborted):
        r.reg.download(RID, Stage.MASKED_INPUT, r.devs[0])
    out = r.reg.finish(RID)
    assert not out.committed and out.measurements["budget_exhausted"] is True
    assert "dp" not in out.measurements  # the server never held what unmasks the sum


def test_a_plan_no_group_can_run_is_refused_when_the_round_opens() -> None:
    """Kills _coordinator.py:499 (`task.by_size()` -> pass): without planning one group of
    each size at once, a threshold no device accepts (t = 2 of a degree of 4) opened a round
    that failed only at its first device's request."""
    coord = SecureCoordinator(np.zeros(60, np.float32), SecureConfig(threshold=2))
    with pytest.raises(ValueError, match="threshold 2 must exceed half the graph degree 4"):
        coord.open_round([f"dev-{i}" for i in range(5)], RID)


def test_the_coordinate_scores_are_an_ema_of_the_published_updates() -> None:
    """Kills _coordinator.py:745 (`if self.score is None or self._prior` -> True): every
    commit replaced the scores with the latest |update| instead of folding it into their
    exponential moving average (`ema_decay`)."""
    # Prepare: no spec (no prior), no sketch: the scores follow |update|
    d, devs = 60, [f"dev-{i}" for i in range(5)]
    coord = SecureCoordinator(
        np.zeros(d, np.float32), SecureConfig(coord_fraction=0.2, sketch=False, ema_decay=0.75)
    )
    participants = {dev: SecureParticipant(d) for dev in devs}
    rng = np.random.default_rng(5)

    def updates() -> dict[str, tuple[np.ndarray, int]]:
        return {dev: (rng.normal(0, 0.01, d).astype(np.float32), 1) for dev in devs}

    # Execute
    first, _ = run_secure_round(coord, participants, updates())
    after_first = None if coord.score is None else coord.score.copy()
    second, _ = run_secure_round(coord, participants, updates())
    # Assert
    assert first.committed and second.committed
    np.testing.assert_array_equal(after_first, np.abs(first.update))
    decay = np.float32(0.75)
    ema = (decay * np.abs(first.update) + (1 - decay) * np.abs(second.update)).astype(np.float32)
    np.testing.assert_array_equal(coord.score, ema)
    assert not np.array_equal(ema, np.abs(second.update))


def test_a_round_with_a_group_refused_after_another_unmasked_is_not_abandoned() -> None:
    """Kills _coordinator.py:691 (`if not any(sr.unmasked is not None ...)` -> True): a round
    whose first group was unmasked and published, and whose weaker second group was then
    refused by the epsilon budget, was also marked `abandoned` ("nothing unmasked")."""

    def grouped(budget: float) -> tuple[_Round, list[str], list[str], list[dict[str, float]]]:
        config = SecureConfig(
            coord_fraction=0.2,
            sketch=False,
            group_size=5,
            seed=3,
            noise=NoiseKind.DISCRETE_GAUSSIAN,
            noise_multiplier=1.0,
            epsilon_budget=budget,
        )
        r = _Round(10, config=config)
        records: list[dict[str, float]] = []
        r.task.on_unmask_request = records.append
        a, b = (list(ids) for ids in r.task.members)
        r.run(Stage.ADVERTISE_KEYS)
        r.run(Stage.SHARE_KEYS)
        return r, a, b, records

    # Prepare: group A's epsilon with its five inputs, from a probe, is the budget
    probe, a, _, records = grouped(1e9)
    probe.run(Stage.MASKED_INPUT, a)
    (rec,) = records
    r, a, b, records = grouped(rec["epsilon"])
    # Execute: A is asked to unmask (it fits exactly); B closes with four inputs (weaker)
    r.clock.now += 10.0  # A's unmask stage opens 10 s after B's masked-input stage
    r.run(Stage.MASKED_INPUT, a)
    r.run(Stage.MASKED_INPUT, b[:4])
    assert r.reg.close_due(RID, 5.0) == 1  # B's deadline, not A's
    r.run(Stage.UNMASK, a)
    out = r.reg.finish(RID)
    # Assert: A published, B refused, the round not abandoned
    assert [x["epsilon"] for x in records] == [rec["epsilon"]]
    assert out.committed and sorted(out.contributors) == sorted(a)
    assert out.measurements["budget_exhausted"] is True and "dp_refused" in out.measurements
    assert "abandoned" not in out.measurements
