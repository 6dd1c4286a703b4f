"""tests/coordinator claims that read a round right after its devices' last answer, with the
coordinator's close of that round held back: the order a loaded machine can give.

The coordinator answers the request that ends a round's collection first and closes the round
afterwards (`schedule_close`; the aggregation and the publish run off the event loop in
`close_blocking`). test_s63a_service_cut_group read its secure round's state as soon as the
devices' threads had ended, which they do on the close's first answer (409 "closing"), and
expected "committed"; with every close delayed 0.5 s (an audit of tests/coordinator, s66e) it
read "aggregating". Here the close waits until the round's status has been asked once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.names import RoundState

from . import test_s63a_service_cut_group as s63a
from .test_service_support import run_with_close_held


def test_the_s63a_cut_group_claim_reads_the_round_once_it_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The round's close waits until its status is asked. Before the fix the s63a test read
    # the round while its close was held, and saw "aggregating"; now it asks while the round
    # is aggregating and waits for the commit.
    states = run_with_close_held(
        monkeypatch, lambda: s63a.test_a_cut_short_group_s_poll_ends_with_round_closed(tmp_path)
    )
    assert states[0] == RoundState.AGGREGATING, states
