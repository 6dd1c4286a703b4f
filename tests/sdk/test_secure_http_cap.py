"""`sdk.secure.HttpSecureDevice` caps what it downloads, as `sdk.client.Client` does: a hostile
server's oversized setup, stage or error body is refused before it is buffered."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from protocol.secagg import RoundAborted, SecAggError, Stage
from sdk.client import MAX_SECURE_RESPONSE
from sdk.secure import HttpSecureDevice, ResponseTooLarge, SecureParticipant

CAP = 4096
CHUNK = 1024


class Streamer:
    """A body of `chunks` x 1 KiB, streamed without a Content-Length; counts what was pulled."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(self.chunks):
            self.pulled += 1
            yield b"\x00" * CHUNK


def _device(handler: httpx.MockTransport, cap: int | None = CAP) -> HttpSecureDevice:
    client = httpx.Client(transport=handler, base_url="http://coordinator")
    return HttpSecureDevice(client, "dev-0", SecureParticipant(100), max_response_bytes=cap)


def test_default_cap_is_the_sdk_clients_secure_cap() -> None:
    # Execute
    dev = _device(httpx.MockTransport(lambda r: httpx.Response(204)), cap=None)
    # Assert
    assert dev.max_response_bytes == MAX_SECURE_RESPONSE
    with pytest.raises(ValueError, match="positive"):
        _device(httpx.MockTransport(lambda r: httpx.Response(204)), cap=0)


def test_a_streamed_stage_download_past_the_cap_is_refused_after_the_cap() -> None:
    # Prepare: a server that streams 1 MiB with no Content-Length
    body = Streamer(1024)
    dev = _device(httpx.MockTransport(lambda r: httpx.Response(200, content=iter(body))))
    # Execute + Assert: refused once past 4 KiB; the rest of the stream is never pulled
    with pytest.raises(ResponseTooLarge, match="4096-byte cap"):
        dev.download(7, Stage.ADVERTISE_KEYS, timeout_s=1.0)
    assert body.pulled == CAP // CHUNK + 1


def test_a_declared_oversized_setup_is_refused_before_reading() -> None:
    # Prepare: a setup answer that declares 1 MiB
    body = Streamer(1024)

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-length": str(1024 * CHUNK)}
        return httpx.Response(200, content=iter(body), headers=headers)

    dev = _device(httpx.MockTransport(handler))
    # Execute + Assert
    with pytest.raises(ResponseTooLarge, match="declares 1048576 bytes"):
        dev.join(7, np.zeros(100, np.float32))
    assert body.pulled == 0


def test_error_bodies_are_capped_too_and_small_ones_still_parse() -> None:
    # Prepare: an upload answered by a huge error body, then by real refusals
    answers = [
        httpx.Response(409, content=iter(Streamer(64)), headers={"content-type": "application/json"}),
        httpx.Response(410, json={"reason": "round_closed", "detail": "too few devices"}),
        httpx.Response(409, json={"reason": "MalformedMessage", "detail": "truncated"}),
        httpx.Response(404, content=b"{not json", headers={"content-type": "application/json"}),
    ]  # fmt: skip
    dev = _device(httpx.MockTransport(lambda r: answers.pop(0)))
    # Execute + Assert
    with pytest.raises(ResponseTooLarge):
        dev.upload(7, Stage.SHARE_KEYS, b"PSA1")
    with pytest.raises(RoundAborted, match="too few devices"):
        dev.upload(7, Stage.SHARE_KEYS, b"PSA1")
    with pytest.raises(SecAggError, match="HTTP 409.*truncated"):
        dev.upload(7, Stage.SHARE_KEYS, b"PSA1")
    with pytest.raises(SecAggError, match="HTTP 404"):
        dev.download(7, Stage.SHARE_KEYS)


def test_a_setup_without_digest_is_a_typed_refusal() -> None:
    # Prepare
    dev = _device(httpx.MockTransport(lambda r: httpx.Response(200, content=b"plan")))
    # Execute + Assert
    with pytest.raises(SecAggError, match="without a digest"):
        dev.join(7, np.zeros(100, np.float32))


def test_a_download_within_the_cap_is_returned_whole() -> None:
    # Prepare: 425 (with a junk Retry-After) first, then exactly the cap
    answers = [
        httpx.Response(425, headers={"retry-after": "soon"}),
        httpx.Response(200, content=iter(Streamer(CAP // CHUNK))),
    ]
    dev = _device(httpx.MockTransport(lambda r: answers.pop(0)))
    dev.poll_s = 0.001
    # Execute
    got = dev.download(7, Stage.MASKED_INPUT, timeout_s=5.0)
    # Assert
    assert got == b"\x00" * CAP
