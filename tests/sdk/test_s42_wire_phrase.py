"""A device counts a response's status line with the reason phrase it received (helper-336).

`response_wire_bytes` rebuilt the status line from this Python's `HTTPStatus` phrase: Python
3.13 renamed 413, 416 and 422's phrases ("Content Too Large", 7 bytes shorter than "Request
Entity Too Large"), so a device on one Python counting a coordinator on another was off by
those bytes, where the docs say the device's and the ledger's totals agree to the byte. The
SDK now counts the phrase httpcore read (its `reason_phrase` extension)."""

from __future__ import annotations

from pathlib import Path

import h11
import httpx
import pytest

from protocol.messages import expects_continue, response_wire_bytes
from sdk import Client


def _down_wire_bytes(tmp_path: Path, phrase: bytes | None) -> int:
    """The control bytes down of one check-in answered 200 "wait" with `phrase` received."""

    def handler(request: httpx.Request) -> httpx.Response:
        ext = {} if phrase is None else {"reason_phrase": phrase}
        return httpx.Response(200, json={"action": "wait", "retry_after_s": 1.0}, extensions=ext)

    with Client("http://coord", str(tmp_path), transport=httpx.MockTransport(handler)) as client:
        client.check_in()
        return client.control_bandwidth["down"]["wire_bytes"]


def test_the_received_phrase_is_counted(tmp_path: Path) -> None:
    # Execute: the same answer with this Python's phrase, none received, and a longer one
    ok = _down_wire_bytes(tmp_path / "a", b"OK")
    assumed = _down_wire_bytes(tmp_path / "b", None)
    other = _down_wire_bytes(tmp_path / "c", b"Fine, Thanks")
    # Assert
    assert ok == assumed
    assert other - ok == len(b"Fine, Thanks") - len(b"OK")


@pytest.mark.parametrize(
    ("status", "phrase"),
    [
        (413, b"Content Too Large"),
        (413, b"Request Entity Too Large"),
        (422, b"Unprocessable Content"),
        (599, b""),
    ],
)
def test_response_wire_bytes_takes_the_phrase_given(status: int, phrase: bytes) -> None:
    head = len(b"HTTP/1.1 %d %s\r\n" % (status, phrase)) + len(b"a: b\r\n") + 2
    assert response_wire_bytes(status, [(b"a", b"b")], 10, phrase) == head + 10


@pytest.mark.parametrize(
    ("version", "values", "want"),
    [
        ("1.1", [b"100-continue"], True),
        ("1.1", [b" 100-Continue "], True),
        ("1.1", [b"x-foo, 100-continue"], True),
        ("1.1", [b"100-continue,"], True),
        ("1.1", [b"x-foo", b"100-CONTINUE"], True),
        ("1.1", [b"x-foo"], False),
        ("1.1", [b"100-continue-please"], False),
        ("1.1", [], False),
        ("1.0", [b"100-continue"], False),
    ],
)
def test_expects_continue_follows_h11(version: str, values: list[bytes], want: bool) -> None:
    # h11 is the parser uvicorn runs for the coordinator: the reference
    conn = h11.Connection(h11.SERVER)
    head = b"POST / HTTP/%s\r\nhost: x\r\ncontent-length: 1\r\n" % version.encode()
    conn.receive_data(head + b"".join(b"expect: %s\r\n" % v for v in values) + b"\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    assert conn.they_are_waiting_for_100_continue is want
    assert expects_continue(version, values) is want
