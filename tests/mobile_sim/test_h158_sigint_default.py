"""Tests that send themselves a real SIGINT get Python's handler (tests/_sigint.py), also in a
process that inherited SIGINT ignored, as a background job of a script or CI does. There the
SIGINT of test_a_sigint_raises_run_interrupted_with_the_last_recorded_rounds_model did nothing
(asyncio.run installs its Ctrl-C handler only over Python's default) and the test failed with
"DID NOT RAISE RunInterrupted", as did test_starting_a_pool_leaves_the_parents_sigint_handling
_as_it_was; both now use the `default_sigint` fixture."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests._sigint import default_sigint


@pytest.fixture
def ignored_sigint() -> Iterator[None]:
    """SIGINT ignored, as a `cmd &` of a shell without job control starts `cmd`."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ignored_sigint")
def test_a_sigint_raises_keyboard_interrupt_where_it_was_ignored() -> None:
    # Execute: a SIGINT to this process inside
    with default_sigint(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1.0)  # the handler runs at the next bytecode; never reached

    # Assert: the inherited handling is back
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.usefixtures("ignored_sigint")
def test_a_failure_inside_puts_the_handler_back() -> None:
    with pytest.raises(ValueError, match="inside"), default_sigint():
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        raise ValueError("inside")
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.usefixtures("ignored_sigint")
def test_the_asyncio_runner_cancels_its_task_on_a_sigint_inside() -> None:
    # Prepare: what run_http_simulation's fleet meets, without the fleet: asyncio.run's
    # handler, installed only over Python's default, cancels the main task
    import asyncio

    async def main() -> None:
        signal.raise_signal(signal.SIGINT)
        await asyncio.sleep(5.0)  # cancelled at once; never finishes

    # Execute / Assert: cancelled at once (without the handler, the sleep ran out: no raise)
    with default_sigint(), pytest.raises(KeyboardInterrupt):
        asyncio.run(main())
