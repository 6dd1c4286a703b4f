"""The bandwidth ledger against the bytes that really crossed the socket: real SDK devices talk
to a loopback uvicorn coordinator through a byte-counting TCP relay, and every byte the relay
copied must be in a round's ledger or in the control-traffic counter, exactly."""

from __future__ import annotations

import json
import logging
import re
import socket
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.service import ServerThread, ServiceConfig
from coordinator.service.app import create_app
from protocol.messages import CodecParams
from protocol.secagg import Stage
from sdk.client import Client, Mod, Send

from .test_service_secure import STAGE_TIMEOUT_S
from .test_service_support import (
    ADMIN,
    FORM_SIGNED,
    SPEC,
    SoftmaxTrainer,
    await_assignment,
    create_task,
    device_client,
    drive_stages,
    expire_stage,
    local_data,
    task_config,
    wait_until,
)
from .wire_relay import (
    ByteRelay,
    Exchange,
    HttpMessage,
    WireParseError,
    exchanges,
    final_response,
)

Key = tuple[int, str, str]  # (round id, device id, direction)


@pytest.fixture()
def relayed_served(tmp_path: Path) -> Iterator[tuple[ByteRelay, str, ServerThread]]:
    """(relay, relay url, server): a coordinator on loopback reached only through the relay."""
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02
    )
    server = ServerThread(cfg)
    with server as upstream:
        relay = ByteRelay(upstream)
        with relay as url:
            yield relay, url, server


@pytest.fixture()
def relayed(relayed_served: tuple[ByteRelay, str, ServerThread]) -> tuple[ByteRelay, str]:
    """(relay, relay url), as `relayed_served`."""
    relay, url, _ = relayed_served
    return relay, url


def _split(relay: ByteRelay) -> list[Exchange]:
    return [ex for up, down in relay.connections() for ex in exchanges(up, down)]


def _response(ex: Exchange) -> HttpMessage:
    assert ex.response is not None, f"no response to {ex.request.start!r}"
    return ex.response


def _relay_view(exs: list[Exchange]) -> tuple[dict[Key, list[int]], dict[str, int]]:
    """Relay bytes per (round, device, direction) as [wire bytes, requests] for exchanges whose
    response names a ledger round, and the rest (control traffic) per direction."""
    rounds: dict[Key, list[int]] = defaultdict(lambda: [0, 0])
    control = {"up": 0, "down": 0}
    for ex in exs:
        if ex.response is None:
            continue  # lost with its connection: neither side completed it (see the cut test)
        rid = ex.response.header("x-plume-ledger-round")
        if rid is None:
            control["up"] += ex.up
            control["down"] += ex.down
            continue
        device = ex.request.header("x-plume-device")
        assert device is not None, ex.request.start
        for direction, n in (("up", ex.up), ("down", ex.down)):
            cell = rounds[(int(rid), device, direction)]
            cell[0] += n
            cell[1] += 1
    return dict(rounds), control


def _ledger_view(
    http: httpx.Client, round_ids: set[int], expect: dict[Key, list[int]]
) -> dict[Key, list[int]]:
    """GET /v1/rounds/{id}/bandwidth as [wire bytes, requests] per (round, device, direction),
    polled until it equals `expect` or 5 s pass (an exchange is accounted just after its
    response left, so the last one can trail the device's view by a moment)."""
    give_up = time.monotonic() + 5.0
    while True:
        out: dict[Key, list[int]] = {}
        for rid in sorted(round_ids):
            r = http.get(
                f"/v1/rounds/{rid}/bandwidth", headers={"authorization": f"Bearer {ADMIN}"}
            )
            assert r.status_code == 200, r.text
            for row in r.json()["rows"]:
                out[(rid, row["device_id"], row["direction"])] = [
                    row["wire_bytes"],
                    row["requests"],
                ]
        if out == expect or time.monotonic() > give_up:
            return out
        time.sleep(0.05)


_CONTROL = re.compile(r'^plume_control_wire_bytes_total\{direction="(up|down)"\} (\S+)$', re.M)


def _control_settles(
    relay: ByteRelay, http: httpx.Client, missing: dict[str, int] | None = None
) -> tuple[dict[str, int], dict[str, int]]:
    """(the relay's control bytes less `missing`, the coordinator's control counter) once they
    agree, or the last pair seen. A scrape reports the exchanges accounted before it (not
    itself), and the middleware accounts an exchange just after its response left: poll."""
    less = missing or {"up": 0, "down": 0}
    give_up = time.monotonic() + 5.0
    while True:
        _, seen = _relay_view(_split(relay))  # every exchange before this scrape
        expected = {d: seen[d] - less[d] for d in ("up", "down")}
        text = http.get("/metrics").text
        counted = {d: int(float(v)) for d, v in _CONTROL.findall(text)}
        if counted == expected or time.monotonic() > give_up:
            return expected, counted
        time.sleep(0.05)


def _sdk_view(clients: list[Client]) -> dict[Key, list[int]]:
    return {
        (rid, c.device_id, d): [cell["wire_bytes"], cell["requests"]]
        for c in clients
        for rid, row in c.bandwidth.items()
        for d, cell in row.items()
    }


def _run_plain(
    url: str,
    root: Path,
    n: int,
    rounds: int,
    task_id: int,
    *mods: Mod,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Client]:
    clients = [device_client(url, str(root / f"dev{i}"), mods=mods, sleep=sleep) for i in range(n)]
    for c in clients:
        c.register()
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            x, y = local_data(i)
            for _ in range(rounds):
                a = await_assignment(clients[i], task_id)
                clients[i].train_round(a, SoftmaxTrainer(), x, y)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return clients


def test_plain_rounds_ledger_equals_the_relayed_bytes(
    relayed: tuple[ByteRelay, str], tmp_path: Path
) -> None:
    # Prepare: the admin client and two devices all reach the coordinator through the relay
    relay, url = relayed
    with httpx.Client(base_url=url) as http:
        task_id = create_task(http, task_config(rounds=2))
        # Execute
        clients = _run_plain(url, tmp_path, n=2, rounds=2, task_id=task_id)
        wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
        # Assert: per round, device and direction the ledger holds exactly the relayed bytes
        rounds, _ = _relay_view(_split(relay))
        assert {k[0] for k in rounds} == {1, 2}
        assert _ledger_view(http, {1, 2}, rounds) == rounds
        assert _sdk_view(clients) == rounds
        expected, counted = _control_settles(relay, http)
        assert counted == expected
        assert expected["up"] > 0 and expected["down"] > 0


def _expect_continue(request: httpx.Request, send: Send) -> httpx.Response:
    request.headers["expect"] = "100-continue"
    return send(request)


def _expect_continue_listed(request: httpx.Request, send: Send) -> httpx.Response:
    # h11's rule: the token in a comma-separated list, any case (helper-336: the ledger and the
    # SDK matched the whole value only, and missed these 25 bytes)
    request.headers["expect"] = "100-Continue, x-foo"
    return send(request)


def _connection_close(request: httpx.Request, send: Send) -> httpx.Response:
    request.headers["connection"] = "close"
    return send(request)


@pytest.mark.parametrize(
    "mod",
    [_expect_continue, _expect_continue_listed, _connection_close],
    ids=["expect", "expect-listed", "close"],
)
def test_bytes_uvicorn_adds_on_its_own_are_in_the_ledger(
    relayed: tuple[ByteRelay, str], tmp_path: Path, mod: Mod
) -> None:
    # Prepare: devices whose every request asks for `100 Continue` (uvicorn sends a 25-byte
    # interim response) or closes its connection (uvicorn adds `connection: close`)
    relay, url = relayed
    with httpx.Client(base_url=url) as http:
        task_id = create_task(http, task_config(rounds=1))
        # Execute
        clients = _run_plain(url, tmp_path, 2, 1, task_id, mod)
        wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
        # Assert: the relay saw those bytes, and the ledger, the SDK and the control counter hold them
        exs = _split(relay)
        device_exs = [ex for ex in exs if ex.request.header("x-plume-device") is not None]
        if mod is not _connection_close:
            assert all(ex.interim and ex.interim[0].size == 25 for ex in device_exs)
        else:
            assert all(_response(ex).header("connection") == "close" for ex in device_exs)
            assert len(relay.connections()) >= len(device_exs)  # a new connection per request
        rounds, _ = _relay_view(exs)
        assert _ledger_view(http, {1}, rounds) == rounds
        assert _sdk_view(clients) == rounds
        expected, counted = _control_settles(relay, http)
        assert counted == expected


def test_secure_round_ledger_equals_the_relayed_bytes(
    relayed_served: tuple[ByteRelay, str, ServerThread], tmp_path: Path
) -> None:
    # Prepare: a SecAgg+ task of four devices, one of which goes silent before unmasking: the
    # unmask stage times out on the test's clock once the other three answered (a stage every
    # device uploads closes at once: the 60 s timeout is never reached)
    relay, url, server = relayed_served
    with httpx.Client(base_url=url) as http:
        cfg = task_config(
            rounds=1,
            clients_per_round=4,
            min_reports=3,
            selection_timeout_s=60.0,
            downlink=CodecParams(topk=1.0, bits=32),
            secure={"coord_fraction": 0.5, "stage_timeout_s": STAGE_TIMEOUT_S},
        )
        task_id = create_task(http, cfg)
        coordinator = server.app.state.coordinator
        clock = drive_stages(coordinator, task_id)
        clients = [device_client(url, str(tmp_path / f"dev{i}")) for i in range(4)]
        for c in clients:
            c.register()
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                a = await_assignment(clients[i], task_id)
                delta = np.random.default_rng(i).normal(0, 0.05, SPEC.size).astype(np.float32)
                clients[i].secure_round(
                    a, lambda params: (delta, 1, 0.0), drop_at=Stage.UNMASK if i == 0 else None
                )
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        # Execute
        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            expire_stage(coordinator, task_id, clock, Stage.UNMASK, 3)
        finally:
            for t in threads:
                t.join(60)
        status = wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
        # Assert: the round committed, and every stage's bytes are in its ledger exactly
        assert not errors, errors
        assert status["version"] == 1
        exs = _split(relay)
        secure = [ex for ex in exs if ex.request.start.split(" ")[1].startswith("/v1/secure/")]
        uploads = {ex.request.start for ex in secure if ex.request.start.startswith("POST")}
        assert len(uploads) == 4  # the four stages, each counted once below per device
        assert all(_response(ex).header("x-plume-ledger-round") == "1" for ex in secure)
        rounds, _ = _relay_view(exs)
        assert {k[0] for k in rounds} == {1} and len(rounds) == 8  # 4 devices x up/down
        assert _ledger_view(http, {1}, rounds) == rounds
        assert _sdk_view(clients) == rounds
        expected, counted = _control_settles(relay, http)
        assert counted == expected


def test_an_upload_lost_mid_body_is_counted_nowhere_and_its_retry_once(
    relayed: tuple[ByteRelay, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: the link drops the first upload 10 bytes into its body; the SDK retries it
    caplog.set_level(logging.INFO, logger="plume.coordinator")
    relay, url = relayed
    with httpx.Client(base_url=url) as http:
        task_id = create_task(http, task_config(rounds=1))
        relay.cut_once(b"POST /v1/rounds/1/updates", body_keep=10)
        # Execute
        clients = _run_plain(url, tmp_path, 2, 1, task_id)
        wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
        # Assert: the lost attempt's bytes (its head and 10 body bytes) crossed the wire and are in
        # no ledger: the coordinator never completed the request, the device never got an answer
        exs = _split(relay)
        lost = [ex for ex in exs if ex.response is None]
        assert len(lost) == 1 and lost[0].request.start.startswith("POST /v1/rounds/1/updates")
        uploads = [ex for ex in exs if ex.request.start.startswith("POST /v1/rounds/1/updates")]
        assert len(uploads) == 3  # the lost attempt, its retry, the other device's upload
        assert all(ex.request.size > lost[0].request.size for ex in uploads if ex.response)
        assert all(ex.response.status == 200 for ex in uploads if ex.response)
        rounds, _ = _relay_view(exs)
        assert all(n[1] == 3 for n in rounds.values())  # check-in, model, one upload each
        assert _ledger_view(http, {1}, rounds) == rounds
        assert _sdk_view(clients) == rounds
        expected, counted = _control_settles(relay, http)
        assert counted == expected
        # A dropped link is routine: one info line, no server-error traceback.
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("client disconnected during POST" in r.getMessage() for r in caplog.records)


def _chunked_upload(request: httpx.Request, send: Send) -> httpx.Response:
    """Re-send an upload with its body in two chunks (`Transfer-Encoding: chunked`), as a
    client that streams its body would; other requests pass unchanged."""
    if not request.url.path.endswith("/updates"):
        return send(request)
    body = request.content
    headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]
    chunks = iter([body[:7], body[7:]])
    return send(httpx.Request(request.method, request.url, headers=headers, content=chunks))


def test_chunked_request_framing_is_the_one_documented_gap_in_a_round(
    relayed: tuple[ByteRelay, str], tmp_path: Path
) -> None:
    # Prepare: devices that send their uploads chunked
    relay, url = relayed
    with httpx.Client(base_url=url) as http:
        task_id = create_task(http, task_config(rounds=1))
        # Execute
        _run_plain(url, tmp_path, 2, 1, task_id, _chunked_upload)
        wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
        # Assert: the ledger counts a chunked body by its payload; the chunk-size lines and the
        # last chunk, and nothing else, are on the wire and not in the ledger
        exs = _split(relay)
        uploads = [ex for ex in exs if ex.request.header("transfer-encoding") == "chunked"]
        assert len(uploads) == 2 and all(_response(ex).status == 200 for ex in uploads)
        framing: dict[str, int] = defaultdict(int)
        for ex in uploads:
            n = len(ex.request.body)
            gap = ex.request.size - ex.request.head - n
            assert gap == len("7\r\n\r\n") + len(f"{n - 7:x}\r\n\r\n") + len("0\r\n\r\n")
            framing[str(ex.request.header("x-plume-device"))] += gap
        rounds, _ = _relay_view(exs)
        less = {
            k: [wire - (framing[k[1]] if k[2] == "up" else 0), n] for k, (wire, n) in rounds.items()
        }
        assert _ledger_view(http, {1}, less) == less
        expected, counted = _control_settles(relay, http)
        assert counted == expected


def _raw(url: str, data: bytes) -> HttpMessage:
    """Send `data` on a new connection and read one response (the connection is then closed)."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    got = b""
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        while True:
            try:
                return final_response(got, data.split(b" ")[0].decode())
            except WireParseError:
                chunk = s.recv(65536)
                assert chunk, f"connection closed after {got!r}"
                got += chunk


def test_control_traffic_counts_what_the_coordinator_read_and_answered(
    relayed: tuple[ByteRelay, str], tmp_path: Path
) -> None:
    # Prepare: a task, so the routes below exist
    relay, url = relayed
    with httpx.Client(base_url=url) as http:
        create_task(http, task_config(rounds=1))
        # Execute: three requests no SDK sends
        unread = b"u" * 100  # arrives with its head
        unsigned = _raw(
            url,
            b"POST /v1/rounds/1/updates HTTP/1.1\r\nhost: x\r\n"
            b"content-type: application/octet-stream\r\ncontent-length: 100\r\n\r\n" + unread,
        )
        too_large = _raw(
            url, b"POST /v1/devices HTTP/1.1\r\nhost: x\r\ncontent-length: 70000\r\n\r\n"
        )
        garbage = _raw(url, b"NOT HTTP AT ALL\r\n\r\n")
        # Assert: a body refused before it was read is counted as far as the coordinator took
        # it off the connection (here all 100 bytes, which arrived with the head: before stop
        # 50, 0 of them, though the connection was kept); the middleware's own 413 is counted; a
        # request uvicorn could not parse never reached the app and is counted nowhere
        assert (unsigned.status, too_large.status, garbage.status) == (401, 413, 400)
        exs = _split(relay)
        not_http = [ex for ex in exs if ex.request.start == "NOT HTTP AT ALL"]
        assert len(not_http) == 1
        missing = {"up": not_http[0].up, "down": not_http[0].down}
        expected, counted = _control_settles(relay, http, missing)
        assert counted == expected


def test_control_requests_uvicorn_frames_itself_are_counted_exactly(
    relayed: tuple[ByteRelay, str],
) -> None:
    # Prepare
    relay, url = relayed
    with httpx.Client(base_url=url) as http:
        body = b'{"public_key":"AA"}'
        # Execute: an HTTP/1.0 request (uvicorn adds `connection: close`), an `Expect` whose body
        # the app never reads (no interim response), one whose body it reads (`100 Continue`), and
        # a HEAD (uvicorn sends the head of the app's response, not its body)
        old = _raw(url, b"GET /healthz HTTP/1.0\r\nhost: x\r\n\r\n")
        unread = _raw(url, b"GET /healthz HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n\r\n")
        read = _raw(
            url,
            b"POST /v1/devices HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
            + FORM_SIGNED
            + b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body),
        )
        head = _raw(url, b"HEAD /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        # A header written without the space after the colon, or with more than one: counted as
        # sent (the head's size as it arrived, server.CountingH11Protocol; helper-203 on
        # helper-202's F5: it was counted as `name: value`, 1 more byte here, 2 fewer for the
        # second header)
        spacing = _raw(url, b"GET /healthz HTTP/1.1\r\nhost:x\r\nx-pad:   y\r\n\r\n")
        # Assert: the relay saw each of those bytes, and the control counter holds exactly them
        assert (old.status, unread.status, read.status) == (200, 200, 400)
        assert head.body == b"" and int(head.header("content-length") or 0) > 0
        assert spacing.status == 200
        assert old.header("connection") == "close"
        exs = {ex.request.start: ex for ex in _split(relay)}
        assert not exs["GET /healthz HTTP/1.1"].interim
        assert [m.start for m in exs["POST /v1/devices HTTP/1.1"].interim] == [
            "HTTP/1.1 100 Continue"
        ]
        missing = {"up": 0, "down": 0}
        expected, counted = _control_settles(relay, http, missing)
        assert counted == expected
        # h11's rule for `Expect` (helper-336): a token in a list is an expectation, and an
        # HTTP/1.0 request's is ignored (the ledger counted the 25 bytes the other way round)
        listed = _raw(
            url,
            b"POST /v1/devices HTTP/1.1\r\nhost: x\r\nexpect: x-foo, 100-continue,\r\n"
            + FORM_SIGNED
            + b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body),
        )
        expected, counted = _control_settles(relay, http)
        assert counted == expected  # each on its own: the two old errors, -25 and +25, cancel
        old_expect = _raw(
            url,
            b"POST /v1/devices HTTP/1.0\r\nhost: x\r\nexpect: 100-continue\r\n"
            + FORM_SIGNED
            + b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body),
        )
        assert (listed.status, old_expect.status) == (400, 400)
        posts = [ex for ex in _split(relay) if ex.request.start == "POST /v1/devices HTTP/1.1"]
        assert [[m.start for m in ex.interim] for ex in posts] == [["HTTP/1.1 100 Continue"]] * 2
        (old_post,) = [
            ex for ex in _split(relay) if ex.request.start == "POST /v1/devices HTTP/1.0"
        ]
        assert not old_post.interim
        expected, counted = _control_settles(relay, http)
        assert counted == expected


@pytest.mark.parametrize(
    ("error", "status"),
    [(RuntimeError("injected coordinator bug"), 500), (sqlite3.OperationalError("locked"), 503)],
    ids=["bug-500", "store-503"],
)
def test_a_failed_upload_and_its_retry_on_the_wire(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    status: int,
) -> None:
    # Prepare: a coordinator whose first upload fails: with a bug (an unhandled error, which
    # the wire middleware answers with a JSON 500 `internal_error`), or with a store error
    # (the app's 503 store_unavailable). The SDK retries both at once (no sleeping here).
    caplog.set_level(logging.INFO, logger="plume.coordinator")
    cfg = ServiceConfig(
        db_path=str(tmp_path / "plume.db"), admin_token=ADMIN, poll_s=0.05, tick_s=0.02
    )
    app = create_app(cfg)
    coordinator = app.state.coordinator
    submit = coordinator.submit
    failed: list[str] = []

    def failing(round_id: int, device_id: str, key: str, frame: bytes, **kw: Any) -> Any:
        if not failed:
            failed.append(device_id)
            raise error
        return submit(round_id, device_id, key, frame, **kw)

    monkeypatch.setattr(coordinator, "submit", failing)
    with ServerThread(cfg, app=app) as upstream:
        relay = ByteRelay(upstream)
        with relay as url:
            with httpx.Client(base_url=url) as http:
                task_id = create_task(http, task_config(rounds=1))
                # Execute
                clients = _run_plain(url, tmp_path, 2, 1, task_id, sleep=lambda s: None)
                wait_until(http, f"/v1/admin/tasks/{task_id}", "state", "done")
                # Assert: the failed attempt is in the round like its retry, for both errors
                exs = _split(relay)
                errors = [ex for ex in exs if ex.response and ex.response.status == status]
                assert len(errors) == 1 and errors[0].request.header("x-plume-device") == failed[0]
                assert errors[0].request.start.startswith("POST /v1/rounds/1/updates")
                failure = _response(errors[0])
                assert failure.header("x-plume-ledger-round") == "1"
                assert not [ex for ex in exs if ex.response is None]  # no request lost
                # the 500 ends its connection; the 503 leaves it open for the retry
                on_its_connection = next(
                    c
                    for c in (exchanges(up, down) for up, down in relay.connections())
                    if errors[0] in c
                )
                assert (on_its_connection[-1] == errors[0]) == (status == 500)
                rounds, _ = _relay_view(exs)
                assert rounds[(1, failed[0], "up")][1] == 4  # check-in, model, upload, retry
                assert _ledger_view(http, {1}, rounds) == rounds
                assert _sdk_view(clients) == rounds
                expected, counted = _control_settles(relay, http)
                assert counted == expected
    if status == 500:
        # The 500 is the service's JSON error, says nothing of the exception, and closes its
        # connection (the retry went on a new one); the traceback is in the log, once, under
        # the incident id the device was given
        assert failure.header("content-type") == "application/json"
        assert failure.header("connection") == "close"
        body = json.loads(failure.body)
        assert set(body) == {"reason", "detail"} and body["reason"] == "internal_error"
        incident = re.fullmatch(
            r"the coordinator failed on this request \(incident ([0-9a-f]{8}) in its log\); "
            r"retry later",
            body["detail"],
        )
        assert incident is not None
        logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(logged) == 1 and incident.group(1) in logged[0].getMessage()
        assert logged[0].exc_info is not None and logged[0].exc_info[1] is error
        assert "POST /v1/rounds/1/updates" in logged[0].getMessage()


def test_a_500_outside_any_round_is_control_traffic_and_says_nothing_of_the_bug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: an admin route that fails with an error whose text must stay in the log
    cfg = ServiceConfig(db_path=str(tmp_path / "plume.db"), admin_token=ADMIN)
    app = create_app(cfg)
    secret = "cannot open /srv/plume/private.key"

    def failing(task_id: int) -> Any:
        raise RuntimeError(secret)

    app.state.coordinator.task_status = failing
    with ServerThread(cfg, app=app) as upstream:
        relay = ByteRelay(upstream)
        with relay as url, httpx.Client(base_url=url) as http:
            # Execute: the failing request, then a healthy one (on a new connection)
            failed = http.get("/v1/admin/tasks/1", headers={"authorization": f"Bearer {ADMIN}"})
            healthy = http.get("/healthz")
            # Assert: every byte of both, the 500 included, is in the control counter
            expected, counted = _control_settles(relay, http)
            assert counted == expected
            conns = [exchanges(up, down) for up, down in relay.connections()]
    assert failed.status_code == 500 and healthy.status_code == 200
    assert failed.json()["reason"] == "internal_error"
    assert secret not in failed.text and "Traceback" not in failed.text
    assert failed.headers["connection"] == "close" and "x-plume-ledger-round" not in failed.headers
    assert len(conns) > 1 and [_response(ex).status for ex in conns[0]] == [500]  # it closed
    assert any(
        r.exc_info and str(r.exc_info[1]) == secret and r.levelno == logging.ERROR
        for r in caplog.records
    )


# -- the relay's splitter itself: it must recover every message's size from the raw bytes --------

_Body = st.binary(max_size=40)
_Framed = st.tuples(_Body, st.none() | st.integers(1, 9))  # (body, chunk size or Content-Length)


def _frame(body: bytes, chunk: int | None) -> tuple[bytes, bytes]:
    """(framing headers, encoded body): Content-Length, or chunks of `chunk` bytes."""
    if chunk is None:
        return b"content-length: %d\r\n" % len(body), body
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    return b"transfer-encoding: chunked\r\n", encoded


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["GET", "POST", "HEAD"]),
            _Framed,
            st.integers(0, 2),  # interim 100 Continue responses
            st.sampled_from([200, 204, 401, 500]),
            _Framed,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_splitter_recovers_every_message_size(
    spec: list[tuple[str, tuple[bytes, int | None], int, int, tuple[bytes, int | None]]],
) -> None:
    # Prepare: a connection's two streams, written here message by message
    up, down = b"", b""
    want = []
    for method, (qbody, qchunk), interims, status, (rbody, rchunk) in spec:
        qframe, qbytes = _frame(qbody, qchunk)
        request = b"%s /p HTTP/1.1\r\nhost: x\r\n%s\r\n%s" % (method.encode(), qframe, qbytes)
        interim = b"HTTP/1.1 100 Continue\r\n\r\n" * interims
        if status == 204:
            response = b"HTTP/1.1 204 No Content\r\n\r\n"
        elif method == "HEAD":  # the head announces a body that is not sent
            response = b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n" % (status, len(rbody))
        else:
            rframe, rbytes = _frame(rbody, rchunk)
            response = b"HTTP/1.1 %d X\r\n%s\r\n%s" % (status, rframe, rbytes)
        up, down = up + request, down + interim + response
        body = b"" if status == 204 or method == "HEAD" else rbody
        want.append((len(request), len(interim) + len(response), qbody, body))
    # Execute
    got = exchanges(up, down)
    # Assert
    assert [(ex.up, ex.down, ex.request.body, _response(ex).body) for ex in got] == want


def test_splitter_reports_requests_a_closed_connection_left_unanswered() -> None:
    # Prepare: a complete request with no answer; one cut in its body; one refused before it
    whole = b"POST /p HTTP/1.1\r\ncontent-length: 4\r\n\r\nabcd"
    refusal = b"HTTP/1.1 413 X\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"
    # Execute
    unanswered = exchanges(whole, b"")
    cut = exchanges(whole[:-1], b"")
    refused = exchanges(whole[:-4], refusal)
    # Assert
    assert [(ex.up, ex.response) for ex in unanswered] == [(len(whole), None)]
    assert [(ex.request.start, ex.up, ex.response) for ex in cut] == [
        ("POST /p HTTP/1.1", len(whole) - 1, None)
    ]
    assert [(ex.up, ex.down, _response(ex).status) for ex in refused] == [
        (len(whole) - 4, len(refusal), 413)
    ]
    with pytest.raises(WireParseError):
        exchanges(whole, refusal + b"extra")  # bytes after the last answer belong to nothing
