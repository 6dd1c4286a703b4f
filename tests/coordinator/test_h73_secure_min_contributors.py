"""A secure round with fewer contributors than the task's `min_reports` is not committed.

In grouped mode a group that aborts leaves the others to commit: nine devices in groups of 3
with `min_reports` 6 committed the one group of 3 that reached unmasking, a 3-device model
step the task had said it would not take (docs/http-api.md: fewer reports at the deadline
abandon the round). The count is checked before anything is unmasked, so a refused round
releases no noisy sum (and under DP spends no epsilon); groups that unmask and then abort
(a reconstruction or range check) can still leave too few, and that is refused after."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.secure import SecureConfig, SecureCoordinator, SecureTask
from coordinator.service._secagg_routes import SecureRegistry
from protocol.secagg import NoiseKind, RoundAborted, Stage
from sdk.secure import SecureParticipant

D = 200
DEVICES = [f"dev-{i:02d}" for i in range(9)]


def _run(registry: SecureRegistry, task: SecureTask, drop: dict[str, Stage], seed: int = 0) -> None:
    """Every device runs the four stages through the registry; `drop[d]` is the stage
    device d no longer uploads in. Each stage closes once every group has it open."""
    rng = np.random.default_rng(seed)
    coord = registry.coordinator
    sessions = {}
    for d in DEVICES:
        plan, digest, node = registry.setup(task.round_id, d)
        sessions[d] = SecureParticipant(D).join(plan, digest, coord.params, node)
    order = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)
    for i, stage in enumerate(order):
        for d, s in sessions.items():
            if d in drop and order.index(drop[d]) <= i:
                continue
            grp = task.groups[task.group_of[d]]
            if grp.stage != stage:
                continue  # its group aborted
            if stage == Stage.ADVERTISE_KEYS:
                body = s.advertise()
            else:
                down = registry.download(task.round_id, order[i - 1], d)
                assert down is not None
                if stage == Stage.SHARE_KEYS:
                    body = s.share_keys(down)
                elif stage == Stage.MASKED_INPUT:
                    update = rng.normal(0, 0.01, D).astype(np.float32)
                    body = s.masked_input(down, update, 1, np.random.default_rng(seed))
                else:
                    body = s.unmask(down)
            registry.upload(task.round_id, stage, d, body)
        if stage != Stage.UNMASK:
            registry.close_stage(task.round_id, stage)


def _round(drop_groups: int, **cfg: object) -> tuple[SecureRegistry, SecureTask, dict[str, Stage]]:
    """Nine devices in groups of 3; two devices of each of the first `drop_groups` groups
    drop before their masked input, so those groups abort (1 input, 2 needed)."""
    config = SecureConfig(coord_fraction=0.1, group_size=3, seed=5, **cfg)  # type: ignore[arg-type]
    registry = SecureRegistry(SecureCoordinator(np.zeros(D, np.float32), config))
    task = registry.open_round(DEVICES, 1)
    groups = [sr.device_ids for sr in task.groups]
    assert sorted(len(g) for g in groups) == [3, 3, 3]
    drop = {d: Stage.MASKED_INPUT for g in groups[:drop_groups] for d in g[:2]}
    return registry, task, drop


def test_a_round_whose_surviving_groups_hold_too_few_inputs_is_not_committed() -> None:
    # Prepare: two of three groups abort; the third holds 3 masked inputs, min_reports is 6
    registry, task, drop = _round(2)
    _run(registry, task, drop)
    seen: list[dict[str, object]] = []
    # Execute
    out = registry.finish(task.round_id, seen.append, min_contributors=6)
    # Assert: nothing unmasked, the model and version unchanged, the reason recorded
    assert not out.committed and out.contributors == [] and out.aborted_groups == 3
    assert all(sr.unmasked is None for sr in task.groups)
    assert registry.coordinator.version == 0 and not registry.coordinator.params.any()
    assert any("min_reports" in r for r in out.measurements["abort_reasons"])
    assert seen == []  # no pending DP record: no sum is about to be unmasked


def test_enough_inputs_still_commit() -> None:
    registry, task, drop = _round(1)
    _run(registry, task, drop)
    out = registry.finish(task.round_id, min_contributors=6)
    assert out.committed and len(out.contributors) == 6 and out.aborted_groups == 1


def test_without_a_minimum_one_group_still_commits_as_before() -> None:
    registry, task, drop = _round(2)
    _run(registry, task, drop)
    out = registry.finish(task.round_id)
    assert out.committed and len(out.contributors) == 3


def test_under_dp_a_round_refused_before_any_unmask_request_spends_no_epsilon() -> None:
    # Prepare: the round knows its min_reports when it opens; two devices of each of two
    # groups drop before sharing keys, so the round can no longer hold 6 masked inputs when
    # the third group's masked-input stage closes: it aborts then, no unmask request goes out
    config = SecureConfig(
        coord_fraction=0.1, group_size=3, seed=5, noise=NoiseKind.SKELLAM, noise_multiplier=1.0,
        value_bits=8,
    )  # fmt: skip
    registry = SecureRegistry(SecureCoordinator(np.zeros(D, np.float32), config))
    task = registry.open_round(DEVICES, 1, min_contributors=6)
    groups = [sr.device_ids for sr in task.groups]
    drop = {d: Stage.SHARE_KEYS for g in groups[:2] for d in g[:2]}
    # Execute
    _run(registry, task, drop)
    out = registry.finish(task.round_id, min_contributors=6)
    # Assert: no group reached the unmask stage; nothing released, nothing spent
    assert all(sr.stage == Stage.ABORTED for sr in task.groups)
    assert not any(sr.server.state.responders for sr in task.groups)
    assert not out.committed and "dp" not in out.measurements
    assert registry.coordinator.accountant.rounds == 0


def test_under_dp_a_round_refused_after_its_unmask_answers_counts_the_sum_it_exposed() -> None:
    # The round opened without its min_reports, so its one surviving group was asked to
    # unmask and its survivors answered: the server holds t shares of every secret and can
    # unmask that noisy sum itself, so the round counts in epsilon though it is declined
    # (it spent nothing before helper-52e)
    registry, task, drop = _round(2, noise=NoiseKind.SKELLAM, noise_multiplier=1.0, value_bits=8)
    _run(registry, task, drop)
    out = registry.finish(task.round_id, min_contributors=6)
    assert not out.committed and all(sr.unmasked is None for sr in task.groups)
    assert out.measurements["dp"]["survivors"] == 3
    assert registry.coordinator.accountant.rounds == 1
    assert any("counted in epsilon" in r for r in out.measurements["abort_reasons"])


def test_groups_that_abort_after_unmasking_can_leave_too_few() -> None:
    # Prepare: all nine mask; one group's sum is then refused after it was unmasked (as a
    # forged total weight would be), leaving 6 of the 9 against min_reports 7
    registry, task, _ = _round(0, noise=NoiseKind.SKELLAM, noise_multiplier=1.0, value_bits=8)
    _run(registry, task, {})
    bad = task.groups[0]
    real_finish = bad.finish

    def forged() -> object:
        real_finish()
        bad.server.abort("forged")
        raise RoundAborted("forged")

    bad.finish = forged  # type: ignore[method-assign]
    # Execute
    out = registry.finish(task.round_id, min_contributors=7)
    # Assert: not committed; the unmasked sums count in epsilon
    assert not out.committed and registry.coordinator.version == 0
    assert out.measurements["contributors"] == 6 and out.dropped == sorted(DEVICES)
    assert "dp" in out.measurements and registry.coordinator.accountant.rounds == 1
    assert any("min_reports" in r for r in out.measurements["abort_reasons"])


def test_min_contributors_must_be_positive() -> None:
    registry, task, _ = _round(0)
    with pytest.raises(ValueError, match="min_contributors"):
        registry.finish(task.round_id, min_contributors=0)


def test_the_group_aggregators_labels_are_the_groups_own_after_an_abort() -> None:
    # helper-346: the group sums were labelled by their place among the groups that reached
    # unmasking, so with group 0 aborted, krum's `selected` named group 0 for group 1's sum
    registry, task, drop = _round(1, group_aggregator="multikrum:f=0,m=2")
    _run(registry, task, drop)
    out = registry.finish(task.round_id)
    assert out.committed and out.aborted_groups == 1
    selected = out.measurements["aggregator"]["selected"]
    assert sorted(selected) == ["group-1", "group-2"], out.measurements["aggregator"]
