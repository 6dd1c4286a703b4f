"""A secure round's epsilon budget is checked before the unmask request goes out (helper-52d).

The budget check ran in `close_round`, when the unmask stage closed: by then the survivors had
answered the unmask request, so the server held at least t shares of every secret the unmask
needed. A server that reads everything it holds (the honest-but-curious server the distributed
DP guarantee is stated against) could unmask the refused round's noisy sum on its own, though
the round was recorded as releasing nothing and spending nothing. Each group is now checked
when its masked-input stage closes, before its unmask request is sent; a group refused there
never receives a share.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from coordinator.secure import SecureConfig, SecureCoordinator
from coordinator.secure._policy import public_seed
from coordinator.secure._round import split_groups
from mobile_sim.secure import run_secure_round
from protocol.secagg import NoiseKind, RoundAborted, Stage
from protocol.secagg._server import _finish
from sdk.secure import SecureParticipant

DG = NoiseKind.DISCRETE_GAUSSIAN
D = 400


def _fleet(n: int, seed: int) -> tuple[dict[str, SecureParticipant], dict[str, tuple]]:
    rng = np.random.default_rng(seed)
    devs = [f"d{i}" for i in range(n)]
    parts = {x: SecureParticipant(D) for x in devs}
    ups = {x: (rng.normal(0, 0.01, D).astype(np.float32), 1) for x in devs}
    return parts, ups


def _config(budget: float, group_size: int | None = None) -> SecureConfig:
    return SecureConfig(
        coord_fraction=0.1,
        noise=DG,
        noise_multiplier=1.0,
        epsilon_budget=budget,
        group_size=group_size,
        seed=3,
    )


def _budget_for_second_round() -> float:
    """A budget the floor after one round of 5 fits and the second round of 5 does not."""
    parts, ups = _fleet(5, 0)
    probe = SecureCoordinator(np.zeros(D, np.float32), _config(float("inf")))
    run_secure_round(probe, parts, ups)
    floor = probe.next_round_floor()
    second = run_secure_round(probe, parts, ups)[0].measurements["dp"]["epsilon"]
    assert floor < second
    return (floor + second) / 2


def test_a_refused_group_gets_no_unmask_request_and_the_server_no_share() -> None:
    # Prepare: one released round, then a second whose release would pass the budget
    budget = _budget_for_second_round()
    parts, ups = _fleet(5, 0)
    coord = SecureCoordinator(np.zeros(D, np.float32), _config(budget))
    assert run_secure_round(coord, parts, ups)[0].committed
    task = coord.open_round(list(ups))
    (sr,) = task.groups
    sessions = {
        d: parts[d].join(sr.announce_one(d), sr.digest, coord.params, sr.node_of(d)) for d in ups
    }
    for d, s in sessions.items():
        sr.receive(Stage.ADVERTISE_KEYS, d, s.advertise())
    directories = sr.close(Stage.ADVERTISE_KEYS)
    for d, s in sessions.items():
        sr.receive(Stage.SHARE_KEYS, d, s.share_keys(directories[d]))
    deliveries = sr.close(Stage.SHARE_KEYS)
    rng = np.random.default_rng(1)
    for d, s in sessions.items():
        sr.receive(Stage.MASKED_INPUT, d, s.masked_input(deliveries[d], ups[d][0], 1, rng))
    # Execute: the masked-input close, where the unmask request would be made
    with pytest.raises(RoundAborted, match="epsilon_budget"):
        sr.close(Stage.MASKED_INPUT)
    # Assert: no unmask request, so no survivor answers and the server holds no share; a copy
    # of everything it holds cannot unmask the sum
    assert sr.stage == Stage.ABORTED
    assert not any(sr.server.state.shares.values())
    with pytest.raises(RoundAborted):
        _finish(copy.deepcopy(sr.server.state))
    out = coord.close_round(task)
    assert not out.committed and "dp" not in out.measurements
    assert out.measurements["budget_exhausted"] is True
    assert out.measurements["dp_refused"]["epsilon_if_released"] > budget
    assert "nothing unmasked" in out.measurements["abandoned"]
    assert coord.accountant.rounds == 1 and coord.budget_exhausted()


def _two_rounds(budget: float, drop: dict[str, Stage]) -> tuple[SecureCoordinator, object]:
    """Eight devices in two groups of 4: round 1 with everyone, round 2 with `drop`."""
    parts, ups = _fleet(8, 2)
    coord = SecureCoordinator(np.zeros(D, np.float32), _config(budget, 4))
    assert run_secure_round(coord, parts, ups)[0].committed
    return coord, run_secure_round(coord, parts, ups, drop)[0]


def _grouped_second_round(weak_group: int) -> tuple[SecureCoordinator, object, float, float]:
    """Round 2 loses one device of group `weak_group` before its masked input; the budget
    fits round 2 with 4 survivors in its weakest group, not with 3."""
    ids = sorted(_fleet(8, 2)[1])
    dropper = split_groups(ids, 4, public_seed(3, 2, b"groups"))[weak_group][0]
    drop = {dropper: Stage.MASKED_INPUT}
    strong = _two_rounds(float("inf"), {})[1].measurements["dp"]["epsilon"]  # type: ignore[attr-defined]
    weak = _two_rounds(float("inf"), drop)[1].measurements["dp"]  # type: ignore[attr-defined]
    assert weak["survivors"] == 3 and strong < weak["epsilon"]
    budget = (strong + weak["epsilon"]) / 2
    coord, out = _two_rounds(budget, drop)
    return coord, out, strong, budget


def test_a_group_let_through_is_unmasked_within_the_budget_and_the_task_stops() -> None:
    # Prepare and execute: group 0 (full) closes its masked input first, group 1 (weak) after
    coord, out, strong, budget = _grouped_second_round(weak_group=1)
    # Assert: group 0 was asked to unmask, so its sum is released and counted (within the
    # budget); group 1 was refused before its unmask request; the task stops
    assert out.committed and len(out.contributors) == 4 and out.aborted_groups == 1
    dp = out.measurements["dp"]
    assert dp["survivors"] == 4 and dp["epsilon"] == pytest.approx(strong) and strong <= budget
    assert out.measurements["budget_exhausted"] is True and dp["budget_exhausted"] is True
    assert any("epsilon_budget" in r for r in out.measurements["abort_reasons"])
    assert coord.budget_exhausted()


def test_after_a_refusal_later_groups_are_refused_too() -> None:
    # Prepare and execute: the weak group closes first and is refused; group 1 then is too
    coord, out, _, _ = _grouped_second_round(weak_group=0)
    # Assert: nothing unmasked, nothing spent beyond round 1
    assert not out.committed and out.aborted_groups == 2 and "dp" not in out.measurements
    first, second = out.measurements["abort_reasons"]
    assert "no unmask request sent" in first
    assert "another group of this round was refused before unmasking" in second
    assert out.measurements["budget_exhausted"] is True
    assert coord.accountant.rounds == 1
