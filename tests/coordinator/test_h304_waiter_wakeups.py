"""Bodies waiting for room in the upload budget cost work linear in their number per pace
deadline, not quadratic (helper-301's finding 1 on 6f17421), and are let in at the deadline
that frees their room.

Before: each waiting body (`BodyBudget.wait_for_room`) set its own timer to the earliest time
an admitted body could fall behind its pace (10 ms floor); when it passed, all W waiters woke
and each ran `admit_waiters`, a `_fits` check of every waiting body: about W^2 checks per
deadline (helper-301 measured 547k checks/s, 0.45 CPU-s/s and a 25 ms median event-loop lag
for 256 waiters beside 20 paced bodies). Now the budget keeps one timer for the earliest pace
deadline and runs one pass of the queue when it fires; a waiter sleeps until it is let in or
its own 2 s end. A newcomer's arrival passes over the queue only when room may have been given
back since the last pass (a body ended, a reservation may be behind its pace).

The tests run on an event loop whose clock jumps to its next timer whenever nothing is ready
(`VirtualTimeLoop`): seconds of timers run in milliseconds, in the order they would in real
time, and the budget reads the same clock. No wall-clock bound is asserted.
`.venv/bin/python -m tests.coordinator.test_h304_waiter_wakeups` prints the counts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from coordinator.service.auth import BodyBudget

__all__: list[str] = []

T = TypeVar("T")


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to its earliest pending timer whenever no callback is
    ready; nothing here waits on a socket, so no time is really slept."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def _run_once(self) -> None:
        if not self._ready:  # type: ignore[attr-defined]
            live = [h.when() for h in self._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
            if live:
                self.now = max(self.now, min(live))
        super()._run_once()  # type: ignore[misc]


def run_virtual(main: Callable[[VirtualTimeLoop], Awaitable[T]]) -> T:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.close()


def counting(budget: BodyBudget) -> dict[str, int]:
    """Count the budget's `_fits` checks (each one a look at the room for one body)."""
    n = {"fits": 0}
    fits = budget._fits

    def counted(extra: int, own: int) -> bool:
        n["fits"] += 1
        return fits(extra, own)

    budget._fits = counted  # type: ignore[method-assign]
    return n


@dataclass
class Storm:
    waiters: int
    deadlines_bound: int  # the most pace deadlines the paced bodies can bring (see `storm`)
    arrivals: int  # first parts of waiting bodies
    fits: int  # _fits checks while the waiters waited
    refused: int
    kept: int  # paced bodies still holding their reservation at the end

    @property
    def fits_per_waiter_deadline(self) -> float:
        return self.fits / (self.waiters * self.deadlines_bound)


def storm(waiters: int, *, paced: int = 4, secs: float = 10.0, gap: float = 0.25) -> Storm:
    """`paced` bodies fill the budget and keep `gap` ahead of their pace with a part every `gap`
    s; `waiters` bodies that do not fit wait their 2 s, are refused and come back at once, for
    `secs` seconds. Each paced body's pace deadline moves `gap` later per part, so the bodies
    bring at most `paced * (secs / gap + 2)` deadlines."""

    async def main(loop: VirtualTimeLoop) -> Storm:
        limit = 1 << 20
        pace_s = 60.0
        budget = BodyBudget(limit, pace_s=pace_s, clock=loop.time)
        n = counting(budget)
        size = limit // paced
        step = int(size * gap / pace_s) + 1
        stop = loop.time() + secs
        held = []
        for _ in range(paced):
            body = budget.open(size)
            assert budget.arrive(body, 2 * step) is True  # 2 gaps ahead of its pace
            held.append(body)

        async def keep_pace(k: int, body: Any) -> None:
            await asyncio.sleep(k * gap / paced)  # their deadlines staggered
            while loop.time() < stop:
                await asyncio.sleep(gap)
                budget.arrive(body, step)

        out = {"arrivals": 0, "refused": 0}

        async def wait_again_and_again() -> None:
            while loop.time() < stop:
                body = budget.open(size)
                out["arrivals"] += 1
                verdict = budget.arrive(body, 1)
                assert verdict is None
                if not await budget.wait_for_room(body):
                    out["refused"] += 1
                budget.close(body)

        n["fits"] = 0
        await asyncio.gather(
            *(keep_pace(k, b) for k, b in enumerate(held)),
            *(wait_again_and_again() for _ in range(waiters)),
        )
        fits = n["fits"]
        kept = sum(b.state == "reserved" for b in held)
        for body in held:
            budget.close(body)
        assert (budget.held, budget.reserved, budget.bodies, budget.waiting) == (0, 0, 0, 0)
        return Storm(
            waiters=waiters,
            deadlines_bound=int(paced * (secs / gap + 2)),
            arrivals=out["arrivals"],
            fits=fits,
            refused=out["refused"],
            kept=kept,
        )

    return run_virtual(main)


def test_waiting_bodies_cost_checks_linear_in_their_number_per_pace_deadline() -> None:
    """64 waiters beside 4 bodies on pace: the checks stay within 3 per waiter and deadline
    (plus 3 per arrival): 2,752 checks, against a bound of 33,216; before, each deadline woke
    every waiter and each checked every waiter: 192,576 checks."""
    # Execute
    out = storm(64)

    # Assert: the attack's shape (the paced bodies kept their room, every waiter was refused)
    assert out.kept == 4
    assert out.refused == out.arrivals == 64 * 5
    assert out.fits <= 3 * (out.waiters * out.deadlines_bound + out.arrivals), out


def test_the_checks_per_waiter_do_not_grow_with_the_waiters() -> None:
    """Four times the waiters, four times the checks (16 times before: 12,048 checks for 16
    waiters, 192,576 for 64; now 688 and 2,752)."""
    small, large = storm(16), storm(64)
    assert large.fits_per_waiter_deadline <= 1.5 * small.fits_per_waiter_deadline, (small, large)


def test_a_waiter_is_let_in_at_the_pace_deadline_that_frees_its_room() -> None:
    """A body that stalls loses its reservation at its pace deadline, and the body waiting for
    that room is let in then (the budget's timer), not at its own 2 s end."""

    async def main(loop: VirtualTimeLoop) -> tuple[float, bool]:
        budget = BodyBudget(1000, pace_s=10.0, clock=loop.time)
        staller = budget.open(800)
        assert budget.arrive(staller, 20) is True  # its pace deadline: 20 * 10 / 800 = 0.25 s
        waiter = budget.open(500)
        assert budget.arrive(waiter, 1) is None
        t0 = loop.time()
        let_in = await budget.wait_for_room(waiter)
        took = loop.time() - t0
        budget.close(waiter)
        budget.close(staller)
        return took, let_in

    took, let_in = run_virtual(main)
    assert let_in is True
    assert 0.25 <= took <= 0.25 + 0.011


def test_a_reservation_made_while_a_body_waits_brings_its_own_deadline() -> None:
    """The timer follows the earliest deadline, also one of a body let in after the waiter
    began to wait (before, a waiter that began with no deadline in sight slept its 2 s)."""

    async def main(loop: VirtualTimeLoop) -> tuple[float, bool]:
        budget = BodyBudget(1000, pace_s=10.0, clock=loop.time)
        chunked = budget.open(None)  # all of it arrived: no reservation, no deadline
        assert budget.arrive(chunked, 400) is True
        waiter = budget.open(700)
        assert budget.arrive(waiter, 1) is None  # 400 + 700 > 1000
        waiting = asyncio.ensure_future(budget.wait_for_room(waiter))
        await asyncio.sleep(0.1)
        staller = budget.open(600)  # 400 + 600 fits; its deadline 1 * 10 / 600 s away
        assert budget.arrive(staller, 1) is True
        budget.close(chunked)  # 600 + 700 still does not fit while the staller keeps its room
        assert waiter.state == "waiting"
        let_in = await waiting
        took = loop.time() - 0.0
        budget.close(waiter)
        budget.close(staller)
        assert (budget.held, budget.reserved, budget.bodies, budget.waiting) == (0, 0, 0, 0)
        return took, let_in

    took, let_in = run_virtual(main)
    assert let_in is True
    assert took <= 0.1 + 10 / 600 + 0.011  # its deadline, not the waiter's 2 s end


def test_a_waiter_cancelled_in_the_turn_it_is_let_in_stops() -> None:
    """A waiting body whose task is cancelled (a shutdown's grace ending) in the same turn of
    the loop as room comes for it raises CancelledError, and its caller gives everything back.
    Before, `asyncio.wait_for` (Python 3.11) returned the wait's result instead of raising, so
    such an upload went on being read after its shutdown answer (helper-301's finding 5)."""

    async def main(loop: VirtualTimeLoop) -> tuple[str, tuple[int, int, int, int]]:
        budget = BodyBudget(1000, pace_s=10.0, clock=loop.time)
        holder = budget.open(900)
        assert budget.arrive(holder, 100) is True
        waiter = budget.open(500)
        assert budget.arrive(waiter, 10) is None

        async def read() -> bool:
            try:
                return await budget.wait_for_room(waiter)
            finally:
                budget.close(waiter)  # as read_signed_body's finally does

        task = asyncio.ensure_future(read())
        await asyncio.sleep(0.1)
        budget.close(holder)  # room: the waiter is let in ...
        task.cancel()  # ... and cancelled in the same turn
        try:
            outcome = f"returned {await task}"
        except asyncio.CancelledError:
            outcome = "cancelled"
        return outcome, (budget.held, budget.reserved, budget.bodies, budget.waiting)

    outcome, left = run_virtual(main)
    assert outcome == "cancelled"
    assert left == (0, 0, 0, 0)


def main() -> None:
    for w in (16, 64, 256):
        out = storm(w)
        print(
            f"{w:3d} waiters beside 4 paced bodies, 10 s: {out.fits} _fits checks "
            f"({out.fits_per_waiter_deadline:.2f} per waiter and deadline, at most "
            f"{out.deadlines_bound} deadlines), {out.arrivals} arrivals, {out.refused} refused"
        )


if __name__ == "__main__":
    main()
