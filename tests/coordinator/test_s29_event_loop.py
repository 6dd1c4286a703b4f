"""The coordinator runs on asyncio's own event loop whatever else is installed. uvicorn's
default (`loop="auto"`) takes uvloop whenever it can import it, as `pip install
uvicorn[standard]` brings it; the connection handling the ledger and the early answers rely on
(the write buffer read at a stop, an early 413 read while the upload is still being sent) is
tested on asyncio's loop, and helper-315 found h308's early-413 test failing with the
coordinator on uvloop (notes/s29/h315). As with httptools (`uvicorn_config` pins h11), the
choice is not left to what the environment happens to hold."""

from __future__ import annotations

import asyncio
import sys
import types

import pytest

from coordinator.service.server import uvicorn_config


@pytest.fixture()
def importable_uvloop(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A stand-in `uvloop` module that uvicorn can import, recording each loop it is asked
    for (uvloop is not a dependency; its import is all uvicorn's "auto" checks)."""
    asked: list[str] = []

    def new_event_loop() -> asyncio.AbstractEventLoop:
        asked.append("uvloop")
        return asyncio.new_event_loop()

    fake = types.ModuleType("uvloop")
    fake.new_event_loop = new_event_loop  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uvloop", fake)
    monkeypatch.delitem(sys.modules, "uvicorn.loops.uvloop", raising=False)
    return asked


def test_the_server_takes_asyncios_loop_even_with_uvloop_importable(
    importable_uvloop: list[str],
) -> None:
    # Prepare
    config = uvicorn_config(object(), "127.0.0.1", 0)

    # Execute
    factory = config.get_loop_factory()
    assert factory is not None
    loop = factory()
    loop.close()

    # Assert: asyncio's own loop, and uvloop never asked (before: uvicorn's "auto" took it)
    assert importable_uvloop == []
    assert type(loop).__module__.startswith("asyncio.")
    assert config.loop == "asyncio"
