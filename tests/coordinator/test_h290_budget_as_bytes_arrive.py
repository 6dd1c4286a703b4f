"""The upload body budget counts the bytes that have arrived, not the declared length
(helper-289's F1).

f4eac95's budget (`serve --upload-buffer-mb`) reserved an upload's declared `Content-Length`
(a chunked one: its round's cap) as soon as its headers passed the checks made before the body
(form and a registered `x-plume-device`; the signature is checked after the body), and held it
until the body ended or the body timeout (120 s) did. Anyone who knew one registered device id
could open idle connections that sent headers declaring the cap and no body byte, and every
honest upload was answered 503 `busy` (`/work/notes/s26/h289/budget_slowloris.py`: 38 idle
connections against a 64 KiB budget). Now a body reserves each part as it arrives
(`BodyBudget.take(size, holding)`): a connection that sent nothing holds nothing, a trickle
holds what it sent, a part that does not fit beside the other bodies' bytes ends its body with
503 `busy`, and a body alone is always let in.

Real coordinators on loopback, raw sockets for the idle, trickling and stalled senders, and
`RequestVerifier.read_signed_body` driven directly for the exception and cancellation exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from compression import UpdateCodec
from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.auth import BodyBudget, RequestVerifier
from coordinator.service.errors import ApiError
from coordinator.service.store import Store
from protocol import auth
from protocol.names import Reason

from .test_service_hardening import _register
from .test_service_support import ADMIN, SPEC, create_task, signed_headers, task_config

OCTET = "application/octet-stream"


# -- helpers ---------------------------------------------------------------------------------


def _frames(count: int) -> list[bytes]:
    """`count` update frames of the test task's codec (seeded), each of its own content."""
    codec = UpdateCodec(SPEC, task_config().codec.to_config())
    rng = np.random.default_rng(290)
    out = []
    for _ in range(count):
        frame, _ = codec.encode(rng.normal(0, 0.01, SPEC.size).astype(np.float32), rng, 10.0)
        out.append(frame)
    return out


def _wait(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        time.sleep(0.01)


@dataclass
class Round:
    server: ServerThread
    http: httpx.Client
    budget: BodyBudget
    round_id: int
    cap: int
    selected: list[bytes]  # keys of the devices selected for the round
    outsider: bytes  # a registered device that is not
    pk_calls: Counter[str]  # device id -> how often the verifier looked its key up

    @property
    def target(self) -> str:
        return f"/v1/rounds/{self.round_id}/updates"

    def held(self) -> tuple[int, int]:
        return (self.budget.bodies, self.budget.held)

    def wait_held(self, bodies: int, held: int) -> None:
        _wait(lambda: self.held() == (bodies, held), f"budget at {(bodies, held)}, {self.held()}")

    def headers(self, key: bytes, body: bytes, **extra: str) -> dict[str, str]:
        """Headers of an upload of `body` signed by `key` (`extra` added)."""
        return {
            **signed_headers(key, "POST", self.target, self.round_id, body),
            "content-type": OCTET,
            "idempotency-key": uuid.uuid4().hex,
            **extra,
        }

    def open(self, headers: dict[str, str], body: bytes = b"") -> socket.socket:
        """A connection that has sent an upload's head and `body` (maybe part of it)."""
        host, port = self.server.url.split("//")[1].split(":")
        sock = socket.create_connection((host, int(port)), timeout=30)
        head = f"POST {self.target} HTTP/1.1\r\nhost: {host}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        sock.sendall(head.encode() + body)
        return sock


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    """The status, headers and JSON body of the answer on `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        assert more, f"connection closed before an answer: {data!r}"
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(rest) < int(headers["content-length"]):
        more = sock.recv(65536)
        assert more, "connection closed inside the answer"
        rest += more
    return status, headers, json.loads(rest)


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed `sock` after its answer (EOF or a reset)."""
    try:
        return sock.recv(1) == b""
    except OSError:
        return True


@contextlib.contextmanager
def _round(tmp_path: Path, budget: int, body_timeout_s: float = 120.0) -> Iterator[Round]:
    """A coordinator with an upload budget of `budget` bytes, a round with three selected
    devices, and a fourth device registered but not selected."""
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"),
        admin_token=ADMIN,
        poll_s=0.05,
        upload_buffer_bytes=budget,
        body_timeout_s=body_timeout_s,
    )
    server = ServerThread(cfg)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            task_id = create_task(
                http, task_config(clients_per_round=3, min_reports=3, deadline_s=120.0)
            )
            keys = [auth.generate_private_key() for _ in range(4)]
            for key in keys:
                assert _register(http, key).status_code == 200
            selected, outsider = keys[:3], keys[3]
            assigned: dict[int, int] = {}
            give_up = time.monotonic() + 30
            while len(assigned) < 3 and time.monotonic() < give_up:
                for i, key in enumerate(selected):
                    if i in assigned:
                        continue
                    body = json.dumps({"task_id": task_id}).encode()
                    r = http.post(
                        "/v1/checkin",
                        content=body,
                        headers={
                            **signed_headers(key, "POST", "/v1/checkin", 0, body),
                            "content-type": "application/json",
                        },
                    )
                    assert r.status_code == 200, r.text
                    if r.json().get("assignment"):
                        assigned[i] = r.json()["assignment"]["round_id"]
                time.sleep(0.05)
            rounds = set(assigned.values())
            assert len(assigned) == 3 and len(rounds) == 1, assigned
            (rid,) = rounds
            verifier = server.app.state.verifier
            # Count the verifier's key look-ups per device: an upload's first step once its
            # head has arrived, so the test knows the server has taken an idle head.
            calls: Counter[str] = Counter()
            look_up = verifier.public_key

            def counting(device_id: str) -> bytes | None:
                calls[device_id] += 1
                key: bytes | None = look_up(device_id)
                return key

            verifier.public_key = counting
            yield Round(
                server=server,
                http=http,
                budget=verifier.body_budget,
                round_id=rid,
                cap=server.app.state.coordinator.upload_cap_for_round(rid),
                selected=selected,
                outsider=outsider,
                pk_calls=calls,
            )
    finally:
        server.stop()


def _id(key: bytes) -> str:
    return auth.device_id_for(auth.public_key_bytes(key))


# -- on a real coordinator -------------------------------------------------------------------


def test_idle_connections_declaring_the_cap_do_not_stop_a_third_devices_upload(
    tmp_path: Path,
) -> None:
    with _round(tmp_path, budget=64 << 10) as rnd:
        # Prepare: a selected device and an outsider open more idle uploads than the budget
        # holds at the round's cap, each declaring the cap (or chunked) and sending no body
        honest, attacker = rnd.selected[0], rnd.selected[1]
        n = rnd.budget.limit_bytes // rnd.cap + 2
        socks = []
        for i in range(n):
            key = attacker if i % 2 else rnd.outsider
            framing = (
                {"transfer-encoding": "chunked"} if i % 5 == 0 else {"content-length": str(rnd.cap)}
            )
            socks.append(rnd.open(rnd.headers(key, b"x" * rnd.cap, **framing)))
        _wait(
            lambda: rnd.pk_calls[_id(attacker)] + rnd.pk_calls[_id(rnd.outsider)] >= n,
            "the idle heads taken",
        )
        idle = rnd.held()
        # Execute: the third device uploads; then one idle connection sends 100 bytes
        frame = _frames(1)[0]
        r = rnd.http.post(rnd.target, content=frame, headers=rnd.headers(honest, frame))
        socks[1].sendall(b"x" * 100)
        rnd.wait_held(1, 100)
        for sock in socks:
            sock.close()
        rnd.wait_held(0, 0)

    # Assert: the idle connections held nothing and the upload went in
    assert n * rnd.cap > rnd.budget.limit_bytes
    assert idle == (0, 0)
    assert r.status_code == 200, r.text
    assert r.json()["duplicate"] is False
    assert rnd.budget.refused == 0


def test_a_trickling_body_holds_only_what_it_has_sent(tmp_path: Path) -> None:
    with _round(tmp_path, budget=64 << 10) as rnd:
        # Prepare
        frame = _frames(1)[0]
        sock = rnd.open(rnd.headers(rnd.selected[2], frame, **{"content-length": str(len(frame))}))
        cuts = [0, 1, len(frame) // 4, len(frame) // 2, len(frame) - 1, len(frame)]
        seen = []
        # Execute: the body a part at a time
        for a, b in zip(cuts[:-2], cuts[1:-1], strict=True):
            sock.sendall(frame[a:b])
            rnd.wait_held(1, b)
            seen.append(rnd.held())
        sock.sendall(frame[cuts[-2] :])
        status, _, body = _answer(sock)
        sock.close()
        rnd.wait_held(0, 0)
        after_success = rnd.held()
        # ... a chunked body from the outsider, a part at a time, signed for other bytes
        chunked = rnd.open(rnd.headers(rnd.outsider, b"other", **{"transfer-encoding": "chunked"}))
        chunked.sendall(b"5\r\nhello\r\n")
        rnd.wait_held(1, 5)
        chunked.sendall(b"3\r\nabc\r\n")
        rnd.wait_held(1, 8)
        chunked.sendall(b"0\r\n\r\n")
        bad_status, _, bad = _answer(chunked)
        chunked.close()
        rnd.wait_held(0, 0)

    # Assert: the body held exactly its bytes that had arrived, then nothing
    assert seen == [(1, b) for b in cuts[1:-1]]
    assert status == 200, body
    assert after_success == (0, 0)
    assert bad_status == 401 and bad["reason"] == str(Reason.BAD_SIGNATURE), bad


def test_busy_refusal_mid_body_is_the_same_for_an_outsider_and_spends_no_nonce(
    tmp_path: Path,
) -> None:
    frames = _frames(2)
    stalled_frame, frame = frames
    # A stalled body one byte short, and half of another: the whole of `frame` does not fit
    budget = len(stalled_frame) - 1 + len(frame) // 2
    with _round(tmp_path, budget=budget) as rnd:
        # Prepare: a selected device's body stalls one byte short of its end
        stalled = rnd.open(
            rnd.headers(
                rnd.selected[1], stalled_frame, **{"content-length": str(len(stalled_frame))}
            ),
            stalled_frame[:-1],
        )
        rnd.wait_held(1, len(stalled_frame) - 1)
        # Execute: a selected device's and the outsider's uploads; the stalled body ends;
        # the first upload is sent again, the very same signed request
        headers = rnd.headers(rnd.selected[0], frame)
        refused = rnd.http.post(rnd.target, content=frame, headers=headers)
        stranger = rnd.http.post(
            rnd.target, content=frame, headers=rnd.headers(rnd.outsider, frame)
        )
        during = rnd.held()
        # ... a raw body that does not fit: it waits at its first part, then is refused
        mid = rnd.open(
            rnd.headers(rnd.selected[2], frame, **{"content-length": str(len(frame))}), frame[:10]
        )
        rnd.wait_held(2, len(stalled_frame) - 1 + 10)
        mid.sendall(frame[10:])
        mid_status, mid_headers, mid_body = _answer(mid)
        mid_closed = _closed(mid)
        mid.close()
        rnd.wait_held(1, len(stalled_frame) - 1)
        stalled.sendall(stalled_frame[-1:])
        stalled_status, _, _ = _answer(stalled)
        stalled.close()
        rnd.wait_held(0, 0)
        again = rnd.http.post(rnd.target, content=frame, headers=headers)

    # Assert: refused 503 busy while the stalled body held its bytes, saying so
    assert during == (1, len(stalled_frame) - 1)
    assert refused.status_code == 503, refused.text
    assert refused.json()["reason"] == str(Reason.BUSY)
    assert "--upload-buffer-mb" in refused.json()["detail"]
    assert refused.headers["retry-after"] == "2"
    assert refused.headers["connection"] == "close"
    # ... the outsider got the very same answer
    assert stranger.status_code == 503 and stranger.json() == refused.json()
    assert stranger.headers["retry-after"] == "2"
    # ... a body refused part-way got it too, and its connection was closed
    assert mid_status == 503 and mid_body == refused.json(), mid_body
    assert mid_headers["retry-after"] == "2" and mid_headers["connection"] == "close"
    assert mid_closed
    # ... the stalled upload and the same signed request sent again were accepted
    assert stalled_status == 200
    assert again.status_code == 200, again.text
    assert again.json()["duplicate"] is False
    assert rnd.budget.refused == 3


def test_every_way_out_gives_the_budget_back(tmp_path: Path) -> None:
    with _round(tmp_path, budget=64 << 10, body_timeout_s=1.5) as rnd:
        key = rnd.selected[0]
        frame = _frames(1)[0]
        declared = {"content-length": str(len(frame))}
        outcomes: dict[str, tuple[int, tuple[int, int]]] = {}
        # Execute / Assert each: the client gone mid-body
        sock = rnd.open(rnd.headers(key, frame, **declared), frame[:100])
        rnd.wait_held(1, 100)
        sock.close()
        rnd.wait_held(0, 0)
        # ... the body timeout (408)
        sock = rnd.open(rnd.headers(key, frame, **declared), frame[:100])
        rnd.wait_held(1, 100)
        status, _, _ = _answer(sock)
        sock.close()
        rnd.wait_held(0, 0)
        outcomes["timeout"] = (status, rnd.held())
        # ... a chunked body past the round's cap after some of it was held (413)
        sock = rnd.open(rnd.headers(key, frame, **{"transfer-encoding": "chunked"}))
        first = rnd.cap - 10
        sock.sendall(f"{first:x}\r\n".encode() + b"x" * first + b"\r\n")
        rnd.wait_held(1, first)
        sock.sendall(b"14\r\n" + b"y" * 20 + b"\r\n")
        status, _, _ = _answer(sock)
        sock.close()
        rnd.wait_held(0, 0)
        outcomes["too large"] = (status, rnd.held())
        # ... a bad signature (401)
        sock = rnd.open(rnd.headers(key, b"other", **declared), frame)
        status, _, _ = _answer(sock)
        sock.close()
        rnd.wait_held(0, 0)
        outcomes["bad signature"] = (status, rnd.held())
        # ... accepted (200), then the same request replayed (401)
        headers = rnd.headers(key, frame)
        ok = rnd.http.post(rnd.target, content=frame, headers=headers)
        outcomes["accepted"] = (ok.status_code, rnd.held())
        replay = rnd.http.post(rnd.target, content=frame, headers=headers)
        outcomes["replayed"] = (replay.status_code, rnd.held())
        # ... signed for another round (403, after the body)
        other = {
            **signed_headers(key, "POST", rnd.target, rnd.round_id + 1, frame),
            "content-type": OCTET,
            "idempotency-key": uuid.uuid4().hex,
        }
        mismatch = rnd.http.post(rnd.target, content=frame, headers=other)
        outcomes["round mismatch"] = (mismatch.status_code, rnd.held())

    assert outcomes == {
        "timeout": (408, (0, 0)),
        "too large": (413, (0, 0)),
        "bad signature": (401, (0, 0)),
        "accepted": (200, (0, 0)),
        "replayed": (401, (0, 0)),
        "round mismatch": (403, (0, 0)),
    }
    assert rnd.budget.refused == 0


def test_a_body_alone_gets_in_whatever_its_size_but_not_beside_another(tmp_path: Path) -> None:
    frames = _frames(2)
    with _round(tmp_path, budget=20) as rnd:
        # Execute: a frame far above the budget, alone
        alone = rnd.http.post(
            rnd.target, content=frames[0], headers=rnd.headers(rnd.selected[0], frames[0])
        )
        # ... the same size while another body holds 10 bytes, then once it has gone
        holder = rnd.open(
            rnd.headers(rnd.selected[1], frames[1], **{"content-length": str(len(frames[1]))}),
            frames[1][:10],
        )
        rnd.wait_held(1, 10)
        headers = rnd.headers(rnd.selected[2], frames[1])
        beside = rnd.http.post(rnd.target, content=frames[1], headers=headers)
        holder.close()
        rnd.wait_held(0, 0)
        later = rnd.http.post(rnd.target, content=frames[1], headers=headers)

    # Assert
    assert len(frames[0]) > 5 * rnd.budget.limit_bytes
    assert alone.status_code == 200, alone.text
    assert beside.status_code == 503 and beside.json()["reason"] == str(Reason.BUSY)
    assert later.status_code == 200, later.text
    assert rnd.held() == (0, 0)


# -- read_signed_body and BodyBudget directly ------------------------------------------------


@pytest.fixture()
def verifier(tmp_path: Path) -> Iterator[tuple[RequestVerifier, bytes]]:
    store = Store(tmp_path / "plume.db")
    key = auth.generate_private_key()
    public = auth.public_key_bytes(key)
    assert store.register_device(auth.device_id_for(public), public, time.time())
    try:
        yield RequestVerifier(store, 300.0, BodyBudget(1000)), key
    finally:
        store.close()


TARGET = "/v1/rounds/1/updates"


def _signed(key: bytes, body: bytes) -> dict[str, str]:
    return {**signed_headers(key, "POST", TARGET, 1, body), "content-type": OCTET}


async def _read(
    verifier: RequestVerifier, headers: dict[str, str], chunks: AsyncIterator[bytes]
) -> Any:
    return await verifier.read_signed_body(
        method="POST", target=TARGET, headers=headers, chunks=chunks, cap=5000, what="update"
    )


def test_an_error_or_a_cancellation_while_reading_gives_the_parts_back(
    verifier: tuple[RequestVerifier, bytes],
) -> None:
    v, key = verifier
    budget = v.body_budget
    assert budget is not None
    states: dict[str, tuple[int, int]] = {}

    async def failing() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b""
        yield b"de"
        states["before the error"] = (budget.bodies, budget.held)
        raise RuntimeError("the transport broke")

    async def cancelled() -> None:
        parked = asyncio.Event()

        async def stalls() -> AsyncIterator[bytes]:
            yield b"x" * 300
            parked.set()
            await asyncio.Event().wait()
            yield b""

        task = asyncio.ensure_future(_read(v, _signed(key, b"y"), stalls()))
        await parked.wait()
        await asyncio.sleep(0)
        states["stalled"] = (budget.bodies, budget.held)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    # Execute
    with pytest.raises(RuntimeError, match="transport broke"):
        asyncio.run(_read(v, _signed(key, b"abcde"), failing()))
    states["after the error"] = (budget.bodies, budget.held)
    asyncio.run(cancelled())
    states["after the cancellation"] = (budget.bodies, budget.held)

    # Assert: each held its parts while reading (an empty part counts nothing), then none
    assert states == {
        "before the error": (1, 5),
        "after the error": (0, 0),
        "stalled": (1, 300),
        "after the cancellation": (0, 0),
    }


def test_a_refused_part_spends_no_nonce_and_the_same_request_passes_later(
    verifier: tuple[RequestVerifier, bytes],
) -> None:
    v, key = verifier
    budget = v.body_budget
    assert budget is not None
    body = b"z" * 600
    headers = _signed(key, body)

    async def parts() -> AsyncIterator[bytes]:
        yield body[:300]
        yield body[300:]

    # Prepare: another body holds 500 of the 1000 bytes
    assert budget.take(500)
    # Execute: the second part does not fit beside it
    with pytest.raises(ApiError) as refused:
        asyncio.run(_read(v, headers, parts()))
    during = (budget.bodies, budget.held)
    budget.give(500)
    fields, got = asyncio.run(_read(v, headers, parts()))

    # Assert
    assert refused.value.status == 503 and refused.value.reason == Reason.BUSY
    assert refused.value.headers == {"retry-after": "2", "connection": "close"}
    assert during == (1, 500)
    assert got == body and fields.device_id == auth.device_id_for(auth.public_key_bytes(key))
    assert (budget.bodies, budget.held, budget.refused) == (0, 0, 1)


def test_a_bodys_later_parts_are_judged_beside_the_other_bodies_only() -> None:
    budget = BodyBudget(10)
    # A body alone grows past the limit; a new body is then refused, even 1 byte
    assert budget.take(6) and budget.take(6, holding=6)
    assert not budget.take(1)
    budget.give(12)
    # Two bodies: a part that passes the limit beside the other's bytes is refused
    assert budget.take(4) and budget.take(4)
    assert budget.take(2, holding=4)
    assert not budget.take(1, holding=6)
    assert (budget.bodies, budget.held, budget.refused) == (2, 10, 2)
    budget.give(6)
    budget.give(4)
    budget.give(0)  # a body that held nothing
    assert (budget.bodies, budget.held) == (0, 0)


def test_memory_stays_bounded_by_the_limit_or_one_body_alone() -> None:
    """Seeded random interleavings of bodies taking parts, finishing and being refused: the
    bytes held never pass the limit unless one body holds them all, and the counts add up."""
    rng = random.Random(290)
    for _ in range(200):
        limit = rng.randint(1, 5000)
        budget = BodyBudget(limit)
        holding: dict[int, int] = {}
        for step in range(300):
            body = rng.randrange(8)
            if body in holding and rng.random() < 0.1:
                budget.give(holding.pop(body))  # done, or gone
            elif budget.take(size := rng.randint(1, 2000), holding.get(body, 0)):
                holding[body] = holding.get(body, 0) + size
            elif body in holding:
                budget.give(holding.pop(body))  # refused: the body is abandoned
            assert budget.held == sum(holding.values()), step
            assert budget.bodies == len(holding), step
            assert budget.held <= limit or len(holding) == 1, (limit, holding)
        for held in holding.values():
            budget.give(held)
        assert (budget.bodies, budget.held) == (0, 0)
