"""`SecureCoordinator`'s round bookkeeping at its edges: the round-wide min_reports check at a
group's masked-input close counts what each group can still hold, the lazy group list, and
the upload-budget search.

Mutation hunt on coordinator/secure/_coordinator.py (helper s61d): each test names the
mutation of that file it kills (line, the change) that the suite before it let through.
"""

from __future__ import annotations

import numpy as np
import pytest

from compression import ModelSpec
from coordinator.secure import SecureConfig, SecureCoordinator, SecureRound
from coordinator.secure._coordinator import budget_k
from protocol.secagg import Stage

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
