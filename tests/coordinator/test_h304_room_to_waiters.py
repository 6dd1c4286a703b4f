"""Room given back outside a pass over the waiting bodies goes to them at once, and a chunked
newcomer lets them in first (helper-301's finding 4 on 6f17421).

A reservation behind its pace gives its unsent bytes back lazily, when a body needs room
(`BodyBudget._fits`). Before, when that body was a chunked newcomer or a later part of a body
already being read, the room went to it and the waiting bodies were not offered the rest until
their next pace deadline or their 2 s end; and a chunked newcomer never looked at the queue,
so it could take room ahead of older waiting bodies (docs/operations.md said waiting bodies
are let in "before a new body"). Now a new body, chunked or not, lets the waiting bodies in
first, and room a reservation gives back while a part is checked goes to that part, then at
once to the waiting bodies. Driven by hand on a stepped clock; no event loop, no wall clock.
"""

from __future__ import annotations

from coordinator.service.auth import BodyBudget
from tests._clock import Clock

__all__: list[str] = []


def test_a_chunked_newcomer_lets_an_older_waiting_body_in_first() -> None:
    # Prepare: a staller's reservation, due at 1 s, keeps a body waiting
    clock = Clock()
    budget = BodyBudget(1000, pace_s=10.0, clock=clock)
    staller = budget.open(800)
    assert budget.arrive(staller, 80) is True  # pace deadline 80 * 10 / 800 = 1 s
    waiter = budget.open(500)
    assert budget.arrive(waiter, 1) is None  # 800 + 500 > 1000
    clock.now = 1.5  # the staller is behind its pace; nobody has asked for room yet

    # Execute: a chunked body's first part asks for room
    chunked = budget.open(None)
    kept = budget.arrive(chunked, 450)

    # Assert: the waiter went first (80 + 500 held and reserved), so the chunked part, which
    # fitted beside the staller's 80 bytes alone, no longer fits (80 + 500 + 450 > 1000).
    # Before: the chunked part took the room (80 + 450) and the waiter stayed waiting.
    assert waiter.state == "reserved"
    assert kept is False and budget.refused == 1
    for body in (chunked, waiter, staller):
        budget.close(body)
    assert (budget.held, budget.reserved, budget.bodies, budget.waiting) == (0, 0, 0, 0)


def test_a_chunked_newcomer_that_fits_beside_the_waiter_gets_in_too() -> None:
    clock = Clock()
    budget = BodyBudget(1000, pace_s=10.0, clock=clock)
    staller = budget.open(800)
    assert budget.arrive(staller, 80) is True
    waiter = budget.open(500)
    assert budget.arrive(waiter, 1) is None
    clock.now = 1.5

    chunked = budget.open(None)
    kept = budget.arrive(chunked, 400)

    assert waiter.state == "reserved" and kept is True  # 80 + 500 + 400 <= 1000
    assert budget.held - budget.waiting_held + budget.reserved == 980
    for body in (chunked, waiter, staller):
        budget.close(body)
    assert (budget.held, budget.reserved, budget.bodies, budget.waiting) == (0, 0, 0, 0)


def test_room_a_later_part_reclaims_goes_to_the_waiting_body_at_once() -> None:
    # Prepare: a chunked body being read, a staller's reservation, a body waiting
    clock = Clock()
    budget = BodyBudget(1000, pace_s=10.0, clock=clock)
    chunked = budget.open(None)
    assert budget.arrive(chunked, 100) is True
    staller = budget.open(600)
    assert budget.arrive(staller, 60) is True  # pace deadline 60 * 10 / 600 = 1 s
    waiter = budget.open(400)
    assert budget.arrive(waiter, 1) is None  # 100 + 600 + 400 > 1000
    clock.now = 1.5

    # Execute: the chunked body's next part does not fit unless the staller gives its room back
    kept = budget.arrive(chunked, 350)

    # Assert: the part is kept (100 + 350 + 60 held), and the rest of the staller's room went
    # to the waiter at once (+ 400 = 910). Before: the waiter stayed waiting until its next
    # deadline or its 2 s end.
    assert kept is True
    assert staller.state == "parts" and budget.fell_behind == 1
    assert waiter.state == "reserved"
    assert budget.held - budget.waiting_held + budget.reserved == 910
    for body in (chunked, waiter, staller):
        budget.close(body)
    assert (budget.held, budget.reserved, budget.bodies, budget.waiting) == (0, 0, 0, 0)


def test_a_waiting_body_is_not_let_in_past_the_limit() -> None:
    """The offer is the same pass as ever: a waiting body that does not fit stays waiting."""
    clock = Clock()
    budget = BodyBudget(1000, pace_s=10.0, clock=clock)
    chunked = budget.open(None)
    assert budget.arrive(chunked, 100) is True
    staller = budget.open(600)
    assert budget.arrive(staller, 60) is True
    waiter = budget.open(600)
    assert budget.arrive(waiter, 1) is None
    clock.now = 1.5

    assert budget.arrive(chunked, 350) is True  # 510 held: 510 + 600 > 1000

    assert waiter.state == "waiting"
    assert budget.held - budget.waiting_held + budget.reserved == 510
    for body in (chunked, waiter, staller):
        budget.close(body)
    assert (budget.held, budget.reserved, budget.bodies, budget.waiting) == (0, 0, 0, 0)
