"""Rate-limited log lines: a fault that repeats on every request (a full disk, a store that
refuses writes) logs one line every few seconds, with a count of the lines left out."""

from __future__ import annotations

import time
from collections.abc import Callable


class EveryFew:
    """Lets a log line through at most once every `every_s` seconds (`clock`: monotonic
    seconds). Calling it says whether this one goes out: None when it is left out (counted),
    else how many were left out since the last one, which `since` turns into the line's
    suffix."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self._next = -float("inf")
        self._skipped = 0

    def __call__(self) -> int | None:
        now = self.clock()
        if now < self._next:
            self._skipped += 1
            return None
        self._next = now + self.every_s
        skipped, self._skipped = self._skipped, 0
        return skipped

    def since(self, skipped: int) -> str:
        if not skipped:
            return ""
        return (
            f" ({skipped} more like it since the last such line, not logged: at most one "
            f"every {self.every_s:g} s)"
        )
