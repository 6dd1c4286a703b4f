"""One client per app directory in a process, continued: the collection `DeviceStore.claim` runs
before refusing a second client (so that a client dropped unclosed is reclaimed) is skipped by
CPython while another thread is collecting; the claim waits for that collection to end and
collects again before it refuses, however long the other one takes."""

from __future__ import annotations

import gc
import threading
import types
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sdk import AppDirInUse, device_store
from sdk.device_store import DeviceStore

_WAIT_S = 5.0


class _Owner:
    """A stand-in for the `Client` that claims the directory (a used one sits in cycles)."""

    def __init__(self, store: DeviceStore) -> None:
        self.store = store
        self.me = self


class _Cyclic:
    def __init__(self) -> None:
        self.me = self


class _Collecting:
    """Thread B inside a garbage collection for as long as the test wants: a finalizer of a
    cyclic object it collects waits for `release` (at most `_WAIT_S`)."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        cyclic = _Cyclic()
        weakref.finalize(cyclic, self._block)
        del cyclic
        gc.collect()

    def _block(self) -> None:
        self.inside.set()
        self.release.wait(_WAIT_S)

    def __enter__(self) -> _Collecting:
        self.thread.start()
        assert self.inside.wait(_WAIT_S), "thread B's collection did not reach the finalizer"
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.thread.join(_WAIT_S)


@pytest.fixture
def no_auto_gc() -> Iterator[None]:
    """No automatic collection: only thread B's and the claim's own run (deterministic)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _counting_collect(monkeypatch: pytest.MonkeyPatch, after_first: Any = None) -> list[int]:
    """`device_store.gc.collect` counted (what each call returned); `after_first()` runs once
    the claim's first collection returned."""
    results: list[int] = []

    def collect(*args: Any) -> int:
        results.append(gc.collect(*args))
        if len(results) == 1 and after_first is not None:
            after_first()
        return results[-1]

    namespace = types.SimpleNamespace(collect=collect, callbacks=gc.callbacks)
    monkeypatch.setattr(device_store, "gc", namespace)
    return results


def test_a_dropped_clients_claim_is_reclaimed_while_another_thread_collects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_auto_gc: None
) -> None:
    # Prepare: thread B is in the middle of a collection (its finalizer waits); meanwhile a
    # client's store claims the directory and the client is dropped unclosed, in a cycle.
    with _Collecting() as collecting:

        def b_finishes() -> None:  # once the claim's first collection was skipped
            collecting.release.set()
            collecting.thread.join(_WAIT_S)

        results = _counting_collect(monkeypatch, b_finishes)
        first = DeviceStore(tmp_path)
        first.claim(_Owner(first))
        del first

        # Execute: the next client's claim on the directory
        second = DeviceStore(tmp_path)
        owner = _Owner(second)
        try:
            second.claim(owner)

            # Assert: the first collection was skipped (B's ran); a later one freed the dropped
            # client, and the claim is the new one's (a third is still refused).
            assert results[0] == 0 and len(results) >= 2 and results[-1] > 0, results
            with pytest.raises(AppDirInUse) as info:
                DeviceStore(tmp_path).claim(_Owner(second))
            assert "another client of this process" in str(info.value)
        finally:
            second.close()
    assert not collecting.thread.is_alive()


# Thread B's collection lasting this long: before this change the claim retried for about 30 ms
# (4 collections 5, 10 and 15 ms apart) and refused the new client past that (helper-140).
@pytest.mark.parametrize("collection_s", [0.01, 0.1, 0.3])
def test_a_dropped_clients_claim_is_reclaimed_however_long_another_collection_takes(
    tmp_path: Path, no_auto_gc: None, collection_s: float
) -> None:
    with _Collecting() as collecting:
        timer = threading.Timer(collection_s, collecting.release.set)
        timer.start()
        try:
            first = DeviceStore(tmp_path)
            first.claim(_Owner(first))
            del first
            second = DeviceStore(tmp_path)
            keep = _Owner(second)
            try:
                second.claim(keep)  # no AppDirInUse: the dropped one was freed
                with pytest.raises(AppDirInUse):
                    DeviceStore(tmp_path).claim(_Owner(second))
            finally:
                second.close()
        finally:
            timer.cancel()


def test_a_live_claim_is_refused_after_the_last_collection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_auto_gc: None
) -> None:
    # Prepare: a live client's claim; the claim's collections counted
    first = DeviceStore(tmp_path)
    owner = _Owner(first)
    first.claim(owner)
    results = _counting_collect(monkeypatch)

    # Execute
    second = DeviceStore(tmp_path)
    try:
        with pytest.raises(AppDirInUse) as info:
            second.claim(_Owner(second))
    finally:
        second.close()
        first.close()

    # Assert: refused naming this process's client, after one collection (none was skipped)
    assert "another client of this process" in str(info.value)
    assert len(results) == 1
