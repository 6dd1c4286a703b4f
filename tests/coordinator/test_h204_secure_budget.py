"""An epsilon budget for secure tasks with distributed DP (helper-193's finding F1).

A secure task's distributed-DP accountant only added: no budget could be set, and a 200-round
task ran on past any epsilon. `SecureConfig.epsilon_budget` (task JSON `secure.epsilon_budget`,
`plume coordinator create-task --secure-epsilon-budget`) is checked before a round's sums are
unmasked: a round whose release could pass it is abandoned with nothing unmasked (nothing
released, nothing spent) and marked `budget_exhausted`; no round opens once even the most
favourable next round would pass it (`min_round_rho`). Everything here fails on the code
before (no such field, no such check).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from coordinator.secure import (
    BudgetExhausted,
    DistributedDpAccountant,
    SecureConfig,
    SecureCoordinator,
    integer_sensitivity,
    make_plan,
    min_round_rho,
)
from coordinator.service.secure import check_plan, parse_secure
from mobile_sim.secure import run_secure_round
from protocol.secagg import NoiseKind, Stage
from sdk.secure import SecureParticipant

DG = NoiseKind.DISCRETE_GAUSSIAN
D, N = 400, 5


def _fleet(seed: int) -> tuple[dict[str, SecureParticipant], dict[str, tuple[np.ndarray, int]]]:
    rng = np.random.default_rng(seed)
    devs = [f"d{i}" for i in range(N)]
    parts = {x: SecureParticipant(D) for x in devs}
    ups = {x: (rng.normal(0, 0.01, D).astype(np.float32), 1) for x in devs}
    return parts, ups


def _config(budget: float = math.inf, noise: NoiseKind = DG) -> SecureConfig:
    return SecureConfig(
        coord_fraction=0.1, noise=noise, noise_multiplier=1.0, epsilon_budget=budget
    )


def _epsilons(rounds: int) -> list[float]:
    """Epsilon after each of `rounds` unbudgeted rounds of the fleet (seed 0)."""
    parts, ups = _fleet(0)
    coord = SecureCoordinator(np.zeros(D, np.float32), _config())
    return [
        run_secure_round(coord, parts, ups)[0].measurements["dp"]["epsilon"] for _ in range(rounds)
    ]


def _hooked(coord: SecureCoordinator, seen: list[dict[str, Any]]) -> None:
    """Make `coord.close_round` pass a before_unmask hook (as the service does)."""
    real: Callable[..., Any] = coord.close_round

    def close(task, before_unmask=None, min_contributors=1):  # type: ignore[no-untyped-def]
        return real(task, seen.append, min_contributors=min_contributors)

    coord.close_round = close  # type: ignore[method-assign]


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan])
def test_a_budget_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="epsilon_budget must be > 0"):
        _config(bad)


def test_a_budget_without_noise_is_refused() -> None:
    with pytest.raises(ValueError, match="needs distributed DP noise"):
        SecureConfig(epsilon_budget=3.0)
    assert SecureConfig().epsilon_budget == math.inf  # no budget by default


@pytest.mark.parametrize("noise", [DG, NoiseKind.SKELLAM])
@pytest.mark.parametrize(("nodes", "dropout"), [(5, 0.1), (10, 0.1), (17, 0.3), (40, 0.0)])
def test_every_round_spends_at_least_the_floor(
    noise: NoiseKind, nodes: int, dropout: float
) -> None:
    # Prepare: real plans of several sizes, |S_r| and dropout allowances
    for z in (0.7, 1.0, 3.0):
        cfg = SecureConfig(
            coord_fraction=0.05, noise=noise, noise_multiplier=z, expected_dropout=dropout
        )
        floor = DistributedDpAccountant(cfg.dp_delta).epsilon_after(min_round_rho(z, dropout))
        for k in (1, 20, 300):
            plan = make_plan(cfg, 1, nodes, 1000, np.arange(k, dtype=np.int64))
            sens = integer_sensitivity(plan.clip_norm, plan.coord_bound, plan.value_bits, k)
            for survivors in range(plan.threshold, nodes + 1):
                # Execute: one real round with these survivors
                acc = DistributedDpAccountant(cfg.dp_delta)
                acc.record_round(noise, sens, plan.noise_variance, survivors, k)
                # Assert: never below the floor the budget checks against
                assert acc.epsilon() >= floor * (1 - 1e-12), (z, k, survivors)


def test_the_floor_composes_with_the_rounds_recorded() -> None:
    acc = DistributedDpAccountant(1e-5)
    rho = min_round_rho(1.0, 0.1)
    assert rho == pytest.approx(0.45)
    empty = acc.epsilon_after(rho)
    acc.record_round(DG, 100.0, 100.0**2 / 5, 5, 50)
    after = acc.epsilon_after(rho)
    assert acc.epsilon() < after and empty < after and acc.rounds == 1  # nothing recorded


def test_a_round_that_could_pass_the_budget_is_abandoned_unmasked() -> None:
    # Prepare: a budget between the floor after one round and the second round's epsilon
    eps = _epsilons(2)
    parts, ups = _fleet(0)
    probe = SecureCoordinator(np.zeros(D, np.float32), _config())
    run_secure_round(probe, parts, ups)
    floor = probe.next_round_floor()
    assert eps[0] < floor < eps[1]
    budget = (floor + eps[1]) / 2
    coord = SecureCoordinator(np.zeros(D, np.float32), _config(budget))
    seen: list[dict[str, Any]] = []
    _hooked(coord, seen)
    # Execute
    first, _ = run_secure_round(coord, parts, ups)
    params = coord.params.copy()
    second, _ = run_secure_round(coord, parts, ups)
    # Assert: the first round is released, within budget, and says the task may go on
    assert first.committed and first.measurements["dp"]["epsilon"] == eps[0]
    assert first.measurements["dp"]["epsilon_budget"] == budget
    assert first.measurements["dp"]["budget_exhausted"] is False
    assert "budget_exhausted" not in {k for k in first.measurements if k != "dp"}
    # The second: nothing unmasked, released or spent; the pending record never written
    assert not second.committed and second.contributors == []
    assert "dp" not in second.measurements and len(seen) == 1
    assert second.measurements["budget_exhausted"] is True
    refused = second.measurements["dp_refused"]
    assert refused["epsilon"] == eps[0] and refused["rounds"] == 1
    assert refused["epsilon_if_released"] == pytest.approx(eps[1])
    assert refused["epsilon_budget"] == budget
    assert "nothing unmasked" in second.measurements["abandoned"]
    assert second.aborted_groups == 1
    assert any("epsilon_budget" in r for r in second.measurements["abort_reasons"])
    assert coord.accountant.rounds == 1 and coord.accountant.epsilon() == eps[0]
    np.testing.assert_array_equal(coord.params, params)
    # And no round opens after it
    assert coord.budget_exhausted()
    with pytest.raises(BudgetExhausted, match="epsilon budget .* is spent"):
        coord.open_round(list(ups))


def test_a_round_after_which_no_round_fits_says_so_and_none_opens() -> None:
    # Prepare: a budget above the first round's epsilon, below the floor after it
    eps = _epsilons(1)
    budget = eps[0] + 0.1
    parts, ups = _fleet(0)
    coord = SecureCoordinator(np.zeros(D, np.float32), _config(budget))
    # Execute
    out, _ = run_secure_round(coord, parts, ups)
    # Assert: released and committed, marked as the last (as DPMean marks its last round)
    assert out.committed and out.measurements["dp"]["budget_exhausted"] is True
    assert coord.next_round_floor() > budget and not coord.budget_stopped
    with pytest.raises(BudgetExhausted):
        coord.open_round(list(ups))


def test_a_restarted_coordinator_replaying_the_rounds_refuses_too() -> None:
    # Prepare: the committed round of the test above, replayed as the service does
    eps = _epsilons(1)
    budget = eps[0] + 0.1
    parts, ups = _fleet(0)
    coord = SecureCoordinator(np.zeros(D, np.float32), _config(budget))
    out, _ = run_secure_round(coord, parts, ups)
    again = SecureCoordinator(np.zeros(D, np.float32), _config(budget))
    # Execute
    again.replay_dp(out.measurements["dp"])
    # Assert
    assert again.accountant.epsilon() == eps[0] and again.budget_exhausted()
    with pytest.raises(BudgetExhausted):
        again.open_round(list(ups))


def test_without_a_budget_rounds_go_on_as_before() -> None:
    parts, ups = _fleet(0)
    coord = SecureCoordinator(np.zeros(D, np.float32), _config())
    outs = [run_secure_round(coord, parts, ups)[0] for _ in range(3)]
    assert all(o.committed for o in outs) and not coord.budget_exhausted()
    assert all("budget_exhausted" not in o.measurements["dp"] for o in outs)
    assert [o.measurements["dp"]["epsilon"] for o in outs] == _epsilons(3)


def test_a_dropout_before_unmask_is_checked_with_the_inputs_held() -> None:
    # Prepare: a device drops before its masked input: 4 survivors, a weaker round than 5
    parts, ups = _fleet(1)
    eps5 = _epsilons(1)[0]
    coord = SecureCoordinator(np.zeros(D, np.float32), _config(eps5 + 1e-9))
    # Execute
    out, _ = run_secure_round(coord, parts, ups, drop_at={"d4": Stage.MASKED_INPUT})
    # Assert: 4 survivors spend more than 5 would: refused, nothing spent
    assert not out.committed and out.measurements["budget_exhausted"] is True
    assert out.measurements["dp_refused"]["epsilon_if_released"] > eps5
    assert coord.accountant.rounds == 0


def test_parse_secure_takes_a_budget_and_check_plan_refuses_one_no_round_fits() -> None:
    raw = {"noise": "discrete_gaussian", "noise_multiplier": 1.0, "epsilon_budget": 8.0}
    settings = parse_secure(raw, seed=0, server_lr=1.0)
    assert settings.config.epsilon_budget == 8.0
    check_plan(settings, 10, 1000)  # a round fits
    for bad in ("8", True, None, math.inf):
        with pytest.raises(ValueError, match="epsilon_budget"):
            parse_secure(dict(raw, epsilon_budget=bad), seed=0, server_lr=1.0)
    with pytest.raises(ValueError, match="epsilon_budget"):
        parse_secure({"epsilon_budget": 8.0}, seed=0, server_lr=1.0)  # no noise
    tight = parse_secure(dict(raw, epsilon_budget=1.0), seed=0, server_lr=1.0)
    with pytest.raises(ValueError, match="below what any one round spends"):
        check_plan(tight, 10, 1000)


def test_create_task_flag_reaches_the_secure_settings() -> None:
    from coordinator._cli import _SECURE_FLAGS, _secure_settings
    from coordinator.cli import build_parser

    assert ("--secure-epsilon-budget", "epsilon_budget") in [(f, k) for f, k, _, _ in _SECURE_FLAGS]
    argv = ["coordinator", "create-task", "--secure", "--secure-noise", "discrete_gaussian"]
    argv += ["--secure-noise-multiplier", "1", "--secure-epsilon-budget", "6.5"]
    args = build_parser().parse_args(argv)
    secure = _secure_settings(args)
    assert secure is not None and secure["epsilon_budget"] == 6.5
    assert parse_secure(secure, seed=0, server_lr=1.0).config.epsilon_budget == 6.5
