"""docs/http-api.md's 408 `request_timeout` on the upload route (helper-57d's audit; the test of
the 408 sent a registration, tests/coordinator/test_service_body_timeout.py): the selected
device's upload whose body stops one byte short is answered 408 at `--body-timeout` and the
connection closes; nothing of it is taken and its nonce is not spent, so the same signed
request, sent whole, is accepted."""

from __future__ import annotations

import json
import time
from pathlib import Path

from coordinator.service import ServerThread, ServiceConfig

from .test_service_body_timeout import _answer, _open
from .test_service_security import World
from .test_service_support import ADMIN


def test_a_stalled_upload_is_408_takes_nothing_and_its_request_is_taken_when_sent_whole(
    tmp_path: Path,
) -> None:
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, body_timeout_s=1.0
    )
    with ServerThread(cfg) as url:
        w = World(url, tmp_path)
        try:
            # Prepare: the selected device's upload, signed once, as raw HTTP/1.1
            headers = {
                **w.signed_upload(w.frame),
                "content-type": "application/octet-stream",
                "content-length": str(len(w.frame)),
            }
            head = f"POST {w.path} HTTP/1.1\r\nHost: plume\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in headers.items()
            )
            before = w.state()
            # Execute: all of the body but its last byte, then nothing
            sock = _open(url)
            t0 = time.monotonic()
            sock.sendall(head.encode() + b"\r\n" + w.frame[:-1])
            status, answer_headers, body = _answer(sock)
            waited = time.monotonic() - t0
            closed = sock.recv(1) == b""
            sock.close()
            during = w.state()
            whole = w.upload(w.frame, headers)
        finally:
            for c in (w.a, w.b):
                c.close()
            w.http.close()
    # Assert: the doc's 408 at the body timeout, the connection closed, nothing taken
    assert status == 408, body
    assert json.loads(body)["reason"] == "request_timeout" and json.loads(body)["detail"]
    assert answer_headers.get("connection") == "close" and closed
    assert 0.9 < waited < 5
    assert during == before and before[0] == 0
    # ... and the same request (its nonce unspent), sent whole, is the round's one report
    assert whole.status_code == 200, whole.text
    assert whole.json()["accepted"] is True and whole.json()["reports"] == 1
