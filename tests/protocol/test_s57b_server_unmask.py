"""The server's unmask intake as docs/secure-aggregation.md describes it, where no test checked it:
an incomplete answer counts as a dropout of the missing shares (no suspect), a share of a
secret of another length is set aside, and a deviating server that lists a dropped node alive
to the last honest survivor of a small group still holds too few shares of that survivor's
secrets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from protocol.secagg import (
    NotEnoughShares,
    RoundAborted,
    ShareKind,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
    combine_shares,
    create_shares,
    share_x,
)

from .test_s49_secagg_refusals import N, _at_unmask, _Round
from .test_secagg_protocol import LENGTH, make_params, run_to_masked_input

# Node i's input in `_at_unmask` is i in every element: the exact sum is sum(range(N)).
TOTAL = N * (N - 1) // 2


def _answers(r: _Round, req: UnmaskRequest) -> dict[int, UnmaskResponse]:
    return {i: r.clients[i].unmask(req) for i in req.alive}


def test_an_answer_with_some_or_no_shares_counts_the_rest_and_names_no_suspect() -> None:
    # Prepare: survivor 0 answers with half its shares, survivor 1 with none
    r, req = _at_unmask()
    answers = _answers(r, req)
    answers[0] = dataclasses.replace(answers[0], shares=answers[0].shares[::2])
    answers[1] = dataclasses.replace(answers[1], shares=())
    # Execute
    for a in answers.values():
        r.server.receive_unmask(a)
    res = r.server.finish()
    # Assert: both are contributors, their inputs are in the exact sum, nobody is a suspect
    assert {0, 1} <= set(res.contributors) and res.suspects == ()
    assert res.total.tolist() == [TOTAL] * len(res.total)


def test_missing_shares_that_leave_a_secret_below_t_abort_with_nothing_unmasked() -> None:
    # Prepare: all but t - 1 holders of node 5's self-mask seed leave their share of it out
    r, req = _at_unmask()
    t = r.p.threshold
    answers = _answers(r, req)
    holders = [i for i, a in answers.items() if any(about == 5 for about, _, _ in a.shares)]
    for i in holders[t - 1 :]:
        kept = tuple(s for s in answers[i].shares if s[0] != 5)
        answers[i] = dataclasses.replace(answers[i], shares=kept)
    for a in answers.values():
        r.server.receive_unmask(a)
    # Execute / Assert
    with pytest.raises(RoundAborted, match=rf"1 nodes have fewer than t={t} shares \(e.g. \[5\]\)"):
        r.server.finish()
    assert r.server.stage == Stage.ABORTED and r.server.state.masked_sum is None
    assert not r.server.state.suspects


def test_a_share_of_a_secret_of_another_length_is_set_aside_and_the_rest_counts() -> None:
    # Prepare: survivor 0 replaces its share about neighbour a by one with its own x and the
    # round's threshold, of a 33-byte secret (well formed and sealed)
    r, req = _at_unmask()
    t = r.p.threshold
    answers = _answers(r, req)
    a, kind, honest = answers[0].shares[0]
    x = share_x(honest)
    forged = create_shares(b"\x07" * 33, t, max(t, x))[x - 1]
    answers[0] = dataclasses.replace(answers[0], shares=((a, kind, forged), *answers[0].shares[1:]))
    # Execute
    for ans in answers.values():
        r.server.receive_unmask(ans)
    res = r.server.finish()
    # Assert: set aside by name, the rest of the answer counted, the sum exact
    assert r.server.state.set_aside == [(0, a, f"threshold {t} of a 33-byte secret")]
    assert res.suspects == () and 0 in res.contributors
    assert res.total.tolist() == [TOTAL] * len(res.total)


def test_a_dropped_node_listed_alive_to_the_last_honest_survivor_does_not_unmask_it() -> None:
    # Prepare: a group of 4 (k = 3, t = 2); nodes 2 and 3 drop after sharing keys, node 0
    # colludes with the server, node 1 is honest. The honest server aborts here.
    p = make_params(4)
    assert (p.degree, p.threshold) == (3, 2)
    clients, server = run_to_masked_input(
        p, [np.zeros(LENGTH, np.uint64)] * 4, dropped=frozenset({2, 3})
    )
    with pytest.raises(RoundAborted, match="fewer than t=2 live neighbours"):
        server.close_masked_input()
    # Execute: the deviating server tells node 1 that node 2 is alive
    answer = clients[1].unmask(UnmaskRequest(p.round_id, (0, 1, 2), (3,)))
    # Assert: node 1 answers for 0, 2 (seeds) and 3 (key), nothing about itself
    assert [(about, kind) for about, kind, _ in answer.shares] == [
        (0, ShareKind.SELF_MASK),
        (2, ShareKind.SELF_MASK),
        (3, ShareKind.MASK_KEY),
    ]
    # and the server holds one share of each of node 1's secrets, the colluder's: below t
    key_share, seed_share = clients[0].state.held_shares[1]
    for share in (seed_share, key_share):
        with pytest.raises(NotEnoughShares):
            combine_shares([share])
