"""The server reconstructs a secret from exactly t shares the strict way (s60c mutation hunt on
protocol/secagg/_server.py, after s59s). `_finish` tries `combine_shares` when a node has at
least t kept shares and spends an error-correction decode (at most `max_robust_decodes` per
round) only when that fails. With `len(kept) >= t` flipped to `>`, a round in which some node
had exactly t shares spent a decode on each such node: a server allowing none aborted an
honest round. And the survivor floor is never below 2, whatever `min_survivors` says."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.secagg import RoundAborted, SecAggClient, SecAggServer

from .test_s59s_server_floors import L, N, _keys_shared, _params


def test_secrets_with_exactly_t_shares_need_no_error_correction() -> None:
    # Prepare: k = n - 1 = 4, t = 3, every node sends its masked input; only nodes 0 to 3
    # answer the unmask request, so the self-mask seeds of nodes 0 to 3 have exactly t = 3
    # shares each (from the other three), node 4's has 4
    p = _params()
    server = SecAggServer(p, max_robust_decodes=0)
    clients = [SecAggClient(p, i, p.digest) for i in range(N)]
    deliveries = _keys_shared(server, clients)
    for i in range(N):
        server.receive_masked_input(
            clients[i].masked_input(deliveries[i], np.full(L, i + 1, np.uint64))
        )
    req = server.close_masked_input()
    assert req.alive == tuple(range(N))
    for i in range(4):
        server.receive_unmask(clients[i].unmask(req))
    # Execute
    result = server.finish()
    # Assert: the exact sum, and no secret went through error correction
    assert result.total.tolist() == [sum(range(1, N + 1))] * L
    assert server.state.robust_decodes == 0


@pytest.mark.parametrize("floor", [0, 1])
def test_one_masked_input_is_below_the_floor_whatever_min_survivors_says(floor: int) -> None:
    # Kills max(2, floor) turned to max(1, floor): the round then aborted for node 0's lack of
    # live neighbours instead, so the floor alone did not stop a sum of one input.
    p = _params()
    server = SecAggServer(p, min_survivors=floor)
    clients = [SecAggClient(p, i, p.digest) for i in range(N)]
    deliveries = _keys_shared(server, clients)
    server.receive_masked_input(clients[0].masked_input(deliveries[0], np.ones(L, np.uint64)))
    with pytest.raises(RoundAborted, match="^1 masked inputs, need 2$"):
        server.close_masked_input()
