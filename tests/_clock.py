"""A clock for the tests to hold: the `clock=` callable of Coordinator, SecureRegistry,
BodyBudget and RateLimiter, returning seconds that move only when a test moves them. One
class instead of a copy in every test file; a file whose tests share one starting time, and
whose `Clock()` other files import, says it once with a subclass (`start = T0`)."""

from __future__ import annotations

from typing import ClassVar


class Clock:
    """Seconds that stand still until a test sets or adds to `now` (`clock.now += 5.0`):
    calling the clock returns `now`. It starts at `now` when given, else at the class's
    `start` (0.0 here)."""

    start: ClassVar[float] = 0.0

    def __init__(self, now: float | None = None) -> None:
        self.now: float = self.start if now is None else now

    def __call__(self) -> float:
        return self.now


class SleepClock(Clock):
    """A `Clock` that the code under test moves by pausing: `tick` stands for the SDK's steady
    clock (`sdk.client._tick`), `sleep` for the pause it takes (`Client(sleep=...)`,
    `time.sleep`); each pause is kept in `sleeps` and added to `now`. A file whose pauses must
    be ones `time.sleep` would take checks them in a subclass's `sleep`."""

    def __init__(self, now: float | None = None) -> None:
        super().__init__(now)
        self.sleeps: list[float] = []

    def tick(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
