"""The upload budget (`coordinator.service.auth.BodyBudget`) at its edges (helper s62a's
mutation hunt on the class).

Each test pins one rule of the class docstring or of a method's, at the value where it turns:
a body holds nothing until its first byte; bytes past a declared length are judged for room;
a body all in gives nothing back later; the waiting bodies' share is `limit // WAIT_SHARE`
inclusive; a reservation is behind its pace at its deadline exactly; a new anonymous body
lets the waiting bodies in first; a waiter whose time is up looks for room once more; a
closed body leaves the queue and the pace heap; misuse raises `RuntimeError`. Driven by hand
on a stepped clock, or on `VirtualTimeLoop` (timers in virtual time): no wall clock.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from coordinator.service.auth import WAIT_SHARE, Body, BodyBudget
from tests._clock import Clock

from .test_h304_waiter_wakeups import VirtualTimeLoop, run_virtual

__all__: list[str] = []


def _empty(budget: BodyBudget) -> tuple[int, int, int, int, int]:
    return (budget.held, budget.reserved, budget.bodies, budget.waiting, budget.waiting_held)


# -- construction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pace_s", "says"),
    [
        (True, "pace_s must be a number of seconds, got True"),
        ("120", "pace_s must be a number of seconds"),
        (None, "pace_s must be a number of seconds"),
        (0, "pace_s must be a finite number of seconds > 0, got 0"),
        (0.0, "pace_s must be a finite number of seconds > 0"),
        (-1.0, "pace_s must be a finite number of seconds > 0"),
        (math.nan, "pace_s must be a finite number of seconds > 0"),
        (math.inf, "pace_s must be a finite number of seconds > 0"),
    ],
)
def test_a_pace_that_is_no_positive_finite_number_is_refused(pace_s: object, says: str) -> None:
    # Kills the two pace_s checks' `if` -> False, and `pace_s > 0` -> `>= 0` (a pace of 0
    # would make every reservation due the moment it is granted).
    with pytest.raises(ValueError, match=says):
        BodyBudget(100, pace_s=pace_s)  # type: ignore[arg-type]


def test_the_smallest_paces_and_an_integer_one_are_taken() -> None:
    assert BodyBudget(100, pace_s=1).pace_s == 1.0
    assert BodyBudget(100, pace_s=1e-9).pace_s == 1e-9


# -- a body's first part ---------------------------------------------------------------------


@pytest.mark.parametrize("declared", [100, None])
def test_a_part_of_no_bytes_leaves_a_new_body_holding_nothing(declared: int | None) -> None:
    # "A body that declares its length holds nothing until its first byte arrives": kills
    # `if size <= 0` -> False and `<=` -> `<` in `arrive` (the empty part admitted the body,
    # counted in `bodies`, and reserved its declared length).
    budget = BodyBudget(1000)
    body = budget.open(declared)
    assert budget.arrive(body, 0) is True
    assert body.state == "new"
    assert _empty(budget) == (0, 0, 0, 0, 0)
    assert budget.arrive(body, 10) is True  # its first byte admits it
    assert budget.bodies == 1
    budget.close(body)


def test_a_first_part_longer_than_declared_is_counted_whole() -> None:
    # The declared length is raised to the first part's (`max(body.declared, size)`): kills
    # that assignment -> pass (the body reserved its declared 50 and held 80: -30 promised).
    budget = BodyBudget(1000, clock=Clock())
    body = budget.open(50)
    assert budget.arrive(body, 80) is True
    assert (body.declared, body.promised, body.state) == (80, 0, "parts")
    assert (budget.held, budget.reserved) == (80, 0)
    budget.close(body)
    assert _empty(budget) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize(("declared", "first"), [(200, 10), (None, 150)])
def test_one_byte_held_by_another_body_keeps_a_body_past_the_limit_out(
    declared: int | None, first: int
) -> None:
    # A body larger than the budget is let in alone only when no other body holds a byte
    # (`total - own <= 0`, `own` 0 for a new body): kills `_fits(body.declared, 0)` -> `1` in
    # `_arrive`, and `<= 0` -> `<= 1` in `_fits`.
    budget = BodyBudget(100, clock=Clock())
    holder = budget.open(None)
    assert budget.arrive(holder, 1) is True
    big = budget.open(declared)
    verdict = budget.arrive(big, first)
    assert verdict is (None if declared else False)  # waits (declared) or refused (chunked)
    if declared:
        budget.close(holder)  # nobody holds a byte: alone, it gets in
        assert big.state == "reserved"
    else:
        budget.close(holder)
    budget.close(big)
    assert _empty(budget) == (0, 0, 0, 0, 0)


def test_a_waiter_past_the_limit_is_not_let_in_beside_one_byte() -> None:
    # The same rule when the waiting bodies are let in: kills `_fits(body.declared, 0)` ->
    # `1` in `admit_waiters` (a waiter larger than the budget went in beside a byte).
    budget = BodyBudget(100, clock=Clock())
    assert budget.take(1) is True  # a byte of an anonymous body
    holder = budget.open(99)
    assert budget.arrive(holder, 1) is True  # 1 + 99
    big = budget.open(200)
    assert budget.arrive(big, 10) is None
    budget.close(holder)  # room comes, but one byte is still held
    assert big.state == "waiting"
    budget.give(1)
    assert big.state == "reserved"
    budget.close(big)
    assert _empty(budget) == (0, 0, 0, 0, 0)


def test_the_waiting_share_is_an_eighth_of_the_limit_inclusive() -> None:
    # `waiting_held + size <= limit // WAIT_SHARE`: a first part of exactly the share waits,
    # one byte more is refused at once. Kills `<=` -> `<`.
    limit = 8000
    share = limit // WAIT_SHARE
    budget = BodyBudget(limit, clock=Clock())  # the clock stands still: nobody falls behind
    holder = budget.open(limit)
    assert budget.arrive(holder, 1) is True
    at_share = budget.open(limit)
    assert budget.arrive(at_share, share) is None
    assert (budget.waiting, budget.waiting_held) == (1, share)
    budget.refuse_waiting(at_share)
    past = budget.open(limit)
    assert budget.arrive(past, share + 1) is False
    assert (budget.waiting, budget.waiting_held, budget.refused) == (0, 0, 2)
    for body in (past, at_share, holder):
        budget.close(body)
    assert _empty(budget) == (0, 0, 0, 0, 0)


# -- a body's later parts ----------------------------------------------------------------------


def test_bytes_past_a_declared_length_are_judged_for_room() -> None:
    # A reserved body's parts are not refused within what it declared, but what it sends past
    # that is checked as any other part (`size > use and not _fits(size - use, own)`): kills
    # that `if` -> False (the excess was taken past the limit beside another body).
    budget = BodyBudget(100, clock=Clock())
    declared = budget.open(50)
    assert budget.arrive(declared, 10) is True  # holds 10, reserves 40
    chunked = budget.open(None)
    assert budget.arrive(chunked, 50) is True  # 10 + 40 + 50 = 100
    assert budget.arrive(declared, 60) is False  # 40 of it reserved, 20 more do not fit
    assert (budget.held, budget.reserved, budget.refused) == (60, 40, 1)
    assert budget.arrive(declared, 40) is True  # what it declared still goes in
    assert (budget.held, budget.reserved, declared.state) == (100, 0, "parts")
    for body in (declared, chunked):
        budget.close(body)
    assert _empty(budget) == (0, 0, 0, 0, 0)


def test_a_body_alone_past_the_limit_gets_its_parts_past_its_declared_length() -> None:
    # A body alone holds and reserves all (`own = received + promised` is the whole total),
    # so what it sends past what it declared fits too, beyond the limit: kills `+` -> `-` in
    # `own` (the body was refused its own excess).
    budget = BodyBudget(100, clock=Clock())
    body = budget.open(200)
    assert budget.arrive(body, 10) is True
    assert budget.arrive(body, 250) is True  # 190 declared, 60 past it
    assert (budget.held, budget.reserved, budget.refused) == (260, 0, 0)
    budget.close(body)
    assert _empty(budget) == (0, 0, 0, 0, 0)


def test_only_the_bytes_past_a_declared_length_are_judged() -> None:
    # What is judged for room is the excess alone (`size - use`): kills `-` -> `+` there (the
    # whole part was judged, and refused, though its excess fitted).
    budget = BodyBudget(100, clock=Clock())
    body = budget.open(50)
    assert budget.arrive(body, 10) is True  # 50
    chunked = budget.open(None)
    assert budget.arrive(chunked, 20) is True  # 70
    assert budget.arrive(body, 60) is True  # 40 reserved, 20 more: 90
    assert (budget.held, budget.reserved, budget.refused) == (90, 0, 0)
    for b in (body, chunked):
        budget.close(b)
    assert _empty(budget) == (0, 0, 0, 0, 0)


def test_bytes_past_a_declared_length_that_fit_are_taken() -> None:
    # ... and taken when they fit: kills `size > use and ...` -> `or` (every part longer than
    # what is left of the declared length was refused).
    budget = BodyBudget(100, clock=Clock())
    body = budget.open(50)
    assert budget.arrive(body, 10) is True
    assert budget.arrive(body, 60) is True  # 40 of it reserved, 20 more fit
    assert (budget.held, budget.reserved, budget.refused, body.state) == (70, 0, 0, "parts")
    budget.close(body)
    assert _empty(budget) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize("parts", [[100], [10, 90]])
def test_a_body_all_in_has_nothing_to_give_back_later(parts: list[int]) -> None:
    # Once its declared length is in, a body is "parts" and off the pace rule: kills `if not
    # body.promised` -> False in `_reserve` (all in at its first part) and in `_arrive` (all
    # in at a later part), which left it "reserved" with nothing promised, to be counted as
    # fallen behind its pace (`fell_behind`) when its deadline passed.
    clock = Clock()
    budget = BodyBudget(150, pace_s=10.0, clock=clock)
    body = budget.open(100)
    for size in parts:
        assert budget.arrive(body, size) is True
    assert body.state == "parts" and budget.reserved == 0
    clock.now = 100.0  # far past any deadline it had
    other = budget.open(None)
    assert budget.arrive(other, 60) is False  # 100 + 60 > 150: room asked, nothing reclaimed
    assert budget.fell_behind == 0
    assert body.state == "parts"
    for b in (body, other):
        budget.close(b)
    assert _empty(budget) == (0, 0, 0, 0, 0)


# -- pace deadlines ---------------------------------------------------------------------------


def test_a_reservation_is_behind_its_pace_at_its_deadline_exactly() -> None:
    # At the deadline itself the waiting bodies are looked at first (`admit_waiters`:
    # `_paced[0][0] <= clock()`), so the older waiter, not the newcomer, gets the room the
    # staller gives back. Kills `<=` -> `<` there: the newcomer took the room and the waiter
    # stayed out.
    clock = Clock()
    budget = BodyBudget(1000, pace_s=10.0, clock=clock)
    staller = budget.open(800)
    assert budget.arrive(staller, 80) is True  # deadline 80 * 10 / 800 = 1.0 s
    waiter = budget.open(500)
    assert budget.arrive(waiter, 1) is None
    assert budget.next_check() == 1.0
    clock.now = 1.0
    chunked = budget.open(None)
    assert budget.arrive(chunked, 450) is False  # 80 + 500 + 450 > 1000
    assert waiter.state == "reserved"
    assert budget.fell_behind == 1
    for body in (chunked, waiter, staller):
        budget.close(body)
    assert _empty(budget) == (0, 0, 0, 0, 0)


def test_a_body_that_kept_its_pace_is_checked_again_at_its_new_deadline() -> None:
    # A deadline that comes due while its body has kept pace since is moved to the body's new
    # deadline (`_reclaim` pushes it back): kills that push -> pass (the entry was dropped,
    # and the body, fallen behind later, kept its room for good).
    clock = Clock()
    budget = BodyBudget(1000, pace_s=10.0, clock=clock)
    body = budget.open(800)
    assert budget.arrive(body, 80) is True  # deadline 1.0 s
    clock.now = 0.5
    assert budget.arrive(body, 80) is True  # on pace: its deadline is now 2.0 s
    clock.now = 1.5
    first = budget.open(None)
    assert budget.arrive(first, 300) is False  # 800 + 300 > 1000, and the body keeps pace
    assert budget.next_check() == 2.0
    clock.now = 2.5
    second = budget.open(None)
    assert budget.arrive(second, 300) is True  # behind now: 160 + 300
    assert (budget.fell_behind, body.state) == (1, "parts")
    for b in (first, second, body):
        budget.close(b)
    assert _empty(budget) == (0, 0, 0, 0, 0)


def test_a_closed_bodys_deadline_frees_nothing() -> None:
    # A closed body's entry stays in the pace heap until it comes due; `_reclaim` drops it
    # (`if body.state != "reserved": continue`). Kills that `if` -> False: the closed body was
    # made "parts" again and counted as fallen behind.
    clock = Clock()
    budget = BodyBudget(100, pace_s=10.0, clock=clock)
    gone = budget.open(100)
    assert budget.arrive(gone, 10) is True  # deadline 1.0 s
    budget.close(gone)
    holder = budget.open(None)
    assert budget.arrive(holder, 90) is True
    clock.now = 5.0
    late = budget.open(None)
    assert budget.arrive(late, 20) is False  # 90 + 20 > 100; the old deadline frees nothing
    assert budget.fell_behind == 0
    assert gone.state == "closed"
    assert budget.next_check() is None  # the entry went
    for body in (holder, late):
        budget.close(body)
    assert _empty(budget) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize("all_in", [False, True])
def test_the_pace_heap_stays_bounded_while_no_body_asks_for_room(all_in: bool) -> None:
    # "Entries of bodies no longer reserved go, so the heap stays bounded by the bodies being
    # read even while no body asks for room", whether a body is closed while reserved or once
    # all of it is in: kills `elif state == "reserved"` -> False and `self._live -= 1` ->
    # `+=` in `close`, `self._live -= 1` -> `+=` in `_arrive` (all in), and the trim's `if`
    # -> False (`_live`, the count of reservations, only grew, and the heap with it).
    budget = BodyBudget(10**6, clock=Clock())
    for _ in range(500):
        body = budget.open(1000)
        assert budget.arrive(body, 1) is True
        if all_in:
            assert budget.arrive(body, 999) is True
        budget.close(body)
    assert len(budget._paced) <= 64 + 1
    assert _empty(budget) == (0, 0, 0, 0, 0)


def test_the_trimmed_pace_heap_still_gives_the_earliest_deadline_first() -> None:
    # The trim in `close` keeps the entries of reserved bodies in their heap-array order,
    # which is not a heap once others are gone: `heapify` restores it. Kills that `heapify`
    # dropped (next_check said 4.0 s, a body 40 s behind the earliest, so the waiters' timer
    # and `_reclaim`, which pops from the top, would miss the earlier deadlines).
    clock = Clock()
    budget = BodyBudget(10**9, pace_s=100.0, clock=clock)
    bodies = []
    for i in range(100):
        body = budget.open(1000)
        # Each body sent less than the one before, so it is due earlier: every push goes to
        # the root, and the array is no sorted list.
        assert budget.arrive(body, 100 - i) is True
        bodies.append(body)
    kept = bodies[::6]  # 17 stay reserved; the other 83 close, the latest admitted first
    for body in reversed(bodies):
        if body not in kept:
            budget.close(body)
    assert len(budget._paced) == len(kept)  # the trim ran (100 > 2 * 17 + 64)
    # The earliest deadline among the kept: bodies[96] sent 4 of 1000 bytes, due at 0.4 s
    assert budget.next_check() == pytest.approx(min(b.received * 0.1 for b in kept)) == 0.4
    # A body that fits only once that reservation's 996 unsent bytes are given back
    clock.now = 0.45
    newcomer = budget.open(None)
    assert budget.arrive(newcomer, 10**9 - 17 * 1000 + 1) is True
    assert budget.fell_behind == 1 and bodies[96].state == "parts"


def test_the_pace_heap_stays_bounded_when_reservations_fall_behind() -> None:
    # The same bound while reservations fall behind their pace (`_reclaim`) beside bodies
    # closed while reserved, whose deadlines are far off: kills `self._live -= 1` -> `+=` in
    # `_reclaim` (the count of reservations grew with each one given back, and the heap of
    # the closed bodies' entries with it).
    clock = Clock()
    budget = BodyBudget(2 * 10**6, pace_s=1000.0, clock=clock)
    for _ in range(300):
        behind = budget.open(10**6)
        assert budget.arrive(behind, 1) is True  # deadline 1 * 1000 / 10**6 = 1 ms away
        closed = budget.open(1000)
        assert budget.arrive(closed, 999) is True  # deadline 999 s away
        budget.close(closed)
        clock.now += 0.01
        newcomer = budget.open(None)
        assert budget.arrive(newcomer, 10**6 + 1) is True  # once `behind` gave its room back
        budget.close(newcomer)
        budget.close(behind)
    assert budget.fell_behind == 300
    assert len(budget._paced) <= 64 + 1
    assert _empty(budget) == (0, 0, 0, 0, 0)


def test_trimming_the_pace_heap_keeps_the_live_reservations_deadlines() -> None:
    # The trim keeps the entries of bodies still reserved (`e[2].state == "reserved"`): kills
    # `==` -> `!=` there, which kept the closed bodies' entries and dropped the live ones, so
    # a staller behind its pace never gave its room back.
    clock = Clock()
    budget = BodyBudget(1000, pace_s=10.0, clock=clock)
    staller = budget.open(800)
    assert budget.arrive(staller, 80) is True  # deadline 1.0 s
    for _ in range(100):  # enough closed entries for a trim (more than 2 * 1 + 64)
        body = budget.open(100)
        assert budget.arrive(body, 10) is True
        budget.close(body)
    assert budget.next_check() == 1.0
    clock.now = 2.0
    newcomer = budget.open(None)
    assert budget.arrive(newcomer, 500) is True  # the staller's room came back
    assert (budget.fell_behind, staller.state) == (1, "parts")
    for b in (newcomer, staller):
        budget.close(b)
    assert _empty(budget) == (0, 0, 0, 0, 0)


# -- waiting bodies ---------------------------------------------------------------------------


def test_a_new_anonymous_body_lets_the_waiting_bodies_in_first() -> None:
    # `take` of a body not counted yet (`holding` 0) lets the waiting bodies in before it, as
    # a new body's first part does (`arrive`). Kills `if not holding` -> False there: the
    # anonymous body took the room a staller gave back and the older waiter stayed out.
    clock = Clock()
    budget = BodyBudget(100, pace_s=10.0, clock=clock)
    staller = budget.open(100)
    assert budget.arrive(staller, 10) is True  # deadline 10 * 10 / 100 = 1.0 s
    waiter = budget.open(50)
    assert budget.arrive(waiter, 5) is None
    clock.now = 2.0  # the staller is behind; nobody has asked for room since
    assert budget.take(60) is False  # the waiter went first: 10 + 50 + 60 > 100
    assert waiter.state == "reserved"
    budget.close(waiter)
    budget.close(staller)
    assert _empty(budget) == (0, 0, 0, 0, 0)


def test_room_a_later_anonymous_part_reclaims_is_its_own_first() -> None:
    # "Room given back so goes to the body that asked, then at once to the waiting bodies":
    # a later part (`holding` > 0) does not let the waiters in before it. Kills `if not
    # holding` -> True in `take` (the waiter took the room the part reclaimed, and the part,
    # of a body already being read, was refused).
    clock = Clock()
    budget = BodyBudget(100, pace_s=10.0, clock=clock)
    staller = budget.open(80)
    assert budget.arrive(staller, 8) is True  # deadline 8 * 10 / 80 = 1.0 s
    assert budget.take(10) is True  # 80 + 10
    waiter = budget.open(50)
    assert budget.arrive(waiter, 5) is None  # 90 + 50 > 100
    clock.now = 2.0
    assert budget.take(60, holding=10) is True  # 8 + 10 + 60 once the staller gave its back
    assert waiter.state == "waiting"  # 78 + 50 > 100
    budget.give(70)
    assert waiter.state == "reserved"
    budget.close(waiter)
    budget.close(staller)
    assert _empty(budget) == (0, 0, 0, 0, 0)


def test_room_a_later_anonymous_part_reclaims_beyond_its_own_goes_to_the_waiters() -> None:
    # ... and what it does not need goes to the waiting bodies at once (`_offer`): kills that
    # call -> pass in `take` (the waiter stayed out with room for it there).
    clock = Clock()
    budget = BodyBudget(100, pace_s=10.0, clock=clock)
    staller = budget.open(80)
    assert budget.arrive(staller, 8) is True  # deadline 1.0 s
    assert budget.take(10) is True  # 90
    waiter = budget.open(30)
    assert budget.arrive(waiter, 3) is None  # 90 + 30 > 100
    clock.now = 2.0
    assert budget.take(20, holding=10) is True  # 8 + 30 once the staller gave its back
    assert waiter.state == "reserved"  # 38 + 30 fit
    budget.give(30)
    for body in (waiter, staller):
        budget.close(body)
    assert _empty(budget) == (0, 0, 0, 0, 0)


def test_closing_a_waiting_body_takes_it_out_of_the_queue() -> None:
    # A waiting body whose request ends (the client gone, a cancellation) gives its first
    # part back and leaves the queue: kills `if state == "waiting"` -> False in `close` (it
    # stayed queued and counted, and was let in later, closed).
    budget = BodyBudget(1000, clock=Clock())
    holder = budget.open(900)
    assert budget.arrive(holder, 100) is True
    waiter = budget.open(500)
    assert budget.arrive(waiter, 10) is None
    budget.close(waiter)
    assert waiter.state == "closed"
    assert (budget.waiting, budget.waiting_held, budget.held, budget.bodies) == (0, 0, 100, 1)
    budget.close(holder)  # room: nobody is waiting for it
    assert waiter.state == "closed"
    assert _empty(budget) == (0, 0, 0, 0, 0)


def test_a_waiter_whose_time_is_up_looks_for_room_once_more() -> None:
    # `_give_up`: "let in if room has come since the last look". Room comes here from a
    # reservation falling behind its pace on the budget's clock, which the loop's timer for
    # that deadline has not reached yet. Kills its `if body.state == "waiting"` (the look)
    # -> False: the waiter was refused with the room there.

    async def main(loop: VirtualTimeLoop) -> tuple[bool, float]:
        clock = Clock()
        budget = BodyBudget(1000, pace_s=10.0, clock=clock)
        staller = budget.open(800)
        assert budget.arrive(staller, 80) is True  # deadline 1.0 s on the budget's clock
        waiter = budget.open(500)
        assert budget.arrive(waiter, 1) is None
        loop.call_later(0.1, setattr, clock, "now", 2.0)  # the budget's clock moves on
        let_in = await budget.wait_for_room(waiter, wait_s=0.5)
        took = loop.time()
        budget.close(waiter)
        budget.close(staller)
        assert _empty(budget) == (0, 0, 0, 0, 0)
        return let_in, took

    let_in, took = run_virtual(main)
    assert let_in is True
    assert took == 0.5  # at its end, not at the timer (1.0 s of loop time)


def test_a_deadline_earlier_than_the_timer_moves_the_timer() -> None:
    # A reservation granted while a body waits, due before the budget's timer, moves the
    # timer to its deadline (`_arm`): kills `if self._timer_at <= due` -> True (the timer
    # stayed at the later deadline, and the waiter slept past the room that came).

    async def main(loop: VirtualTimeLoop) -> tuple[bool, float]:
        budget = BodyBudget(1000, pace_s=10.0, clock=loop.time)
        holder = budget.open(None)
        assert budget.arrive(holder, 500) is True
        slow = budget.open(100)
        assert budget.arrive(slow, 50) is True  # deadline 50 * 10 / 100 = 5.0 s
        waiter = budget.open(501)
        assert budget.arrive(waiter, 1) is None  # 600 + 501 > 1000
        waiting = asyncio.ensure_future(budget.wait_for_room(waiter, wait_s=30.0))
        await asyncio.sleep(0)  # it waits; the timer is set for 5.0 s
        staller = budget.open(400)
        assert budget.arrive(staller, 4) is True  # 1000; deadline 4 * 10 / 400 = 0.1 s
        budget.close(holder)  # 500 + 501 > 1000: still no room for the waiter
        assert waiter.state == "waiting"
        let_in = await waiting
        took = loop.time()
        for body in (waiter, staller, slow):
            budget.close(body)
        assert _empty(budget) == (0, 0, 0, 0, 0)
        return let_in, took

    let_in, took = run_virtual(main)
    assert let_in is True
    assert took <= 0.1 + 0.011  # the staller's deadline, not the 5.0 s one


def test_one_timer_sleeps_until_the_deadline_however_many_wait() -> None:
    # The budget keeps one timer for all the waiting bodies, at the earliest pace deadline,
    # 10 ms from now at the soonest (`max(due, now + 0.01)`). Kills `max` -> `min` there
    # (the timer fired every 10 ms: 150 times before a deadline 1.5 s away), and `if
    # self._timer is not None` -> False in `_arm` (each waiter that began to wait set a timer
    # of its own beside the one already set).

    async def main(loop: VirtualTimeLoop) -> tuple[list[bool], int]:
        budget = BodyBudget(1000, pace_s=10.0, clock=loop.time)
        fired = [0]
        on_timer = budget._on_timer

        def counted() -> None:
            fired[0] += 1
            on_timer()

        budget._on_timer = counted  # type: ignore[method-assign]
        staller = budget.open(1000)
        assert budget.arrive(staller, 150) is True  # deadline 150 * 10 / 1000 = 1.5 s
        waiters = [budget.open(100) for _ in range(3)]
        assert [budget.arrive(w, 1) for w in waiters] == [None] * 3
        let_in = await asyncio.gather(*(budget.wait_for_room(w, wait_s=2.0) for w in waiters))
        for body in (*waiters, staller):
            budget.close(body)
        assert _empty(budget) == (0, 0, 0, 0, 0)
        return list(let_in), fired[0]

    let_in, fired = run_virtual(main)
    assert let_in == [True] * 3  # all three at the deadline: 150 + 3 * 100 fit
    assert fired == 1


def test_a_budget_used_from_a_second_loop_arms_its_timer_there() -> None:
    # `wait_for_room` from another event loop than the last drops the old loop's timer
    # (`if self._timer is not None`): kills that `if` -> False, after which the stale timer
    # (due before the new deadline) kept `_arm` from setting one on the new loop, and the
    # waiter slept to its end.
    clock = Clock()
    budget = BodyBudget(1000, pace_s=10.0, clock=clock)
    staller = budget.open(800)
    assert budget.arrive(staller, 80) is True  # deadline 1.0 s

    async def refused_first(loop: VirtualTimeLoop) -> bool:
        waiter = budget.open(500)
        assert budget.arrive(waiter, 1) is None
        ok = await budget.wait_for_room(waiter, wait_s=0.5)  # its timer set for 1.0 s
        budget.close(waiter)
        return ok

    async def let_in_at_the_deadline(loop: VirtualTimeLoop) -> tuple[bool, float]:
        waiter = budget.open(500)
        assert budget.arrive(waiter, 1) is None

        def tick() -> None:  # the budget's clock follows the loop's from here
            clock.now = loop.time()
            loop.call_later(0.25, tick)

        tick()
        ok = await budget.wait_for_room(waiter, wait_s=30.0)
        took = loop.time()
        budget.close(waiter)
        return ok, took

    assert run_virtual(refused_first) is False
    ok, took = run_virtual(let_in_at_the_deadline)
    assert ok is True
    assert took <= 1.0 + 0.25  # at the staller's deadline, not at its 30 s end
    budget.close(staller)
    assert _empty(budget) == (0, 0, 0, 0, 0)


# -- misuse ------------------------------------------------------------------------------------


def _states(budget: BodyBudget) -> dict[str, Body]:
    """A body in each state a caller can leave one in: waiting, refused, closed."""
    holder = budget.open(900)
    assert budget.arrive(holder, 100) is True
    waiting, refused, closed = budget.open(500), budget.open(500), budget.open(500)
    for body in (waiting, refused):
        assert budget.arrive(body, 10) is None
    budget.refuse_waiting(refused)
    assert budget.arrive(closed, 5) is None
    budget.close(closed)
    return {"waiting": waiting, "refused": refused, "closed": closed}


@pytest.mark.parametrize("state", ["waiting", "refused", "closed"])
def test_a_part_for_a_body_not_being_read_raises(state: str) -> None:
    # Kills `if body.state != "new"` -> False in `_arrive` (such a part was counted as a new
    # body's: a closed body held bytes again, a waiting one was counted twice).
    budget = BodyBudget(1000, clock=Clock())
    body = _states(budget)[state]
    before = _empty(budget)
    with pytest.raises(RuntimeError, match=f"a part arrived for a body {state}"):
        budget.arrive(body, 10)
    assert _empty(budget) == before


@pytest.mark.parametrize("state", ["new", "refused", "closed"])
def test_only_a_waiting_body_waits_or_is_refused_as_one(state: str) -> None:
    # Kills the `body.state != "waiting"` guards' `if` -> False in `wait_for_room` and
    # `refuse_waiting` (a body not in the queue: a KeyError, or counts gone negative).
    budget = BodyBudget(1000, clock=Clock())
    body = budget.open(500) if state == "new" else _states(budget)[state]
    with pytest.raises(RuntimeError, match=f"refuse_waiting: the body is {state}"):
        budget.refuse_waiting(body)

    async def wait() -> bool:
        return await budget.wait_for_room(body)

    with pytest.raises(RuntimeError, match=f"wait_for_room: the body is {state}"):
        asyncio.run(wait())
