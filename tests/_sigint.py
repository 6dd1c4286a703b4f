"""Python's own SIGINT handling for a test that sends itself a real SIGINT (Ctrl-C).

A process inherits an ignored SIGINT: a shell without job control (a script, CI, `make test &`)
starts its background commands with SIGINT ignored, and Python then leaves it ignored (it
installs `signal.default_int_handler` only over SIG_DFL). asyncio.run installs its Ctrl-C
handler only over that default, so there a SIGINT did nothing: the run finished its rounds and
such a test failed with "DID NOT RAISE" (helper-158 caught
test_a_sigint_raises_run_interrupted_with_the_last_recorded_rounds_model that way)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def default_sigint() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt (Python's default handler) inside; the handler the
    process had is put back after."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
