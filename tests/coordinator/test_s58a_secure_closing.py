"""docs/http-api.md's 409 `round_closed` "secure round N is closing" (rounds.py,
`Coordinator._secure_round`): a stage request that reaches a secure round while the
coordinator closes it (its unmask running in a worker thread) is refused so, and changes
neither the round nor the published model. It had no test (the committed and abandoned
details have theirs: test_s57d_secure_closed.py).

The close is held by an Event (test_h175's `closing_secure_round`), not a sleep: the requests are
answered while it is still held, then it is released and the round commits as usual.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.secagg import AdvertiseKeys

from .test_h175_secure_close_unblocked import WAIT_S, closing_secure_round
from .test_service_support import admin_get, signed_headers, wait_until


def test_stage_requests_while_a_secure_round_closes_are_409_is_closing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a secure round of 3 devices, its close held once it starts
    with closing_secure_round(tmp_path, monkeypatch) as r:
        http, round_id, tid = r.http, r.round_id, r.task_id
        round_before = admin_get(http, f"/v1/rounds/{round_id}")
        task_before = admin_get(http, f"/v1/admin/tasks/{tid}")
        key = r.clients[0]._core.key
        # Execute: a selected device's stage upload and stage download, signed
        up_path = f"/v1/secure/rounds/{round_id}/stages/advertise-keys"
        body = AdvertiseKeys(round_id, 0, b"\x01" * 32, b"\x02" * 32).to_bytes()
        upload = http.post(
            up_path,
            content=body,
            headers={
                "content-type": "application/octet-stream",
                **signed_headers(key, "POST", up_path, round_id, body),
            },
        )
        down_path = f"/v1/secure/rounds/{round_id}/stages/masked-input"
        download = http.get(down_path, headers=signed_headers(key, "GET", down_path, round_id))
        # Assert: both refused so while the close is held; nothing changed
        assert not r.held.done.is_set() and not r.held.release.is_set()
        for answer in (upload, download):
            assert answer.status_code == 409, answer.text
            assert answer.json() == {
                "reason": "round_closed",
                "detail": f"secure round {round_id} is closing",
            }
        assert round_before["state"] == "aggregating"
        assert admin_get(http, f"/v1/rounds/{round_id}") == round_before
        assert admin_get(http, f"/v1/admin/tasks/{tid}") == task_before
        assert task_before["version"] == 0
        # The round still commits, once: the refused requests left it as it was
        r.held.release.set()
        assert r.held.done.wait(WAIT_S) and r.held.calls == 1
        assert wait_until(http, f"/v1/admin/tasks/{tid}", "version", 1)["version"] == 1
        assert admin_get(http, f"/v1/rounds/{round_id}")["state"] == "committed"
