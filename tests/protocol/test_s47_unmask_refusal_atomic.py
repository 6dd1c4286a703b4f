"""Stop 47: an unmask answer refused with ProtocolViolation leaves the server's state as it was.

`_unmask_response` set a malformed share aside (`ServerState.set_aside`) as it walked the
answer, before a later share in the same answer made it refuse the whole answer: the refused
answer's shares stayed named in an abort's reason, and each resend of it named them again."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from protocol.secagg import ProtocolViolation, ShareKind

from .test_secagg_protocol import RING
from .test_secagg_robust_unmask import _to_unmask


def test_a_refused_unmask_answer_sets_no_share_aside() -> None:
    # Prepare: survivor 0's answer with its first share's seal broken (set aside on its own)
    # and its last share of the wrong kind (refuses the whole answer)
    _, server, inputs, answers = _to_unmask(20)
    first = answers[0]
    about, kind, share = first.shares[0]
    last_about, last_kind, last_share = first.shares[-1]
    wrong_kind = ShareKind.MASK_KEY if last_kind == ShareKind.SELF_MASK else ShareKind.SELF_MASK
    refused = dataclasses.replace(
        first,
        shares=(
            (about, kind, share[:-1] + bytes([share[-1] ^ 1])),
            *first.shares[1:-1],
            (last_about, wrong_kind, last_share),
        ),
    )

    # Execute: refused twice (a resend), then the honest answer and the rest
    for _ in range(2):
        with pytest.raises(ProtocolViolation, match="share for node"):
            server.receive_unmask(refused)
    after_refusals = list(server.state.set_aside)
    for a in answers:
        server.receive_unmask(a)
    res = server.finish()

    # Assert: nothing set aside from the refused answer; its sender's honest answer counted
    assert after_refusals == []
    assert server.state.set_aside == []
    assert first.node in res.contributors
    np.testing.assert_array_equal(res.total, sum(inputs) & np.uint64((1 << RING) - 1))
