"""docs/http-api.md's 503 `busy` for a secure stage message (helper-57d's audit; only the plain
upload's was tested, tests/coordinator/test_h283_upload_buffer.py): a stage message whose body
does not fit beside the bodies being read is answered 503 `busy` with `Retry-After: 2` and
`connection: close`, its nonce not spent and nothing of it taken, and the same signed request
is accepted once there is room. Its first part (81 bytes) is above an eighth of the budget (100
bytes), so it is refused at once rather than after waiting up to 2 s for room: the doc's row
said only the latter until this audit (`coordinator.service.auth.WAIT_SHARE`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.auth import ROOM_WAIT_S, BodyBudget
from protocol.secagg import AdvertiseKeys

from .test_service_secure_security import NOTHING, OCTET, World, _signed
from .test_service_support import ADMIN

BUDGET = 100  # bytes: one advertise-keys message (81) fits, two do not


def test_a_stage_message_past_the_upload_buffer_is_503_busy_and_taken_when_sent_again(
    tmp_path: Path,
) -> None:
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"),
        admin_token=ADMIN,
        poll_s=0.05,
        tick_s=0.02,
        upload_buffer_bytes=BUDGET,
    )
    server = ServerThread(cfg)
    with server as url:
        w = World(url, tmp_path)
        try:
            # Prepare: device A's stage body stalls one byte short of its end, holding 80
            # bytes of the budget; device B's advertise-keys message, signed once
            budget: BodyBudget = server.app.state.verifier.body_budget
            b = w.clients[1]
            setup = f"/v1/secure/rounds/{w.round_id}/setup"
            node = w.http.get(setup, headers=_signed(b._core.key, "GET", setup, w.round_id, b""))
            message = AdvertiseKeys(
                w.round_id, int(node.headers["x-plume-secagg-node"]), b"\x01" * 32, b"\x02" * 32
            ).to_bytes()
            target = w.path("advertise-keys")
            signed = {**_signed(b._core.key, "POST", target, w.round_id, message), **OCTET}
            junk = b"\x00" * len(message)
            gate = threading.Event()
            stalled: list[httpx.Response | BaseException] = []

            def body() -> Iterator[bytes]:
                yield junk[:-1]
                gate.wait(30)
                yield junk[-1:]

            def send_stalled() -> None:
                headers = {
                    **_signed(w.key_a, "POST", target, w.round_id, junk),
                    **OCTET,
                    "content-length": str(len(junk)),
                }
                try:
                    with httpx.Client(base_url=url, timeout=30) as own:
                        stalled.append(own.post(target, content=body(), headers=headers))
                except BaseException as exc:  # reported by the assertion below
                    stalled.append(exc)

            sender = threading.Thread(target=send_stalled)
            sender.start()
            give_up = time.monotonic() + 15
            while (budget.bodies, budget.held) != (1, len(junk) - 1):
                assert time.monotonic() < give_up, (budget.bodies, budget.held)
                time.sleep(0.01)
            # Execute
            t0 = time.monotonic()
            refused = w.http.post(target, content=message, headers=signed)
            waited = time.monotonic() - t0
            during = w.uploads()
            gate.set()
            sender.join(30)
            again = w.http.post(target, content=message, headers=signed)
            after = w.uploads()
        finally:
            w.close()
    # Assert: the doc's 503 busy, before the body was read; nothing of it taken
    assert refused.status_code == 503, refused.text
    assert refused.json()["reason"] == "busy" and refused.json()["detail"]
    assert refused.headers["retry-after"] == "2"
    assert refused.headers["connection"] == "close"
    assert waited < ROOM_WAIT_S  # at once: it did not wait for room
    assert during == NOTHING
    # ... the stalled body was read whole and refused for what it is
    (got,) = stalled
    assert isinstance(got, httpx.Response), got
    assert got.status_code == 422 and got.json()["reason"] == "bad_frame", got.text
    # ... and the same signed request (its nonce unspent) is then taken
    assert again.status_code == 200, again.text
    assert again.json()["stage"] == "advertise-keys" and again.json()["duplicate"] is False
    assert after == {**NOTHING, "advertise-keys": 1}
