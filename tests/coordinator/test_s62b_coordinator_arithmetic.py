"""`SecureCoordinator`'s integer constants at their edges (helper s62b).

Mutation hunt on coordinator/secure/_coordinator.py, its integer constants and arithmetic
(the +/-1 and operator swaps not run before): each test names the mutation of that file it
kills (line, the change) that the suite before it let through.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from coordinator.secure import SecureConfig, SecureCoordinator, _coordinator
from coordinator.secure._coordinator import PlanNumbers, budget_k, plan_numbers
from protocol.secagg import Stage, device_upload_bytes

from .test_s61d_secagg_registry_refusals import RID, _Round


def test_a_group_aborted_earlier_counts_no_masked_input_for_min_reports() -> None:
    """Kills _coordinator.py:763 (an aborted group's `0` -> `1`): group A, aborted at
    advertise-keys, counted one masked input it can never send, so group B's close saw 6
    possible masked inputs against a min_reports of 6 and ran an unmask stage for a round
    that could not commit."""
    # Prepare: two groups of five (t = 3); A aborts at advertise-keys with two keys
    r = _Round(10, group_size=5, min_contributors=6)
    a, b = (list(ids) for ids in r.task.members)
    r.run(Stage.ADVERTISE_KEYS, a[:2] + b)
    r.reg.close_stage(RID, Stage.ADVERTISE_KEYS)
    ga, gb = (r.task.groups[r.task.group_of[ids[0]]] for ids in (a, b))
    assert (ga.stage, gb.stage) == (Stage.ABORTED, Stage.SHARE_KEYS)
    r.run(Stage.SHARE_KEYS, b)
    # Execute: B's masked-input stage closes with its five inputs
    r.run(Stage.MASKED_INPUT, b)
    # Assert: at most 5 (B's) + 0 (A's) masked inputs, below 6: B aborts, no unmask request
    assert gb.stage == Stage.ABORTED
    why = r.reg.abort_reasons(RID)[-1]
    assert "at most 5 masked inputs" in why and "below the round's 6 (min_reports)" in why


def test_the_unbudgeted_coordinate_count_is_at_least_one_and_rounds() -> None:
    """Kills _coordinator.py:415 (`max(1, ...)` -> `max(2, ...)` and -> `max(0, ...)`): a
    model whose coord_fraction gives under one coordinate got two, or none (an empty S_r,
    a round that updates nothing), instead of one."""
    tiny = SecureCoordinator(np.zeros(100, np.float32), SecureConfig(coord_fraction=0.001))
    assert tiny.k == 1  # 0.1 coordinates
    one = SecureCoordinator(np.zeros(100, np.float32), SecureConfig(coord_fraction=0.012))
    assert one.k == 1  # 1.2 rounds to 1
    two = SecureCoordinator(np.zeros(100, np.float32), SecureConfig(coord_fraction=0.016))
    assert two.k == 2  # 1.6 rounds to 2


def _cost(config: SecureConfig, n: int, k: int) -> int:
    """A device's four-stage upload for |S_r| = k, as `budget_k` prices it (no sketch)."""
    degree, *_, ring = plan_numbers(config, n, k)
    return device_upload_bytes(degree, k + 1, ring)


def test_a_guess_of_no_coordinates_is_not_an_answer() -> None:
    """Kills _coordinator.py:139 (`1 <= near` -> `0 <= near`): a guess of 0 coordinates
    was priced, which divides by zero (the per-coordinate bound is C * sigmas / sqrt(k)),
    instead of being passed over for the search and its refusal; and :146 (the refusal's `cost(1)` -> `cost(2)`): the refusal named the cost of two
    coordinates as that of one."""
    n, d = 10, 1000
    probe = SecureConfig(upload_budget=1 << 30)
    one = _cost(probe, n, 1)
    assert one < _cost(probe, n, 2)
    short = dataclasses.replace(probe, upload_budget=one - 1)
    for near in (None, 0, -1, 1):
        with pytest.raises(ValueError) as err:
            budget_k(short, n, d, near=near)
        assert str(err.value) == (
            f"upload budget of {one - 1} B is below the {one} B that n={n} devices upload "
            "for one coordinate (key stages, sketch and weight)"
        )


@pytest.mark.parametrize("cohort", [1, 2])
def test_a_cohort_below_three_is_refused_as_such_under_an_upload_budget(cohort: int) -> None:
    """Kills _coordinator.py:469 (`len(ids) >= 3` -> `>= 2`): a cohort of two was sized to
    the upload budget before it was refused, so a budget too small for two devices' key
    stages was the error it got, not that secure aggregation needs three devices."""
    coord = SecureCoordinator(np.zeros(100, np.float32), SecureConfig(upload_budget=100))
    with pytest.raises(ValueError, match=f"needs at least 3 devices, got {cohort}$"):
        coord.open_round([f"dev-{i}" for i in range(cohort)], RID)


def test_a_right_guess_is_confirmed_by_two_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kills _coordinator.py:141 (`cost(near + 1)` -> `cost(near)`) and :139 (`1 <= near` ->
    `2 <= near`): a right guess was not taken (for any guess, or for a guess of 1), and each
    group size of a task the service checks ran the whole binary search again (`near` is
    there so that it does not, `coordinator/service/secure.py`)."""
    n, d = 10, 1000
    probe = SecureConfig(upload_budget=1 << 30)
    priced: list[int] = []

    def counted(config: SecureConfig, num_nodes: int, k: int) -> PlanNumbers:
        priced.append(k)
        return plan_numbers(config, num_nodes, k)

    for want in (1, 50):
        config = dataclasses.replace(probe, upload_budget=_cost(probe, n, want))
        assert budget_k(config, n, d) == want
        monkeypatch.setattr(_coordinator, "plan_numbers", counted)
        priced.clear()
        # Execute
        got = budget_k(config, n, d, near=want)
        monkeypatch.undo()
        # Assert: the guess and one more, nothing else
        assert got == want and priced == [want, want + 1]


def test_the_upload_budget_prices_the_sketch_with_the_coordinates() -> None:
    """Kills _coordinator.py:135 (`k + sketch_len` -> `k - sketch_len`): the sketch's values
    were taken off the price instead of added, so a task with a sketch was given more
    coordinates than its devices' uploads fit in the budget."""
    n, d, sketch = 10, 1000, 40
    probe = SecureConfig(upload_budget=1 << 30)
    degree, *_, ring = plan_numbers(probe, n, 100)

    def price(k: int) -> int:  # |S_r| values, the sketch's and the weight
        return device_upload_bytes(degree, k + sketch + 1, ring)

    config = dataclasses.replace(probe, upload_budget=price(100))
    # Execute
    got = budget_k(config, n, d, sketch_len=sketch)
    # Assert: the largest |S_r| whose upload, sketch included, fits the budget
    assert price(got) <= price(100) < price(got + 1)
    assert got == 100 and budget_k(config, n, d) > got
