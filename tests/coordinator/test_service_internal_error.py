"""The wire middleware and an unhandled error, driven as ASGI without a socket: the 500 it
answers, an error after the answer started, and a failed round-membership check. The relay
tests in test_ledger_wire_audit.py hold the same against the bytes on the wire."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from coordinator.service.metrics import Metrics
from coordinator.service.store import Store
from coordinator.service.wire import LEDGER_HEADER, STATE_KEY, Attribution, WireMiddleware

Message = dict[str, Any]
REQUEST = b"GET /v1/x HTTP/1.1\r\nhost: x\r\n\r\n"  # what _scope() describes, as sent
DEVICE = "ab" * 16


def _scope() -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/v1/x",
        "raw_path": b"/v1/x",
        "query_string": b"",
        "http_version": "1.1",
        "headers": [(b"host", b"x")],
    }


_STATUS_LINE = {200: b"HTTP/1.1 200 OK\r\n", 500: b"HTTP/1.1 500 Internal Server Error\r\n"}


def _wire_response(messages: list[Message]) -> int:
    """The response's HTTP/1.1 bytes, framed by hand from the ASGI messages."""
    start = messages[0]
    head = _STATUS_LINE[start["status"]]
    head += b"".join(k + b": " + v + b"\r\n" for k, v in start["headers"]) + b"\r\n"
    return len(head) + sum(len(m.get("body", b"")) for m in messages[1:])


def _control(metrics: Metrics) -> dict[str, float | None]:
    get = metrics.registry.get_sample_value
    return {d: get("plume_control_wire_bytes_total", {"direction": d}) for d in ("up", "down")}


def _drive(middleware: WireMiddleware) -> tuple[list[Message], BaseException | None]:
    """One GET through `middleware`: the messages it sent, and what it raised (or None)."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    try:
        asyncio.run(middleware(_scope(), receive, send))
    except Exception as exc:
        return sent, exc
    return sent, None


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "plume.db"))


def test_an_error_before_the_answer_is_a_json_500_counted_as_control(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: an app that fails before it answers, with a message that must stay private
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise KeyError("row 7 of /srv/plume/plume.db")

    metrics = Metrics()
    middleware = WireMiddleware(app, store, metrics, json_cap=1 << 16)
    # Execute
    sent, raised = _drive(middleware)
    # Assert: answered (not raised on), closed, counted, and logged with its traceback
    assert raised is None
    start, body = sent
    assert start["status"] == 500
    assert (b"connection", b"close") in start["headers"]
    doc = json.loads(body["body"])
    assert doc["reason"] == "internal_error" and "plume.db" not in doc["detail"]
    assert _control(metrics) == {"up": len(REQUEST), "down": _wire_response(sent)}
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is not None and isinstance(record.exc_info[1], KeyError)
    assert "GET /v1/x" in record.getMessage()


def test_an_error_of_a_rounds_device_is_counted_in_that_round_without_payload_down(
    store: Store,
) -> None:
    # Prepare: a signed request of a device of round 3 that fails after the model was chosen
    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["state"][STATE_KEY] = Attribution(
            DEVICE, 3, payload_up=0, payload_down=999, dense_down=4000
        )
        raise RuntimeError("bug")

    metrics = Metrics()
    middleware = WireMiddleware(app, store, metrics, 1 << 16, member=lambda r, d, *_: r == 3)
    # Execute
    sent, raised = _drive(middleware)
    # Assert: named and counted in round 3 (wire bytes, one request each way), no payload down
    assert raised is None and sent[0]["status"] == 500
    assert (LEDGER_HEADER, b"3") in sent[0]["headers"]
    # (round, device, direction, payload, wire, dense, requests) per direction
    assert store.ledger_rows(3) == [
        (3, DEVICE, "down", 0, _wire_response(sent), 0, 1),
        (3, DEVICE, "up", 0, len(REQUEST), 0, 1),
    ]
    assert _control(metrics) == {"up": None, "down": None}  # no control traffic at all


def test_an_error_after_the_answer_started_is_raised_and_what_was_sent_is_counted(
    store: Store,
) -> None:
    # Prepare: an app that sends a whole answer and fails afterwards (a background step)
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"12345"})
        raise RuntimeError("after the answer")

    metrics = Metrics()
    middleware = WireMiddleware(app, store, metrics, json_cap=1 << 16)
    # Execute
    sent, raised = _drive(middleware)
    # Assert: nothing is added to the answer; uvicorn gets the error (it logs it and closes
    # the connection); the bytes that went out are counted
    assert isinstance(raised, RuntimeError) and str(raised) == "after the answer"
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert _control(metrics) == {"up": len(REQUEST), "down": _wire_response(sent)}


def test_a_failed_membership_check_counts_the_answer_as_control_instead_of_cutting_it(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: the round-membership lookup fails (the store is locked) as the answer starts
    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["state"][STATE_KEY] = Attribution(DEVICE, 3)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    def member(round_id: int, device_id: str, *_: object) -> bool:
        raise OSError("database is locked")

    metrics = Metrics()
    middleware = WireMiddleware(app, store, metrics, 1 << 16, member=member)
    # Execute
    sent, raised = _drive(middleware)
    # Assert: the app's answer went out whole, unnamed, as control traffic, with a log line
    assert raised is None and sent[0]["status"] == 200 and sent[1]["body"] == b"{}"
    assert LEDGER_HEADER not in dict(sent[0]["headers"])
    assert _control(metrics) == {"up": len(REQUEST), "down": _wire_response(sent)}
    assert store.ledger_rows(3) == []
    assert any("round 3 membership check failed" in r.getMessage() for r in caplog.records)
