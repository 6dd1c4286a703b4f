"""A device refuses a plan of two nodes (helper-219's review, F2).

The docs' "Nor are two" argument (an unmask needs t + 1 >= 3 survivors) rests on t >= 2, which
only the coordinator's `make_plan` (n >= 3) gave: the device-side plan checks allow n = 2
(k = 1, t = 1), and `SecAggClient` checked only 2t > k. With such a plan a device answered the
unmask request of a server colluding with the other device, whose own update taken from the
sum leaves this device's. Now `SecAggClient` refuses n < 3 or t < 2 (`ProtocolViolation`), so
the device sends nothing, not even its keys.
"""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.secure import SecureConfig, SecureCoordinator
from protocol.secagg import ProtocolViolation, SecAggClient
from protocol.secagg._plan import ProtocolParams
from sdk.secure import SecureParticipant

D = 200


def test_the_protocol_client_refuses_two_nodes() -> None:
    p = ProtocolParams(1, 2, 1, 1, 8, 4, bytes(32), b"\x01" * 32)
    with pytest.raises(ProtocolViolation, match=r"a plan of 2 nodes at threshold 1: .* at least 3"):
        SecAggClient(p, 0, p.digest)


def test_three_nodes_at_threshold_two_are_still_accepted() -> None:
    p = ProtocolParams(1, 3, 2, 2, 8, 4, bytes(32), b"\x01" * 32)
    for node in range(3):
        SecAggClient(p, node, p.digest)


@pytest.mark.parametrize("node", [0, 1])
def test_a_device_refuses_a_two_node_plan_from_the_server(node: int) -> None:
    # Prepare: a real plan (3 devices), re-derived by a deviating server for n = 2, k = 1,
    # t = 1, which the plan's own checks accept (helper-219's two_node_plan.py)
    coord = SecureCoordinator(np.zeros(D, np.float32), SecureConfig(coord_fraction=0.1))
    task = coord.open_round([f"{i:032x}" for i in range(3)])
    plan3 = task.groups[0].plan
    plan2 = plan3.derive(num_nodes=2, degree=1, threshold=1, ring_bits=plan3.ring_bits)
    digest = plan2.protocol_params(task.groups[0].model_digest).digest
    # Execute / Assert: the device refuses to join, before it makes or sends any key
    with pytest.raises(ProtocolViolation, match=r"at least 3 nodes"):
        SecureParticipant(D).join(plan2.to_bytes(), digest, coord.params, node)
    # ... while the same server's 3-node plan is joined as before
    pp3 = plan3.protocol_params(task.groups[0].model_digest)
    SecureParticipant(D).join(plan3.to_bytes(), pp3.digest, coord.params, node)
