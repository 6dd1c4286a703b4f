"""The coordinator's request verifier at its edges (helper s61a's mutation hunt on
`coordinator/service/auth.py`, `RequestVerifier`).

docs/http-api.md (Errors, Signing): a timestamp more than the window from the server clock is
401 `stale_timestamp`, so one exactly the window away, either side, is taken; a timestamp
before the nonce horizon is `stale_timestamp` too, so one at the horizon is taken; the checks
run form, registration, window and horizon, signature, then the nonce, so a request refused
by any of them spends no nonce; a nonce is refused only when this device used it. The
verifier is driven directly with a real store and an explicit clock (`now_ms`), so each edge
is exact to the millisecond.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from coordinator.service import Store
from coordinator.service.auth import (
    MAX_REGISTER_BURST,
    RateLimiter,
    RequestVerifier,
    admin_token_problem,
)
from coordinator.service.errors import ApiError
from protocol import auth
from protocol.names import Header

NOW = 1_764_316_800_000  # the verifier's clock in every test (Unix ms)
WINDOW_S = 300.0
WINDOW_MS = 300_000
TARGET = "/v1/checkin"
BODY = b'{"task_id": 1}'


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    the_store = Store(str(tmp_path / "plume.db"))
    try:
        yield the_store
    finally:
        the_store.close()


def _device(store: Store) -> bytes:
    """A new private key whose public key the store has registered."""
    key = auth.generate_private_key()
    public = auth.public_key_bytes(key)
    assert store.register_device(auth.device_id_for(public), public, NOW / 1000)
    return key


def _headers(key: bytes, *, ts: int = NOW, nonce: str | None = None, round_id: int = 0) -> dict:
    return auth.sign_request(
        key,
        method="POST",
        target=TARGET,
        round_id=round_id,
        body=BODY,
        timestamp_ms=ts,
        nonce=nonce,
    )


def _verify(verifier: RequestVerifier, headers: dict, *, now: int = NOW, **kw: object) -> object:
    return verifier.verify(
        method=kw.pop("method", "POST"),  # type: ignore[arg-type]
        target=kw.pop("target", TARGET),  # type: ignore[arg-type]
        headers=headers,
        body=kw.pop("body", BODY),  # type: ignore[arg-type]
        now_ms=now,
        **kw,  # type: ignore[arg-type]
    )


def _refused(verifier: RequestVerifier, headers: dict, **kw: object) -> tuple[int, str, str]:
    with pytest.raises(ApiError) as caught:
        _verify(verifier, headers, **kw)
    return caught.value.status, str(caught.value.reason), caught.value.detail


@pytest.mark.parametrize("offset", [-WINDOW_MS, WINDOW_MS])
def test_a_timestamp_exactly_the_window_away_is_taken(store: Store, offset: int) -> None:
    # Kills `abs(now - ts) > window` -> `>=`, and 1000 -> 999 or 1001 in `window_ms`.
    verifier = RequestVerifier(store, WINDOW_S)
    key = _device(store)
    fields = _verify(verifier, _headers(key, ts=NOW + offset))
    assert isinstance(fields, auth.SignedFields)
    assert fields.timestamp_ms == NOW + offset


@pytest.mark.parametrize("offset", [-WINDOW_MS - 1, WINDOW_MS + 1])
def test_a_timestamp_one_ms_past_the_window_is_stale_and_spends_no_nonce(
    store: Store, offset: int
) -> None:
    # Kills the window check's `raise` -> `pass` (a timestamp in the future is refused as one
    # in the past is).
    verifier = RequestVerifier(store, WINDOW_S)
    key = _device(store)
    nonce = auth.new_nonce()
    status, reason, detail = _refused(verifier, _headers(key, ts=NOW + offset, nonce=nonce))
    assert (status, reason) == (401, "stale_timestamp")
    assert "window 300s" in detail, detail
    # The same nonce, signed in time, is still unused.
    assert _verify(verifier, _headers(key, ts=NOW, nonce=nonce))


def test_a_timestamp_at_the_nonce_horizon_is_taken_and_one_ms_before_it_is_stale(
    store: Store,
) -> None:
    # A prune at NOW forgets the nonces before NOW - 2 * window: that cut-off is the horizon.
    # Under a window raised past it (a restart), a timestamp at the horizon is taken (its nonce
    # would have been kept) and one a millisecond before it is refused whatever the window.
    # Kills `fields.timestamp_ms < horizon` -> `<=` and the horizon check's `raise` -> `pass`.
    assert RequestVerifier(store, WINDOW_S).prune(now_ms=NOW) == 0
    horizon = NOW - 2 * WINDOW_MS
    assert store.nonce_horizon_ms == horizon
    wide = RequestVerifier(store, 3600.0)
    key = _device(store)
    assert _verify(wide, _headers(key, ts=horizon))
    status, reason, detail = _refused(wide, _headers(key, ts=horizon - 1))
    assert (status, reason) == (401, "stale_timestamp")
    assert "0.0s before the oldest one whose nonce" in detail, detail


def test_prune_forgets_nonces_before_twice_the_window_and_keeps_the_one_at_it(
    store: Store,
) -> None:
    # Kills `now - 2 * window_ms` in `prune` -> `now + ...`, and 2 -> 1 or 3.
    verifier = RequestVerifier(store, WINDOW_S)
    key = _device(store)
    cut = NOW - 2 * WINDOW_MS
    # Nonces timestamped at the cut and a millisecond before it, taken when they were fresh.
    at_cut = _headers(key, ts=cut)
    before = _headers(key, ts=cut - 1)
    assert _verify(verifier, at_cut, now=cut)
    assert _verify(verifier, before, now=cut - 1)
    assert verifier.prune(now_ms=NOW) == 1  # the one before the cut
    assert store.nonce_horizon_ms == cut
    # The kept nonce still catches its replay under a window wide enough to reach it.
    wide = RequestVerifier(store, 3600.0)
    assert _refused(wide, at_cut)[:2] == (401, "replayed_nonce")
    assert _refused(wide, before)[:2] == (401, "stale_timestamp")


def test_a_forged_signature_spends_no_nonce_and_the_real_request_passes(store: Store) -> None:
    # The order the docs give: the signature is checked before the nonce is recorded, so a
    # forger who sees a nonce cannot burn it. Kills the signature check's `raise` -> `pass`
    # and `not auth.verify(...)` -> `auth.verify(...)`, and the same two of the nonce check.
    verifier = RequestVerifier(store, WINDOW_S)
    key = _device(store)
    real = _headers(key)
    forged = {**real, Header.SIGNATURE: auth.encode_signature(bytes(64))}
    status, reason, _ = _refused(verifier, forged)
    assert (status, reason) == (401, "bad_signature")
    assert _verify(verifier, real)
    assert _refused(verifier, real)[:2] == (401, "replayed_nonce")


@pytest.mark.parametrize(
    "change",
    [
        {"method": "PUT"},
        {"target": "/v1/checkin?x=1"},
        {"body": BODY + b" "},
    ],
    ids=["method", "target", "body"],
)
def test_a_request_changed_after_signing_is_bad_signature(store: Store, change: dict) -> None:
    verifier = RequestVerifier(store, WINDOW_S)
    key = _device(store)
    headers = _headers(key)
    assert _refused(verifier, headers, **change)[:2] == (401, "bad_signature")
    assert _verify(verifier, headers)  # its nonce was not spent


def test_the_same_nonce_from_two_devices_is_two_nonces(store: Store) -> None:
    # Nonces are per device (the store's key is (device, nonce)): another device's use of a
    # nonce is no replay, and a device's own second use is.
    verifier = RequestVerifier(store, WINDOW_S)
    one, two = _device(store), _device(store)
    nonce = "00112233445566778899aabbccddeeff"
    assert _verify(verifier, _headers(one, nonce=nonce))
    assert _verify(verifier, _headers(two, nonce=nonce))
    again = _headers(one, nonce=nonce, ts=NOW + 1)  # a new signature, the same nonce
    status, reason, detail = _refused(verifier, again)
    assert (status, reason) == (401, "replayed_nonce")
    assert "replayed" in detail


def test_an_unregistered_device_is_refused_before_its_signature(store: Store) -> None:
    verifier = RequestVerifier(store, WINDOW_S)
    key = auth.generate_private_key()  # never registered
    status, reason, detail = _refused(verifier, _headers(key))
    assert (status, reason, detail) == (401, "unregistered", "unknown device; register first")


def test_a_stale_request_is_refused_before_the_signature_is_checked(store: Store) -> None:
    # Window before signature (the documented order): a stale request with a bad signature is
    # `stale_timestamp`, not `bad_signature`.
    verifier = RequestVerifier(store, WINDOW_S)
    key = _device(store)
    stale = _headers(key, ts=NOW - WINDOW_MS - 1)
    stale[Header.SIGNATURE] = auth.encode_signature(bytes(64))
    assert _refused(verifier, stale)[:2] == (401, "stale_timestamp")


def test_a_registration_signed_by_another_key_is_bad_signature(store: Store) -> None:
    # `presented_key`: the device id in the headers must be the one the key derives.
    # Kills `device_id_for(key) != fields.device_id` -> `==` and its `raise` -> `pass`.
    verifier = RequestVerifier(store, WINDOW_S)
    signer = auth.generate_private_key()
    other = auth.public_key_bytes(auth.generate_private_key())
    status, reason, detail = _refused(verifier, _headers(signer), presented_key=other)
    assert (status, reason, detail) == (401, "bad_signature", "device id does not match the key")
    # With its own key presented (not registered), the same request verifies.
    own = auth.public_key_bytes(signer)
    assert _verify(verifier, _headers(signer), presented_key=own)


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "request is not signed (no x-plume-* headers)"),
        ({Header.DEVICE: "0" * 32}, "missing signature header(s): "),
        ({Header.SIGNATURE: "A" * 86}, "missing signature header(s): x-plume-device"),
    ],
    ids=["none", "device-only", "signature-only"],
)
def test_missing_signature_headers_are_unsigned(store: Store, headers: dict, detail: str) -> None:
    verifier = RequestVerifier(store, WINDOW_S)
    status, reason, got = _refused(verifier, headers)
    assert (status, reason) == (401, "unsigned")
    assert got.startswith(detail), got


def _binary(key: bytes, body: bytes) -> dict:
    return {
        **auth.sign_request(
            key,
            method="POST",
            target="/v1/rounds/3/updates",
            round_id=3,
            body=body,
            timestamp_ms=int(time.time() * 1000),
        ),
        Header.CONTENT_TYPE: "application/octet-stream",
        Header.CONTENT_LENGTH: str(len(body)),
    }


async def _parts(body: bytes) -> AsyncIterator[bytes]:
    for at in range(0, len(body), 3):
        yield body[at : at + 3]


def _read(verifier: RequestVerifier, headers: dict, body: bytes, cap: int) -> object:
    return asyncio.run(
        verifier.read_signed_body(
            method="POST",
            target="/v1/rounds/3/updates",
            headers=headers,
            chunks=_parts(body),
            cap=cap,
            what="update frame",
        )
    )


def test_a_binary_body_of_exactly_the_cap_is_read_and_one_byte_more_is_413(
    store: Store,
) -> None:
    # docs/http-api.md: 413 is a body *above* the cap, from Content-Length before a byte is
    # read. Kills `length > cap` -> `>=` in `read_signed_body` (an upload of exactly the cap
    # refused, with nothing wrong in it).
    verifier = RequestVerifier(store, WINDOW_S)
    key = _device(store)
    body = bytes(range(10))
    fields, got = _read(verifier, _binary(key, body), body, cap=10)  # type: ignore[misc]
    assert got == body and fields.round_id == 3
    bigger = body + b"x"
    with pytest.raises(ApiError) as caught:
        _read(verifier, _binary(key, bigger), bigger, cap=10)
    assert (caught.value.status, str(caught.value.reason)) == (413, "too_large")
    assert caught.value.detail == "update frame above the 10-byte cap"


@pytest.mark.parametrize("token", ["!", "~", "!~", "s3cr3t-T0ken_~!"])
def test_every_printable_ascii_token_is_fine_and_a_space_or_del_is_not(token: str) -> None:
    # The range is 0x21 to 0x7e inclusive. Kills `"\x21" <= ch` -> `<` and `ch <= "\x7e"`
    # -> `<` in `admin_token_problem` (a token with '!' or '~' refused at serve).
    assert admin_token_problem(token) is None
    for bad in (token + " ", token + "\x7f", token + "é"):
        problem = admin_token_problem(bad)
        assert problem is not None and "printable ASCII" in problem
    assert admin_token_problem(None) is None and admin_token_problem("") is None


def test_a_rate_limiter_of_one_bucket_keeps_the_latest_key() -> None:
    # max_buckets is at least 1 (1 itself allowed): kills `max_buckets < 1` -> `<= 1`. With
    # one bucket, a second key evicts the first, which starts full again.
    now = [0.0]
    limiter = RateLimiter(1.0, 1, clock=lambda: now[0], max_buckets=1)
    assert limiter.admit("a") == 0
    assert limiter.admit("a") == 1  # its burst spent: a second's wait
    assert limiter.admit("b") == 0 and len(limiter) == 1
    assert limiter.admit("a") == 0  # "a" was evicted: full again
    with pytest.raises(ValueError, match="max_buckets must be at least 1, got 0"):
        RateLimiter(1.0, 1, max_buckets=0)


def test_the_largest_burst_is_taken_and_one_more_is_refused() -> None:
    # burst is in [1, MAX_REGISTER_BURST]: kills `burst <= MAX_REGISTER_BURST` -> `<`.
    assert RateLimiter(1.0, MAX_REGISTER_BURST).burst == MAX_REGISTER_BURST
    with pytest.raises(ValueError, match="burst must be in"):
        RateLimiter(1.0, MAX_REGISTER_BURST + 1)


def test_verify_and_prune_on_the_wall_clock_keep_a_fresh_nonce(store: Store) -> None:
    # The tick loop prunes with the wall clock (`now_ms` None), as requests are verified. A
    # request signed now keeps its nonce through such a prune, so its replay is
    # `replayed_nonce`. Kills 1000 -> 1001 or 999 in `prune`'s wall clock (a cut-off some
    # 20 days off, which pruned every nonce or none and moved the horizon).
    verifier = RequestVerifier(store, WINDOW_S)
    key = _device(store)
    headers = _headers(key, ts=int(time.time() * 1000))
    call = {"method": "POST", "target": TARGET, "headers": headers, "body": BODY}
    assert verifier.verify(**call)  # type: ignore[arg-type]
    assert verifier.prune() == 0
    cut = int(headers[Header.TIMESTAMP]) - 2 * WINDOW_MS  # the prune ran within a minute of it
    assert cut <= store.nonce_horizon_ms <= cut + 60_000
    with pytest.raises(ApiError) as caught:
        verifier.verify(**call)  # type: ignore[arg-type]
    assert str(caught.value.reason) == "replayed_nonce", caught.value.detail
