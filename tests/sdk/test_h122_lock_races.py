"""The app-directory lock's races (helper-120's review): a fork by another thread while a store
opens its directory, `close()` returning while another thread's guard is still closing its
descriptor, a store closed by the forking thread between the fork hooks, and a
KeyboardInterrupt inside the lock's bookkeeping. Each pins one legal interleaving with events
(no sleeps): a thread switch or a signal can fall at any bytecode."""

from __future__ import annotations

import collections
import fcntl
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from sdk import AppDirInUse, device_store
from sdk.device_store import DeviceStore

from .test_h111_app_dir_lock import _fresh_flock


class _SpyGuard:
    """The guard, telling `blocked` when `who` waits for it while another thread holds it."""

    def __init__(self, who: list[threading.Thread], blocked: threading.Event) -> None:
        self._lock = threading.Lock()
        self._who = who
        self._blocked = blocked

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if blocking and self._lock.locked() and threading.current_thread() in self._who:
            self._blocked.set()
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()


def test_a_fork_by_another_thread_while_a_store_opens_the_directory_keeps_no_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: this thread's open of the directory waits, just after os.open, until another
    # thread has forked or waits for the guard to fork (the fork then follows the lock).
    ready = threading.Event()
    forker: list[threading.Thread] = []
    monkeypatch.setattr(device_store, "_HOLDS_GUARD", _SpyGuard(forker, ready))
    opened = threading.Event()
    real_open = os.open

    def open_then_wait(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, flags, *args, **kwargs)
        if Path(path) == tmp_path and not opened.is_set():
            opened.set()
            assert ready.wait(5)
        return fd

    monkeypatch.setattr(os, "open", open_then_wait)
    up_read, up_write = os.pipe()
    go_read, go_write = os.pipe()
    pids: list[int] = []

    def fork() -> None:
        assert opened.wait(5)
        pid = os.fork()
        if pid == 0:  # the child: stay alive (with whatever it inherited) until told
            try:
                os.write(up_write, b"up")  # past the fork hooks
                os.read(go_read, 1)
            finally:
                os._exit(0)
        pids.append(pid)
        ready.set()

    forker.append(threading.Thread(target=fork))
    forker[0].start()

    # Execute
    try:
        store = DeviceStore(tmp_path)
        forker[0].join(5)
        monkeypatch.setattr(os, "open", real_open)
        assert os.read(up_read, 2) == b"up"
        store.close()

        # Assert: with the child alive, the directory is free (it kept no locked descriptor).
        _fresh_flock(tmp_path)
    finally:
        os.write(go_write, b"x")
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        for fd in (up_read, up_write, go_read, go_write):
            os.close(fd)


def test_close_returns_only_once_another_threads_guard_has_closed_the_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: thread B holds the guard (as while opening another directory). This thread's
    # close() queues its release; a thread switch right after lets B, on its way out of the
    # guard, take the release and start closing the descriptor; B finishes only once this
    # thread has looked at the directory or waits for the guard.
    (tmp_path / "app").mkdir()
    store = DeviceStore(tmp_path / "app")
    hold_fd = store._hold.fd
    main = threading.current_thread()
    b_in_guard, b_go, closing, looked = (threading.Event() for _ in range(4))
    monkeypatch.setattr(device_store, "_HOLDS_GUARD", _SpyGuard([main], looked))
    real_close = os.close

    def slow_close(fd: int) -> None:
        if fd == hold_fd and threading.current_thread() is not main:
            closing.set()
            assert looked.wait(5)
        real_close(fd)

    class Queue(collections.deque[Any]):
        def append(self, item: Any) -> None:
            super().append(item)
            if threading.current_thread() is main:
                b_go.set()
                assert closing.wait(5)

    monkeypatch.setattr(device_store, "_RELEASES", Queue())
    monkeypatch.setattr(os, "close", slow_close)

    def b() -> None:
        with device_store._Guarded():
            b_in_guard.set()
            assert b_go.wait(5)

    thread = threading.Thread(target=b)
    thread.start()
    assert b_in_guard.wait(5)

    # Execute
    store.close()
    try:
        _fresh_flock(tmp_path / "app")
        free = True
    except AppDirInUse:
        free = False
    looked.set()
    thread.join(5)

    # Assert: the lock was free when close() returned, as its docstring promises.
    assert free


def test_a_store_closed_by_the_forking_thread_between_the_fork_hooks_does_not_hang(
    tmp_path: Path,
) -> None:
    # Prepare: a store, closed (as by a __del__ in a collection a later fork hook runs) by the
    # thread between sdk's before-fork hook and its after-fork hook.
    store = DeviceStore(tmp_path)
    done = threading.Event()

    def forking_thread() -> None:
        device_store._before_fork()
        store.close()
        device_store._after_fork_in_parent()
        done.set()

    thread = threading.Thread(target=forking_thread)

    # Execute
    thread.start()
    finished = done.wait(10)
    if not finished:  # it waits for the guard its own thread holds: let it go, to fail cleanly
        device_store._after_fork_in_parent()
    thread.join(5)

    # Assert: close() did not wait for its own thread; the lock is free after the fork.
    assert finished
    _fresh_flock(tmp_path)


class _Interrupt(KeyboardInterrupt):
    """Stands in for Ctrl-C: a signal handler's exception, raised at a bytecode boundary."""


def test_an_interrupted_release_is_finished_by_the_next_pass_through_the_guard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: an interrupt falls in the release's bookkeeping (at its look-up of the hold).
    # The store claims its directory in the stand-in table (armed only after the claim), so
    # that the process's own table keeps no hold of this test's directory once monkeypatch
    # puts it back (a stale hold there outlived the test before).
    class Holds(dict[Any, Any]):
        interrupted = True

        def get(self, *args: Any) -> Any:
            if not Holds.interrupted:
                Holds.interrupted = True
                raise _Interrupt
            return super().get(*args)

    monkeypatch.setattr(device_store, "_HOLDS", Holds(device_store._HOLDS))
    store = DeviceStore(tmp_path)
    Holds.interrupted = False

    # Execute: the interrupt reaches close()'s caller, who closes again.
    with pytest.raises(_Interrupt):
        store.close()
    assert Holds.interrupted
    store.close()

    # Assert: the release was not lost: the directory is free, and no hold on it is left (a
    # hold of another test's directory may be: `_HOLDS` is the process's).
    _fresh_flock(tmp_path)
    st = os.stat(tmp_path)
    assert (st.st_dev, st.st_ino) not in device_store._HOLDS


def test_an_interrupt_as_a_hold_is_published_leaves_the_directory_locked_not_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: an interrupt falls just after the new hold is recorded in `_HOLDS`.
    class Holds(dict[Any, Any]):
        interrupted = False

        def __setitem__(self, key: Any, value: Any) -> None:
            super().__setitem__(key, value)
            if not Holds.interrupted:
                Holds.interrupted = True
                raise _Interrupt

    holds = Holds(device_store._HOLDS)
    monkeypatch.setattr(device_store, "_HOLDS", holds)

    # Execute
    with pytest.raises(_Interrupt):
        DeviceStore(tmp_path)
    try:
        # Assert: the recorded hold's descriptor is open and locked: another process is
        # refused (a leak until this process exits), not let in while this process's next
        # store shares a hold whose descriptor was closed.
        with DeviceStore(tmp_path) as store:
            assert store._hold.fd >= 0
            os.fstat(store._hold.fd)
            with pytest.raises(AppDirInUse):
                _fresh_flock(tmp_path)
    finally:
        for hold in holds.values():  # the leaked hold, let go for the tests that follow
            if hold.fd >= 0:
                fd, hold.fd = hold.fd, -1
                os.close(fd)
        holds.clear()


def test_a_store_whose_directory_was_replaced_refuses_to_write_by_its_path(
    tmp_path: Path,
) -> None:
    # Prepare: a store on app/; the directory is moved away and a new one made at the path,
    # which another process then locks.
    app = tmp_path / "app"
    store = DeviceStore(app)
    store.update_state(round=1)
    app.rename(tmp_path / "moved")
    app.mkdir(mode=0o700)
    other = os.open(app, os.O_RDONLY)
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        # Execute / Assert: the store refuses, naming the path; nothing is written there.
        with pytest.raises(device_store.DeviceStoreError, match="no longer the app directory"):
            store.update_state(round=2)
        assert list(app.iterdir()) == []
    finally:
        os.close(other)
        store.close()
    # The directory it locked is free once it is closed; a store on the new one opens.
    _fresh_flock(tmp_path / "moved")
    with DeviceStore(app) as again:
        assert again.state() == {}
