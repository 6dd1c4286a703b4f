"""Server-side request checks: signatures (keys, time window, nonces), admin token, rate limit."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

from protocol import auth
from protocol.names import ContentType, Header, Reason

from ._ratelimit import EveryFew
from .errors import ApiError, require_media_type
from .store import Store

__all__ = [
    "BUSY_RETRY_S",
    "MAX_REGISTER_BURST",
    "MIN_REGISTER_RATE",
    "BodyBudget",
    "RateLimiter",
    "RequestVerifier",
    "check_admin_token",
    "client_key",
]

log = logging.getLogger("plume.coordinator")

# Retry-After (seconds) of the 503 `busy` an upload gets while the bodies being read already
# fill the budget (`BodyBudget`): the uploads in flight end within seconds (or the body
# timeout ends them), and the SDK sends the upload again after it.
BUSY_RETRY_S = 2


class BodyBudget:
    """Bytes of signed binary request bodies (plain uploads and secure stage messages) the
    coordinator holds in memory while it reads them, at most `limit_bytes` at once (0: no
    limit).

    A body reserves its bytes as they arrive, each part it receives before the route keeps it
    (`take`), and gives back all it holds once the route has it, or on any refusal, error,
    disconnect or timeout (`give`). Counting what has arrived, not what a header declares: a
    connection that declares a large body and sends none of it holds nothing, so idle
    connections cannot fill the budget (helper-289's F1: before, each reserved its declared
    `Content-Length` when its headers arrived, and 38 idle ones turned every honest upload
    away). A part that would take the total past the limit is refused, unless the body it
    belongs to is the only one holding bytes (one body is always let in, whatever its size):
    the route abandons that body with a 503 `busy`. The refusal depends on the bytes held and
    the part's size alone, never on whether the device was selected, so it tells an outsider
    nothing a selected device would not learn. Not thread-safe: the app calls it from its
    event loop only.
    """

    def __init__(self, limit_bytes: int) -> None:
        if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes < 0:
            raise ValueError(f"limit_bytes must be an integer >= 0, got {limit_bytes!r}")
        self.limit_bytes = limit_bytes
        self.held = 0  # bytes held by the bodies being read now
        self.bodies = 0  # ... and how many bodies hold some
        self.refused = 0  # parts refused since the start (each ends its body)
        self._log = EveryFew(5.0)

    def take(self, size: int, holding: int = 0) -> bool:
        """Reserve `size` more bytes for a body that holds `holding` already (0: a body not
        counted yet); False (nothing reserved) when they do not fit beside the other bodies'.
        """
        others = self.held - holding
        if self.limit_bytes and others > 0 and self.held + size > self.limit_bytes:
            self.refused += 1
            if (skipped := self._log()) is not None:
                log.warning(
                    "an upload was refused 503 busy: %d bodies holding %d bytes in all are "
                    "being read, and %d more bytes of %s would pass the upload buffer of %d "
                    "bytes (serve --upload-buffer-mb)%s",
                    self.bodies,
                    self.held,
                    size,
                    "one of them" if holding else "another",
                    self.limit_bytes,
                    self._log.since(skipped),
                )
            return False
        if not holding:
            self.bodies += 1
        self.held += size
        return True

    def give(self, size: int) -> None:
        """Give back all `size` bytes one body holds (0: it held none)."""
        if size:
            self.held -= size
            self.bodies -= 1


class RequestVerifier:
    """Checks one signed request: form, registration, timestamp window, signature, nonce.

    The checks run in that order so a forged request can never burn a real device's nonce:
    a nonce is recorded only after its signature verified. Nonces live in the SQLite store, so
    a restart does not reopen the replay window; rows older than twice the window are pruned,
    and a timestamp before the store's nonce horizon (the latest prune's cut-off, kept across
    restarts) is refused whatever the window, so a window raised at a restart does not let a
    request whose nonce was pruned through again. A horizon after the current time (a prune
    ran while the clock was ahead) is lowered at the first request that sees it, so a clock
    set back right locks no device out.
    """

    def __init__(
        self, store: Store, window_s: float = 300.0, body_budget: BodyBudget | None = None
    ) -> None:
        self.store = store
        self.window_ms = int(window_s * 1000)
        self._keys: dict[str, bytes] = {}
        # The bytes of binary bodies read at once (`read_signed_body`); None: no limit.
        self.body_budget = body_budget

    def public_key(self, device_id: str) -> bytes | None:
        key = self._keys.get(device_id)
        if key is None:
            key = self.store.device_key(device_id)
            if key is not None:
                self._keys[device_id] = key
        return key

    async def read_signed_body(
        self,
        *,
        method: str,
        target: str,
        headers: dict[str, str],
        chunks: AsyncIterator[bytes],
        cap: int,
        what: str,
        check_headers: Callable[[dict[str, str]], None] | None = None,
    ) -> tuple[auth.SignedFields, bytes]:
        """Stream a signed request's binary body under `cap` bytes, then verify it.

        The cheap checks (Content-Type, signature headers present, device registered, the
        route's own `check_headers`, declared length) run before a byte of the body is read,
        and the read stops at the first byte past the cap: 415 unless the body is
        `application/octet-stream`, 401 for unsigned or unknown devices, whatever
        `check_headers` raises, 413 naming `what` for an oversized body. They all come before
        the signature is verified, so a request they refuse has not spent its nonce: the same
        signed request can be sent again with the header set right.

        The body's bytes are reserved in `body_budget` as they arrive, each part before it
        is kept: 503 `busy` with `Retry-After` and `connection: close`, the rest of the body
        unread and the nonce unspent, when a part does not fit beside the bytes the other
        bodies being read hold (`BodyBudget.take`). A connection that has sent no body byte
        holds nothing, whatever it declared. Everything reserved is given back once the body
        is read and verified, and on every other way out (a refusal, the client gone, the
        body timeout, a cancellation): the route hands the body on without waiting for
        anything (a decode, a store write, both on the event loop), so no other body is read
        meanwhile.
        """
        require_media_type(headers.get(Header.CONTENT_TYPE), ContentType.OCTET_STREAM)
        try:
            pre = auth.fields_from_headers(headers)
        except auth.AuthError as exc:
            raise ApiError(401, Reason.UNSIGNED, str(exc)) from None
        if self.public_key(pre.device_id) is None:
            raise ApiError(401, Reason.UNREGISTERED, "unknown device; register first")
        if check_headers is not None:
            check_headers(headers)
        declared = headers.get(Header.CONTENT_LENGTH)
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise ApiError(413, Reason.TOO_LARGE, f"{what} above the {cap}-byte cap")
        budget = self.body_budget
        held = 0  # bytes this body holds in `budget`
        try:
            parts: list[bytes] = []
            size = 0
            async for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if size > cap:
                    raise ApiError(413, Reason.TOO_LARGE, f"{what} above the {cap}-byte cap")
                if budget is not None:
                    if not budget.take(len(chunk), held):
                        raise ApiError(
                            503,
                            Reason.BUSY,
                            "the upload bodies the coordinator is reading fill its memory "
                            f"budget for them ({budget.limit_bytes} bytes, serve "
                            f"--upload-buffer-mb); send the {what} again in {BUSY_RETRY_S} s",
                            {Header.RETRY_AFTER: str(BUSY_RETRY_S), "connection": "close"},
                        )
                    held += len(chunk)
                parts.append(chunk)
            body = b"".join(parts)
            del parts
            fields = self.verify(method=method, target=target, headers=headers, body=body)
        finally:
            if budget is not None:
                budget.give(held)
        return fields, body

    def verify(
        self,
        *,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        presented_key: bytes | None = None,
        now_ms: int | None = None,
    ) -> auth.SignedFields:
        """The verified fields, or `ApiError` 401 with the precise reason.

        `presented_key` is the key a registration carries (proof of possession); every other
        request is checked against the key registered for its device id.
        """
        if Header.SIGNATURE not in headers and Header.DEVICE not in headers:
            raise ApiError(401, Reason.UNSIGNED, "request is not signed (no x-plume-* headers)")
        try:
            fields = auth.fields_from_headers(headers)
        except auth.AuthError as exc:
            raise ApiError(401, Reason.UNSIGNED, str(exc)) from None
        if presented_key is not None:
            key = presented_key
            if auth.device_id_for(key) != fields.device_id:
                raise ApiError(401, Reason.BAD_SIGNATURE, "device id does not match the key")
        else:
            registered = self.public_key(fields.device_id)
            if registered is None:
                raise ApiError(401, Reason.UNREGISTERED, "unknown device; register first")
            key = registered
        now = int(time.time() * 1000) if now_ms is None else now_ms
        if abs(now - fields.timestamp_ms) > self.window_ms:
            raise ApiError(
                401,
                Reason.STALE_TIMESTAMP,
                f"timestamp is {abs(now - fields.timestamp_ms) / 1000:.1f}s from the server "
                f"clock (window {self.window_ms / 1000:.0f}s)",
            )
        horizon = self.store.nonce_horizon_ms
        if horizon > now:
            # A prune ran while the clock was ahead (set back since): lowered to just after the
            # newest timestamp a prune forgot, or to now (`Store.clamp_nonce_horizon`), so that
            # correctly timed requests pass again. Not to min(horizon, now - window): the
            # window check above already refuses every timestamp before now - window, so that
            # horizon would refuse nothing, not even a request whose nonce a smaller window's
            # prune forgot (replayed after a restart with a larger window), nor one accepted
            # just before the clock jumped ahead, whose nonce that prune deleted.
            horizon = self.store.clamp_nonce_horizon(now)
        if fields.timestamp_ms < horizon:
            # Its nonce may have been pruned (under a smaller window before a restart): it
            # cannot be told from a replay.
            raise ApiError(
                401,
                Reason.STALE_TIMESTAMP,
                f"timestamp is {(horizon - fields.timestamp_ms) / 1000:.1f}s before the "
                "oldest one whose nonce this coordinator still keeps (nonces older than twice "
                "the signature window are forgotten); sign the request again",
            )
        try:
            message = auth.signing_message(
                method=method,
                target=target,
                device_id=fields.device_id,
                round_id=fields.round_id,
                body_hash=auth.body_sha256(body),
                timestamp_ms=fields.timestamp_ms,
                nonce=fields.nonce,
            )
        except auth.AuthError as exc:
            raise ApiError(401, Reason.BAD_SIGNATURE, str(exc)) from None
        if not auth.verify(key, message, fields.signature):
            raise ApiError(
                401, Reason.BAD_SIGNATURE, "signature does not verify for this request and key"
            )
        if not self.store.remember_nonce(fields.device_id, fields.nonce, fields.timestamp_ms):
            raise ApiError(401, Reason.REPLAYED_NONCE, "nonce already used (replayed request)")
        return fields

    def prune(self, now_ms: int | None = None) -> int:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return self.store.prune_nonces(now - 2 * self.window_ms, now_ms=now)


def check_admin_token(expected: str | None, authorization: str | None) -> None:
    """`Authorization: Bearer <token>`, compared in constant time; 401/403 otherwise.

    An empty configured token (e.g. `PLUME_ADMIN_TOKEN=` in an env file) disables the admin API
    like an unset one: otherwise `Authorization: Bearer ` with nothing after it would match."""
    if not expected:
        raise ApiError(403, Reason.BAD_ADMIN_TOKEN, "admin endpoints are disabled (no token set)")
    if not authorization or not authorization.startswith("Bearer "):
        raise ApiError(401, Reason.BAD_ADMIN_TOKEN, "admin endpoints need Authorization: Bearer")
    given = authorization[len("Bearer ") :].encode()
    if not hmac.compare_digest(given, expected.encode()):
        raise ApiError(403, Reason.BAD_ADMIN_TOKEN, "wrong admin token")


def client_key(host: str | None) -> str:
    """The rate-limit key of a client address: the IPv4 address, or an IPv6 address's /64.

    One IPv6 subscriber (a phone, a home) is given a whole /64, so keying by full address would
    hand every host 2^64 buckets. IPv4-mapped IPv6 counts as its IPv4 address. A host that is not
    an IP address (a Unix socket, a test client) is its own key.
    """
    if not host:
        return ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return f"{ipaddress.IPv6Address(int(ip) >> 64 << 64)}/64"
    return str(ip)


# The slowest registration rate (one per address every 1,000,000 s, 11.6 days) and the largest
# burst: a refused registration's wait is (1 - tokens) / rate, infinite (a 500 from math.ceil)
# for a rate near 0, and the token count is a float, which an integer past 1e308 is not.
MIN_REGISTER_RATE = 1e-6
MAX_REGISTER_BURST = 1_000_000


class RateLimiter:
    """Token buckets per key: `burst` requests at once, refilled at `rate_per_s` per second.

    `rate_per_s == 0` admits everything and keeps no state. Memory is bounded twice over: a
    bucket that has had time to refill completely (`burst / rate_per_s` seconds since its last
    use) is indistinguishable from a new one and is forgotten, and past `max_buckets` the least
    recently used bucket goes (that key starts full again: under a flood from that many
    addresses the limit leaks rather than the memory). `clock` is monotonic seconds. Not
    thread-safe: the app calls it from its event loop only.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = 65_536,
    ) -> None:
        slowest = MIN_REGISTER_RATE
        if not (math.isfinite(rate_per_s) and (rate_per_s == 0 or rate_per_s >= slowest)):
            raise ValueError(
                f"rate must be 0 (unlimited) or a finite number >= {MIN_REGISTER_RATE:g} per "
                f"second, got {rate_per_s}"
            )
        if not 1 <= burst <= MAX_REGISTER_BURST:
            raise ValueError(f"burst must be in [1, {MAX_REGISTER_BURST:,}], got {burst}")
        if max_buckets < 1:
            raise ValueError(f"max_buckets must be at least 1, got {max_buckets}")
        self.rate_per_s = float(rate_per_s)
        self.burst = int(burst)
        self.clock = clock
        self.max_buckets = max_buckets
        self._full_after_s = self.burst / self.rate_per_s if self.rate_per_s > 0 else 0.0
        # key -> (tokens, last use); ordered by last use, oldest first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def admit(self, key: str) -> int:
        """0 if `key` may go ahead now (one token spent), else whole seconds to wait (>= 1)."""
        if self.rate_per_s == 0:
            return 0
        now = self.clock()
        self._forget_full(now)
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate_per_s)
        wait = 0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = max(1, math.ceil((1.0 - tokens) / self.rate_per_s))
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)
        return wait

    def _forget_full(self, now: float) -> None:
        # Buckets are in order of last use, so the ones idle for a full refill are a prefix.
        buckets = self._buckets
        while buckets:
            _, last = next(iter(buckets.values()))
            if now - last < self._full_after_s:
                break
            buckets.popitem(last=False)
