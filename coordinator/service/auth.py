"""Server-side request checks: signatures (keys, time window, nonces), admin token, rate limit."""

from __future__ import annotations

import asyncio
import base64
import heapq
import hmac
import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

from coordinator.aggregators._base import finite_number, shown
from protocol import auth
from protocol.names import ContentType, Header, Reason

from ._ratelimit import EveryFew
from .errors import ApiError, require_media_type
from .store import Store
from .wire import declared_length

__all__ = [
    "BUSY_RETRY_S",
    "DEFAULT_PACE_S",
    "MAX_REGISTER_BURST",
    "MAX_WAITING",
    "MIN_REGISTER_RATE",
    "ROOM_WAIT_S",
    "WAIT_SHARE",
    "Body",
    "BodyBudget",
    "RateLimiter",
    "RequestVerifier",
    "check_admin_token",
    "client_key",
    "registered_key",
]

log = logging.getLogger("plume.coordinator")

# Retry-After (seconds) of the 503 `busy` an upload gets when its body finds no room in the
# budget (`BodyBudget`): the uploads in flight end within seconds (or give their room back,
# see `BodyBudget`), and the SDK sends the upload again after it.
BUSY_RETRY_S = 2

# Seconds a body that finds no room at its first part may wait for room (another body ending,
# or one falling behind its pace) before its 503 `busy`. While it waits the budget counts its
# first part only; the route does not read its connection, but uvicorn goes on reading it into
# its own buffer up to its 64 KiB high-water mark (not counted here), then TCP stops its sender.
ROOM_WAIT_S = 2.0

# Bodies that may wait for room at once. The first parts they hold are counted apart from the
# budget, at most an eighth of it (`WAIT_SHARE`): waiting bodies never keep a body out.
MAX_WAITING = 256
WAIT_SHARE = 8

# The pace of a body (`BodyBudget`) when the body timeout is off: the default --body-timeout.
DEFAULT_PACE_S = 120.0


class Body:
    """One request body read under a `BodyBudget` (`BodyBudget.open`)."""

    __slots__ = ("declared", "promised", "ready", "received", "since", "state")

    def __init__(self, declared: int | None) -> None:
        self.declared = declared  # its Content-Length (None: chunked)
        self.received = 0  # bytes of it that have arrived (held in the budget)
        self.promised = 0  # bytes reserved for it that have not arrived yet
        # "new" (holds nothing yet), "waiting" (its first part, for room), "reserved" (its
        # declared length), "parts" (what has arrived: chunked, all in, or fallen behind its
        # pace), "refused" (a waiting body no room came for), "closed"
        self.state = "new"
        self.since = 0.0  # when its reservation was granted (the budget's clock)
        self.ready: asyncio.Event | None = None  # set when a waiting body is let in


class BodyBudget:
    """Bytes of signed binary request bodies (plain uploads and secure stage messages) the
    coordinator holds in memory while it reads them, at most `limit_bytes` at once (0: no
    limit).

    Admission at the first part (helper-294). A body that declares its length
    (`Content-Length`) holds nothing until its first byte arrives; then it asks for its whole
    declared length at once (`arrive`). If that fits beside what the other bodies being read
    hold and have reserved (or none of them holds a byte: one body is always let in, whatever
    its size), it is admitted, and its later parts are not refused for room while it keeps
    its pace (below). If not, it waits for room, counted for its first part only, up to
    `wait_s` (`ROOM_WAIT_S`, `wait_for_room`), the oldest let in first as room is given back,
    before a new body (chunked or not); or it is refused at once when `MAX_WAITING` bodies
    wait or their first parts would pass `limit_bytes // WAIT_SHARE`; then 503 `busy`.
    Refusals hit bodies at their first part, not part-way, so under honest overload little is
    sent twice. Waiting first parts are counted apart (`waiting_held`): they take no room from
    the bodies being read, so a waiting body keeps none out, and no body being read ever
    waits.

    A reservation is kept only while its body keeps pace: at least `declared * elapsed / pace_s`
    bytes in, `elapsed` counted from its admission, `pace_s` the body timeout (the pace that
    ends it in time; the body timeout counts from the route's first read, before the first
    part came and the body waited, so a body that keeps exactly this pace ends that much
    late: 408). One that falls behind (a sender that sent a byte and stalls or trickles)
    gives back the bytes it has not sent as soon as another body needs room, and from then on
    holds what has arrived, each later part admitted only if it fits (as a chunked body's is).
    Room given back so goes to the body that asked, then at once to the waiting bodies.
    So a connection that has sent nothing holds nothing, and keeping room costs a sender the
    room's bytes every `pace_s` seconds, as when bodies counted only what had arrived
    (helper-290; f4eac95 reserved the declared length at the headers, and 38 idle connections
    turned every honest upload away). Reservations are checked when a body needs room.

    `held` is the bytes of bodies that have arrived (the memory they take, waiting first parts
    included), `reserved` the bytes admitted bodies declared and have not sent yet. Apart from
    the waiting first parts, `held + reserved` stays within `limit_bytes` unless one body alone
    holds or reserves all. The verdicts depend on bytes and times alone, never on whether the
    device was selected, so they tell an outsider nothing a selected device would not learn.
    `take` and `give` count anonymous bodies part by part. Not thread-safe: the app calls it
    from its event loop only.
    """

    def __init__(
        self,
        limit_bytes: int,
        *,
        pace_s: float = DEFAULT_PACE_S,
        wait_s: float = ROOM_WAIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes < 0:
            raise ValueError(f"limit_bytes must be an integer >= 0, got {shown(limit_bytes)}")
        if isinstance(pace_s, bool) or not isinstance(pace_s, int | float):
            raise ValueError(f"pace_s must be a number of seconds, got {shown(pace_s)}")
        if not (finite_number(pace_s) and pace_s > 0):
            raise ValueError(f"pace_s must be a finite number of seconds > 0, got {shown(pace_s)}")
        self.limit_bytes = limit_bytes
        self.pace_s = float(pace_s)
        self.wait_s = wait_s  # how long a body waits for room (`wait_for_room`)
        self.clock = clock
        self.held = 0  # bytes of the bodies being read that have arrived
        self.reserved = 0  # ... that admitted bodies declared and have not sent yet
        self.bodies = 0  # bodies holding or reserving some
        self.waiting = 0  # bodies waiting for room
        self.waiting_held = 0  # ... and the bytes of their first parts (in `held`)
        self.refused = 0  # bodies refused since the start (each a 503 busy)
        self.fell_behind = 0  # reservations given back by bodies behind their pace
        self._queue: OrderedDict[Body, None] = OrderedDict()  # waiting bodies, oldest first
        # (when the body falls behind its pace, tie-break, body) of admitted bodies; lazy: an
        # entry is checked, and moved later or dropped, when it comes due
        self._paced: list[tuple[float, int, Body]] = []
        self._seq = 0
        self._live = 0  # bodies "reserved"
        # Room may have been given back since `admit_waiters` last looked at the queue (a body
        # ended, a reservation behind its pace gave its bytes back): the next call looks again.
        self._room = False
        # The one timer of the waiting bodies (`_arm`): at the earliest time a reservation may
        # fall behind its pace, one pass over the queue (helper-301: each waiter had its own,
        # and each of W waiters woke there and looked at all W).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when it fires (the budget's clock)
        self._log = EveryFew(5.0)

    # -- anonymous bodies, counted part by part ------------------------------------------

    def take(self, size: int, holding: int = 0) -> bool:
        """Count `size` more arrived bytes of a body that holds `holding` already (0: a body
        not counted yet, which lets the waiting bodies in first); False (nothing counted) when
        they do not fit beside the other bodies' bytes, held and reserved."""
        if not holding:
            self.admit_waiters()
        fits = self._fits(size, holding)
        if fits:
            if not holding:
                self.bodies += 1
            self.held += size
        else:
            self._refuse(size, holding)
        self._offer()
        return fits

    def give(self, size: int) -> None:
        """Give back all `size` bytes one anonymous body holds (0: it held none)."""
        if size:
            self.held -= size
            self.bodies -= 1
            self._room = True
            self.admit_waiters()

    # -- bodies admitted at their first part ---------------------------------------------

    def open(self, declared: int | None) -> Body:
        """A body about to be read, declaring `declared` bytes (None: chunked); it holds
        nothing until `arrive`."""
        return Body(declared)

    def arrive(self, body: Body, size: int) -> bool | None:
        """Count a part of `size` bytes that has arrived for `body`: True to keep it, False
        when the body is refused (503 `busy`, counted in `refused`), None when it is the first
        part and the body waits for room (`wait_for_room`), holding that part.

        A new body (its first part, chunked or not) lets the waiting bodies in first. Room
        that reservations behind their pace give back while this part is checked (`_fits`)
        goes to this part first, then to the waiting bodies."""
        if size <= 0:
            return True
        verdict = self._arrive(body, size)
        if verdict is not None:
            self._offer()
        return verdict

    def _arrive(self, body: Body, size: int) -> bool | None:
        if body.state == "reserved":
            use = min(size, body.promised)
            own = body.received + body.promised
            if size > use and not self._fits(size - use, own):
                self._refuse(size - use, own)
                return False
            body.promised -= use
            self.reserved -= use
            body.received += size
            self.held += size
            if not body.promised:  # all in: nothing left to give back
                body.state = "parts"
                self._live -= 1
            return True
        if body.state == "parts":
            if not self._fits(size, body.received):
                self._refuse(size, body.received)
                return False
            body.received += size
            self.held += size
            return True
        if body.state != "new":
            raise RuntimeError(f"a part arrived for a body {body.state}")
        self.admit_waiters()  # the bodies waiting before it first
        if body.declared is None or not self.limit_bytes:
            # Chunked (nothing to reserve), or no limit: counted as its parts arrive.
            if not self._fits(size, 0):
                self._refuse(size, 0)
                return False
            body.state = "parts"
            self._count(body, size)
            return True
        body.declared = max(body.declared, size)
        if self._fits(body.declared, 0):
            self._count(body, size)
            self._reserve(body)
            return True
        if self.waiting < MAX_WAITING and (
            self.waiting_held + size <= self.limit_bytes // WAIT_SHARE
        ):
            self._count(body, size)
            body.state = "waiting"
            self.waiting += 1
            self.waiting_held += size
            self._queue[body] = None
            return None
        self._refuse(body.declared, 0)
        return False

    def admit_waiters(self) -> None:
        """Let waiting bodies in, oldest first, each that there is room for (one that does not
        fit keeps none behind it out); reservations behind their pace give theirs back first.
        Looks at the queue only when room may have been given back since it last did, or a
        reservation may have fallen behind its pace since (`next_check`)."""
        if not self._queue:
            self._room = False  # a body that comes to wait is checked when it comes
            return
        if not self._room and not (self._paced and self._paced[0][0] <= self.clock()):
            return  # none of them fitted then, and there is no more room now
        self._room = False
        let_in = []
        for body in self._queue:
            assert body.declared is not None
            if self._fits(body.declared, 0):
                let_in.append(body)
                self.waiting -= 1
                self.waiting_held -= body.received
                self._reserve(body)
        for body in let_in:
            del self._queue[body]
            if body.ready is not None:
                body.ready.set()

    async def wait_for_room(self, body: Body, wait_s: float | None = None) -> bool:
        """Wait up to `wait_s` seconds (None: `self.wait_s`; the event loop's clock) for a
        waiting body to be let in: True once it is, False when no room came (`refuse_waiting`).
        `close` it either way.

        The body sleeps until it is let in (`admit_waiters` wakes it: a body ended, or the
        budget's one timer found a reservation behind its pace, `_arm`) or its time is up;
        it wakes nothing else. Cancelled while it waits (a shutdown's grace ending), it raises
        `CancelledError` even when it was let in during the same turn of the loop (no
        `asyncio.wait_for`, which in Python 3.11 returns the result then)."""
        if body.state != "waiting":
            raise RuntimeError(f"wait_for_room: the body is {body.state}, not waiting")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a budget used from another loop before (tests)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._loop = loop
        ready = body.ready = asyncio.Event()
        self._arm()
        give_up = loop.call_later(
            self.wait_s if wait_s is None else wait_s, self._give_up, body, ready
        )
        try:
            await ready.wait()
        finally:
            give_up.cancel()
            body.ready = None
        return body.state in ("reserved", "parts")

    def _give_up(self, body: Body, ready: asyncio.Event) -> None:
        """A waiting body's time is up: let in if room has come since the last look (as a
        waiter that woke then would have been), else refused."""
        if body.state == "waiting":
            self.admit_waiters()
        if body.state == "waiting":
            self.refuse_waiting(body)
        ready.set()

    def _arm(self) -> None:
        """While bodies wait, keep the budget's timer at the earliest time a reservation may
        fall behind its pace (10 ms at the soonest); when it fires, `admit_waiters` looks at
        the queue once, and the timer is set again for the next such time."""
        loop = self._loop
        due = self.next_check()
        if loop is None or loop.is_closed() or not self._queue or due is None:
            return
        if self._timer is not None:
            if self._timer_at <= due:
                return  # it fires first; it sets itself again then
            self._timer.cancel()
        now = self.clock()
        self._timer_at = max(due, now + 0.01)
        self._timer = loop.call_later(self._timer_at - now, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.admit_waiters()
        self._arm()

    def refuse_waiting(self, body: Body) -> None:
        """A waiting body for which no room came is refused (counted in `refused`) and gives
        its first part back at once; `close` is then a no-op."""
        if body.state != "waiting":
            raise RuntimeError(f"refuse_waiting: the body is {body.state}, not waiting")
        del self._queue[body]
        self.waiting -= 1
        self.waiting_held -= body.received
        self.held -= body.received
        body.received = 0
        self.bodies -= 1
        body.state = "refused"
        self._refuse(body.declared or 0, 0)

    def close(self, body: Body) -> None:
        """Give back all `body` holds and reserves, whatever its state; once only."""
        state = body.state
        if state == "closed":
            return
        body.state = "closed"
        if state == "waiting":
            del self._queue[body]
            self.waiting -= 1
            self.waiting_held -= body.received
        elif state == "reserved":
            self._live -= 1
        if state in ("waiting", "reserved", "parts"):
            self.held -= body.received
            self.reserved -= body.promised
            self.bodies -= 1
        if state in ("reserved", "parts"):
            self._room = True
        body.received = body.promised = 0
        if len(self._paced) > 2 * self._live + 64:
            # Entries of bodies no longer reserved go, so the heap stays bounded by the bodies
            # being read even while no body asks for room.
            self._paced = [e for e in self._paced if e[2].state == "reserved"]
            heapq.heapify(self._paced)
        if state in ("reserved", "parts"):
            self.admit_waiters()

    def next_check(self) -> float | None:
        """The earliest time a reservation may fall behind its pace (the budget's clock)."""
        return self._paced[0][0] if self._paced else None

    # -- internals -----------------------------------------------------------------------

    def _offer(self) -> None:
        """Room that reservations behind their pace gave back outside `admit_waiters` (while
        a new or a later part was checked) goes to the waiting bodies at once (helper-301:
        before, they were offered it only at their next deadline or their 2 s end)."""
        if self._room and self._queue:
            self.admit_waiters()

    def _count(self, body: Body, size: int) -> None:
        body.received = size
        self.held += size
        self.bodies += 1

    def _reserve(self, body: Body) -> None:
        assert body.declared is not None
        body.promised = body.declared - body.received
        self.reserved += body.promised
        body.since = self.clock()
        if not body.promised:
            body.state = "parts"  # all of it is in: nothing to give back
            return
        body.state = "reserved"
        self._live += 1
        self._seq += 1
        due = body.since + body.received * self.pace_s / body.declared
        heapq.heappush(self._paced, (due, self._seq, body))
        if self._queue and (self._timer is None or due < self._timer_at):
            self._arm()  # a deadline before the waiters' timer, or the first one

    def _fits(self, extra: int, own: int) -> bool:
        """Whether `extra` more bytes fit for a body that holds and reserves `own` already
        (waiting first parts aside); reservations behind their pace give theirs back first
        when they do not."""
        if not self.limit_bytes:
            return True
        for attempt in range(2):
            total = self.held - self.waiting_held + self.reserved
            if total - own <= 0 or total + extra <= self.limit_bytes:
                return True
            if attempt == 0 and not self._reclaim():
                return False
        return False

    def _reclaim(self) -> bool:
        """Reservations of bodies behind their pace give back what they have not sent;
        whether any did."""
        now = self.clock()
        freed = False
        while self._paced and self._paced[0][0] <= now:
            _, seq, body = heapq.heappop(self._paced)
            if body.state != "reserved":
                continue
            assert body.declared is not None
            due = body.since + body.received * self.pace_s / body.declared
            if due > now:
                heapq.heappush(self._paced, (due, seq, body))
                continue
            self.reserved -= body.promised
            body.promised = 0
            body.state = "parts"
            self._live -= 1
            self.fell_behind += 1
            freed = True
        if freed:
            self._room = True
        return freed

    def _refuse(self, size: int, holding: int) -> None:
        self.refused += 1
        if (skipped := self._log()) is not None:
            log.warning(
                "an upload was refused 503 busy: %d bodies holding %d bytes and reserving %d "
                "more are being read, %d waiting for room, and %d more bytes of %s would pass "
                "the upload buffer of %d bytes (serve --upload-buffer-mb)%s",
                self.bodies - self.waiting,
                self.held - self.waiting_held,
                self.reserved,
                self.waiting,
                size,
                "one of them" if holding else "another",
                self.limit_bytes,
                self._log.since(skipped),
            )


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

        The body is admitted in `body_budget` at its first part (`BodyBudget.arrive`): a
        declared `Content-Length` is reserved whole then, and the body's later parts are not
        refused for room while it keeps pace (a chunked body, or one fallen behind its pace,
        counts its parts as they arrive). When there is no room, the first part waits up to
        `ROOM_WAIT_S` for some (`BodyBudget.wait_for_room`), the connection not read by the
        route meanwhile (uvicorn buffers up to about 64 KiB of it, not counted); then, or at
        once when it cannot wait, or at a later part that does not fit (chunked or behind its
        pace), 503 `busy` with `Retry-After` and `connection: close`, the rest of the body
        unread and the nonce unspent. A connection that has sent no body
        byte holds nothing, whatever it declared. Everything held and reserved is given back
        once the body is read and verified, and on every other way out (a refusal, the client
        gone, the body timeout, a cancellation): the route hands the body on without waiting
        for anything (a decode, a store write, both on the event loop), so no other body is
        read meanwhile.
        """
        require_media_type(headers.get(Header.CONTENT_TYPE), ContentType.OCTET_STREAM)
        try:
            pre = auth.fields_from_headers(headers)
        except auth.AuthError as exc:
            raise ApiError(401, Reason.UNSIGNED, str(exc)) from None
        self.registered_key(pre.device_id)
        if check_headers is not None:
            check_headers(headers)
        length = declared_length(headers.get(Header.CONTENT_LENGTH), cap)
        if length is not None and length > cap:
            raise ApiError(413, Reason.TOO_LARGE, f"{what} above the {cap}-byte cap")
        budget = self.body_budget
        held = budget.open(length) if budget is not None else None
        try:
            parts: list[bytes] = []
            size = 0
            async for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if size > cap:
                    raise ApiError(413, Reason.TOO_LARGE, f"{what} above the {cap}-byte cap")
                if budget is not None and held is not None:
                    kept = budget.arrive(held, len(chunk))
                    if kept is None:
                        kept = await budget.wait_for_room(held)
                    if not kept:
                        raise ApiError(
                            503,
                            Reason.BUSY,
                            "the upload bodies the coordinator is reading fill its memory "
                            f"budget for them ({budget.limit_bytes} bytes, serve "
                            f"--upload-buffer-mb); send the {what} again in {BUSY_RETRY_S} s",
                            {Header.RETRY_AFTER: str(BUSY_RETRY_S), "connection": "close"},
                        )
                parts.append(chunk)
            body = b"".join(parts)
            del parts
            fields = self.verify(method=method, target=target, headers=headers, body=body)
        finally:
            if budget is not None and held is not None:
                budget.close(held)
        return fields, body

    def signed_fields(self, headers: dict[str, str]) -> auth.SignedFields:
        """The signature headers' fields, unverified; 401 `unsigned` when they are missing or
        malformed (decided from the headers alone)."""
        if Header.SIGNATURE not in headers and Header.DEVICE not in headers:
            raise ApiError(401, Reason.UNSIGNED, "request is not signed (no x-plume-* headers)")
        try:
            return auth.fields_from_headers(headers)
        except auth.AuthError as exc:
            raise ApiError(401, Reason.UNSIGNED, str(exc)) from None

    def registered_key(self, device_id: str) -> bytes:
        """The key registered for `device_id`; 401 `unregistered` when there is none."""
        key = self.public_key(device_id)
        if key is None:
            raise ApiError(401, Reason.UNREGISTERED, "unknown device; register first")
        return key

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
        fields = self.signed_fields(headers)
        if presented_key is not None:
            key = presented_key
            if auth.device_id_for(key) != fields.device_id:
                raise ApiError(401, Reason.BAD_SIGNATURE, "device id does not match the key")
        else:
            key = self.registered_key(fields.device_id)
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


# The base64url alphabet (RFC 4648 section 5), and the characters that may end the 43 of a
# 32-byte key: the last one carries 4 bits of the key and 2 zero bits.
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_KEY_LAST = frozenset("AEIMQUYcgkosw048")
KEY_CHARS = 43


def registered_key(text: str) -> bytes:
    """The 32 bytes of a registration's `public_key`, which must be exactly their base64url
    without padding: 43 characters of `A`-`Z`, `a`-`z`, `0`-`9`, `-` and `_`, the last one
    with no bit past the key's 256 set, and the canonical encoding of a point of the curve
    (RFC 8032, section 5.1.3: y below p, and the sign bit clear when x is 0). Else 400
    `malformed` naming what is wrong. Before,
    base64's `+` and `/`, padding and any character outside the alphabet (skipped) were
    taken, so many strings registered the same key."""
    for at, ch in enumerate(text):
        if ch not in _B64URL:
            if ch in "+/":
                what = f"{ch!r}: base64url writes '-' for '+' and '_' for '/'"
            elif ch == "=":
                what = "'=': the key is sent without padding"
            else:
                what = f"{ascii(ch)}, not a base64url character"
            raise ApiError(
                400, Reason.MALFORMED, f"public_key holds {what} (at character {at + 1})"
            )
    if len(text) != KEY_CHARS:
        raise ApiError(
            400,
            Reason.MALFORMED,
            f"public_key must be {KEY_CHARS} base64url characters (32 bytes, no padding), "
            f"got {len(text)}",
        )
    if text[-1] not in _KEY_LAST:
        raise ApiError(
            400,
            Reason.MALFORMED,
            f"public_key's last character {text[-1]!r} sets bits past the key's 32 bytes: "
            "not the base64url of a key (encode the 32 bytes, drop the padding)",
        )
    key = base64.urlsafe_b64decode(text + "=")
    # RFC 8032's decoding (section 5.1.3) fails at y >= p (step 1) and at x = 0 with the sign
    # bit set (step 4). Taken mod p, as before, `y + p` (y < 19) and (x = 0, sign 1) were
    # second spellings of a point: another device id for it, and bytes that compare unequal
    # for one key. cryptography's `from_public_bytes` takes them, and OpenSSL's `verify`
    # decodes them so (tests/coordinator/test_s62a_register_canonical_key.py).
    y = int.from_bytes(key, "little") & ((1 << 255) - 1)
    if y >= _P:
        raise ApiError(
            400,
            Reason.MALFORMED,
            "public_key is not canonical: its y (the low 255 bits) is at or above the field "
            "prime p = 2^255 - 19 (RFC 8032, section 5.1.3, step 1); a key's encoding holds y "
            "mod p",
        )
    if not _on_curve(key):
        # cryptography's Ed25519PublicKey.from_public_bytes takes any 32 bytes, so such a key
        # got past the route's check and was refused 401 `bad_signature` (its signatures never
        # verify), which docs/http-api.md gives as 400 `malformed` (helper-54f's audit).
        raise ApiError(
            400,
            Reason.MALFORMED,
            "public_key is not an Ed25519 key: its 32 bytes encode no point of the curve "
            "(RFC 8032, section 5.1.3)",
        )
    if key[31] & 0x80 and y in (1, _P - 1):
        # x = 0 only at y = 1 (the identity) and y = p - 1 (the point of order 2).
        raise ApiError(
            400,
            Reason.MALFORMED,
            "public_key is not canonical: x is 0 and its sign bit (bit 255) is set (RFC 8032, "
            "section 5.1.3, step 4); the encoding of x = 0 has it clear",
        )
    return key


# Ed25519's field prime and curve constant d = -121665 / 121666 (RFC 8032).
_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P


def _on_curve(key: bytes) -> bool:
    """Whether some x makes (x, y) a point of Ed25519 (-x^2 + y^2 = 1 + d x^2 y^2), y the
    key's low 255 bits mod p: x^2 = (y^2 - 1) / (d y^2 + 1) must be a square (RFC 8032,
    section 5.1.3, steps 2 and 3). The sign bit and an encoding of y at or above p are left
    to `registered_key`'s other checks (steps 1 and 4)."""
    y = (int.from_bytes(key, "little") & ((1 << 255) - 1)) % _P
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    return v * x * x % _P in (u, -u % _P)


def admin_token_problem(token: str | None) -> str | None:
    """Why `token` cannot be an admin token, or None: it must be printable ASCII without
    spaces (0x21 to 0x7e). An HTTP header cannot carry anything else as given: the server
    strips a header value's surrounding spaces (a token ending in one was 403 on every
    request), and a non-ASCII one matched only its latin-1 bytes (helper-340). The token is
    not echoed: it is a secret."""
    if token and not all("\x21" <= ch <= "\x7e" for ch in token):
        return (
            f"must be printable ASCII without spaces ({len(token)} characters given, not all "
            "of them so): an HTTP header cannot carry it as given"
        )
    return None


def check_admin_token(expected: str | None, authorization: str | None) -> None:
    """`Authorization: Bearer <token>`, compared in constant time; 401/403 otherwise.

    An empty configured token (e.g. `PLUME_ADMIN_TOKEN=` in an env file) disables the admin API
    like an unset one: otherwise `Authorization: Bearer ` with nothing after it would match."""
    if not expected:
        raise ApiError(403, Reason.BAD_ADMIN_TOKEN, "admin endpoints are disabled (no token set)")
    # The scheme's name in any case (RFC 9110, section 11.1: `bearer` is `Bearer`).
    if not authorization or authorization[:7].lower() != "bearer ":
        raise ApiError(401, Reason.BAD_ADMIN_TOKEN, "admin endpoints need Authorization: Bearer")
    given = authorization[len("Bearer ") :].encode("latin-1", "replace")
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
        if not (finite_number(rate_per_s) and (rate_per_s == 0 or rate_per_s >= slowest)):
            raise ValueError(
                f"rate must be 0 (unlimited) or a finite number >= {MIN_REGISTER_RATE:g} per "
                f"second, got {shown(rate_per_s)}"
            )
        if not 1 <= burst <= MAX_REGISTER_BURST:
            raise ValueError(f"burst must be in [1, {MAX_REGISTER_BURST:,}], got {shown(burst)}")
        if max_buckets < 1:
            raise ValueError(f"max_buckets must be at least 1, got {shown(max_buckets)}")
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
