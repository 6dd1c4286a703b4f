"""The upload budget (`coordinator.service.auth.BodyBudget`) where the app wires it in, and
two of the class's own arguments (helper s65b's mutation pass over the class and its call
sites: `create_app`, `RequestVerifier.read_signed_body`, the `/metrics` collector).

s62a mutated the class itself (tests/coordinator/test_s62a_body_budget.py). These tests kill
the mutants that the covering tests let live: the budget's pace read from another config
value than the body timeout (or the wrong default when the timeout is off), the two
`/metrics` counters read from one field, a chunked upload's 413 naming another cap than its
round's, a stage message to an unknown round read under another cap than the JSON one, a
limit of `True` taken, and the budget's own `wait_s` ignored. The 413s run on a real
coordinator on loopback: a chunked body, with no `Content-Length` to refuse it by, is
refused only as it arrives.
"""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.service import ServerThread, ServiceConfig, create_app
from coordinator.service.auth import DEFAULT_PACE_S, BodyBudget
from coordinator.service.metrics import Metrics
from protocol import auth
from protocol.names import Reason
from protocol.secagg import Stage
from tests._clock import Clock

from .test_h294_overload_resend import _frames, _round, _wait
from .test_h304_upload_buffer_metrics import _local
from .test_h304_waiter_wakeups import VirtualTimeLoop, run_virtual
from .test_service_hardening import _register
from .test_service_support import signed_headers

__all__: list[str] = []

OCTET = "application/octet-stream"


# -- create_app: the budget's limit and pace come from the service config ------------------


@pytest.mark.parametrize(
    ("body_timeout_s", "pace_s"),
    [(60.0, 60.0), (0.0, DEFAULT_PACE_S)],  # 0: no body timeout, the default pace
)
def test_the_apps_budget_takes_its_limit_and_pace_from_the_config(
    tmp_path: Path, body_timeout_s: float, pace_s: float
) -> None:
    # A reservation is kept while its body keeps the pace that ends it within the body
    # timeout (`BodyBudget`): kills `pace_s=config.body_timeout_s or ...` -> `DEFAULT_PACE_S`
    # (a body timeout of 60 s still kept a staller's room at the 120 s pace) and -> `2 *`,
    # and the default `or DEFAULT_PACE_S` -> `or 1.0` (with the timeout off, every body that
    # paused a second lost its room to the next one).
    cfg = ServiceConfig(
        db_path=str(tmp_path / "p.db"), body_timeout_s=body_timeout_s, upload_buffer_bytes=123_457
    )
    app = create_app(cfg)
    try:
        budget = app.state.verifier.body_budget
        assert isinstance(budget, BodyBudget)
        assert (budget.limit_bytes, budget.pace_s) == (123_457, pace_s)
    finally:
        app.state.store.close()


# -- the class's own arguments ---------------------------------------------------------------


@pytest.mark.parametrize("limit_bytes", [True, False, -1, 1.5, "100", None])
def test_a_limit_that_is_no_integer_of_bytes_is_refused(limit_bytes: object) -> None:
    # Kills `isinstance(limit_bytes, bool) or` dropped from the check (True was taken as a
    # budget of 1 byte; s62a's pass refused bad paces, not bad limits). ServiceConfig checks
    # the config's value before; the class is also built directly (the simulator, tests).
    with pytest.raises(ValueError, match="limit_bytes must be an integer >= 0, got "):
        BodyBudget(limit_bytes)  # type: ignore[arg-type]


def test_the_limits_edges_are_taken() -> None:
    assert BodyBudget(0).limit_bytes == 0  # no limit
    assert BodyBudget(1).limit_bytes == 1


def test_a_waiting_body_waits_as_long_as_the_budget_was_told() -> None:
    # `wait_s` (default ROOM_WAIT_S) is how long a first part waits for room: kills
    # `self.wait_s = wait_s` -> `ROOM_WAIT_S` (the budget's own wait was ignored). Virtual
    # time: the waiter is refused at 0.5 s on the loop's clock, not at 2 s.
    budget = BodyBudget(100, wait_s=0.5, clock=Clock())
    holder = budget.open(None)
    assert budget.arrive(holder, 100) is True
    waiter = budget.open(50)
    assert budget.arrive(waiter, 10) is None

    async def main(loop: VirtualTimeLoop) -> tuple[bool, float]:
        return await budget.wait_for_room(waiter), loop.time()

    let_in, at = run_virtual(main)
    budget.close(waiter)
    budget.close(holder)

    assert (let_in, at, waiter.state) == (False, 0.5, "closed")
    assert (budget.refused, budget.held, budget.waiting, budget.bodies) == (1, 0, 0, 0)


# -- /metrics: bodies refused and reservations reclaimed are two counters -------------------


def test_refused_and_reclaimed_bodies_are_counted_apart() -> None:
    # In test_h304_upload_buffer_metrics both counters are 1 at every scrape: kills
    # `reclaimed = b.fell_behind` -> `b.refused` in `UploadBuffer.collect` (and the reverse).
    metrics = Metrics()
    clock = Clock()
    budget = BodyBudget(100, pace_s=120.0, clock=clock)
    metrics.upload_buffer.budget = budget
    staller = budget.open(60)
    assert budget.arrive(staller, 1) is True  # holds 1, reserves 59; behind its pace at 2 s
    holder = budget.open(None)
    assert budget.arrive(holder, 30) is True  # 90 of 100
    refused = []
    for _ in range(2):  # at 0 s the staller keeps its pace: no room for 20 more
        late = budget.open(None)
        refused.append(budget.arrive(late, 20))
        budget.close(late)
    clock.now = 3.0
    newcomer = budget.open(None)
    admitted = budget.arrive(newcomer, 20)  # the staller gives its 59 back

    got = _local(metrics)
    for body in (staller, holder, newcomer):
        budget.close(body)

    assert refused == [False, False] and admitted is True
    assert (got["refused_total"], got["reclaimed_total"]) == (2, 1)
    assert (got["held_bytes"], got["reserved_bytes"], got["bodies"]) == (51, 0, 3)


# -- read_signed_body: a chunked upload past its round's cap, over HTTP ----------------------


def _chunked_post(
    url: str, target: str, headers: dict[str, str], parts: list[bytes]
) -> tuple[int, dict[str, Any]]:
    """POST a chunked body of `parts` on a raw socket (no Content-Length; httpx would send
    one); the answer's status and JSON body."""
    host, port = url.removeprefix("http://").split(":")
    head = f"POST {target} HTTP/1.1\r\nhost: {host}\r\ntransfer-encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    chunks = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in parts)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode() + chunks + b"0\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            assert more, "the coordinator closed the connection without an answer"
            data += more
        answer, _, rest = data.partition(b"\r\n\r\n")
        lines = answer.decode().split("\r\n")
        fields = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        while len(rest) < int(fields["content-length"]):
            more = sock.recv(65536)
            assert more, "the answer's body was cut short"
            rest += more
    return int(lines[0].split()[1]), json.loads(rest)


def test_a_chunked_upload_past_its_rounds_cap_is_413_naming_that_cap(tmp_path: Path) -> None:
    # With no Content-Length the route refuses the body at the first byte past its round's
    # cap (`size > cap`), and its detail names that cap: kills `{cap}` -> `{cap + 1}` in that
    # 413's detail (the 413 for a declared length has its own tests). Nothing is held after,
    # no busy refusal is counted, and the device's real upload is then taken.
    frame = _frames(1)[0]
    with _round(tmp_path, budget=4 * len(frame), devices=1) as rnd:
        key = rnd.keys[0]
        body = b"\x00" * (rnd.cap + 1)
        headers = {
            **signed_headers(key, "POST", rnd.target, rnd.round_id, body),
            "content-type": OCTET,
            "idempotency-key": uuid.uuid4().hex,
        }

        parts = [body[: rnd.cap], body[-1:]]
        status, answer = _chunked_post(rnd.server.url, rnd.target, headers, parts)
        _wait(lambda: (rnd.budget.held, rnd.budget.reserved, rnd.budget.bodies) == (0, 0, 0),
              "the budget given back")  # fmt: skip
        taken = rnd.http.post(rnd.target, content=frame, headers=rnd.headers(key, frame))

    assert (status, answer["reason"]) == (413, Reason.TOO_LARGE)
    assert answer["detail"] == f"update above the {rnd.cap}-byte cap", answer
    assert rnd.budget.refused == 0
    assert taken.status_code == 200, taken.text
    assert taken.json()["duplicate"] is False


# -- read_signed_body: a secure stage message to a round the coordinator has no cap for -------


def test_a_stage_message_to_an_unknown_round_is_capped_at_the_json_cap(tmp_path: Path) -> None:
    # No open secure round names a cap for it (`secure_upload_cap` is None), so the route
    # reads at most `json_body_cap` bytes, as a plain upload to an unknown round does (that
    # one is test_s54f_413_closes'): kills `or config.json_body_cap` -> `or
    # config.upload_buffer_bytes` there (the 70,000 bytes were read, and verified, under a
    # 256 MiB cap), and the detail's `what` -> "update".
    cfg = ServiceConfig(db_path=str(tmp_path / "p.db"), admin_token="s65b")
    key = auth.generate_private_key()
    body = b"\0" * (cfg.json_body_cap + 4464)
    target = f"/v1/secure/rounds/999/stages/{Stage.SHARE_KEYS}"
    with ServerThread(cfg) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert _register(http, key).status_code == 200
        headers = {**signed_headers(key, "POST", target, 999, body), "content-type": OCTET}
        r = http.post(target, content=body, headers=headers)

    assert r.status_code == 413, r.text
    assert r.json()["reason"] == Reason.TOO_LARGE
    assert r.json()["detail"] == f"{Stage.SHARE_KEYS} upload above the {cfg.json_body_cap}-byte cap"
