"""Under an upload budget, every group of a round fits it, not only the largest.

`SecureCoordinator.k_for` sized |S_r| for a round's largest group, taking its ring as the
widest. Under distributed DP a group's noise headroom follows n / ceil((1 - dropout) n)
(and the threshold), so a smaller group can need a wider ring: with a 20% dropout a group of
5 needs 4 devices' noise each (5 / 4), one of 7 needs 6 (7 / 6), and at the budget below the
group of 5 needs 19 ring bits where the group of 7 needs 18. Its devices uploaded 667 bytes
above the budget. |S_r| is now the largest that fits every group size of the round.
"""

from __future__ import annotations

import numpy as np

from coordinator.secure import SecureConfig, SecureCoordinator
from protocol.secagg import NoiseKind, device_upload_bytes

D = 1_000_000


def test_every_group_of_a_round_fits_the_upload_budget() -> None:
    # Prepare: 12 devices in groups of 5 and 7
    config = SecureConfig(
        seed=1,
        group_size=5,
        expected_dropout=0.2,
        noise=NoiseKind.SKELLAM,
        noise_multiplier=1.0,
        value_bits=8,
        upload_budget=200_000,
    )
    coord = SecureCoordinator(np.zeros(D, np.float32), config)
    # Execute
    task = coord.open_round([f"dev-{i:02d}" for i in range(12)], 1)
    # Assert: each group's devices upload within the budget, and one more coordinate would not
    plans = [sr.plan for sr in task.groups]
    assert sorted(p.num_nodes for p in plans) == [5, 7]
    for p in plans:
        assert device_upload_bytes(p.degree, p.vector_len, p.ring_bits) <= 200_000
    assert max(device_upload_bytes(p.degree, p.vector_len + 1, p.ring_bits) for p in plans) > (
        200_000
    )
