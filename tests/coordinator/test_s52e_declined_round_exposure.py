"""A secure round declined for `min_reports` at its unmask close counts what it exposed (helper-52e).

`close_round` declines to unmask a round whose unmask-stage groups hold fewer masked inputs than
`min_reports`. It recorded no release then, and no epsilon: but a group asked to unmask whose
survivors have answered leaves the server holding t shares of every secret its unmask needs,
so a server that reads everything it holds (the honest-but-curious server the distributed DP
guarantee is stated against) can unmask that noisy sum itself. Such a group now counts as
released; one whose server holds fewer than t shares of some secret does not.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from coordinator.secure import SecureConfig, SecureCoordinator, SecureTask
from coordinator.secure._round import SecureRound
from protocol.secagg import NoiseKind, RoundAborted, Stage
from protocol.secagg._server import _finish
from sdk.secure import SecureParticipant

D = 300
DEVICES = [f"d{i}" for i in range(5)]


def _to_unmask(answering: int) -> tuple[SecureCoordinator, SecureTask, SecureRound]:
    """One DP round of five devices, opened without a min_reports (so its group is asked to
    unmask); the first `answering` survivors answer the unmask request."""
    config = SecureConfig(
        coord_fraction=0.1, noise=NoiseKind.DISCRETE_GAUSSIAN, noise_multiplier=1.0, seed=7
    )
    coord = SecureCoordinator(np.zeros(D, np.float32), config)
    task = coord.open_round(DEVICES)
    (sr,) = task.groups
    parts = {d: SecureParticipant(D) for d in DEVICES}
    sessions = {
        d: parts[d].join(sr.announce_one(d), sr.digest, coord.params, sr.node_of(d))
        for d in DEVICES
    }
    for d, s in sessions.items():
        sr.receive(Stage.ADVERTISE_KEYS, d, s.advertise())
    directories = sr.close(Stage.ADVERTISE_KEYS)
    for d, s in sessions.items():
        sr.receive(Stage.SHARE_KEYS, d, s.share_keys(directories[d]))
    deliveries = sr.close(Stage.SHARE_KEYS)
    rng = np.random.default_rng(3)
    for d, s in sessions.items():
        update = rng.normal(0, 0.01, D).astype(np.float32)
        sr.receive(Stage.MASKED_INPUT, d, s.masked_input(deliveries[d], update, 1, rng))
    requests = sr.close(Stage.MASKED_INPUT)
    assert sr.stage == Stage.UNMASK and sr.plan.threshold < len(DEVICES)
    for d in DEVICES[:answering]:
        sr.receive(Stage.UNMASK, d, sessions[d].unmask(requests[d]))
    return coord, task, sr


def test_a_declined_round_whose_server_holds_the_shares_counts_in_epsilon() -> None:
    # Prepare: every survivor answered; a copy of what the server holds unmasks the sum
    coord, task, sr = _to_unmask(answering=5)
    held = copy.deepcopy(sr.server.state)
    assert len(_finish(held).contributors) == 5
    # Execute: min_reports 6 declines the round at its unmask close
    out = coord.close_round(task, min_contributors=6)
    # Assert: nothing unmasked by the coordinator, nothing committed, but the release counts
    assert not out.committed and sr.unmasked is None and coord.version == 0
    assert out.measurements["dp"]["survivors"] == 5 and out.measurements["dp"]["rounds"] == 1
    assert coord.accountant.rounds == 1 and coord.accountant.epsilon() > 0
    (reason,) = out.measurements["abort_reasons"]
    assert "min_reports" in reason and "counted in epsilon" in reason


def test_a_declined_round_whose_server_lacks_the_shares_spends_nothing() -> None:
    # Prepare: fewer survivors answered than the threshold; what the server holds cannot
    # unmask the sum
    coord, task, sr = _to_unmask(answering=sr_threshold() - 1)
    with pytest.raises(RoundAborted, match="fewer than t"):
        _finish(copy.deepcopy(sr.server.state))
    # Execute
    out = coord.close_round(task, min_contributors=6)
    # Assert: nothing released, nothing spent
    assert not out.committed and "dp" not in out.measurements
    assert coord.accountant.rounds == 0
    assert not any("counted in epsilon" in r for r in out.measurements["abort_reasons"])


def test_a_round_unmasked_as_usual_counts_once() -> None:
    coord, task, _ = _to_unmask(answering=5)
    out = coord.close_round(task)
    assert out.committed and coord.accountant.rounds == 1
    assert out.measurements["dp"]["survivors"] == 5


def sr_threshold() -> int:
    """The threshold t of the five-device plan (the same for every round of that config)."""
    return _to_unmask(answering=0)[2].plan.threshold
