"""A secure round whose unmask needs error correction for too many secrets aborts, and the
service names the suspect devices of that aborted group in the round's `suspect_devices`.

The SecAgg server caps the secrets it error-corrects (`MAX_ROBUST_DECODES`, see
tests/protocol/test_h175_robust_unmask_budget.py); past it the group aborts with a reason that
names its suspects by node number. The service maps them to device ids from the group's plan
(`SecureRegistry.suspect_devices`), so an operator sees who lied even though nothing was
committed. The budget is set to 1 here so that two liars exceed it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from protocol.names import RoundState
from protocol.secagg import Stage, UnmaskResponse
from protocol.secagg import _server as server_mod
from sdk.secure import SecureSession

from ._secure_inproc import STAGES, join_round, secure_coordinator, stage_body
from .test_secure_robust_unmask import _lie

DEVICES = [f"{i:032x}" for i in range(12)]  # one group: complete graph, k = 11, t = 6
# Node 2 lies about the secrets of nodes 0 and 1, node 9 about those of 10 and 11: no secret
# gets two wrong shares, so each liar needs its own correction.
LIES = {2: {0, 1}, 9: {10, 11}}


def test_past_the_correction_budget_the_round_is_abandoned_naming_the_liars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a budget of 1 corrected secret; two liars
    monkeypatch.setattr(server_mod, "MAX_ROBUST_DECODES", 1)
    honest_unmask = SecureSession.unmask

    def unmask(self: SecureSession, request: bytes) -> bytes:
        out = honest_unmask(self, request)
        about = LIES.get(self.client.state.node)
        if about is None:
            return out
        msg = UnmaskResponse.from_bytes(out, self.plan.num_nodes)
        lies = tuple((n, k, _lie(s) if n in about else s) for n, k, s in msg.shares)
        return dataclasses.replace(msg, shares=lies).to_bytes()

    monkeypatch.setattr(SecureSession, "unmask", unmask)
    coord, task_id = secure_coordinator(tmp_path, clients=12, min_reports=3)
    for d in DEVICES:
        coord.check_in(d, task_id)
    rt = coord.runtimes[task_id]
    assert rt.current is not None and rt.secure is not None
    rid = rt.current.round_id
    sessions, node_of = join_round(coord, rt, rid, DEVICES)
    for stage, before in zip(STAGES, (None, *STAGES[:-1]), strict=True):
        for d, s in sessions.items():
            got = coord.secure_download(rid, before, d) if before is not None else None
            if stage != Stage.ADVERTISE_KEYS and got is None:
                raise AssertionError(f"{before} did not close")
            coord.secure_upload(rid, stage, d, stage_body(s, stage, got, d))
    assert rt.secure.registry.ready(rid)
    cur = coord.begin_close(rt)
    assert cur is not None
    # Execute
    outcome = coord.close_blocking(rt, cur)
    # Assert: abandoned; the reason is the budget's; the liar caught is named by device id
    assert not outcome.committed
    reasons = outcome.measurements["abort_reasons"]
    assert any("more than 1 secrets needed error correction" in r for r in reasons), reasons
    named = outcome.measurements["suspect_devices"]
    liars = {d for d, n in node_of.items() if n in LIES}
    assert len(named) == 1 and set(named) <= liars
    row = coord.store.round(rid)
    assert row is not None and row.state == RoundState.ABANDONED
    assert row.measurements["suspect_devices"] == named
